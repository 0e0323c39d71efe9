"""Quarantine lifecycle, automatic promotion and trust scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.schema.tables import pattern_applications, patterns
from ostinato.workers.detection.weighting import MIN_APPLICATIONS, is_deprecated
from ostinato.workers.store import formulas
from ostinato.workers.store.base import transactional
from ostinato.workers.store.patterns import PatternsMixin

PENDING = QuarantineStatus.PENDING.value
QUARANTINED = QuarantineStatus.QUARANTINED.value
VALIDATED = QuarantineStatus.VALIDATED.value
RETIRED = QuarantineStatus.RETIRED.value
LEGACY_ACTIVE = "active"
"""An old status value that degradation still matches, as upstream does."""

MIN_APPLICATIONS_FOR_PROMOTION = 3
PROMOTION_EFFECTIVENESS_THRESHOLD = 0.60
QUARANTINE_EFFECTIVENESS_THRESHOLD = 0.35
DEGRADATION_THRESHOLD = 0.30

TRUST_BASE = 0.5
TRUST_SUCCESS_WEIGHT = 0.3
TRUST_FAILURE_WEIGHT = 0.4
TRUST_AGE_WEIGHT = 0.2
TRUST_QUARANTINE_PENALTY = 0.2
TRUST_VALIDATION_BONUS = 0.1


def trust_score(successes: int, failures: int, days_since_confirmed: int, status: str) -> float:
    """Upstream's trust formula, with the rates taken over applications rather than sightings (§0.6)."""
    applications = successes + failures
    success_rate = successes / applications if applications else 0.0
    failure_rate = failures / applications if applications else 0.0
    age = math.pow(formulas.DECAY_BASE, days_since_confirmed / formulas.DECAY_PERIOD_DAYS)
    trust = (
        TRUST_BASE
        + TRUST_SUCCESS_WEIGHT * success_rate
        - TRUST_FAILURE_WEIGHT * failure_rate
        + TRUST_AGE_WEIGHT * age
    )
    if status == QUARANTINED:
        trust -= TRUST_QUARANTINE_PENALTY
    elif status == VALIDATED:
        trust += TRUST_VALIDATION_BONUS
    return formulas.clamp01(trust)


def _applied_at_least(count: int) -> ColumnElement[bool]:
    return patterns.c.led_to_success_count + patterns.c.led_to_failure_count >= count


class LifecycleMixin(PatternsMixin):
    """Quarantine lifecycle, automatic promotion and trust scores."""

    # -- manual transitions -----------------------------------------------------------------------------

    @transactional
    def quarantine_pattern(self, pattern_id: str, reason: str | None = None) -> bool:
        """Put a pattern under review; False if it does not exist."""
        return self._transition(
            pattern_id, QuarantineStatus.QUARANTINED, quarantined_at=self.now(), quarantine_reason=reason
        )

    @transactional
    def validate_pattern(self, pattern_id: str) -> bool:
        """Mark a pattern proven, clearing any quarantine reason; False if it does not exist."""
        return self._transition(
            pattern_id, QuarantineStatus.VALIDATED, validated_at=self.now(), quarantine_reason=None
        )

    @transactional
    def retire_pattern(self, pattern_id: str) -> bool:
        """Retire a pattern (status retired, priority 0); False if it does not exist."""
        return self._transition(pattern_id, QuarantineStatus.RETIRED)

    @transactional
    def update_quarantine_status(self, pattern_id: str, status: QuarantineStatus | str) -> bool:
        """Set any status, stamping the validated/quarantined time; the reason is left alone."""
        target = QuarantineStatus(status)
        stamps: dict[str, Any] = {}
        if target is QuarantineStatus.VALIDATED:
            stamps["validated_at"] = self.now()
        elif target is QuarantineStatus.QUARANTINED:
            stamps["quarantined_at"] = self.now()
        return self._transition(pattern_id, target, **stamps)

    def _transition(self, pattern_id: str, target: QuarantineStatus, **values: Any) -> bool:
        """Move one locked pattern to ``target``; retired means priority 0, and leaving it rescores (§0.4)."""
        if not self.lock_patterns([pattern_id]):
            return False
        where = patterns.c.id == pattern_id
        previous = self.conn.execute(select(patterns.c.quarantine_status).where(where)).scalar_one()
        values["quarantine_status"] = target.value
        if target is QuarantineStatus.RETIRED:
            values["priority_score"] = 0.0
        self.conn.execute(update(patterns).where(where).values(values))
        if previous == RETIRED and target is not QuarantineStatus.RETIRED:
            self.rescore(pattern_id)
        return True

    # -- automatic transitions --------------------------------------------------------------------------

    @transactional
    def promote_ready_patterns(self) -> dict[str, list[str]]:
        """Promote, quarantine and degrade patterns by their stored effectiveness, as upstream does.

        Candidates are locked in id order first; each rule is then one UPDATE over the locked rows that
        re-checks its condition, so a row another writer changed meanwhile is judged on its current values.
        """
        now = self.now()
        ready = _applied_at_least(MIN_APPLICATIONS_FOR_PROMOTION)
        status = patterns.c.quarantine_status
        effectiveness = patterns.c.effectiveness_score
        rules: dict[str, tuple[ColumnElement[bool], dict[str, Any]]] = {
            "promoted": (
                and_(status == PENDING, ready, effectiveness >= PROMOTION_EFFECTIVENESS_THRESHOLD),
                {"quarantine_status": VALIDATED, "validated_at": now},
            ),
            "quarantined": (
                and_(status == PENDING, ready, effectiveness < QUARANTINE_EFFECTIVENESS_THRESHOLD),
                {"quarantine_status": QUARANTINED, "quarantined_at": now},
            ),
            "degraded": (
                and_(status.in_([VALIDATED, LEGACY_ACTIVE]), ready, effectiveness < DEGRADATION_THRESHOLD),
                {"quarantine_status": QUARANTINED, "quarantined_at": now},
            ),
        }
        candidates = select(patterns.c.id).where(or_(*(condition for condition, _ in rules.values())))
        locked = self.lock_patterns(self.conn.execute(candidates).scalars())
        return {name: self._apply_rule(locked, *rule) for name, rule in rules.items()}

    def _apply_rule(
        self, ids: list[str], condition: ColumnElement[bool], values: dict[str, Any]
    ) -> list[str]:
        if not ids:
            return []
        changed = self.conn.execute(
            update(patterns).where(patterns.c.id.in_(ids), condition).values(values).returning(patterns.c.id)
        ).scalars()
        return sorted(changed)

    @transactional
    def prune_deprecated_patterns(self) -> int:
        """Retire active patterns whose Laplace effectiveness fell below the weighter's threshold.

        Candidates are re-judged under their row locks; patterns already retired are not counted again.
        """
        active = patterns.c.active.is_(True)
        locked = self.lock_patterns(self._deprecated(active))
        doomed = self._deprecated(and_(active, patterns.c.id.in_(locked))) if locked else []
        if doomed:
            self.conn.execute(
                update(patterns)
                .where(patterns.c.id.in_(doomed))
                .values(quarantine_status=RETIRED, priority_score=0.0)
            )
        return len(doomed)

    def _deprecated(self, where: ColumnElement[bool]) -> list[str]:
        """Ids of the non-retired patterns matching ``where`` that the weighter calls deprecated."""
        rows = self.conn.execute(
            select(patterns.c.id, patterns.c.led_to_success_count, patterns.c.led_to_failure_count).where(
                where,
                patterns.c.quarantine_status != RETIRED,
                _applied_at_least(MIN_APPLICATIONS),
            )
        ).all()
        return [r.id for r in rows if is_deprecated(r.led_to_success_count, r.led_to_failure_count)]

    # -- trust ------------------------------------------------------------------------------------------

    @transactional
    def calculate_trust_score(self, pattern_id: str) -> float | None:
        """Recompute and store one pattern's trust as of now; None if it does not exist."""
        if not self.lock_patterns([pattern_id]):
            return None
        return self._refresh_trust(pattern_id, self.now())

    @transactional
    def recalculate_all_trust_scores(self, since: datetime | None = None) -> int:
        """Recompute trust for patterns applied at or after ``since`` (every pattern when None); the count."""
        if since is None:
            query = select(patterns.c.id)
        else:
            query = (
                select(pattern_applications.c.pattern_id)
                .where(pattern_applications.c.applied_at >= since)
                .distinct()
            )
        ids = self.lock_patterns(self.conn.execute(query).scalars())
        now = self.now()
        for pid in ids:
            self._refresh_trust(pid, now)
        return len(ids)

    def _refresh_trust(self, pattern_id: str, now: datetime) -> float | None:
        """Compute and write the trust of a pattern whose row the caller has locked."""
        row = self.conn.execute(
            select(
                patterns.c.led_to_success_count,
                patterns.c.led_to_failure_count,
                patterns.c.last_confirmed,
                patterns.c.quarantine_status,
            ).where(patterns.c.id == pattern_id)
        ).first()
        if row is None:
            return None
        days = max(0, formulas.whole_days(now, row.last_confirmed))
        score = trust_score(row.led_to_success_count, row.led_to_failure_count, days, row.quarantine_status)
        self.conn.execute(
            update(patterns)
            .where(patterns.c.id == pattern_id)
            .values(trust_score=score, trust_calculation_date=now)
        )
        return score

    @transactional
    def update_trust_score(self, pattern_id: str, delta: float) -> float | None:
        """Add ``delta`` to a pattern's trust, clamped to [0, 1], under the row lock; None if missing."""
        if not self.lock_patterns([pattern_id]):
            return None
        where = patterns.c.id == pattern_id
        current = self.conn.execute(select(patterns.c.trust_score).where(where)).scalar_one()
        score = formulas.clamp01(current + delta)
        self.conn.execute(update(patterns).where(where).values(trust_score=score))
        return score

    # -- queries ----------------------------------------------------------------------------------------

    @transactional
    def get_patterns_for_auto_apply(
        self,
        trust_threshold: float = 0.85,
        require_validated: bool = True,
        limit: int = 3,
        context_tags: Sequence[str] | None = None,
    ) -> list[PatternRecord]:
        """Most trusted non-retired patterns; the tag filter runs after ``LIMIT 2×limit``, as upstream."""
        conditions = [patterns.c.trust_score >= trust_threshold, patterns.c.quarantine_status != RETIRED]
        if require_validated:
            conditions.append(patterns.c.quarantine_status == VALIDATED)
        query = (
            select(patterns)
            .where(*conditions)
            .order_by(patterns.c.trust_score.desc(), patterns.c.priority_score.desc(), patterns.c.id)
            .limit(2 * limit)
        )
        records = [PatternRecord.model_validate(row._mapping) for row in self.conn.execute(query)]
        if context_tags:
            wanted = set(context_tags)
            records = [r for r in records if wanted.intersection(r.context_tags)]
        return records[:limit]

    @transactional
    def get_quarantined_patterns(self, limit: int = 50) -> list[PatternRecord]:
        return self.get_patterns(
            min_priority=0.0, limit=limit, quarantine_status=QuarantineStatus.QUARANTINED
        )

    @transactional
    def get_high_trust_patterns(self, threshold: float = 0.7, limit: int = 50) -> list[PatternRecord]:
        return self.get_patterns(min_priority=0.0, limit=limit, min_trust=threshold)

    @transactional
    def get_low_trust_patterns(self, threshold: float = 0.3, limit: int = 50) -> list[PatternRecord]:
        return self.get_patterns(min_priority=0.0, limit=limit, max_trust=threshold)
