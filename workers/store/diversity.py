"""Pattern entropy, exploration budget and the automatic entropy response.

The budget is an append-only history per job; its latest row is the job's epsilon (§0.5). Every adjustment
reads the latest row and appends the next under one per-job advisory lock, and the entropy response checks its
cooldown and acts under another, so concurrent workers never build on the same base or respond twice (§0.9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import structlog
from sqlalchemy import Row, case, func, select, update
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.records import (
    EntropyMetrics,
    EntropyResponseRecord,
    ExplorationBudgetRecord,
    QuarantineStatus,
)
from ostinato.schema.tables import (
    entropy_responses,
    exploration_budget,
    pattern_applications,
    pattern_entropy_history,
    patterns,
)
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.patterns import PatternsMixin

log = structlog.get_logger(__name__)

BUDGET_LOCK = "ostinato.exploration_budget:"
RESPONSE_LOCK = "ostinato.entropy_response:"
DEFAULT_BUDGET = 0.15
"""The budget a job has before anything is recorded (initial adjustment, response base, epsilon)."""
REVISIT_REASON = "Entropy response: revisiting for revalidation"
QUARANTINED = QuarantineStatus.QUARANTINED.value
PENDING = QuarantineStatus.PENDING.value


# -- pure maths ----------------------------------------------------------------------------------------------


def entropy_metrics(counts: Sequence[int], unique: int, calculated_at: datetime) -> EntropyMetrics:
    """Shannon entropy of the application counts of ``unique`` patterns (zeros are unapplied patterns)."""
    applied = [c for c in counts if c > 0]
    total = sum(applied)
    if total == 0:
        return EntropyMetrics(
            calculated_at=calculated_at,
            shannon_entropy=0.0,
            max_possible_entropy=0.0,
            diversity_index=0.0,
            unique_pattern_count=unique,
            effective_pattern_count=0,
            total_applications=0,
            dominant_pattern_share=0.0,
        )
    shares = [c / total for c in applied]
    entropy = max(0.0, -sum(p * math.log2(p) for p in shares))  # never -0.0
    max_entropy = math.log2(len(applied)) if len(applied) > 1 else 1.0
    return EntropyMetrics(
        calculated_at=calculated_at,
        shannon_entropy=entropy,
        max_possible_entropy=max_entropy,
        diversity_index=entropy / max_entropy,
        unique_pattern_count=unique,
        effective_pattern_count=len(applied),
        total_applications=total,
        dominant_pattern_share=max(shares),
    )


def enforce_bounds(
    value: float, adjustment_type: str, reason: str | None, floor: float, ceiling: float
) -> tuple[float, str, str | None]:
    """Clamp a budget; a value beyond a bound renames the adjustment after the bound that caught it."""
    if value < floor:
        return floor, "floor_enforced", f"Budget {value:.3f} enforced to floor {floor:.3f}"
    if value > ceiling:
        return ceiling, "ceiling_enforced", f"Budget {value:.3f} enforced to ceiling {ceiling:.3f}"
    return value, adjustment_type, reason


def budget_step(
    previous: float, entropy: float, decay_rate: float, boost_amount: float, threshold: float
) -> tuple[float, str, str]:
    """The next budget before clamping: boost when entropy is low, decay otherwise (equal decays)."""
    if entropy < threshold:
        return previous + boost_amount, "boost", f"Entropy {entropy:.3f} < threshold {threshold:.3f}"
    return previous * decay_rate, "decay", f"Entropy {entropy:.3f} >= threshold, decaying"


@dataclass(frozen=True)
class ResponseOptions:
    """What an entropy response does (upstream's ``EntropyResponseConfig`` defaults)."""

    boost_budget: bool = True
    revisit_quarantine: bool = True
    max_quarantine_revisits: int = 3
    budget_floor: float = 0.05
    budget_ceiling: float = 0.50
    budget_boost_amount: float = 0.10


class EntropyResponseOutcome(NamedTuple):
    """What ``respond_to_entropy`` decided, and the response it recorded if it acted."""

    needed: bool
    diversity: float | None
    reason: str
    response: EntropyResponseRecord | None


def _response_record(row: Row[Any]) -> EntropyResponseRecord:
    values = dict(row._mapping)
    values["actions_taken"] = values["actions_taken"] or []
    values["patterns_revisited"] = values["patterns_revisited"] or []
    return EntropyResponseRecord.model_validate(values)


def _for_job(column: Any, job_hash: str | None) -> list[ColumnElement[bool]]:
    """An empty or None job hash means every job (as upstream)."""
    return [column == job_hash] if job_hash else []


# -- the mixin -----------------------------------------------------------------------------------------------


class DiversityMixin(PatternsMixin):
    """Pattern entropy, exploration budget and the automatic entropy response."""

    # -- exploration budget -------------------------------------------------------------------------------

    def _latest_budget(self, job_hash: str | None) -> ExplorationBudgetRecord | None:
        eb = exploration_budget
        query = (
            select(eb)
            .where(*_for_job(eb.c.job_hash, job_hash))
            .order_by(eb.c.recorded_at.desc(), eb.c.seq.desc(), eb.c.id.desc())
            .limit(1)
        )
        row = self.conn.execute(query).first()
        return None if row is None else ExplorationBudgetRecord.model_validate(row._mapping)

    @transactional
    def get_exploration_budget(self, job_hash: str | None = None) -> ExplorationBudgetRecord | None:
        """The job's current budget (the latest row), or the latest of any job when no job is given."""
        return self._latest_budget(job_hash)

    @transactional
    def get_exploration_budget_history(
        self, job_hash: str | None = None, limit: int = 50
    ) -> list[ExplorationBudgetRecord]:
        """Budget rows, newest first."""
        eb = exploration_budget
        query = (
            select(eb)
            .where(*_for_job(eb.c.job_hash, job_hash))
            .order_by(eb.c.recorded_at.desc(), eb.c.seq.desc(), eb.c.id.desc())
            .limit(limit)
        )
        return [ExplorationBudgetRecord.model_validate(row._mapping) for row in self.conn.execute(query)]

    @transactional
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
        """Append a budget row, clamped to [floor, ceiling].

        Under the job's lock the row gets the next ``seq`` and a time no earlier than the job's latest row,
        so the row appended last is always the latest, even across workers whose clocks disagree.
        """
        self.advisory_lock(BUDGET_LOCK + job_hash)
        value, kind, reason = enforce_bounds(budget_value, adjustment_type, adjustment_reason, floor, ceiling)
        eb = exploration_budget
        last_seq, last_at = self.conn.execute(
            select(func.max(eb.c.seq), func.max(eb.c.recorded_at)).where(eb.c.job_hash == job_hash)
        ).one()
        now = self.now()
        record = ExplorationBudgetRecord(
            id=new_id(),
            job_hash=job_hash,
            recorded_at=max(now, last_at) if last_at is not None else now,
            budget_value=value,
            entropy_at_time=entropy_at_time,
            adjustment_type=kind,
            adjustment_reason=reason,
        )
        self.conn.execute(eb.insert().values(**record.model_dump(), seq=(last_seq or 0) + 1))
        return record

    @transactional
    def calculate_budget_adjustment(
        self,
        job_hash: str,
        current_entropy: float,
        floor: float = 0.05,
        ceiling: float = 0.50,
        decay_rate: float = 0.95,
        boost_amount: float = 0.10,
        entropy_threshold: float = 0.3,
        initial_budget: float = DEFAULT_BUDGET,
    ) -> ExplorationBudgetRecord:
        """Boost the job's budget when entropy is low, decay it when healthy; the first call sets it."""
        self.advisory_lock(BUDGET_LOCK + job_hash)
        current = self._latest_budget(job_hash)
        if current is None:
            value, kind, reason = initial_budget, "initial", "Initial budget set"
        else:
            value, kind, reason = budget_step(
                current.budget_value, current_entropy, decay_rate, boost_amount, entropy_threshold
            )
        return self.update_exploration_budget(job_hash, value, kind, current_entropy, reason, floor, ceiling)

    @transactional
    def get_exploration_budget_statistics(self, job_hash: str | None = None) -> dict[str, Any]:
        """Aggregates of the budget history; counts are by the stored adjustment type."""
        eb = exploration_budget

        def count(kind: str) -> Any:
            return func.coalesce(func.sum(case((eb.c.adjustment_type == kind, 1), else_=0)), 0)

        row = self.conn.execute(
            select(
                func.count().label("total"),
                func.avg(eb.c.budget_value).label("avg"),
                func.min(eb.c.budget_value).label("min"),
                func.max(eb.c.budget_value).label("max"),
                count("floor_enforced").label("floor"),
                count("boost").label("boost"),
                count("decay").label("decay"),
            ).where(*_for_job(eb.c.job_hash, job_hash))
        ).one()
        current = self._latest_budget(job_hash)
        return {
            "current_budget": current.budget_value if current else None,
            "avg_budget": float(row.avg or 0.0),
            "min_budget": float(row.min or 0.0),
            "max_budget": float(row.max or 0.0),
            "total_adjustments": int(row.total),
            "floor_enforcements": int(row.floor),
            "boost_count": int(row.boost),
            "decay_count": int(row.decay),
        }

    # -- pattern entropy ----------------------------------------------------------------------------------

    def _application_counts(self) -> list[int]:
        """Applications per pattern row (0 for unapplied), in id order so float sums are reproducible."""
        pa = pattern_applications
        # Counted per pattern id first (an index-only scan of idx_app_pattern_latest), then joined: joining
        # every application row to its pattern before grouping made PostgreSQL hash and sort them all.
        per_pattern = (
            select(pa.c.pattern_id, func.count().label("n")).group_by(pa.c.pattern_id).subquery("per_pattern")
        )
        query = (
            select(func.coalesce(per_pattern.c.n, 0))
            .select_from(patterns.outerjoin(per_pattern, per_pattern.c.pattern_id == patterns.c.id))
            .order_by(patterns.c.id)
        )
        return [int(n) for n in self.conn.execute(query).scalars()]

    @transactional
    def calculate_pattern_entropy(self) -> EntropyMetrics:
        """Diversity of application counts over every pattern row (inactive and retired included)."""
        counts = self._application_counts()
        return entropy_metrics(counts, len(counts), self.now())

    @transactional
    def record_pattern_entropy(self, metrics: EntropyMetrics) -> str:
        """Store an entropy snapshot; returns its id."""
        record_id = new_id()
        self.conn.execute(pattern_entropy_history.insert().values(id=record_id, **metrics.model_dump()))
        return record_id

    @transactional
    def get_pattern_entropy_history(self, limit: int = 50) -> list[EntropyMetrics]:
        """Entropy snapshots, newest first."""
        peh = pattern_entropy_history
        query = select(peh).order_by(peh.c.calculated_at.desc(), peh.c.id.desc()).limit(limit)
        return [EntropyMetrics.model_validate(row._mapping) for row in self.conn.execute(query)]

    # -- entropy response ---------------------------------------------------------------------------------

    @transactional
    def check_entropy_response_needed(
        self, job_hash: str, entropy_threshold: float = 0.3, cooldown_seconds: float = 3600
    ) -> tuple[bool, float | None, str]:
        """(needed, diversity, reason): low diversity needs a response unless this job had one recently."""
        last = self._last_response(job_hash)
        if last is not None:
            elapsed = (self.now() - last.recorded_at).total_seconds()
            if elapsed < cooldown_seconds:
                return False, None, f"Cooldown active ({cooldown_seconds - elapsed:.0f}s remaining)"
        counts = self._application_counts()
        metrics = entropy_metrics(counts, len(counts), self.now())
        if metrics.total_applications == 0:
            return False, None, "No pattern applications to analyze"
        diversity = metrics.diversity_index
        if diversity < entropy_threshold:
            return True, diversity, f"Entropy {diversity:.3f} < threshold {entropy_threshold:.3f}"
        return False, diversity, f"Entropy {diversity:.3f} >= threshold {entropy_threshold:.3f} (healthy)"

    @transactional
    def trigger_entropy_response(
        self,
        job_hash: str,
        entropy_at_trigger: float,
        threshold_used: float,
        *,
        boost_budget: bool = True,
        revisit_quarantine: bool = True,
        max_quarantine_revisits: int = 3,
        budget_floor: float = 0.05,
        budget_ceiling: float = 0.50,
        budget_boost_amount: float = 0.10,
    ) -> EntropyResponseRecord:
        """Inject diversity now, without checking need or cooldown: boost the budget, revisit quarantine."""
        self.advisory_lock(RESPONSE_LOCK + job_hash)
        options = ResponseOptions(
            boost_budget,
            revisit_quarantine,
            max_quarantine_revisits,
            budget_floor,
            budget_ceiling,
            budget_boost_amount,
        )
        return self._respond(job_hash, entropy_at_trigger, threshold_used, options)

    @transactional
    def respond_to_entropy(
        self,
        job_hash: str,
        entropy_threshold: float = 0.3,
        cooldown_seconds: float = 3600,
        *,
        boost_budget: bool = True,
        revisit_quarantine: bool = True,
        max_quarantine_revisits: int = 3,
        budget_floor: float = 0.05,
        budget_ceiling: float = 0.50,
        budget_boost_amount: float = 0.10,
    ) -> EntropyResponseOutcome:
        """Check and, if needed, respond under one lock: concurrent callers for a job respond once."""
        self.advisory_lock(RESPONSE_LOCK + job_hash)
        needed, diversity, reason = self.check_entropy_response_needed(
            job_hash, entropy_threshold, cooldown_seconds
        )
        if not needed or diversity is None:
            return EntropyResponseOutcome(False, diversity, reason, None)
        options = ResponseOptions(
            boost_budget,
            revisit_quarantine,
            max_quarantine_revisits,
            budget_floor,
            budget_ceiling,
            budget_boost_amount,
        )
        response = self._respond(job_hash, diversity, entropy_threshold, options)
        return EntropyResponseOutcome(True, diversity, reason, response)

    def _respond(
        self, job_hash: str, entropy: float, threshold: float, options: ResponseOptions
    ) -> EntropyResponseRecord:
        actions: list[str] = []
        if options.boost_budget:
            self._boost_budget(job_hash, entropy, threshold, options)
            actions.append("budget_boost")
        revisited: list[str] = []
        if options.revisit_quarantine:
            revisited = self._revisit_quarantine(options.max_quarantine_revisits)
            if revisited:
                actions.append("quarantine_revisit")
        record = EntropyResponseRecord(
            id=new_id(),
            job_hash=job_hash,
            recorded_at=self.now(),
            entropy_at_trigger=entropy,
            threshold_used=threshold,
            actions_taken=actions,
            budget_boosted=options.boost_budget,
            quarantine_revisits=len(revisited),
            patterns_revisited=revisited,
        )
        self.conn.execute(entropy_responses.insert().values(**record.model_dump()))
        log.info("entropy_response", job_hash=job_hash, actions=actions, revisited=len(revisited))
        return record

    def _boost_budget(
        self, job_hash: str, entropy: float, threshold: float, options: ResponseOptions
    ) -> None:
        self.advisory_lock(BUDGET_LOCK + job_hash)
        current = self._latest_budget(job_hash)
        base = current.budget_value if current else DEFAULT_BUDGET
        self.update_exploration_budget(
            job_hash,
            base + options.budget_boost_amount,
            "boost",
            entropy,
            f"Entropy response: diversity {entropy:.3f} < {threshold:.3f}",
            options.budget_floor,
            options.budget_ceiling,
        )

    def _revisit_quarantine(self, limit: int) -> list[str]:
        """Send up to ``limit`` of the most recently seen quarantined patterns back to pending.

        Rows are locked in id order. A candidate that a concurrent response reopened first is replaced by
        the next quarantined pattern, so concurrent responses together reopen as many as sequential ones.
        """
        reopened: list[str] = []
        tried: set[str] = set()
        while len(reopened) < limit:
            candidates = self._quarantined(limit - len(reopened), tried)
            if not candidates:
                break
            tried.update(candidates)
            reopened += self._reopen(candidates)
        return reopened

    def _quarantined(self, limit: int, exclude: set[str]) -> list[str]:
        query = select(patterns.c.id).where(patterns.c.quarantine_status == QUARANTINED)
        if exclude:
            query = query.where(patterns.c.id.not_in(exclude))
        query = query.order_by(patterns.c.last_seen.desc(), patterns.c.id.desc()).limit(limit)
        return list(self.conn.execute(query).scalars())

    def _reopen(self, candidates: list[str]) -> list[str]:
        """Move the locked candidates that are still quarantined to pending; returns them in given order."""
        locked = self.lock_patterns(candidates)
        moved = set(
            self.conn.execute(
                update(patterns)
                .where(patterns.c.id.in_(locked), patterns.c.quarantine_status == QUARANTINED)
                .values(quarantine_status=PENDING, quarantine_reason=REVISIT_REASON)
                .returning(patterns.c.id)
            ).scalars()
        )
        return [pid for pid in candidates if pid in moved]

    def _last_response(self, job_hash: str | None) -> EntropyResponseRecord | None:
        er = entropy_responses
        query = (
            select(er)
            .where(*_for_job(er.c.job_hash, job_hash))
            .order_by(er.c.recorded_at.desc(), er.c.id.desc())
            .limit(1)
        )
        row = self.conn.execute(query).first()
        return None if row is None else _response_record(row)

    @transactional
    def get_last_entropy_response(self, job_hash: str | None = None) -> EntropyResponseRecord | None:
        """The latest response of the job, or of any job when none is given."""
        return self._last_response(job_hash)

    @transactional
    def get_entropy_response_history(
        self, job_hash: str | None = None, limit: int = 50
    ) -> list[EntropyResponseRecord]:
        """Responses, newest first."""
        er = entropy_responses
        query = (
            select(er)
            .where(*_for_job(er.c.job_hash, job_hash))
            .order_by(er.c.recorded_at.desc(), er.c.id.desc())
            .limit(limit)
        )
        return [_response_record(row) for row in self.conn.execute(query)]

    @transactional
    def get_entropy_response_statistics(self, job_hash: str | None = None) -> dict[str, Any]:
        """Count, mean trigger entropy, boosts and revisits of the responses, and the latest's time."""
        er = entropy_responses
        row = self.conn.execute(
            select(
                func.count().label("total"),
                func.avg(er.c.entropy_at_trigger).label("avg"),
                func.coalesce(func.sum(case((er.c.budget_boosted, 1), else_=0)), 0).label("boosts"),
                func.coalesce(func.sum(er.c.quarantine_revisits), 0).label("revisits"),
            ).where(*_for_job(er.c.job_hash, job_hash))
        ).one()
        last = self._last_response(job_hash)
        return {
            "total_responses": int(row.total),
            "avg_entropy_at_trigger": float(row.avg or 0.0),
            "budget_boosts": int(row.boosts),
            "quarantine_revisits": int(row.revisits),
            "last_response": last.recorded_at.isoformat() if last else None,
        }
