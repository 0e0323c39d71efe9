"""Upstream's ``GlobalLearningStore`` on ostinato: a runner written against upstream changes one import.

    from marianne.learning.global_store import GlobalLearningStore, get_global_store   # before
    from ostinato.compat import GlobalLearningStore, get_global_store                   # after

The methods keep upstream's names, arguments and return types (SPEC-store §2); the records are ostinato's
(``ostinato.schema.records``: the same fields, times in UTC). What the facade guarantees:

- **Writes are producer messages** (``ostinato.producers.Client``): each call validates, scrubs and queues,
  then returns at once; a bad argument raises at the call. The ids upstream returned are computed here, not
  read back: a pattern's id from its type and name (``schema.identity.pattern_id``, equal to upstream's),
  an execution's id generated before the outcome is sent (it becomes the stored execution's id). Event writes
  (applications, recoveries, rate limits, escalations, evolution entries) return their message id, a UUID as
  upstream's were; the stored row gets an id of its own, which no runner ever needed.
- **Reads are the store's own queries on a read-only connection**: the runner's preflight reads through
  ``Preflight`` (they answer neutrally - nothing found, the static delay - while the store is unreachable,
  which is what the legacy runner did on any store error), every other read through the same read-only
  store, whose errors reach the caller as ``sqlite3.OperationalError`` (chained to the original), the class
  upstream's callers catch.
- **Embedded** (a SQLite file, upstream's shape): every read first waits until the writes made so far are
  applied, so a read after a write sees it, as with upstream's single-file store. **Distributed**: a write
  lands when a worker applies it (usually within a few tens of milliseconds); a read may not see the caller's
  last write yet. Rate limits are seen at once by every runner in both modes (see ``is_rate_limited``).
- **What a runner cannot do through messages raises** ``NotImplementedError`` with the reason and what does it
  instead (``UNSUPPORTED``): in a distributed deployment maintenance belongs to beat, operator transitions to
  the operator, and clustering to nobody (SPEC-store §0.17).

Rates are fractions (SPEC-store §0.2): the legacy runner's percentages (100/0/50 at job end, escalation pass
percentages with tolerance 15.0) must be divided by 100; a rate above 1 raises ``ValueError`` at the call.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast
from uuid import uuid4

import structlog

from ostinato.producers.client import Client
from ostinato.producers.preflight import Preflight, read_only_engine
from ostinato.producers.rate_limits import RateLimits
from ostinato.schema.identity import hash_job, hash_workspace, pattern_id
from ostinato.schema.messages import (
    TAIL_LIMIT,
    ApplicationMode,
    EscalationAction,
    EscalationOutcome,
)
from ostinato.schema.records import (
    DriftMetrics,
    EntropyMetrics,
    EntropyResponseRecord,
    EpistemicDriftMetrics,
    EscalationDecisionRecord,
    EvolutionTrajectoryEntry,
    ExecutionRecord,
    ExplorationBudgetRecord,
    PatternDiscoveryEvent,
    PatternRecord,
    QuarantineStatus,
    RateLimitEvent,
    SuccessFactors,
)
from ostinato.settings import Settings, get_settings

if TYPE_CHECKING:
    from ostinato.embedded import Embedded
    from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_JOB = "ostinato-compat"
"""The job that messages travel under when upstream's call names none (a pattern recorded without
provenance, an application, a recovery, an evolution entry): the envelope needs one."""
RATE_LIMIT_TTL_SHARE = 0.8
"""A rate limit is honoured for 80 % of its announced duration (SPEC-store §2.10)."""
SHORT_TEXT = 200
NAME_LIMIT = 200
CYCLE_OUTCOMES = ("SUCCESS", "PARTIAL", "DEFERRED")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")

_MANUAL = "manual transitions are operator actions on the shared store; no message carries them"
UNSUPPORTED: dict[str, str] = {
    "batch_connection": (
        "writes are messages, each applied once on its own; there is no transaction to share between calls"
    ),
    "clear_all": "a runner cannot delete the shared store; an operator drops or migrates the database",
    "update_pattern_effectiveness": (
        "workers rescore a pattern after each application, and beat's priority pass rescores every pattern "
        "as of now; a runner holds no write access to the store"
    ),
    "recalculate_all_pattern_priorities": "beat's priority pass (ostinato.maintenance.priority) does it",
    "soft_delete_pattern": "operator action on the shared store; no message carries it",
    "quarantine_pattern": _MANUAL,
    "validate_pattern": _MANUAL,
    "retire_pattern": _MANUAL,
    "update_quarantine_status": _MANUAL,
    "promote_ready_patterns": "beat's trust pass (ostinato.maintenance.trust) promotes and quarantines",
    "calculate_trust_score": "beat's trust pass (ostinato.maintenance.trust) recalculates trust",
    "recalculate_all_trust_scores": "beat's trust pass (ostinato.maintenance.trust) recalculates trust",
    "update_trust_score": "trust is recalculated by beat's trust pass; no message carries a manual delta",
    "update_success_factors": (
        "workers derive success factors from the sheet outcome (its patterns_applied ids and "
        "success_context); send them with Client.record_outcome"
    ),
    "assign_workspace_cluster": (
        "workspace clustering is not reproduced (SPEC-store §0.17): imported clusters are kept and readable, "
        "nothing assigns new ones"
    ),
    "retire_drifting_patterns": "beat's drift pass (ostinato.maintenance.drift) retires drifting patterns",
    "update_exploration_budget": (
        "beat's budget pass (ostinato.maintenance.budget) adjusts budgets under the job's lock"
    ),
    "calculate_budget_adjustment": (
        "beat's budget pass (ostinato.maintenance.budget) adjusts budgets under the job's lock"
    ),
    "record_pattern_entropy": "beat's entropy pass (ostinato.maintenance.entropy) records the snapshots",
    "trigger_entropy_response": (
        "beat's entropy pass (ostinato.maintenance.entropy) checks the cooldown and responds under one lock, "
        "so concurrent runners cannot both respond"
    ),
    "cleanup_expired_rate_limits": "beat's expiry pass (ostinato.maintenance.expiry) deletes expired events",
    "cleanup_expired_pattern_discoveries": (
        "beat's expiry pass (ostinato.maintenance.expiry) deletes expired events"
    ),
    "record_pattern_discovery": (
        "workers record (and broadcast) a discovery when a reported or detected pattern is new; "
        "record_pattern is how a runner names one"
    ),
    "update_escalation_outcome": (
        "escalation decisions are append-only messages and the producer never learns the stored row's id; "
        "pass outcome_after_action to record_escalation_decision when the outcome is known"
    ),
}
"""Every upstream method the facade refuses, with the reason its ``NotImplementedError`` gives."""


def _unsupported(name: str) -> NoReturn:
    raise NotImplementedError(f"GlobalLearningStore.{name} is not available in ostinato: {UNSUPPORTED[name]}")


@dataclass(frozen=True)
class PatternProvenance:
    """Upstream's grouped provenance of a recorded pattern: the job hash and sheet it was seen in."""

    job_hash: str | None = None
    sheet_num: int | None = None


class GlobalLearningStore:
    """Upstream's store, its writes sent by the producer and its reads run read-only on ostinato's store.

    Made three ways:

    - ``GlobalLearningStore(db_path)``, upstream's way: embedded mode on that SQLite file (made and migrated
      on first use; the process's runtime for the file is shared). An upstream ``global-learning.db`` is
      refused: import it into an ostinato store first (SPEC.md §7 ``import-sqlite``) and open that.
    - ``GlobalLearningStore(embedded=path_or_runtime)``: embedded mode, as ``Client(embedded=...)``.
    - ``GlobalLearningStore()`` or ``GlobalLearningStore(settings=...)``: the distributed deployment of the
      settings (``OSTINATO_*``: Redis, the workers, PostgreSQL).

    ``job_name`` and ``workspace`` (default: the current directory) are what messages travel under when
    upstream's call names no job or workspace. ``flush_timeout`` bounds how long an embedded read waits for
    the writes before it.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        settings: Settings | None = None,
        embedded: str | Path | Embedded | None = None,
        job_name: str = DEFAULT_JOB,
        workspace: str | Path | None = None,
        flush_timeout: float = 30.0,
    ) -> None:
        if db_path is not None and embedded is not None:
            raise ValueError("give the store's file as db_path or as embedded, not both")
        self._runtime = _open_runtime(db_path if db_path is not None else embedded, settings)
        self.settings = self._runtime.settings if self._runtime else settings or get_settings()
        self.db_path = self._runtime.path if self._runtime else None
        self.job_hash = hash_job(job_name)
        self.workspace_hash = hash_workspace(workspace if workspace is not None else Path.cwd())
        self._flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._clients: dict[tuple[str, str], Client] = {}
        self._base = self._client(self.job_hash, self.workspace_hash)
        from ostinato.workers.store import Store  # the store's queries, loaded only by the facade

        self._reader = Store(read_only_engine(self.settings.database_url))
        self._preflight = Preflight(self.settings, store=self._reader)
        # Distributed, a second per-model key carries upstream's 0.8 × duration (the producer's own key
        # lasts the full duration), so every runner sees upstream's number before ingest.
        self._limits = (
            None
            if self._runtime
            else RateLimits(
                self.settings.model_copy(update={"key_prefix": f"{self.settings.key_prefix}compat:"})
            )
        )

    @property
    def embedded(self) -> bool:
        return self._runtime is not None

    # -- infrastructure ---------------------------------------------------------------------------------

    hash_job = staticmethod(hash_job)
    hash_workspace = staticmethod(hash_workspace)

    @contextlib.contextmanager
    def batch_connection(self) -> Iterator[None]:
        _unsupported("batch_connection")
        yield  # pragma: no cover

    def clear_all(self) -> None:
        _unsupported("clear_all")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write so far is applied (embedded) or on the broker (distributed)."""
        return self._base.flush(self._flush_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Flush and stop: the producers' clients, the rate-limit key and the read-only connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close(self._flush_timeout)
        if self._runtime is not None:
            self._runtime.release(self._flush_timeout)
        if self._limits is not None:
            self._limits.close()
        self._preflight.close()
        self._reader.engine.dispose()

    def __enter__(self) -> GlobalLearningStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- patterns: writes -------------------------------------------------------------------------------

    def record_pattern(
        self,
        pattern_type: str,
        pattern_name: str,
        description: str | None = None,
        context_tags: list[str] | None = None,
        suggested_action: str | None = None,
        provenance: PatternProvenance | None = None,
        provenance_job_hash: str | None = None,
        provenance_sheet_num: int | None = None,
        instrument_name: str | None = None,
    ) -> str:
        """Report a pattern; returns its id, ``hash16(type + ":" + normalised name)`` as upstream's.

        ``context_tags=None`` keeps the stored tags (SPEC-store §0.8; upstream cleared them). Without a
        provenance job the pattern is credited to this facade's job. Upstream's content-hash merge can file a
        report under an imported row's different id; the id returned is then the derived one.
        """
        job_hash = provenance.job_hash if provenance is not None else provenance_job_hash
        sheet_num = provenance.sheet_num if provenance is not None else provenance_sheet_num
        client = (
            self._writer() if job_hash is None else self._client(_job_hash(job_hash), self.workspace_hash)
        )
        client.report_pattern(
            pattern_type,
            pattern_name,
            description,
            context_tags=context_tags,
            suggested_action=suggested_action,
            sheet_num=sheet_num,
            instrument_name=instrument_name,
        )
        return pattern_id(pattern_type, pattern_name)

    def record_pattern_application(
        self,
        pattern_id: str,
        execution_id: str,
        pattern_led_to_success: bool,
        retry_count_before: int = 0,
        retry_count_after: int = 0,
        application_mode: str = "exploitation",
        validation_passed: bool | None = None,
        grounding_confidence: float | None = None,
    ) -> str:
        """Feedback on one applied pattern; the worker rescores it (an unknown id is skipped, as upstream)."""
        message_id = self._writer().record_pattern_application(
            pattern_id,
            execution_id,
            pattern_led_to_success,
            retry_count_before=retry_count_before,
            retry_count_after=retry_count_after,
            application_mode=cast(ApplicationMode, application_mode),
            validation_passed=validation_passed,
            grounding_confidence=grounding_confidence,
        )
        return str(message_id)

    def update_pattern_effectiveness(self, pattern_id: str) -> float | None:
        _unsupported("update_pattern_effectiveness")

    def recalculate_all_pattern_priorities(self) -> int:
        _unsupported("recalculate_all_pattern_priorities")

    def soft_delete_pattern(self, pattern_id: str) -> bool:
        _unsupported("soft_delete_pattern")

    # -- patterns: reads --------------------------------------------------------------------------------

    def get_patterns(
        self,
        pattern_type: str | None = None,
        min_priority: float = 0.01,
        limit: int = 20,
        context_tags: list[str] | None = None,
        quarantine_status: QuarantineStatus | str | None = None,
        exclude_quarantined: bool = False,
        min_trust: float | None = None,
        max_trust: float | None = None,
        include_inactive: bool = False,
        instrument_name: str | None = None,
        include_universal: bool = True,
    ) -> list[PatternRecord]:
        return self._query(
            lambda store: store.get_patterns(
                pattern_type,
                min_priority,
                limit,
                context_tags,
                quarantine_status,
                exclude_quarantined,
                min_trust,
                max_trust,
                include_inactive,
                instrument_name,
                include_universal,
            )
        )

    def get_pattern_by_id(self, pattern_id: str) -> PatternRecord | None:
        return self._query(lambda store: store.get_pattern_by_id(pattern_id))

    def get_pattern_provenance(self, pattern_id: str) -> dict[str, Any] | None:
        return self._query(lambda store: store.get_pattern_provenance(pattern_id))

    def get_quarantined_patterns(self, limit: int = 50) -> list[PatternRecord]:
        return self._query(lambda store: store.get_quarantined_patterns(limit))

    def get_high_trust_patterns(self, threshold: float = 0.7, limit: int = 50) -> list[PatternRecord]:
        return self._query(lambda store: store.get_high_trust_patterns(threshold, limit))

    def get_low_trust_patterns(self, threshold: float = 0.3, limit: int = 50) -> list[PatternRecord]:
        return self._query(lambda store: store.get_low_trust_patterns(threshold, limit))

    def get_retired_patterns(self, limit: int = 50) -> list[PatternRecord]:
        return self._query(lambda store: store.get_retired_patterns(limit))

    def get_patterns_for_auto_apply(
        self,
        trust_threshold: float = 0.85,
        require_validated: bool = True,
        limit: int = 3,
        context_tags: list[str] | None = None,
    ) -> list[PatternRecord]:
        self._settle()
        return self._preflight.patterns_for_auto_apply(
            trust_threshold, require_validated, limit, context_tags
        )

    # -- quarantine, lifecycle, trust -------------------------------------------------------------------

    def quarantine_pattern(self, pattern_id: str, reason: str | None = None) -> bool:
        _unsupported("quarantine_pattern")

    def validate_pattern(self, pattern_id: str) -> bool:
        _unsupported("validate_pattern")

    def retire_pattern(self, pattern_id: str) -> bool:
        _unsupported("retire_pattern")

    def update_quarantine_status(self, pattern_id: str, status: QuarantineStatus | str) -> bool:
        _unsupported("update_quarantine_status")

    def promote_ready_patterns(self) -> dict[str, list[str]]:
        _unsupported("promote_ready_patterns")

    def calculate_trust_score(self, pattern_id: str) -> float | None:
        _unsupported("calculate_trust_score")

    def recalculate_all_trust_scores(self) -> int:
        _unsupported("recalculate_all_trust_scores")

    def update_trust_score(self, pattern_id: str, delta: float) -> float | None:
        _unsupported("update_trust_score")

    # -- success factors --------------------------------------------------------------------------------

    def update_success_factors(
        self,
        pattern_id: str,
        validation_types: list[str] | None = None,
        error_categories: list[str] | None = None,
        prior_sheet_status: str | None = None,
        retry_iteration: int = 0,
        escalation_was_pending: bool = False,
        grounding_confidence: float | None = None,
    ) -> SuccessFactors | None:
        _unsupported("update_success_factors")

    def get_success_factors(self, pattern_id: str) -> SuccessFactors | None:
        return self._query(lambda store: store.get_success_factors(pattern_id))

    def analyze_pattern_why(self, pattern_id: str) -> dict[str, Any]:
        return self._query(lambda store: store.analyze_pattern_why(pattern_id))

    def get_patterns_with_why(
        self, min_observations: int = 1, limit: int = 20
    ) -> list[tuple[PatternRecord, dict[str, Any]]]:
        return self._query(lambda store: store.get_patterns_with_why(min_observations, limit))

    # -- executions, statistics, clustering -------------------------------------------------------------

    def record_outcome(
        self,
        outcome: object,
        workspace_path: str | Path,
        model: str | None = None,
        error_codes: list[str] | None = None,
    ) -> str:
        """Report an upstream ``SheetOutcome`` (or a mapping of its fields); returns the execution's id.

        The id is generated here and sent as the outcome's ``execution_id``, so it is the stored execution's
        id. ``timestamp`` becomes ``started_at``; ``error_codes`` are added to the error history (the
        execution's error codes come from it); ``patterns_applied`` (upstream: injected guidance strings) and
        ``patterns_detected`` are not sent, since applications are recorded with
        ``record_pattern_application``. Unlike upstream's store, the worker also runs pattern detection on the
        job's outcomes, as upstream's job-end aggregation did. Free text is cut to the wire's bounds.
        """
        fields = _outcome_fields(outcome, model, error_codes)
        job_id = _get(outcome, "job_id")
        if not job_id:
            raise ValueError("an outcome needs its job_id")
        execution_id = uuid4()
        client = self._client(hash_job(str(job_id)), hash_workspace(workspace_path))
        client.record_outcome({**fields, "execution_id": execution_id})
        return str(execution_id)

    def get_execution_stats(self) -> dict[str, Any]:
        return self._query(lambda store: store.get_execution_stats())

    def get_recent_executions(
        self, limit: int = 20, workspace_hash: str | None = None
    ) -> list[ExecutionRecord]:
        return self._query(lambda store: store.get_recent_executions(limit, workspace_hash))

    def get_similar_executions(
        self,
        job_hash: str | None = None,
        workspace_hash: str | None = None,
        sheet_num: int | None = None,
        limit: int = 10,
    ) -> list[ExecutionRecord]:
        self._settle()
        return self._preflight.similar_executions(job_hash, workspace_hash, sheet_num, limit)

    def get_optimal_execution_window(
        self, error_code: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        self._settle()
        window = self._preflight.optimal_execution_window(error_code, model)
        return {
            "optimal_hours": list(window.optimal_hours),
            "avoid_hours": list(window.avoid_hours),
            "confidence": window.confidence,
            "sample_count": window.sample_count,
        }

    def assign_workspace_cluster(self, workspace_hash: str, cluster_id: str) -> None:
        _unsupported("assign_workspace_cluster")

    def get_workspace_cluster(self, workspace_hash: str) -> str | None:
        """The cluster of an imported workspace, or None."""
        from sqlalchemy import select

        from ostinato.schema.tables import workspace_clusters

        wc = workspace_clusters.c
        query = select(wc.cluster_id).where(wc.workspace_hash == workspace_hash)
        return self._query(lambda store: store.run(lambda: store.conn.execute(query).scalar()))

    def get_similar_workspaces(self, cluster_id: str, limit: int = 10) -> list[str]:
        """The imported workspaces of a cluster, latest assignment first."""
        from sqlalchemy import select

        from ostinato.schema.tables import workspace_clusters

        wc = workspace_clusters.c
        query = (
            select(wc.workspace_hash)
            .where(wc.cluster_id == cluster_id)
            .order_by(wc.assigned_at.desc(), wc.workspace_hash.desc())
            .limit(limit)
        )
        return self._query(lambda store: store.run(lambda: list(store.conn.execute(query).scalars())))

    # -- error recovery and learned waits ---------------------------------------------------------------

    def record_error_recovery(
        self,
        error_code: str,
        suggested_wait: float,
        actual_wait: float,
        recovery_success: bool,
        model: str | None = None,
    ) -> str:
        message_id = self._writer().record_error_recovery(
            error_code, suggested_wait, actual_wait, recovery_success, model=model
        )
        return str(message_id)

    def get_learned_wait_time(
        self, error_code: str, model: str | None = None, min_samples: int = 3
    ) -> float | None:
        return self._query(lambda store: store.get_learned_wait_time(error_code, model, min_samples))

    def get_learned_wait_time_with_fallback(
        self,
        error_code: str,
        static_delay: float,
        model: str | None = None,
        min_samples: int = 3,
        min_confidence: float = 0.7,
    ) -> tuple[float, float, str]:
        """(delay, confidence, source), source ``global_learned``, ``global_learned_blend`` or static."""
        self._settle()
        return self._preflight.learned_wait(
            error_code, static_delay, model, min_samples=min_samples, min_confidence=min_confidence
        )

    def get_error_recovery_sample_count(self, error_code: str) -> int:
        return self._query(lambda store: store.get_error_recovery_sample_count(error_code))

    # -- drift ------------------------------------------------------------------------------------------

    def calculate_effectiveness_drift(
        self, pattern_id: str, window_size: int = 5, drift_threshold: float = 0.2
    ) -> DriftMetrics | None:
        return self._query(
            lambda store: store.calculate_effectiveness_drift(pattern_id, window_size, drift_threshold)
        )

    def get_drifting_patterns(
        self, drift_threshold: float = 0.2, window_size: int = 5, limit: int = 20
    ) -> list[DriftMetrics]:
        return self._query(lambda store: store.get_drifting_patterns(drift_threshold, window_size, limit))

    def get_pattern_drift_summary(self) -> dict[str, Any]:
        return self._query(lambda store: store.get_pattern_drift_summary())

    def retire_drifting_patterns(
        self, drift_threshold: float = 0.2, window_size: int = 5, require_negative_drift: bool = True
    ) -> list[tuple[str, str, float]]:
        _unsupported("retire_drifting_patterns")

    def calculate_epistemic_drift(
        self, pattern_id: str, window_size: int = 5, drift_threshold: float = 0.15
    ) -> EpistemicDriftMetrics | None:
        return self._query(
            lambda store: store.calculate_epistemic_drift(pattern_id, window_size, drift_threshold)
        )

    def get_epistemic_drifting_patterns(
        self, drift_threshold: float = 0.15, window_size: int = 5, limit: int = 20
    ) -> list[EpistemicDriftMetrics]:
        return self._query(
            lambda store: store.get_epistemic_drifting_patterns(drift_threshold, window_size, limit)
        )

    def get_epistemic_drift_summary(self) -> dict[str, Any]:
        return self._query(lambda store: store.get_epistemic_drift_summary())

    # -- exploration budget and entropy -----------------------------------------------------------------

    def get_exploration_budget(self, job_hash: str | None = None) -> ExplorationBudgetRecord | None:
        """The latest budget of ``job_hash`` (the string as given, as upstream), or of any job."""
        self._settle()
        return self._preflight.exploration_budget(job_hash)

    def get_exploration_budget_history(
        self, job_hash: str | None = None, limit: int = 50
    ) -> list[ExplorationBudgetRecord]:
        return self._query(lambda store: store.get_exploration_budget_history(job_hash, limit))

    def get_exploration_budget_statistics(self, job_hash: str | None = None) -> dict[str, Any]:
        return self._query(lambda store: store.get_exploration_budget_statistics(job_hash))

    def update_exploration_budget(
        self,
        job_hash: str,
        budget_value: float,
        adjustment_type: str,
        entropy_at_time: float | None = None,
        adjustment_reason: str | None = None,
        floor: float = 0.05,
        ceiling: float = 0.50,
    ) -> ExplorationBudgetRecord:
        _unsupported("update_exploration_budget")

    def calculate_budget_adjustment(
        self,
        job_hash: str,
        current_entropy: float,
        floor: float = 0.05,
        ceiling: float = 0.50,
        decay_rate: float = 0.95,
        boost_amount: float = 0.10,
        entropy_threshold: float = 0.3,
        initial_budget: float = 0.15,
    ) -> ExplorationBudgetRecord:
        _unsupported("calculate_budget_adjustment")

    def calculate_pattern_entropy(self) -> EntropyMetrics:
        """The current diversity of applications (computed, not recorded)."""
        return self._query(lambda store: store.calculate_pattern_entropy())

    def record_pattern_entropy(self, metrics: EntropyMetrics) -> str:
        _unsupported("record_pattern_entropy")

    def get_pattern_entropy_history(self, limit: int = 50) -> list[EntropyMetrics]:
        return self._query(lambda store: store.get_pattern_entropy_history(limit))

    def check_entropy_response_needed(
        self, job_hash: str, entropy_threshold: float = 0.3, cooldown_seconds: float = 3600
    ) -> tuple[bool, float | None, str]:
        return self._query(
            lambda store: store.check_entropy_response_needed(job_hash, entropy_threshold, cooldown_seconds)
        )

    def trigger_entropy_response(
        self,
        job_hash: str,
        entropy_at_trigger: float,
        threshold_used: float,
        *args: object,
        **kwargs: object,
    ) -> EntropyResponseRecord:
        _unsupported("trigger_entropy_response")

    def get_last_entropy_response(self, job_hash: str | None = None) -> EntropyResponseRecord | None:
        return self._query(lambda store: store.get_last_entropy_response(job_hash))

    def get_entropy_response_history(
        self, job_hash: str | None = None, limit: int = 50
    ) -> list[EntropyResponseRecord]:
        return self._query(lambda store: store.get_entropy_response_history(job_hash, limit))

    def get_entropy_response_statistics(self, job_hash: str | None = None) -> dict[str, Any]:
        return self._query(lambda store: store.get_entropy_response_statistics(job_hash))

    # -- rate limits ------------------------------------------------------------------------------------

    def record_rate_limit_event(
        self, error_code: str, duration_seconds: float, job_id: str, model: str | None = None
    ) -> str:
        """Announce a rate limit of ``model`` to every runner; it expires after 0.8 × the duration.

        ostinato keys limits by model (the upstream runner recorded one only when it knew the model), so a
        missing model raises ``ValueError``. The history keeps the full duration, as upstream's.
        """
        if model is None:
            raise ValueError("ostinato keys rate limits by model: record_rate_limit_event needs the model")
        client = self._client(hash_job(job_id), self.workspace_hash)
        message_id = client.report_rate_limit(model, error_code, duration_seconds)
        if self._limits is not None:
            self._limits.report(model, error_code, RATE_LIMIT_TTL_SHARE * duration_seconds, client.job_hash)
        return str(message_id)

    def is_rate_limited(
        self, error_code: str | None = None, model: str | None = None
    ) -> tuple[bool, float | None]:
        """(limited, seconds left) from the latest-expiring active limit; the caller's own limits count.

        Embedded, the store answers after the writes so far are applied. Distributed, the store answers
        once a worker applied the event, and a model's limit is also read from Redis, where the reporting
        runner put it with upstream's 0.8 × duration, so every runner sees it at once. A check over all
        models (``model=None``) sees a limit once it is in the store. While the store does not answer, a
        model's check still answers from Redis (distributed) rather than fail the runner's next attempt.
        """
        if self._limits is None or model is None:
            return self._query(lambda store: store.is_rate_limited(error_code, model))
        try:
            limited, left = self._query(lambda store: store.is_rate_limited(error_code, model))
        except sqlite3.OperationalError as error:
            log.warning("compat_rate_limit_store_unavailable", model=model, error=str(error))
            limited, left = False, None
        status = self._limits.status(model)
        fresh = status.limited and status.seconds_left is not None
        if fresh and (error_code is None or status.error_code == error_code):
            seconds = cast(float, status.seconds_left)
            if not limited or left is None or seconds > left:
                return True, seconds
        return limited, left

    def get_active_rate_limits(self, model: str | None = None) -> list[RateLimitEvent]:
        return self._query(lambda store: store.get_active_rate_limits(model))

    def cleanup_expired_rate_limits(self) -> int:
        _unsupported("cleanup_expired_rate_limits")

    # -- pattern discoveries ----------------------------------------------------------------------------

    def record_pattern_discovery(
        self,
        pattern_id: str,
        pattern_name: str,
        pattern_type: str,
        job_id: str,
        effectiveness_score: float = 1.0,
        context_tags: list[str] | None = None,
        ttl_seconds: float = 300.0,
    ) -> str:
        _unsupported("record_pattern_discovery")

    def check_recent_pattern_discoveries(
        self,
        exclude_job_id: str | None = None,
        pattern_type: str | None = None,
        min_effectiveness: float = 0.0,
        limit: int = 20,
    ) -> list[PatternDiscoveryEvent]:
        """Unexpired discoveries, newest first, without those of ``exclude_job_id`` (a job name)."""
        self._settle()
        exclude = hash_job(exclude_job_id) if exclude_job_id is not None else None
        return self._preflight.recent_discoveries(exclude, pattern_type, min_effectiveness, limit)

    def get_active_pattern_discoveries(self, pattern_type: str | None = None) -> list[PatternDiscoveryEvent]:
        return self._query(lambda store: store.get_active_pattern_discoveries(pattern_type))

    def cleanup_expired_pattern_discoveries(self) -> int:
        _unsupported("cleanup_expired_pattern_discoveries")

    # -- escalation decisions ---------------------------------------------------------------------------

    def record_escalation_decision(
        self,
        job_id: str,
        sheet_num: int,
        confidence: float,
        action: str,
        validation_pass_rate: float,
        retry_count: int,
        guidance: str | None = None,
        outcome_after_action: str | None = None,
        model: str | None = None,
    ) -> str:
        """Keep an escalation decision (``validation_pass_rate`` a fraction); returns the message id."""
        client = self._client(hash_job(job_id), self.workspace_hash)
        message_id = client.record_escalation(
            sheet_num,
            confidence,
            cast(EscalationAction, action),
            validation_pass_rate,
            retry_count,
            guidance=guidance,
            outcome_after_action=cast("EscalationOutcome | None", outcome_after_action),
            model=model,
        )
        return str(message_id)

    def get_escalation_history(
        self, job_id: str | None = None, action: str | None = None, limit: int = 20
    ) -> list[EscalationDecisionRecord]:
        job_hash = hash_job(job_id) if job_id is not None else None
        return self._query(lambda store: store.get_escalation_history(job_hash, action, limit))

    def get_similar_escalation(
        self,
        confidence: float,
        validation_pass_rate: float,
        confidence_tolerance: float = 0.15,
        pass_rate_tolerance: float = 0.15,
        limit: int = 5,
    ) -> list[EscalationDecisionRecord]:
        """Past decisions in a similar state, those that worked first (rates and tolerance are fractions)."""
        self._settle()
        return self._preflight.similar_escalations(
            confidence, validation_pass_rate, confidence_tolerance, pass_rate_tolerance, limit
        )

    def update_escalation_outcome(self, escalation_id: str, outcome: str) -> bool:
        _unsupported("update_escalation_outcome")

    # -- evolution trajectory ---------------------------------------------------------------------------

    def record_evolution_entry(
        self,
        cycle: int | object,
        evolutions_completed: int | None = None,
        evolutions_deferred: int | None = None,
        issue_classes: Sequence[str] | None = None,
        cv_avg: float | None = None,
        implementation_loc: int | None = None,
        test_loc: int | None = None,
        loc_accuracy: float | None = None,
        research_candidates_resolved: int = 0,
        research_candidates_created: int = 0,
        notes: str = "",
    ) -> str:
        """Record one cycle, given field by field or bundled in one object (or mapping) as upstream allows.

        A missing field raises ``TypeError``; a cycle the store already has raises
        ``sqlite3.IntegrityError``, as upstream's UNIQUE constraint did (distributed, a duplicate sent before
        the first is applied is dead-lettered by the worker instead).
        """
        if isinstance(cycle, int):
            entry: dict[str, Any] = {
                "cycle": cycle,
                "evolutions_completed": evolutions_completed,
                "evolutions_deferred": evolutions_deferred,
                "issue_classes": None if issue_classes is None else list(issue_classes),
                "cv_avg": cv_avg,
                "implementation_loc": implementation_loc,
                "test_loc": test_loc,
                "loc_accuracy": loc_accuracy,
                "research_candidates_resolved": research_candidates_resolved,
                "research_candidates_created": research_candidates_created,
                "notes": notes,
            }
        else:
            entry = {name: _get(cycle, name) for name in _EVOLUTION_FIELDS}
            entry["issue_classes"] = _listed(entry["issue_classes"])
            for name, default in _EVOLUTION_DEFAULTS.items():
                entry[name] = default if entry[name] is None else entry[name]
        missing = [name for name in _EVOLUTION_FIELDS if entry[name] is None]
        if missing:
            raise TypeError(f"record_evolution_entry() missing required fields: {', '.join(missing)}")
        number = int(entry["cycle"])
        if self._query(lambda store: store.get_trajectory(number, number, 1)):
            raise sqlite3.IntegrityError("UNIQUE constraint failed: evolution_trajectory.cycle")
        return str(self._writer().record_evolution_entry(entry))

    def record_evolution_cycle(
        self,
        cycle_number: int,
        candidates_generated: int,
        candidates_applied: int,
        changes_summary: str,
        outcome: object,
        learning_snapshot: Mapping[str, Any],
    ) -> str:
        """Upstream's summary form of an entry: the outcome is the issue class, the snapshot goes in notes."""
        import json

        name = str(getattr(outcome, "value", outcome)).upper()
        if name not in CYCLE_OUTCOMES:
            raise ValueError(f"unknown cycle outcome {outcome!r}; expected one of {list(CYCLE_OUTCOMES)}")
        notes = (
            f"{changes_summary}\n\nOutcome: {name}\n"
            f"Learning snapshot: {json.dumps(dict(learning_snapshot), default=str)}"
        )
        return self.record_evolution_entry(
            cycle_number,
            candidates_applied,
            candidates_generated - candidates_applied,
            [name.lower()],
            0.0,
            0,
            0,
            1.0,
            notes=notes[:TAIL_LIMIT],
        )

    def get_trajectory(
        self, start_cycle: int | None = None, end_cycle: int | None = None, limit: int = 50
    ) -> list[EvolutionTrajectoryEntry]:
        return self._query(lambda store: store.get_trajectory(start_cycle, end_cycle, limit))

    def get_recurring_issues(
        self, min_occurrences: int = 2, window_cycles: int | None = None
    ) -> dict[str, list[int]]:
        return self._query(lambda store: store.get_recurring_issues(min_occurrences, window_cycles))

    def get_evolution_history(self, last_n: int = 10) -> list[EvolutionTrajectoryEntry]:
        return self._query(lambda store: store.get_evolution_history(last_n))

    # -- plumbing ---------------------------------------------------------------------------------------

    def _client(self, job_hash: str, workspace_hash: str) -> Client:
        """The producer for one (job, workspace); made on first use, sharing the process's sender."""
        key = (job_hash, workspace_hash)
        with self._lock:
            if self._closed:
                raise RuntimeError("this GlobalLearningStore is closed")
            client = self._clients.get(key)
            if client is None:
                if self._runtime is not None:
                    client = Client(DEFAULT_JOB, ".", embedded=self._runtime)
                else:
                    client = Client(DEFAULT_JOB, ".", settings=self.settings)
                # Upstream's calls give job names and workspace paths, or hashes already made: the envelope
                # carries the hashes, so they are set directly instead of hashing a name a second time.
                client.job_hash = job_hash
                client.workspace_hash = workspace_hash
                self._clients[key] = client
            return client

    def _writer(self) -> Client:
        """The producer for calls that name no job: this facade's own."""
        return self._client(self.job_hash, self.workspace_hash)

    def _settle(self) -> None:
        """Embedded: wait until the writes made so far are applied, so the read sees them."""
        if self._runtime is not None and not self._base.flush(self._flush_timeout):
            log.warning("compat_read_before_writes_applied", timeout=self._flush_timeout)

    def _query(self, work: Callable[[Store], T]) -> T:
        """A store query on the read-only connection; its errors surface as ``sqlite3`` errors."""
        from sqlalchemy.exc import SQLAlchemyError

        self._settle()
        try:
            return work(self._reader)
        except SQLAlchemyError as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise sqlite3.OperationalError(f"ostinato store: {detail}") from error


_EVOLUTION_FIELDS = (
    "cycle",
    "evolutions_completed",
    "evolutions_deferred",
    "issue_classes",
    "cv_avg",
    "implementation_loc",
    "test_loc",
    "loc_accuracy",
    "research_candidates_resolved",
    "research_candidates_created",
    "notes",
)
_EVOLUTION_DEFAULTS: dict[str, Any] = {
    "research_candidates_resolved": 0,
    "research_candidates_created": 0,
    "notes": "",
}

_GLOBAL: GlobalLearningStore | None = None
_GLOBAL_LOCK = threading.Lock()


def get_global_store(db_path: str | Path | None = None) -> GlobalLearningStore:
    """The process's store, as upstream's: a call with a different ``db_path`` replaces it.

    Without a path it is the deployment of the environment's settings (or the store made before).
    """
    global _GLOBAL  # noqa: PLW0603  (upstream's singleton)
    wanted = None if db_path is None else Path(db_path).expanduser().resolve()
    with _GLOBAL_LOCK:
        current = _GLOBAL
        if current is None or current._closed or (wanted is not None and current.db_path != wanted):
            current = GlobalLearningStore(wanted)
            _GLOBAL = current
        return current


# -- helpers ---------------------------------------------------------------------------------------------


def _open_runtime(where: str | Path | Embedded | None, settings: Settings | None) -> Embedded | None:
    """The embedded runtime for a file (the process's, shared) or one more reference to a given one."""
    if where is None:
        return None
    from ostinato.embedded import Embedded

    if isinstance(where, Embedded):
        return where.acquire()
    path = Path(where).expanduser().resolve()
    _refuse_upstream_file(path)
    return Embedded.shared(path, settings)


def _refuse_upstream_file(path: Path) -> None:
    """An upstream store (its ``schema_version`` table, no Alembic) is not migrated over: it is imported."""
    if not path.is_file():
        return
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" in tables and "alembic_version" not in tables:
        raise ValueError(
            f"{path} is an upstream global learning store: import it into an ostinato store "
            "(SPEC.md §7 import-sqlite) and open that file instead"
        )


def _job_hash(value: str) -> str:
    if not _HEX16.match(value):
        raise ValueError(f"a provenance job hash is 16 lowercase hex characters (hash_job), not {value!r}")
    return value


def _get(source: object, name: str, default: Any = None) -> Any:
    """A field of an upstream record: an attribute of a dataclass, or a key of a mapping."""
    if isinstance(source, Mapping):
        return source.get(name, default)
    return getattr(source, name, default)


def _text(value: object, limit: int = TAIL_LIMIT) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))[:limit]


def _listed(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _validation_result(result: object) -> dict[str, Any]:
    """One upstream validation result (``rule_type``, ``passed``…) as the wire's ``ValidationResult``."""
    kind = _get(result, "rule_type") or _get(result, "validation_type") or "unknown"
    fields: dict[str, Any] = {"validation_type": _text(kind, NAME_LIMIT)}
    for name in ("passed", "confidence"):
        value = _get(result, name)
        if value is not None:
            fields[name] = value
    for name, limit in (
        ("failure_reason", TAIL_LIMIT),
        ("suggested_fix", TAIL_LIMIT),
        ("failure_category", SHORT_TEXT),
        ("error_code", SHORT_TEXT),
    ):
        text = _text(_get(result, name), limit)
        if text:
            fields[name] = text
    return fields


def _error_entries(history: object, error_codes: Sequence[str] | None) -> list[dict[str, Any]]:
    """Upstream's error history (entries with a code), then the ``error_codes`` it does not hold yet."""
    entries = []
    for entry in _listed(history):
        code = _text(_get(entry, "error_code"), SHORT_TEXT)
        if code:
            entries.append(
                {
                    "error_code": code,
                    "category": _text(_get(entry, "category"), SHORT_TEXT),
                    "message": _text(_get(entry, "message")),
                }
            )
    known = {entry["error_code"] for entry in entries}
    for code in dict.fromkeys(error_codes or []):
        if code not in known:
            entries.append({"error_code": _text(code, SHORT_TEXT), "category": None, "message": None})
    return entries


def _instant(value: object) -> datetime:
    """Upstream's outcome timestamp (UTC-aware by default; a naive one is local time)."""
    if value is None:
        return datetime.now(UTC)
    if not isinstance(value, datetime):
        raise TypeError(f"an outcome timestamp is a datetime, got {type(value).__name__}")
    return value if value.tzinfo is not None else value.astimezone()


def _outcome_fields(outcome: object, model: str | None, error_codes: Sequence[str] | None) -> dict[str, Any]:
    """An upstream ``SheetOutcome`` as the wire's ``SheetOutcome`` fields (without its execution id)."""
    fields: dict[str, Any] = {
        "sheet_id": _text(_get(outcome, "sheet_id"), NAME_LIMIT),
        "started_at": _instant(_get(outcome, "timestamp")),
        "model": _text(model, SHORT_TEXT),
        "validation_results": [_validation_result(r) for r in _listed(_get(outcome, "validation_results"))],
        "error_history": _error_entries(_get(outcome, "error_history"), error_codes),
        "failure_category_counts": {
            _text(name, NAME_LIMIT): count
            for name, count in dict(_get(outcome, "failure_category_counts") or {}).items()
        },
        "semantic_patterns": [_text(p) for p in _listed(_get(outcome, "semantic_patterns"))],
        "fix_suggestions": [_text(f) for f in _listed(_get(outcome, "fix_suggestions"))],
        "grounding_guidance": _text(_get(outcome, "grounding_guidance")),
        "stdout_tail": str(_get(outcome, "stdout_tail") or ""),
        "stderr_tail": str(_get(outcome, "stderr_tail") or ""),
    }
    status = _text(_get(outcome, "final_status"), SHORT_TEXT)
    if status:
        fields["final_status"] = status
    for name in (
        "execution_duration",
        "retry_count",
        "completion_mode_used",
        "validation_pass_rate",
        "success_without_retry",
        "grounding_passed",
        "grounding_confidence",
    ):
        value = _get(outcome, name)
        if value is not None:
            fields[name] = value
    return {name: value for name, value in fields.items() if value is not None}
