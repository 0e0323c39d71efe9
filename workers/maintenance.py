"""Beat maintenance: each pass is a plain function over a ``Store``, so it is testable without Celery.

Once per period, however many beat processes send it: a pass first inserts ``(task, period_start)`` into
``maintenance_runs`` with ON CONFLICT DO NOTHING, in the same transaction as its effect. A second pass of the
same period (a second beat, a redelivered message) finds the row and does nothing; a concurrent one waits on
that row until the first commits or rolls back. ``period_start`` is ``floor(now / period)`` on the store's
clock, so the periods of every worker line up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Column, delete, func, select, update

from ostinato.schema.records import PatternDiscoveryEvent, Record
from ostinato.schema.tables import (
    entropy_responses,
    executions,
    exploration_budget,
    maintenance_runs,
    pattern_drift,
    pattern_entropy_history,
    patterns,
)
from ostinato.settings import Settings
from ostinato.workers.store import Store
from ostinato.workers.store.drift import PatternDrift, weighted_belief_change, weighted_drift

log = structlog.get_logger(__name__)

ENTROPY = "entropy"
BUDGET = "budget"
DRIFT = "drift"
TRUST = "trust"
PRIORITY = "priority"
EXPIRY = "expiry"
RETENTION = "retention"

Summary = dict[str, Any]
Effect = Callable[[datetime], tuple[Summary, list[PatternDiscoveryEvent]]]


@dataclass(frozen=True)
class PassResult:
    """What one pass did: ``ran`` is False when its period had already been claimed."""

    task: str
    period_start: datetime
    ran: bool
    summary: Summary = field(default_factory=dict)
    discoveries: list[PatternDiscoveryEvent] = field(default_factory=list)
    """Discovery events the pass committed; the caller publishes them."""


def period_seconds(settings: Settings, task: str) -> float:
    """The configured period of a pass (``maintenance_<task>_period``)."""
    return float(getattr(settings, f"maintenance_{task}_period"))


def period_start(now: datetime, period: float) -> datetime:
    """The start of the period that holds ``now``: floor(now / period), in UTC."""
    return datetime.fromtimestamp(math.floor(now.timestamp() / period) * period, UTC)


def run_pass(store: Store, task: str, period: float, effect: Effect) -> PassResult:
    """Claim this period for ``task`` and apply ``effect`` in one transaction, or do nothing if claimed."""

    def work() -> PassResult:
        now = store.now()
        start = period_start(now, period)
        claim = (
            store.insert(maintenance_runs)
            .values(task=task, period_start=start, ran_at=now, summary={})
            .on_conflict_do_nothing(index_elements=["task", "period_start"])
            .returning(maintenance_runs.c.task)
        )
        if store.conn.execute(claim).first() is None:
            return PassResult(task, start, ran=False)
        summary, discoveries = effect(start)
        store.conn.execute(
            update(maintenance_runs)
            .where(maintenance_runs.c.task == task, maintenance_runs.c.period_start == start)
            .values(summary=summary)
        )
        return PassResult(task, start, True, summary, discoveries)

    result = store.run(work)
    log.info("maintenance_pass", task=task, period_start=result.period_start.isoformat(), ran=result.ran)
    return result


# -- entropy and budget -------------------------------------------------------------------------------------


def entropy_pass(store: Store, settings: Settings) -> PassResult:
    """Record an entropy snapshot and, when diversity is low and the cooldown over, respond to it.

    The snapshot is flagged when diversity < ``entropy_threshold`` and there are applications at all (an
    empty store is not "low diversity", as the response check says). The response runs under its own lock,
    once per ``entropy_cooldown_seconds``, for the job ``entropy_response_job``.
    """

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        threshold = settings.entropy_threshold
        metrics = store.calculate_pattern_entropy()
        low = metrics.total_applications > 0 and metrics.diversity_index < threshold
        snapshot = store.record_pattern_entropy(metrics.model_copy(update={"threshold_exceeded": low}))
        outcome = store.respond_to_entropy(
            settings.entropy_response_job, threshold, settings.entropy_cooldown_seconds
        )
        return {
            "snapshot": snapshot,
            "diversity_index": metrics.diversity_index,
            "threshold_exceeded": low,
            "responded": outcome.response is not None,
            "response": outcome.response.id if outcome.response else None,
            "reason": outcome.reason,
        }, []

    return run_pass(store, ENTROPY, settings.maintenance_entropy_period, effect)


def active_jobs(store: Store, since: datetime) -> list[str]:
    """Jobs with an execution completed at or after ``since``, in order (budget locks go in this order)."""
    query = select(executions.c.job_hash).where(executions.c.completed_at >= since).distinct()
    return sorted(store.conn.execute(query).scalars())


def budget_pass(store: Store, settings: Settings) -> PassResult:
    """Adjust the exploration budget of every recently active job from the current pattern diversity.

    "Recently active" means an execution completed in the last ``budget_job_window_seconds`` (24 h by
    default): an idle job's budget is left where it was instead of decaying while nobody uses it.
    """

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        diversity = store.calculate_pattern_entropy().diversity_index
        since = store.now() - timedelta(seconds=settings.budget_job_window_seconds)
        kinds: Counter[str] = Counter()
        for job in active_jobs(store, since):
            record = store.calculate_budget_adjustment(
                job, diversity, entropy_threshold=settings.entropy_threshold
            )
            kinds[record.adjustment_type] += 1
        return {"diversity_index": diversity, "jobs": kinds.total(), "adjustments": dict(kinds)}, []

    return run_pass(store, BUDGET, settings.maintenance_budget_period, effect)


# -- drift --------------------------------------------------------------------------------------------------


def _drift_row(d: PatternDrift, at: datetime, settings: Settings, retired: bool) -> dict[str, Any]:
    e, b = d.effectiveness, d.epistemic
    return {
        "pattern_id": d.pattern_id,
        "measured_at": at,
        "window_size": settings.drift_window,
        "effectiveness_before": e.effectiveness_before if e else None,
        "effectiveness_after": e.effectiveness_after if e else None,
        "grounding_confidence_avg": e.grounding_confidence_avg if e else None,
        "drift_magnitude": e.drift_magnitude if e else None,
        "drift_direction": e.drift_direction if e else None,
        "threshold_exceeded": bool(
            e and weighted_drift(e.drift_magnitude, e.grounding_confidence_avg) > settings.drift_threshold
        ),
        "confidence_before": b.confidence_before if b else None,
        "confidence_after": b.confidence_after if b else None,
        "belief_change": b.belief_change if b else None,
        "belief_entropy": b.belief_entropy if b else None,
        "epistemic_direction": b.drift_direction if b else None,
        "epistemic_threshold_exceeded": bool(
            b
            and weighted_belief_change(b.belief_change, b.belief_entropy) > settings.epistemic_drift_threshold
        ),
        "retired": retired,
    }


def drift_pass(store: Store, settings: Settings) -> PassResult:
    """Store both drift measures of every pattern with ``drift_min_applications``; retire negative drift.

    Retirement (status retired, priority 0) uses the store's rule: two full windows of history and weighted
    negative drift above ``drift_threshold``.
    """

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        now = store.now()
        report = store.drift_report(settings.drift_min_applications, settings.drift_window)
        retired = {
            pid
            for pid, _, _ in store.retire_drifting_patterns(settings.drift_threshold, settings.drift_window)
        }
        rows = [_drift_row(d, now, settings, d.pattern_id in retired) for d in report]
        store.insert_rows(pattern_drift, rows)
        return {
            "measured": len(rows),
            "drifting": sum(r["threshold_exceeded"] for r in rows),
            "epistemic_drifting": sum(r["epistemic_threshold_exceeded"] for r in rows),
            "retired": sorted(retired),
        }, []

    return run_pass(store, DRIFT, settings.maintenance_drift_period, effect)


class StoredDrift(Record):
    """One stored drift measurement, with the pattern's name for display."""

    pattern_id: str
    pattern_name: str | None
    measured_at: datetime
    window_size: int
    effectiveness_before: float | None
    effectiveness_after: float | None
    grounding_confidence_avg: float | None
    drift_magnitude: float | None
    drift_direction: str | None
    threshold_exceeded: bool
    confidence_before: float | None
    confidence_after: float | None
    belief_change: float | None
    belief_entropy: float | None
    epistemic_direction: str | None
    epistemic_threshold_exceeded: bool
    retired: bool


def latest_drift(store: Store, limit: int = 100) -> list[StoredDrift]:
    """Each pattern's latest stored measurement, largest effectiveness drift first."""
    pd = pattern_drift
    rank = func.row_number().over(partition_by=pd.c.pattern_id, order_by=pd.c.measured_at.desc())
    ranked = select(pd, rank.label("rank")).subquery()
    query = (
        select(ranked, patterns.c.pattern_name)
        .outerjoin(patterns, patterns.c.id == ranked.c.pattern_id)
        .where(ranked.c.rank == 1)
        .order_by(func.coalesce(ranked.c.drift_magnitude, -1.0).desc(), ranked.c.pattern_id)
        .limit(limit)
    )
    return store.run(lambda: [StoredDrift.model_validate(row._mapping) for row in store.conn.execute(query)])


# -- trust and quarantine -----------------------------------------------------------------------------------


def _validated_discovery(store: Store, pattern_id: str, settings: Settings) -> PatternDiscoveryEvent | None:
    record = store.get_pattern_by_id(pattern_id)
    if record is None:
        return None
    return store.record_pattern_discovery(
        record.id,
        record.pattern_name,
        record.pattern_type,
        record.provenance_job_hash or "",
        effectiveness_score=record.effectiveness_score,
        context_tags=record.context_tags,
        ttl_seconds=settings.discovery_ttl_seconds,
    )


def trust_pass(store: Store, settings: Settings) -> PassResult:
    """Quarantine transitions, then trust for the patterns applied since the last pass and those that moved.

    A pattern promoted to validated gets a discovery event (the caller publishes it after commit). "Since the
    last pass" reaches back one extra period, so applications delivered a little late are still counted;
    the first pass recalculates every pattern.
    """
    period = settings.maintenance_trust_period

    def effect(start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        mr = maintenance_runs
        previous = store.conn.execute(
            select(func.max(mr.c.ran_at)).where(mr.c.task == TRUST, mr.c.period_start < start)
        ).scalar()
        since = None if previous is None else previous - timedelta(seconds=period)
        moved = store.promote_ready_patterns()
        recalculated = store.recalculate_all_trust_scores(since=since)
        for pid in sorted({pid for ids in moved.values() for pid in ids}):
            store.calculate_trust_score(pid)
        found = [_validated_discovery(store, pid, settings) for pid in moved["promoted"]]
        discoveries = [event for event in found if event is not None]
        summary = {**moved, "trust_recalculated": recalculated, "since": since.isoformat() if since else None}
        return summary, discoveries

    return run_pass(store, TRUST, period, effect)


# -- priority, expiry and retention -------------------------------------------------------------------------


def priority_pass(store: Store, settings: Settings) -> PassResult:
    """Rescore every pattern as of now, so priorities decay with age; retired patterns stay at 0."""

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        return {"rescored": store.recalculate_all_pattern_priorities()}, []

    return run_pass(store, PRIORITY, settings.maintenance_priority_period, effect)


def expiry_pass(store: Store, settings: Settings) -> PassResult:
    """Delete expired discovery and rate-limit events."""

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        return {
            "discoveries": store.cleanup_expired_pattern_discoveries(),
            "rate_limits": store.cleanup_expired_rate_limits(),
        }, []

    return run_pass(store, EXPIRY, settings.maintenance_expiry_period, effect)


def _delete_before(store: Store, column: Column[datetime], cutoff: datetime, *keep: Any) -> int:
    statement = delete(column.table).where(column < cutoff, *keep)
    return int(store.conn.execute(statement).rowcount)


def retention_pass(store: Store, settings: Settings) -> PassResult:
    """Delete history older than ``retention_days``; executions and applications (the learning) are kept.

    Each job's current budget row is kept however old, so an idle job's epsilon does not silently reset.
    """

    def effect(_start: datetime) -> tuple[Summary, list[PatternDiscoveryEvent]]:
        cutoff = store.now() - timedelta(days=settings.retention_days)
        eb = exploration_budget
        rank = func.row_number().over(
            partition_by=eb.c.job_hash, order_by=(eb.c.recorded_at.desc(), eb.c.seq.desc(), eb.c.id.desc())
        )
        ranked = select(eb.c.id, rank.label("rank")).subquery()
        current = select(ranked.c.id).where(ranked.c.rank == 1)
        return {
            "exploration_budget": _delete_before(store, eb.c.recorded_at, cutoff, eb.c.id.not_in(current)),
            "pattern_entropy_history": _delete_before(store, pattern_entropy_history.c.calculated_at, cutoff),
            "entropy_responses": _delete_before(store, entropy_responses.c.recorded_at, cutoff),
            "pattern_drift": _delete_before(store, pattern_drift.c.measured_at, cutoff),
            "maintenance_runs": _delete_before(store, maintenance_runs.c.period_start, cutoff),
        }, []

    return run_pass(store, RETENTION, settings.maintenance_retention_period, effect)


PASSES: dict[str, Callable[[Store, Settings], PassResult]] = {
    ENTROPY: entropy_pass,
    BUDGET: budget_pass,
    DRIFT: drift_pass,
    TRUST: trust_pass,
    PRIORITY: priority_pass,
    EXPIRY: expiry_pass,
    RETENTION: retention_pass,
}
"""Every maintenance pass by task name (the Celery task is ``ostinato.maintenance.<name>``)."""
