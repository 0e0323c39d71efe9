"""Error recoveries and learned wait times."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import func, select

from ostinato.schema.tables import error_recoveries
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.patterns import PatternsMixin

RECENT_SUCCESSES = 20
FULL_CONFIDENCE_SAMPLES = 10.0
FLOOR_SHARE = 0.5


class RecoveriesMixin(PatternsMixin):
    """Error recoveries and the wait times learned from them."""

    @transactional
    def record_error_recovery(
        self,
        error_code: str,
        suggested_wait: float,
        actual_wait: float,
        recovery_success: bool,
        model: str | None = None,
        time_of_day: int | None = None,
        *,
        recorded_at: datetime | None = None,
    ) -> str:
        """Record how a wait after an error turned out; the hour defaults to the event's UTC hour."""
        at = recorded_at or self.now()
        record_id = new_id()
        self.conn.execute(
            error_recoveries.insert().values(
                id=record_id,
                error_code=error_code,
                suggested_wait=suggested_wait,
                actual_wait=actual_wait,
                recovery_success=recovery_success,
                recorded_at=at,
                model=model,
                time_of_day=at.astimezone(UTC).hour if time_of_day is None else time_of_day,
            )
        )
        return record_id

    @transactional
    def get_learned_wait_time(
        self, error_code: str, model: str | None = None, min_samples: int = 3
    ) -> float | None:
        """(mean + min) / 2 of the 20 latest successful waits: biased short, never below what has worked.

        None when there are fewer than ``min_samples`` of them; model None mixes every model, as upstream.
        """
        query = select(error_recoveries.c.actual_wait).where(
            error_recoveries.c.error_code == error_code,
            error_recoveries.c.recovery_success.is_(True),
            error_recoveries.c.actual_wait.is_not(None),
        )
        if model is not None:
            query = query.where(error_recoveries.c.model == model)
        query = query.order_by(error_recoveries.c.recorded_at.desc(), error_recoveries.c.id.desc())
        waits = [float(w) for w in self.conn.execute(query.limit(RECENT_SUCCESSES)).scalars()]
        if not waits or len(waits) < min_samples:
            return None
        return (sum(waits) / len(waits) + min(waits)) / 2

    @transactional
    def get_learned_wait_time_with_fallback(
        self,
        error_code: str,
        static_delay: float,
        model: str | None = None,
        min_samples: int = 3,
        min_confidence: float = 0.7,
    ) -> tuple[float, float, str]:
        """(delay, confidence, source): the learned wait, blended towards the static delay while unsure.

        Confidence counts every successful recovery of the code, whatever the model, as upstream does.
        """
        learned = self.get_learned_wait_time(error_code, model, min_samples)
        if learned is None:
            return static_delay, 0.0, "static_fallback"
        samples = self._error_recovery_samples_up_to(error_code, math.ceil(FULL_CONFIDENCE_SAMPLES))
        confidence = min(samples / FULL_CONFIDENCE_SAMPLES, 1.0)
        floored = max(learned, FLOOR_SHARE * static_delay)
        if confidence >= min_confidence:
            return floored, confidence, "global_learned"
        weight = confidence / min_confidence
        return weight * floored + (1 - weight) * static_delay, confidence, "global_learned_blend"

    @transactional
    def get_error_recovery_sample_count(self, error_code: str) -> int:
        """Successful recoveries of the code."""
        query = (
            select(func.count())
            .select_from(error_recoveries)
            .where(error_recoveries.c.error_code == error_code, error_recoveries.c.recovery_success.is_(True))
        )
        return int(self.conn.execute(query).scalar_one())

    def _error_recovery_samples_up_to(self, error_code: str, cap: int) -> int:
        """``min(get_error_recovery_sample_count(error_code), cap)``, reading at most ``cap`` index rows.

        Confidence saturates at ``FULL_CONFIDENCE_SAMPLES``, so counting further only made the read grow with
        the code's history.
        """
        capped = (
            select(error_recoveries.c.id)
            .where(error_recoveries.c.error_code == error_code, error_recoveries.c.recovery_success.is_(True))
            .limit(cap)
            .subquery()
        )
        return int(self.conn.execute(select(func.count()).select_from(capped)).scalar_one())
