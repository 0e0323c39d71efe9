"""Relevance of detected patterns to an execution context (upstream's ``PatternMatcher``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from ostinato.workers.detection.detector import DetectedPattern
from ostinato.workers.detection.guidance import HIGH_TRUST_THRESHOLD, LOW_TRUST_THRESHOLD

RELEVANCE_CONFIDENCE_WEIGHT = 0.25
RELEVANCE_FREQUENCY_WEIGHT = 0.20
RELEVANCE_CONTEXT_WEIGHT = 0.25
RELEVANCE_RECENCY_WEIGHT = 0.15
RELEVANCE_EFFECTIVENESS_WEIGHT = 0.15
FREQUENCY_NORMALIZER = 10.0
CONTEXT_TAG_STEP = 0.2
"""Each shared tag adds this much of the context weight, up to five tags."""
RECENCY_HALF_LIFE_DAYS = 7.0
QUARANTINE_PENALTY = 0.3
VALIDATED_BONUS = 0.1
TRUST_BONUS_SCALE = 0.33
DEFAULT_MATCH_LIMIT = 5


def score(pattern: DetectedPattern, context: Mapping[str, object], now: datetime) -> float:
    """Relevance in [0, 1]: confidence, frequency, shared tags, recency and proven effectiveness,
    then adjusted for quarantine status and trust."""
    value = RELEVANCE_CONFIDENCE_WEIGHT * pattern.confidence
    value += RELEVANCE_FREQUENCY_WEIGHT * min(1.0, pattern.frequency / FREQUENCY_NORMALIZER)
    tags = context.get("tags")
    if isinstance(tags, list):
        shared = len(set(pattern.context_tags) & {tag for tag in tags if isinstance(tag, str)})
        if shared > 0:
            value += RELEVANCE_CONTEXT_WEIGHT * min(1.0, CONTEXT_TAG_STEP * shared)
    # A last_seen a little ahead of this clock is "now", not a bonus above full recency.
    age_days = max(0, (now - pattern.last_seen).days)
    value += RELEVANCE_RECENCY_WEIGHT * math.pow(0.5, age_days / RECENCY_HALF_LIFE_DAYS)
    value += RELEVANCE_EFFECTIVENESS_WEIGHT * pattern.effectiveness_rate * pattern.effectiveness_weight
    if pattern.is_quarantined:
        value -= QUARANTINE_PENALTY
    elif pattern.is_validated:
        value += VALIDATED_BONUS
    trust = pattern.trust_score
    if trust is not None:
        if trust >= HIGH_TRUST_THRESHOLD:
            value += VALIDATED_BONUS + (trust - HIGH_TRUST_THRESHOLD) * TRUST_BONUS_SCALE
        elif trust <= LOW_TRUST_THRESHOLD:
            value -= VALIDATED_BONUS + (LOW_TRUST_THRESHOLD - trust) * TRUST_BONUS_SCALE
    return max(0.0, min(1.0, value))


def match(
    patterns: Iterable[DetectedPattern],
    context: Mapping[str, object],
    limit: int = DEFAULT_MATCH_LIMIT,
    *,
    now: datetime,
) -> list[DetectedPattern]:
    """The ``limit`` most relevant patterns with a score above 0, best first (ties keep input order)."""
    scored = [(score(pattern, context, now), pattern) for pattern in patterns]
    relevant = [entry for entry in scored if entry[0] > 0]
    relevant.sort(key=lambda entry: entry[0], reverse=True)
    return [pattern for _, pattern in relevant[:limit]]
