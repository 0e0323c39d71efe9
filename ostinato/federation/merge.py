"""How two sets of figures for one pattern combine: the formulas the README states, as pure functions.

The same rules merge a learnings file into a store (``local`` is the store's row) and merge two rows of one
store whose names become equal once scrubbed (``local`` is the first by id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import RowMapping

from ostinato.federation.models import PatternLearning, SuccessFactorsLearning
from ostinato.schema.records import QuarantineStatus, SuccessFactors
from ostinato.workers.store import formulas

LEGACY_ACTIVE = "active"
"""An upstream status value that meant validated."""


def weighted(local: float, local_weight: int, incoming: float, incoming_weight: int) -> float:
    """(local·w1 + incoming·w2) / (w1 + w2); the local value when both weights are 0."""
    total = local_weight + incoming_weight
    if total <= 0:
        return local
    return (local * local_weight + incoming * incoming_weight) / total


def days_ago(created_at: datetime, at: datetime) -> int:
    """Whole days from ``at`` to the export (never negative)."""
    return max(0, formulas.whole_days(created_at, at))


def days_before(created_at: datetime, days: int) -> datetime:
    return created_at - timedelta(days=days)


def status_of(value: str | None) -> QuarantineStatus:
    """A stored status as the file states it (upstream's legacy ``active`` meant validated)."""
    if value == LEGACY_ACTIVE:
        return QuarantineStatus.VALIDATED
    try:
        return QuarantineStatus(value or QuarantineStatus.PENDING.value)
    except ValueError:
        return QuarantineStatus.PENDING


@dataclass(frozen=True, slots=True)
class PatternFigures:
    """A pattern's learnable figures with absolute times: a store row, or a file entry placed in time."""

    pattern_type: str
    pattern_name: str
    description: str | None
    suggested_action: str | None
    context_tags: tuple[str, ...]
    instrument_name: str | None
    occurrences: int
    successes: int
    failures: int
    effectiveness: float
    trust: float
    status: QuarantineStatus
    first_seen: datetime
    last_seen: datetime
    last_confirmed: datetime
    factors: SuccessFactors | None
    factors_updated_at: datetime | None

    @property
    def applications(self) -> int:
        return self.successes + self.failures

    @classmethod
    def from_row(cls, row: RowMapping) -> PatternFigures:
        """A ``patterns`` row as read (scores clamped to [0, 1] as ``PatternRecord`` reads them)."""
        stored = row["success_factors"]
        factors = None if stored is None else SuccessFactors.model_validate(stored)
        return cls(
            pattern_type=row["pattern_type"],
            pattern_name=row["pattern_name"],
            description=row["description"],
            suggested_action=row["suggested_action"],
            context_tags=tuple(row["context_tags"] or ()),
            instrument_name=row["instrument_name"],
            occurrences=max(0, row["occurrence_count"] or 0),
            successes=max(0, row["led_to_success_count"] or 0),
            failures=max(0, row["led_to_failure_count"] or 0),
            effectiveness=formulas.clamp01(row["effectiveness_score"]),
            trust=formulas.clamp01(row["trust_score"]),
            status=status_of(row["quarantine_status"]),
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            last_confirmed=row["last_confirmed"],
            factors=factors,
            factors_updated_at=row["success_factors_updated_at"]
            or (None if factors is None else row["last_seen"]),
        )

    @classmethod
    def from_learning(cls, learning: PatternLearning, created_at: datetime) -> PatternFigures:
        """A file entry, its ``*_days_ago`` counted back from the export's ``created_at``."""
        f = learning.success_factors
        factors = None
        if f is not None:
            factors = SuccessFactors.model_validate(f.model_dump(exclude={"updated_days_ago"}))
        return cls(
            pattern_type=learning.pattern_type,
            pattern_name=learning.pattern_name,
            description=learning.description,
            suggested_action=learning.suggested_action,
            context_tags=tuple(learning.context_tags),
            instrument_name=learning.instrument_name,
            occurrences=learning.occurrences,
            successes=learning.successes,
            failures=learning.failures,
            effectiveness=learning.effectiveness,
            trust=learning.trust,
            status=learning.status,
            first_seen=days_before(created_at, learning.first_seen_days_ago),
            last_seen=days_before(created_at, learning.last_seen_days_ago),
            last_confirmed=days_before(created_at, learning.last_confirmed_days_ago),
            factors=factors,
            factors_updated_at=None if f is None else days_before(created_at, f.updated_days_ago),
        )

    def to_learning(self, created_at: datetime) -> PatternLearning:
        factors = None
        if self.factors is not None:
            at = self.factors_updated_at or self.last_seen
            factors = SuccessFactorsLearning(
                **self.factors.model_dump(), updated_days_ago=days_ago(created_at, at)
            )
        return PatternLearning(
            pattern_type=self.pattern_type,
            pattern_name=self.pattern_name,
            description=self.description,
            suggested_action=self.suggested_action,
            context_tags=list(self.context_tags),
            instrument_name=self.instrument_name,
            occurrences=max(1, self.occurrences),
            successes=self.successes,
            failures=self.failures,
            effectiveness=self.effectiveness,
            trust=self.trust,
            status=self.status,
            first_seen_days_ago=days_ago(created_at, self.first_seen),
            last_seen_days_ago=days_ago(created_at, max(self.first_seen, self.last_seen)),
            last_confirmed_days_ago=days_ago(created_at, self.last_confirmed),
            success_factors=factors,
        )


def combine_factors(
    local: SuccessFactors | None,
    local_at: datetime | None,
    incoming: SuccessFactors | None,
    incoming_at: datetime | None,
) -> tuple[SuccessFactors | None, datetime | None]:
    """Observations add up, type and category sets unite, success rates average weighted by observations;
    the conditions of the latest success (status, bucket, retry, escalation, grounding) stay local."""
    if incoming is None:
        return local, local_at
    if local is None:
        return incoming, incoming_at
    merged = local.model_copy(
        update={
            "occurrence_count": local.occurrence_count + incoming.occurrence_count,
            "validation_types": sorted(set(local.validation_types) | set(incoming.validation_types)),
            "error_categories": sorted(set(local.error_categories) | set(incoming.error_categories)),
            "success_rate": weighted(
                local.success_rate, local.occurrence_count, incoming.success_rate, incoming.occurrence_count
            ),
        }
    )
    return merged, local_at


def combine(local: PatternFigures, incoming: PatternFigures) -> PatternFigures:
    """``local`` with ``incoming`` merged into it (the README's formulas).

    Occurrences, successes and failures add up; effectiveness and trust average weighted by applications
    (successes + failures); first sighting is the earlier, latest sighting and confirmation the later; tags
    unite; description, guidance and instrument are local unless missing; the status stays local.
    """
    factors, factors_at = combine_factors(
        local.factors, local.factors_updated_at, incoming.factors, incoming.factors_updated_at
    )
    tags = local.context_tags + tuple(
        t for t in dict.fromkeys(incoming.context_tags) if t not in local.context_tags
    )
    return replace(
        local,
        description=local.description if local.description is not None else incoming.description,
        suggested_action=(
            local.suggested_action if local.suggested_action is not None else incoming.suggested_action
        ),
        context_tags=tags,
        instrument_name=local.instrument_name,
        occurrences=local.occurrences + incoming.occurrences,
        successes=local.successes + incoming.successes,
        failures=local.failures + incoming.failures,
        effectiveness=weighted(
            local.effectiveness, local.applications, incoming.effectiveness, incoming.applications
        ),
        trust=weighted(local.trust, local.applications, incoming.trust, incoming.applications),
        first_seen=min(local.first_seen, incoming.first_seen),
        last_seen=max(local.last_seen, incoming.last_seen),
        last_confirmed=max(local.last_confirmed, incoming.last_confirmed),
        factors=factors,
        factors_updated_at=factors_at,
    )
