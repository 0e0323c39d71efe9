"""Upstream's pattern weighter, kept for deprecation checks and uncertainty labels.

Its priority formula is not used (the store has one priority formula); see SPEC-store §0.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DECAY_RATE_PER_MONTH = 0.1
EFFECTIVENESS_THRESHOLD = 0.3
EPISTEMIC_THRESHOLD = 0.4
MIN_APPLICATIONS = 3
FREQUENCY_FLOOR = 0.6


def laplace_effectiveness(successes: int, failures: int) -> float:
    """(s + 0.5) / (n + 1), or 0.5 before three applications."""
    total = successes + failures
    if total < MIN_APPLICATIONS:
        return 0.5
    return (successes + 0.5) / (total + 1)


def recency(days_since_confirmed: int, decay_rate_per_month: float = DECAY_RATE_PER_MONTH) -> float:
    return min(1.0, max(0.0, math.pow(1 - decay_rate_per_month, days_since_confirmed / 30)))


def frequency(occurrence_count: int) -> float:
    if occurrence_count <= 0:
        return FREQUENCY_FLOOR
    return max(FREQUENCY_FLOOR, min(1.0, math.log(occurrence_count + 1) / math.log(100)))


def is_deprecated(successes: int, failures: int) -> bool:
    """Enough applications, and a Laplace effectiveness below 0.3."""
    total = successes + failures
    return total >= MIN_APPLICATIONS and laplace_effectiveness(successes, failures) < EFFECTIVENESS_THRESHOLD


def outcome_variance(outcomes: Sequence[bool]) -> float:
    """Population variance of 0/1 outcomes; 0 for fewer than two."""
    if len(outcomes) < 2:
        return 0.0
    values = [1.0 if o else 0.0 for o in outcomes]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def classify_uncertainty(variance: float) -> str:
    return "epistemic" if variance < EPISTEMIC_THRESHOLD else "aleatoric"
