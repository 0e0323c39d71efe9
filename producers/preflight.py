"""Preflight reads: what a runner asks the store before or between sheets (SPEC.md §4, SPEC-store.md §4.1).

Every query is the store's own (``ostinato.workers.store``, imported on first use so that importing the
producer loads neither SQLAlchemy nor the workers), run on a read-only engine. A read never stops a sheet:
when the store does not answer, the read logs a warning and gives the neutral answer (no patterns, the
static delay, no budget), and the store is left alone for a few seconds so a dead database costs one
timeout, not one per call.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import structlog

from ostinato.schema.messages import ApplicationMode
from ostinato.schema.records import (
    EscalationDecisionRecord,
    ExecutionRecord,
    ExplorationBudgetRecord,
    PatternDiscoveryEvent,
    PatternRecord,
    QuarantineStatus,
)
from ostinato.settings import Settings, redact_url

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_EPSILON = 0.15
"""The exploration rate of a job with no recorded budget (upstream's ``exploration_rate``)."""
EXPLORATION_MIN_PRIORITY = 0.05
EXPLOITATION_THRESHOLD = 0.3
RELEVANT_LIMIT = 5
OUTCOME_TAGS = ("success:first_attempt", "retry:effective", "completion:used")
"""Tags the legacy runner always added after its validation tags."""
STATIC_FALLBACK = "static_fallback"
STATEMENT_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5
DOWN_COOLDOWN_S = 10.0


@dataclass(frozen=True)
class AutoApply:
    """Upstream's ``learning.auto_apply``: highly trusted patterns go first, without the epsilon draw."""

    trust_threshold: float = 0.85
    max_patterns_per_sheet: int = 3
    require_validated_status: bool = True


@dataclass(frozen=True)
class PatternContext:
    """What the runner knows about a sheet when it asks for patterns.

    ``validation_types`` are the configured validation rule types, in configuration order;
    ``instrument_name`` scopes the query to that instrument's and universal patterns; ``auto_apply`` None
    means auto-apply is off (upstream's default).
    """

    validation_types: Sequence[str] = ()
    instrument_name: str | None = None
    auto_apply: AutoApply | None = None

    def context_tags(self) -> list[str]:
        """``validation:<type>`` per distinct type in order, then the three outcome tags (SPEC-store §3.4)."""
        types = dict.fromkeys(self.validation_types)
        return [f"validation:{kind}" for kind in types] + list(OUTCOME_TAGS)


@dataclass(frozen=True)
class RelevantPattern:
    """One pattern to inject: its id (to cite in ``record_pattern_application``) and its prompt line."""

    pattern_id: str
    guidance: str
    application_mode: ApplicationMode
    auto_applied: bool
    priority_score: float
    effectiveness_score: float


class LearnedWait(NamedTuple):
    """(delay, confidence, source); source is ``global_learned``, ``global_learned_blend`` or static."""

    delay: float
    confidence: float
    source: str


@dataclass(frozen=True)
class ExecutionWindow:
    """Hours of day (UTC) when recoveries tend to succeed (optimal) or fail (avoid)."""

    optimal_hours: tuple[int, ...] = ()
    avoid_hours: tuple[int, ...] = ()
    confidence: float = 0.0
    sample_count: int = 0


NO_WINDOW = ExecutionWindow()


def static_wait(static_delay: float) -> LearnedWait:
    return LearnedWait(static_delay, 0.0, STATIC_FALLBACK)


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: a read-only PostgreSQL session with a statement timeout, or a
    ``query_only`` SQLite connection (which also avoids the store's write-locking ``BEGIN IMMEDIATE``)."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        return engine
    options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        connect_args={"options": options, "connect_timeout": CONNECT_TIMEOUT_S},
    )


class Preflight:
    """The store's read side for one runner process; thread-safe, connects on first read."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        down_cooldown: float = DOWN_COOLDOWN_S,
    ) -> None:
        self._url = settings.database_url
        self._store = store
        self._owns_engine = store is None
        self._clock = clock
        self._rng = rng or random.Random()
        self._down_cooldown = down_cooldown
        self._down_until = 0.0
        self._lock = threading.Lock()

    # -- pattern selection ------------------------------------------------------------------------------

    def relevant_patterns(
        self,
        context: PatternContext,
        limit: int = RELEVANT_LIMIT,
        *,
        job_hash: str | None = None,
        rng: random.Random | None = None,
        include_quarantined: bool = False,
        include_retired: bool = False,
        include_inactive: bool = False,
    ) -> list[RelevantPattern]:
        """Patterns for a sheet's prompt, chosen as the legacy runner's global path did (SPEC-store §0.5).

        Epsilon-greedy: with probability epsilon (the job's current exploration budget, 0.15 when it has
        none) patterns down to priority 0.05 qualify, otherwise only those at 0.3 or more. Auto-apply patterns
        come first; the query is retried without tags when nothing matches; near-duplicates are dropped; at
        most ``limit`` are returned, each marked exploration (not auto-applied, priority < 0.3) or
        exploitation.
        """
        if limit <= 0:
            return []
        draw = rng or self._rng

        def keep(record: PatternRecord) -> bool:
            status = record.quarantine_status
            return (
                (include_quarantined or status != QuarantineStatus.QUARANTINED)
                and (include_retired or status != QuarantineStatus.RETIRED)
                and (include_inactive or record.active)
                and _in_scope(record, context.instrument_name)
            )

        def select(store: Store) -> list[RelevantPattern]:
            from ostinato.workers.detection.guidance import dedupe_near_duplicates, format_record_guidance

            with store.batch():
                budget = store.get_exploration_budget(job_hash) if job_hash else None
                epsilon = DEFAULT_EPSILON if budget is None else budget.budget_value
                exploring = draw.random() < epsilon
                min_priority = EXPLORATION_MIN_PRIORITY if exploring else EXPLOITATION_THRESHOLD
                tags = context.context_tags()
                auto: list[PatternRecord] = []
                if context.auto_apply is not None:
                    rule = context.auto_apply
                    auto = [
                        record
                        for record in store.get_patterns_for_auto_apply(
                            trust_threshold=rule.trust_threshold,
                            require_validated=rule.require_validated_status,
                            limit=rule.max_patterns_per_sheet,
                            context_tags=tags,
                        )
                        if keep(record)
                    ]
                auto_ids = {record.id for record in auto}

                def ranked(tag_filter: list[str] | None) -> list[PatternRecord]:
                    # Over-fetch until ``limit`` survive the filters the query cannot express.
                    fetch = limit + len(auto_ids)
                    while True:
                        rows = store.get_patterns(
                            min_priority=min_priority,
                            limit=fetch,
                            context_tags=tag_filter,
                            exclude_quarantined=not include_quarantined,
                            include_inactive=include_inactive,
                            instrument_name=context.instrument_name,
                        )
                        kept = [r for r in rows if keep(r) and r.id not in auto_ids]
                        if len(kept) >= limit or len(rows) < fetch:
                            return kept[:limit]
                        fetch *= 2

                chosen = auto + ranked(tags)
                if not chosen:
                    chosen = ranked(None)
            log.debug(
                "relevant_patterns",
                job_hash=job_hash,
                epsilon=epsilon,
                exploring=exploring,
                found=len(chosen),
            )
            return [
                RelevantPattern(
                    pattern_id=record.id,
                    guidance=format_record_guidance(record),
                    application_mode=_mode(record, record.id in auto_ids),
                    auto_applied=record.id in auto_ids,
                    priority_score=record.priority_score,
                    effectiveness_score=record.effectiveness_score,
                )
                for record in dedupe_near_duplicates(chosen)[:limit]
            ]

        return self._read("relevant_patterns", [], select)

    def patterns_for_auto_apply(
        self,
        trust_threshold: float = 0.85,
        require_validated: bool = True,
        limit: int = 3,
        context_tags: Sequence[str] | None = None,
    ) -> list[PatternRecord]:
        """The most trusted non-retired patterns, as upstream's ``get_patterns_for_auto_apply``."""
        return self._read(
            "patterns_for_auto_apply",
            [],
            lambda store: store.get_patterns_for_auto_apply(
                trust_threshold, require_validated, limit, context_tags
            ),
        )

    # -- waits, budget, coordination --------------------------------------------------------------------

    def learned_wait(
        self,
        error_code: str,
        static_delay: float,
        model: str | None = None,
        *,
        min_samples: int = 3,
        min_confidence: float = 0.7,
    ) -> LearnedWait:
        """The learned wait before retrying ``error_code``, blended towards ``static_delay`` while unsure."""
        return self._read(
            "learned_wait",
            static_wait(static_delay),
            lambda store: LearnedWait(
                *store.get_learned_wait_time_with_fallback(
                    error_code, static_delay, model, min_samples, min_confidence
                )
            ),
        )

    def exploration_budget(self, job_hash: str | None) -> ExplorationBudgetRecord | None:
        """The job's current budget; None (or "") asks for the latest budget of any job."""
        return self._read("exploration_budget", None, lambda store: store.get_exploration_budget(job_hash))

    def recent_discoveries(
        self,
        exclude_job_hash: str | None = None,
        pattern_type: str | None = None,
        min_effectiveness: float = 0.0,
        limit: int = 20,
    ) -> list[PatternDiscoveryEvent]:
        """Unexpired discoveries, newest first, without those of ``exclude_job_hash``."""
        return self._read(
            "recent_discoveries",
            [],
            lambda store: store.check_recent_pattern_discoveries(
                exclude_job_hash, pattern_type, min_effectiveness, limit
            ),
        )

    def similar_executions(
        self,
        job_hash: str | None = None,
        workspace_hash: str | None = None,
        sheet_num: int | None = None,
        limit: int = 10,
    ) -> list[ExecutionRecord]:
        return self._read(
            "similar_executions",
            [],
            lambda store: store.get_similar_executions(job_hash, workspace_hash, sheet_num, limit),
        )

    def optimal_execution_window(
        self, error_code: str | None = None, model: str | None = None
    ) -> ExecutionWindow:
        def window(store: Store) -> ExecutionWindow:
            found = store.get_optimal_execution_window(error_code, model)
            return ExecutionWindow(
                optimal_hours=tuple(found["optimal_hours"]),
                avoid_hours=tuple(found["avoid_hours"]),
                confidence=float(found["confidence"]),
                sample_count=int(found["sample_count"]),
            )

        return self._read("optimal_execution_window", NO_WINDOW, window)

    def similar_escalations(
        self,
        confidence: float,
        validation_pass_rate: float,
        confidence_tolerance: float = 0.15,
        pass_rate_tolerance: float = 0.15,
        limit: int = 5,
    ) -> list[EscalationDecisionRecord]:
        """Past escalation decisions in a similar state (rates are fractions), those that worked first."""
        return self._read(
            "similar_escalations",
            [],
            lambda store: store.get_similar_escalation(
                confidence, validation_pass_rate, confidence_tolerance, pass_rate_tolerance, limit
            ),
        )

    # -- plumbing ---------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            store, self._store = self._store, None
        if store is not None and self._owns_engine:
            store.engine.dispose()

    def _store_for_reads(self) -> Store:
        with self._lock:
            if self._store is None:
                from ostinato.workers.store import Store, utcnow

                self._store = Store(read_only_engine(self._url), clock=self._clock or utcnow)
                self._owns_engine = True
            return self._store

    def _read(self, what: str, neutral: T, work: Callable[[Store], T]) -> T:
        """``work`` on the store, or ``neutral`` when the store does not answer (now or a moment ago)."""
        from sqlalchemy.exc import SQLAlchemyError

        if time.monotonic() < self._down_until:
            return neutral
        try:
            return work(self._store_for_reads())
        except (SQLAlchemyError, OSError) as error:
            self._down_until = time.monotonic() + self._down_cooldown
            log.warning("preflight_read_failed", read=what, database=redact_url(self._url), error=str(error))
            return neutral


def _in_scope(record: PatternRecord, instrument_name: str | None) -> bool:
    """The instrument's own patterns and universal ones; every pattern when no instrument is given."""
    return instrument_name is None or record.instrument_name in (None, instrument_name)


def _mode(record: PatternRecord, auto_applied: bool) -> ApplicationMode:
    """Exploration: a pattern only the lowered threshold let in (upstream's label, now sent as feedback)."""
    if not auto_applied and record.priority_score < EXPLOITATION_THRESHOLD:
        return "exploration"
    return "exploitation"
