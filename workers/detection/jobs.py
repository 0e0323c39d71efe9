"""Pattern detection at ingest: each job's evidence totals live in the store and grow atomically.

A pattern is detected for a job once its total evidence reaches the rule's minimum; the sighting that crosses
it counts all the evidence so far, later ones count only what they add. A pattern's occurrence count is
therefore the sum, over the jobs where it recurs, of its evidence, whatever the batching or the order in which
workers applied the outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.schema.tables import detection_evidence
from ostinato.workers.detection.detector import OUTCOMES_KEY, RULES, describe, evidence
from ostinato.workers.detection.guidance import pattern_guidance
from ostinato.workers.store import Store
from ostinato.workers.store.patterns import PatternSighting


@dataclass
class _Delta:
    """What this batch adds under one (job, key), and where it was first seen."""

    count: int
    extra: float
    label: str
    sheet_num: int
    instrument_name: str | None
    seen_at: datetime


def _outcome_time(message: SheetOutcomeMessage) -> datetime:
    return message.payload.completed_at or message.payload.started_at


def _deltas(outcomes: Sequence[SheetOutcomeMessage]) -> dict[tuple[str, str], _Delta]:
    deltas: dict[tuple[str, str], _Delta] = {}
    for message in outcomes:
        o = message.payload
        seen_at = _outcome_time(message)
        for item in evidence(o):
            slot = (message.job_hash, item.key)
            delta = deltas.get(slot)
            if delta is None:
                sheet = o.sheet_num if o.sheet_num is not None else 0
                deltas[slot] = _Delta(item.count, item.extra, item.label, sheet, o.instrument_name, seen_at)
            else:
                delta.count += item.count
                delta.extra += item.extra
                delta.seen_at = max(delta.seen_at, seen_at)
    return deltas


def _add_to_totals(
    store: Store, deltas: dict[tuple[str, str], _Delta]
) -> dict[tuple[str, str], tuple[int, float, str]]:
    """Add the deltas to the stored totals in one statement (rows locked in key order); returns the totals."""
    rows: list[dict[str, Any]] = [
        {"job_hash": job, "key": key, "count": d.count, "extra": d.extra, "label": d.label}
        for (job, key), d in sorted(deltas.items())
    ]
    totals = store.insert_rows(
        detection_evidence,
        rows,
        returning=("job_hash", "key", "count", "extra", "label"),
        conflict=("job_hash", "key"),
        add_on_conflict=("count", "extra"),
    )
    return {(job, key): (int(count), float(extra), str(label)) for job, key, count, extra, label in totals}


def detect_sightings(store: Store, outcomes: Sequence[SheetOutcomeMessage]) -> list[PatternSighting]:
    """The pattern sightings a batch of outcomes adds, after adding its evidence to each job's totals."""
    deltas = _deltas(outcomes)
    if not deltas:
        return []
    totals = _add_to_totals(store, deltas)
    sightings = []
    for (job, key), delta in sorted(deltas.items()):
        if key == OUTCOMES_KEY:
            continue
        count, extra, label = totals[(job, key)]
        pattern = describe(key, count, extra, totals[(job, OUTCOMES_KEY)][0], delta.seen_at, label)
        if pattern is None:
            continue
        already_detected = count - delta.count >= RULES[key.partition(":")[0]].minimum
        sightings.append(
            PatternSighting(
                pattern_type=pattern.pattern_type.value,
                pattern_name=pattern.global_name,
                seen_at=delta.seen_at,
                description=pattern.description,
                context_tags=list(pattern.context_tags),
                suggested_action=pattern_guidance(pattern),
                provenance_job_hash=job,
                provenance_sheet_num=delta.sheet_num,
                instrument_name=delta.instrument_name,
                count=delta.count if already_detected else count,
            )
        )
    return sightings
