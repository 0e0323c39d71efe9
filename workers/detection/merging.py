"""Merging a detected pattern into a stored one (upstream's ``merge_with_conflict_resolution``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ostinato.workers.detection.detector import DetectedPattern
from ostinato.workers.detection.guidance import pattern_guidance

NEUTRAL_EFFECTIVENESS = 0.5


@dataclass(frozen=True)
class MergeResult:
    occurrence_count: int
    effectiveness_score: float
    suggested_action: str | None
    last_seen: datetime


def merge_with_conflict_resolution(
    existing_count: int,
    existing_effectiveness: float,
    existing_action: str | None,
    detected: DetectedPattern,
    existing_last_seen: datetime | None = None,
) -> MergeResult:
    """Counts add, effectiveness is the count-weighted mean, and the detected guidance replaces the
    stored action only when it raised the effectiveness (the better-performing advice wins)."""
    count = existing_count + detected.frequency
    if count > 0:
        effectiveness = (
            existing_effectiveness * existing_count + detected.success_rate * detected.frequency
        ) / count
    else:
        effectiveness = NEUTRAL_EFFECTIVENESS
    action = pattern_guidance(detected) if effectiveness > existing_effectiveness else existing_action
    last_seen = detected.last_seen
    if existing_last_seen is not None:
        last_seen = max(existing_last_seen, detected.last_seen)
    return MergeResult(
        occurrence_count=count,
        effectiveness_score=effectiveness,
        suggested_action=action,
        last_seen=last_seen,
    )
