"""The runner-side client: validate, scrub, hash, and hand to the background sender; rate limits and reads.

Every publishing call returns the message id in about a tenth of a millisecond: validation, scrubbing and
serialisation happen on the caller's thread, the network only ever on the sender's. Two calls make a
network round trip on purpose: ``report_rate_limit`` and ``rate_limit_status`` make one short Redis round
trip (other runners must see a limit at once), and the preflight reads query the store. With
``enabled=False`` every call is a cheap no-op, and publishing (messages and rate-limit keys) and preflight
reads can be switched off separately, as upstream's learning configuration allows; a switched-off read
gives the neutral answer (nothing found, the static delay, not limited).

What the broker cannot take now waits in a bounded spool on disk. Of the transport, only ``SpoolFull`` ever
reaches a publishing call, and only when that spool is full: under the ``block`` policy (the default) after
waiting ``spool_block_seconds`` for room, under ``raise`` at once; ``drop_oldest`` deletes the oldest
spooled batch instead. Whatever is dropped or refused is counted in ``stats()``, logged as an error, and
makes ``flush`` False. With ``durable`` each call returns only once its message is fsynced into the spool,
so a SIGKILLed runner loses nothing it was given an id for.

With ``embedded=`` a SQLite file, the client needs no server: messages are applied, limits shared and
discoveries broadcast inside the process (``ostinato.embedded``, loaded only then, as it brings the workers).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload
from uuid import UUID, uuid4

import structlog
from pydantic import BaseModel

from ostinato.producers.preflight import (
    NO_WINDOW,
    RELEVANT_LIMIT,
    ExecutionWindow,
    LearnedWait,
    PatternContext,
    Preflight,
    RelevantPattern,
    static_wait,
)
from ostinato.producers.rate_limits import NOT_LIMITED, RateLimiter, RateLimits, RateLimitStatus
from ostinato.producers.scrub import Scrubber
from ostinato.producers.sender import LOSSES, EnvelopeSender, Sender
from ostinato.producers.subscriber import Callback, Subscription, SubscriptionThread, subscribe
from ostinato.schema.identity import hash_job, hash_workspace
from ostinato.schema.messages import (
    TAIL_LIMIT,
    ApplicationMode,
    ErrorRecovery,
    ErrorRecoveryMessage,
    EscalationAction,
    EscalationDecision,
    EscalationDecisionMessage,
    EscalationOutcome,
    EvolutionEntry,
    EvolutionEntryMessage,
    Message,
    PatternApplication,
    PatternApplicationMessage,
    PatternReport,
    PatternReportMessage,
    Provenance,
    RateLimit,
    RateLimitMessage,
    SheetOutcome,
    SheetOutcomeMessage,
)
from ostinato.schema.records import (
    EscalationDecisionRecord,
    ExecutionRecord,
    ExplorationBudgetRecord,
    PatternDiscoveryEvent,
    PatternRecord,
)
from ostinato.settings import Settings, get_settings

if TYPE_CHECKING:
    from ostinato.embedded import Embedded, EmbeddedSubscription

log = structlog.get_logger(__name__)

AnyMessage = (
    SheetOutcomeMessage
    | PatternApplicationMessage
    | PatternReportMessage
    | RateLimitMessage
    | ErrorRecoveryMessage
    | EscalationDecisionMessage
    | EvolutionEntryMessage
)
BeforeSend = Callable[[Message], Message | None]
"""Sees every message after scrubbing; returns it (changed or not) to send it, or None to drop it."""
TAIL_FIELDS = ("stdout_tail", "stderr_tail")
PreflightReads = Literal["sql", "readmodel"]
READS_ENV = "OSTINATO_PREFLIGHT_READS"


def preflight_reads() -> PreflightReads:
    """Where preflight reads go when a client is not told: ``OSTINATO_PREFLIGHT_READS`` (``sql``, the default,
    or ``readmodel``: the Redis read model, no database URL or connection)."""
    value = os.environ.get(READS_ENV, "sql").strip().lower() or "sql"
    if value not in ("sql", "readmodel"):
        raise ValueError(f"{READS_ENV} must be 'sql' or 'readmodel', not {value!r}")
    return "readmodel" if value == "readmodel" else "sql"


RAW_TAIL_WINDOW = 4 * TAIL_LIMIT
"""Scrubbing looks at 16 KiB of a tail before cutting it to 4 KiB, so a secret cut in half at the window's
edge lies in the part that is dropped."""


def _storable(text: str) -> str:
    """Output as PostgreSQL and JSON take it: NUL removed, lone surrogates (bytes a runner decoded with
    ``surrogateescape``) as ``?``, instead of the whole outcome failing to serialise."""
    text = text.replace("\x00", "")
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _now() -> datetime:
    return datetime.now(UTC)


def _embedded_runtime(embedded: str | Path | Embedded, settings: Settings | None) -> Embedded:
    """A reference to the process's runtime for this file, or one more reference to the given runtime."""
    from ostinato.embedded import Embedded

    if isinstance(embedded, Embedded):
        return embedded.acquire()
    return Embedded.shared(embedded, settings)


class Client:
    """One job's reporter; safe to share between threads, and usable from async code as it is.

    ``embedded`` (a SQLite file, or an ``ostinato.embedded.Embedded``) runs everything in this process
    instead of through Redis and PostgreSQL; clients of one process given the same file share one runtime,
    which stops with the last of them. Its settings (a ``sqlite:///`` database URL) become ``self.settings``.
    ``durable`` overrides ``settings.durable`` (``OSTINATO_DURABLE``): each publishing call fsyncs its
    message into the spool before it returns (costlier per call; see the README's producer guarantees).

    A publishing call raises ``SpoolFull`` when its message can be neither queued nor spooled under
    ``settings.spool_full_policy`` (``block``: after ``spool_block_seconds``; ``raise``: at once); no other
    transport error ever reaches it.
    """

    def __init__(
        self,
        job_name: str,
        workspace: str | Path,
        *,
        embedded: str | Path | Embedded | None = None,
        settings: Settings | None = None,
        config_hash: str | None = None,
        enabled: bool = True,
        publish: bool = True,
        preflight: bool = True,
        before_send: BeforeSend | None = None,
        scrubber: Scrubber | None = None,
        sender: Sender | None = None,
        durable: bool | None = None,
        reads: PreflightReads | None = None,
    ) -> None:
        if embedded is not None and sender is not None:
            raise ValueError("a client takes either its own sender or an embedded runtime, not both")
        self._runtime = _embedded_runtime(embedded, settings) if embedded is not None and enabled else None
        self.settings = self._runtime.settings if self._runtime else settings or get_settings()
        if durable is not None and self._runtime is None:
            self.settings = self.settings.model_copy(update={"durable": durable})
        self.job_hash = hash_job(job_name, config_hash)
        self.workspace_hash = hash_workspace(workspace)
        self.enabled = enabled
        self.publishing = enabled and publish
        self.preflight = enabled and preflight
        self.before_send = before_send
        self.scrubber = scrubber or Scrubber()
        self.dropped_by_hook = 0
        self.failed_preparation = 0
        self._lock = threading.Lock()
        self._sender: EnvelopeSender | None = sender
        if sender is None and self.publishing:
            self._sender = self._runtime.sender if self._runtime else Sender.shared(self.settings)
        # A shared sender's losses count from this client's start; a sender given to it, from the sender's.
        self._losses_at_start = self._losses() if sender is None else 0
        self._rate_limits: RateLimiter | None = None
        self._preflight: Preflight | None = None
        self.reads: PreflightReads = "sql" if self._runtime is not None else reads or preflight_reads()
        if self.reads not in ("sql", "readmodel"):
            raise ValueError(f"reads must be 'sql' or 'readmodel', not {self.reads!r}")

    # -- publishing -------------------------------------------------------------------------------------

    def record_outcome(self, outcome: SheetOutcome | Mapping[str, Any]) -> UUID | None:
        """Report a sheet's outcome; its tails are scrubbed, then cut to their last 4 KiB.

        The structure is validated first (a bad outcome raises at once), then the text is scrubbed. Set
        ``execution_id`` to cite the execution later.
        """
        if not self.publishing:
            return None
        data = outcome.model_dump() if isinstance(outcome, SheetOutcome) else dict(outcome)
        raw_tails = {field: str(data.get(field) or "")[-RAW_TAIL_WINDOW:] for field in TAIL_FIELDS}
        checked = SheetOutcome.model_validate({**data, **dict.fromkeys(TAIL_FIELDS, "")})

        def scrubbed() -> SheetOutcome:
            tails = {f: self.scrubber.tail(_storable(raw)) for f, raw in raw_tails.items()}
            return self.scrubber.payload(checked).model_copy(update=tails)

        return self._send(SheetOutcomeMessage, scrubbed)

    def record_pattern_application(
        self,
        pattern_id: str,
        execution_id: str | UUID,
        pattern_led_to_success: bool,
        *,
        retry_count_before: int = 0,
        retry_count_after: int = 0,
        application_mode: ApplicationMode = "exploitation",
        validation_passed: bool | None = None,
        grounding_confidence: float | None = None,
        applied_at: datetime | None = None,
    ) -> UUID | None:
        if not self.publishing:
            return None
        payload = PatternApplication(
            pattern_id=pattern_id,
            execution_id=str(execution_id),
            pattern_led_to_success=pattern_led_to_success,
            applied_at=applied_at or _now(),
            retry_count_before=retry_count_before,
            retry_count_after=retry_count_after,
            application_mode=application_mode,
            validation_passed=validation_passed,
            grounding_confidence=grounding_confidence,
        )
        return self._send(PatternApplicationMessage, lambda: self.scrubber.payload(payload))

    def report_pattern(
        self,
        pattern_type: str,
        pattern_name: str,
        description: str | None = None,
        *,
        context_tags: Sequence[str] | None = None,
        suggested_action: str | None = None,
        sheet_num: int | None = None,
        instrument_name: str | None = None,
    ) -> UUID | None:
        """Name a pattern directly (a runner's own observation), with this job as its provenance."""
        if not self.publishing:
            return None
        payload = PatternReport(
            pattern_type=pattern_type,
            pattern_name=pattern_name,
            reported_at=_now(),
            description=description,
            context_tags=list(context_tags) if context_tags is not None else None,
            suggested_action=suggested_action,
            provenance=Provenance(job_hash=self.job_hash, sheet_num=sheet_num),
            instrument_name=instrument_name,
        )
        return self._send(PatternReportMessage, lambda: self.scrubber.payload(payload), urgent=True)

    def record_error_recovery(
        self,
        error_code: str,
        suggested_wait: float,
        actual_wait: float,
        recovery_success: bool,
        *,
        model: str | None = None,
    ) -> UUID | None:
        if not self.publishing:
            return None
        at = _now()
        payload = ErrorRecovery(
            error_code=error_code,
            suggested_wait=suggested_wait,
            actual_wait=actual_wait,
            recovery_success=recovery_success,
            recorded_at=at,
            model=model,
            time_of_day=at.hour,
        )
        return self._send(ErrorRecoveryMessage, lambda: self.scrubber.payload(payload))

    def record_escalation(
        self,
        sheet_num: int,
        confidence: float,
        action: EscalationAction,
        validation_pass_rate: float,
        retry_count: int,
        *,
        guidance: str | None = None,
        outcome_after_action: EscalationOutcome | None = None,
        model: str | None = None,
    ) -> UUID | None:
        """Report an escalation decision; ``validation_pass_rate`` is a fraction (0..1)."""
        if not self.publishing:
            return None
        payload = EscalationDecision(
            sheet_num=sheet_num,
            confidence=confidence,
            action=action,
            validation_pass_rate=validation_pass_rate,
            retry_count=retry_count,
            recorded_at=_now(),
            guidance=guidance,
            outcome_after_action=outcome_after_action,
            model=model,
        )
        return self._send(EscalationDecisionMessage, lambda: self.scrubber.payload(payload))

    def record_evolution_entry(self, entry: EvolutionEntry | Mapping[str, Any]) -> UUID | None:
        if not self.publishing:
            return None
        if not isinstance(entry, EvolutionEntry):
            entry = EvolutionEntry.model_validate({"recorded_at": _now(), **entry})
        return self._send(EvolutionEntryMessage, lambda: self.scrubber.payload(entry))

    # -- rate limits ------------------------------------------------------------------------------------

    def report_rate_limit(self, model: str, error_code: str, retry_after_seconds: float) -> UUID | None:
        """Tell every runner at once that ``model`` is limited for ``retry_after_seconds``, and keep it.

        Writes the model's Redis key (a longer limit already there is kept; a Redis error is logged, never
        raised) and queues a ``rate_limit`` message for the store's history. Returns that message's id.
        """
        if not self.publishing:
            return None
        payload = RateLimit(
            error_code=error_code, model=model, retry_after_seconds=retry_after_seconds, recorded_at=_now()
        )
        self._rate_limiter().report(model, error_code, retry_after_seconds, self.job_hash)
        return self._send(RateLimitMessage, lambda: self.scrubber.payload(payload))

    def rate_limit_status(self, model: str) -> RateLimitStatus:
        """Whether ``model`` is limited now (this job's own reports count), from Redis alone."""
        if not self.enabled:
            return NOT_LIMITED
        return self._rate_limiter().status(model)

    def _rate_limiter(self) -> RateLimiter:
        if self._runtime is not None:
            return self._runtime.rate_limits
        with self._lock:
            if self._rate_limits is None:
                self._rate_limits = RateLimits(self.settings)
            return self._rate_limits

    # -- preflight reads --------------------------------------------------------------------------------

    def relevant_patterns(
        self,
        context: PatternContext,
        limit: int = RELEVANT_LIMIT,
        *,
        rng: random.Random | None = None,
        include_quarantined: bool = False,
        include_retired: bool = False,
        include_inactive: bool = False,
    ) -> list[RelevantPattern]:
        """Patterns to inject into a sheet's prompt, explored at this job's exploration budget."""
        if not self.preflight:
            return []
        return self._reader().relevant_patterns(
            context,
            limit,
            job_hash=self.job_hash,
            rng=rng,
            include_quarantined=include_quarantined,
            include_retired=include_retired,
            include_inactive=include_inactive,
        )

    def learned_wait(self, error_code: str, static_delay: float, model: str | None = None) -> LearnedWait:
        """(delay, confidence, source) before retrying ``error_code``; the static delay when unknown."""
        if not self.preflight:
            return static_wait(static_delay)
        return self._reader().learned_wait(error_code, static_delay, model)

    def exploration_budget(self, job_hash: str | None = None) -> ExplorationBudgetRecord | None:
        """A job's current exploration budget; this client's job unless another is named."""
        if not self.preflight:
            return None
        return self._reader().exploration_budget(job_hash or self.job_hash)

    def recent_discoveries(
        self,
        *,
        include_own: bool = False,
        pattern_type: str | None = None,
        min_effectiveness: float = 0.0,
        limit: int = 20,
    ) -> list[PatternDiscoveryEvent]:
        """Unexpired pattern discoveries, newest first; other jobs' only unless ``include_own``."""
        if not self.preflight:
            return []
        exclude = None if include_own else self.job_hash
        return self._reader().recent_discoveries(exclude, pattern_type, min_effectiveness, limit)

    def similar_executions(
        self,
        job_hash: str | None = None,
        workspace_hash: str | None = None,
        sheet_num: int | None = None,
        limit: int = 10,
    ) -> list[ExecutionRecord]:
        """Executions matching every given field (hashes, not names), newest first."""
        if not self.preflight:
            return []
        return self._reader().similar_executions(job_hash, workspace_hash, sheet_num, limit)

    def optimal_execution_window(
        self, error_code: str | None = None, model: str | None = None
    ) -> ExecutionWindow:
        if not self.preflight:
            return NO_WINDOW
        return self._reader().optimal_execution_window(error_code, model)

    def patterns_for_auto_apply(
        self,
        trust_threshold: float = 0.85,
        require_validated: bool = True,
        limit: int = 3,
        context_tags: Sequence[str] | None = None,
    ) -> list[PatternRecord]:
        if not self.preflight:
            return []
        return self._reader().patterns_for_auto_apply(trust_threshold, require_validated, limit, context_tags)

    def similar_escalations(
        self,
        confidence: float,
        validation_pass_rate: float,
        confidence_tolerance: float = 0.15,
        pass_rate_tolerance: float = 0.15,
        limit: int = 5,
    ) -> list[EscalationDecisionRecord]:
        """Past escalation decisions near this state (``validation_pass_rate`` a fraction)."""
        if not self.preflight:
            return []
        return self._reader().similar_escalations(
            confidence, validation_pass_rate, confidence_tolerance, pass_rate_tolerance, limit
        )

    def _reader(self) -> Preflight:
        with self._lock:
            if self._preflight is None:
                if self.reads == "readmodel":
                    from ostinato.producers.readmodel import ReadModelPreflight

                    self._preflight = ReadModelPreflight(self.settings)
                else:
                    self._preflight = Preflight(self.settings)
            return self._preflight

    # -- live discoveries -------------------------------------------------------------------------------

    @overload
    def subscribe(
        self, callback: None = None, *, include_own: bool = False
    ) -> Subscription | EmbeddedSubscription: ...

    @overload
    def subscribe(
        self, callback: Callback, *, include_own: bool = False
    ) -> SubscriptionThread | EmbeddedSubscription: ...

    def subscribe(
        self, callback: Callback | None = None, *, include_own: bool = False
    ) -> Subscription | SubscriptionThread | EmbeddedSubscription:
        """Other jobs' pattern discoveries (every job's with ``include_own``), caught up, each once.

        With ``callback``: a started thread calls it per event (``stop()`` ends it). Without: a subscription
        to iterate (``close()``/``stop()`` ends it). Embedded, the events come from the runtime's hub.
        """
        job_hash = None if include_own else self.job_hash
        if self._runtime is not None:
            return self._runtime.subscribe(job_hash, callback)
        if callback is None:
            return subscribe(job_hash, settings=self.settings)
        return subscribe(job_hash, settings=self.settings, callback=callback)

    # -- sending ----------------------------------------------------------------------------------------

    def _send(
        self, kind: type[AnyMessage], payload: Callable[[], BaseModel], *, urgent: bool = False
    ) -> UUID:
        """Scrub, run ``before_send`` and serialise here (about 0.1 ms); the sender only publishes.

        Nothing here may reach the runner as an exception: a failure (a hook that raises, say) drops the
        message, logs it and counts it in ``stats()["failed_preparation"]``. The sender's ``SpoolFull`` (the
        full-spool policy's answer) is the one that does.
        """
        message_id = uuid4()
        try:
            envelope = self._envelope(kind, message_id, payload)
        except Exception:
            log.exception("message_preparation_failed", kind=kind.model_fields["kind"].default)
            with self._lock:
                self.failed_preparation += 1
            return message_id
        if envelope is not None:
            assert self._sender is not None
            self._sender.submit(envelope, urgent=urgent)
        return message_id

    def _envelope(
        self, kind: type[AnyMessage], message_id: UUID, payload: Callable[[], BaseModel]
    ) -> str | None:
        made: Message = kind(
            message_id=message_id,
            workspace_hash=self.workspace_hash,
            job_hash=self.job_hash,
            payload=payload(),
        )
        message = made if self.before_send is None else self.before_send(made)
        if message is None:
            with self._lock:
                self.dropped_by_hook += 1
            return None
        return message.model_dump_json(exclude_none=True)

    # -- lifecycle --------------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything reported so far is on the broker (embedded: applied to the store).

        False if ``timeout`` ran out first, or if the sender dropped or refused anything since this client
        started (``stats()["dropped"]``, ``["refused"]``): that will never arrive, however long one waits.
        """
        if self._sender is None:
            return True
        return self._sender.flush(timeout) and self._losses() == self._losses_at_start

    async def flush_async(self, timeout: float = 10.0) -> bool:
        if self._sender is None:
            return True
        return await self._sender.flush_async(timeout) and self._losses() == self._losses_at_start

    def _losses(self) -> int:
        figures = {} if self._sender is None else self._sender.stats()
        return sum(figures.get(name, 0) for name in LOSSES)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, keep what could not be sent in the spool (it is resent on the next start), stop.

        A sender (or an embedded runtime) shared with other clients of the process stops with the last of
        them.
        """
        with self._lock:
            sender, self._sender = self._sender, None
            runtime, self._runtime = self._runtime, None
            rate_limits, self._rate_limits = self._rate_limits, None
            reader, self._preflight = self._preflight, None
        if runtime is not None:
            runtime.release(timeout)
        elif sender is not None:
            sender.release(timeout)
        if rate_limits is not None:
            rate_limits.close()
        if reader is not None:
            reader.close()

    def stats(self) -> dict[str, int]:
        figures = {} if self._sender is None else self._sender.stats()
        with self._lock:
            own = {"dropped_by_hook": self.dropped_by_hook, "failed_preparation": self.failed_preparation}
        return {**figures, **own}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.flush_async()
        self.close()
