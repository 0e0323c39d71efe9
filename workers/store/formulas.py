"""The store's formulas as pure functions, so each can be checked against the spec's numbers directly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

DECAY_BASE = 0.9
DECAY_PERIOD_DAYS = 30
GROUNDING_BASE_WEIGHT = 0.7
GROUNDING_SENSITIVITY = 0.3
RECENCY_ALPHA = 0.7
MIN_APPLICATIONS = 3
RECENT_WINDOW = 5
COLD_START_EFFECTIVENESS = 0.55
FREQUENCY_FACTOR_FLOOR = 0.6


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def whole_days(later: datetime, earlier: datetime) -> int:
    """Whole days between two times (floored, as upstream's ``timedelta.days``)."""
    return (later - earlier).days


def effectiveness(
    success: int,
    failure: int,
    recent_outcomes: Sequence[bool],
    recent_groundings: Sequence[float | None],
    days_since_confirmed: int,
    *,
    alpha: float = RECENCY_ALPHA,
) -> float:
    """Bayesian moving average of a pattern's success, decayed by age and weighted by grounding."""
    total = success + failure
    if total < MIN_APPLICATIONS:
        return COLD_START_EFFECTIVENESS
    historical = (success + 0.5) / (total + 1)
    recent = sum(recent_outcomes) / len(recent_outcomes) if recent_outcomes else historical
    groundings = [g for g in recent_groundings if g is not None]
    avg_grounding = sum(groundings) / len(groundings) if groundings else 1.0
    decay = math.pow(DECAY_BASE, days_since_confirmed / DECAY_PERIOD_DAYS)
    grounding_weight = GROUNDING_BASE_WEIGHT + GROUNDING_SENSITIVITY * avg_grounding
    return (alpha * recent + (1 - alpha) * historical) * decay * grounding_weight


def frequency_factor(occurrence_count: int) -> float:
    raw = min(1.0, math.log10(occurrence_count + 1) / 2)
    return max(FREQUENCY_FACTOR_FLOOR, raw)


def priority(effectiveness_score: float, occurrence_count: int, variance: float = 0.0) -> float:
    """The store's single priority formula: effectiveness × frequency × (1 − variance)."""
    return clamp01(effectiveness_score * frequency_factor(occurrence_count) * (1 - variance))
