"""Success factors: why a pattern works."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update

from ostinato.schema.records import PatternRecord, SuccessFactors
from ostinato.schema.tables import UTCDateTime, patterns
from ostinato.workers.store.base import transactional
from ostinato.workers.store.patterns import PatternsMixin, log_unknown

log = structlog.get_logger(__name__)

HIGH_GROUNDING = 0.7
RELIABLE_OBSERVATIONS = 5
FULL_CONFIDENCE_OBSERVATIONS = 10
AUTO_APPLY_SUCCESS_RATE = 0.8
LOW_SUCCESS_RATE = 0.5


def time_of_day_bucket(hour: int) -> str:
    """The part of the day an hour (0–23) falls in."""
    if 5 <= hour <= 11:
        return "morning"
    if 12 <= hour <= 16:
        return "afternoon"
    if 17 <= hour <= 20:
        return "evening"
    return "night"


def _union(stored: list[str], incoming: list[str]) -> list[str]:
    return sorted(set(stored) | set(incoming)) if incoming else stored


def fold_factors(
    stored: SuccessFactors | None,
    seen: Sequence[FactorObservation],
    stamped: datetime | None,
    *,
    successes: int,
    failures: int,
) -> tuple[SuccessFactors, datetime]:
    """Fold observations (oldest first) into stored factors; returns them and the new stamp.

    The same result as merging them one at a time, with one copy. Counts and tag sets combine whatever the
    order; the context fields take the newest observation not older than the stored factors, so a late
    message never overwrites a newer context. Observations are sorted, so the ones not older than the
    stamp are the last ones.
    """
    if stored is None:
        stored, stamped, seen = seen[0].observed, seen[0].at, seen[1:]
    if not seen:
        assert stamped is not None
        return stored, stamped
    applications = successes + failures
    validation_types = [kind for o in seen for kind in o.observed.validation_types]
    error_categories = [category for o in seen for category in o.observed.error_categories]
    changes: dict[str, Any] = {
        "occurrence_count": stored.occurrence_count + len(seen),
        "validation_types": _union(stored.validation_types, validation_types),
        "error_categories": _union(stored.error_categories, error_categories),
        "success_rate": successes / applications if applications else stored.success_rate,
    }
    newer = [o.observed for o in seen if stamped is None or o.at >= stamped]
    if newer:
        newest = newer[-1]
        changes["time_of_day_bucket"] = newest.time_of_day_bucket
        changes["retry_iteration"] = newest.retry_iteration
        changes["escalation_was_pending"] = newest.escalation_was_pending
        statuses = [o.prior_sheet_status for o in newer if o.prior_sheet_status is not None]
        if statuses:
            changes["prior_sheet_status"] = statuses[-1]
        groundings = [o.grounding_confidence for o in newer if o.grounding_confidence is not None]
        if groundings:
            changes["grounding_confidence"] = groundings[-1]
    newest_at = seen[-1].at
    return stored.model_copy(update=changes), newest_at if stamped is None else max(stamped, newest_at)


def _summary(factors: SuccessFactors) -> str:
    parts: list[str] = []
    if factors.validation_types:
        parts.append(f"validation types: {', '.join(factors.validation_types)}")
    if factors.error_categories:
        parts.append(f"error categories: {', '.join(factors.error_categories)}")
    if factors.time_of_day_bucket:
        parts.append(f"typically succeeds in: {factors.time_of_day_bucket}")
    if factors.prior_sheet_status:
        parts.append(f"prior sheet was: {factors.prior_sheet_status}")
    return "; ".join(parts) if parts else "Context captured"


def _key_conditions(factors: SuccessFactors) -> list[str]:
    conditions: list[str] = []
    grounding = factors.grounding_confidence
    if grounding is not None and grounding > HIGH_GROUNDING:
        conditions.append(f"High grounding confidence ({grounding:.2f})")
    if factors.retry_iteration == 0:
        conditions.append("Succeeds on first attempt")
    elif factors.retry_iteration > 0:
        conditions.append(f"Often succeeds after {factors.retry_iteration} retries")
    if factors.validation_types:
        conditions.append(f"Works with {len(factors.validation_types)} validation types")
    if not factors.escalation_was_pending:
        conditions.append("Succeeds without escalation")
    return conditions


def _recommendations(factors: SuccessFactors) -> list[str]:
    advice: list[str] = []
    if factors.occurrence_count < RELIABLE_OBSERVATIONS:
        advice.append("Need more observations for reliable analysis")
    if factors.success_rate > AUTO_APPLY_SUCCESS_RATE:
        advice.append("High confidence pattern - consider for auto-apply")
    elif factors.success_rate < LOW_SUCCESS_RATE:
        advice.append("Low success rate - review pattern relevance")
    if factors.time_of_day_bucket:
        advice.append(f"Best applied during {factors.time_of_day_bucket}")
    return advice


def analyze(record: PatternRecord) -> dict[str, Any]:
    """Upstream's "why it works" analysis of one pattern, from its stored factors."""
    analysis: dict[str, Any] = {
        "pattern_name": record.pattern_name,
        "pattern_type": record.pattern_type,
        "has_factors": record.success_factors is not None,
        "trust_score": record.trust_score,
        "effectiveness_score": record.effectiveness_score,
    }
    if record.success_factors is None:
        return analysis | {
            "factors_summary": "No success factors captured yet",
            "key_conditions": [],
            "confidence": 0.0,
            "recommendations": ["Apply this pattern more times to capture success factors"],
        }
    factors = SuccessFactors.model_validate(record.success_factors)
    observed = min(1.0, factors.occurrence_count / FULL_CONFIDENCE_OBSERVATIONS)
    return analysis | {
        "factors_summary": _summary(factors),
        "key_conditions": _key_conditions(factors),
        "confidence": observed * factors.success_rate,
        "recommendations": _recommendations(factors),
        "observation_count": factors.occurrence_count,
        "success_rate": factors.success_rate,
    }


@dataclass(slots=True)
class FactorObservation:
    """The context of one success of one pattern, at the time it happened."""

    pattern_id: str
    observed: SuccessFactors
    at: datetime


def observation(
    pattern_id: str,
    at: datetime,
    validation_types: list[str] | None = None,
    error_categories: list[str] | None = None,
    prior_sheet_status: str | None = None,
    retry_iteration: int = 0,
    escalation_was_pending: bool = False,
    grounding_confidence: float | None = None,
) -> FactorObservation:
    """An observation; its time bucket is the UTC hour of ``at``."""
    observed = SuccessFactors(
        validation_types=list(validation_types or []),
        error_categories=list(error_categories or []),
        prior_sheet_status=prior_sheet_status,
        time_of_day_bucket=time_of_day_bucket(at.astimezone(UTC).hour),
        retry_iteration=retry_iteration,
        escalation_was_pending=escalation_was_pending,
        grounding_confidence=grounding_confidence,
    )
    return FactorObservation(pattern_id, observed, at)


class SuccessFactorsMixin(PatternsMixin):
    """Success factors: why a pattern works."""

    @transactional
    def update_success_factors(
        self,
        pattern_id: str,
        validation_types: list[str] | None = None,
        error_categories: list[str] | None = None,
        prior_sheet_status: str | None = None,
        retry_iteration: int = 0,
        escalation_was_pending: bool = False,
        grounding_confidence: float | None = None,
        *,
        at: datetime | None = None,
    ) -> SuccessFactors | None:
        """Record the context of one success under the row lock, so concurrent successes all count.

        ``at`` is when the success happened (the store clock when None); it picks the UTC time bucket.
        Returns the stored factors, or None when the pattern does not exist.
        """
        seen = observation(
            pattern_id,
            at or self.now(),
            validation_types,
            error_categories,
            prior_sheet_status,
            retry_iteration,
            escalation_was_pending,
            grounding_confidence,
        )
        return self.record_success_factors([seen]).get(pattern_id)

    @transactional
    def record_success_factors(self, observations: Sequence[FactorObservation]) -> dict[str, SuccessFactors]:
        """Fold many observations into their patterns' factors: one locked read and one write per pattern.

        Observations of unknown patterns are skipped (and logged). Returns the stored factors by pattern.
        """
        by_pattern: dict[str, list[FactorObservation]] = defaultdict(list)
        for seen in observations:
            by_pattern[seen.pattern_id].append(seen)
        known = self.lock_patterns(by_pattern)
        log_unknown("update_success_factors_skipped", set(by_pattern) - set(known))
        if not known:
            return {}
        rows = self.conn.execute(
            select(
                patterns.c.id,
                patterns.c.success_factors,
                patterns.c.success_factors_updated_at,
                patterns.c.led_to_success_count,
                patterns.c.led_to_failure_count,
            ).where(patterns.c.id.in_(known))
        )
        stored: dict[str, SuccessFactors] = {}
        updates: list[dict[str, Any]] = []
        for row in rows:
            factors, stamped = fold_factors(
                None if row.success_factors is None else SuccessFactors.model_validate(row.success_factors),
                sorted(by_pattern[row.id], key=lambda o: o.at),
                row.success_factors_updated_at,
                successes=row.led_to_success_count,
                failures=row.led_to_failure_count,
            )
            stored[row.id] = factors
            updates.append(
                {"b_id": row.id, "b_factors": factors.model_dump(mode="json"), "b_stamped": stamped}
            )
        if updates:
            self.conn.execute(
                update(patterns)
                .where(patterns.c.id == bindparam("b_id"))
                .values(
                    success_factors=bindparam("b_factors", type_=patterns.c.success_factors.type),
                    success_factors_updated_at=bindparam("b_stamped", type_=UTCDateTime()),
                ),
                updates,
            )
        return stored

    @transactional
    def get_success_factors(self, pattern_id: str) -> SuccessFactors | None:
        stored = self.conn.execute(
            select(patterns.c.success_factors).where(patterns.c.id == pattern_id)
        ).scalar()
        return None if stored is None else SuccessFactors.model_validate(stored)

    @transactional
    def analyze_pattern_why(self, pattern_id: str) -> dict[str, Any]:
        """Why a pattern works, or ``{"error": ...}`` when it does not exist."""
        record = self.get_pattern_by_id(pattern_id)
        if record is None:
            return {"error": f"Pattern {pattern_id} not found"}
        return analyze(record)

    @transactional
    def get_patterns_with_why(
        self, min_observations: int = 1, limit: int = 20
    ) -> list[tuple[PatternRecord, dict[str, Any]]]:
        """Patterns with factors, best first; ``min_observations`` applies after the LIMIT, as upstream."""
        query = (
            select(patterns)
            .where(patterns.c.success_factors.is_not(None))
            .order_by(patterns.c.priority_score.desc(), patterns.c.trust_score.desc(), patterns.c.id)
            .limit(limit)
        )
        records = [PatternRecord.model_validate(row._mapping) for row in self.conn.execute(query)]
        analysed = [(record, analyze(record)) for record in records]
        return [(r, a) for r, a in analysed if a.get("observation_count", 0) >= min_observations]
