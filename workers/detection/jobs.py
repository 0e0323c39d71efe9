"""Pattern detection at ingest: each job's evidence totals live in the store and grow atomically.

**Unit of ``occurrence_count``: the job.** Upstream adds 1 to a pattern for every job aggregation in which it
is detected (SPEC-store §2.1, §2.14), and upstream aggregates each job's outcomes once. Here a job's outcomes
arrive over many batches, so a job detects a pattern when its evidence total for the pattern reaches the
rule's minimum: the sighting that makes the total cross the minimum adds 1, every later sighting from that job
adds 0 (it still brings the job's description and guidance, described from the job's totals so far). The
totals are exact whatever the batching and the crossing happens in exactly one transaction, so a pattern's
occurrence count is the number of jobs in which it recurs, whatever the batching or the order in which
workers apply the outcomes. (Each fix suggestion is its own pattern, SPEC-store §0.11, so it counts the jobs
that recommend that suggestion.)

**Which job's text the pattern keeps.** A sighting is stamped with the latest time of the job's evidence it
was described from, and ranked by how much evidence that is (the total, plus the job's outcomes for the
first-attempt success rate, which divides by them): a job's description from its complete totals outranks the
ones it sent from partial totals, and across jobs the latest-seen job's wins (``PatternSighting``). The first
time, sheet and instrument of a job's evidence are kept too, so a pattern's ``first_seen``, instrument and
provenance are those of the earliest evidence of the jobs that detected it (upstream: the first aggregation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Text, bindparam, case, cast, column, func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.identity import sheet_num_from_id
from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.schema.tables import detection_evidence
from ostinato.workers.detection.detector import (
    FIRST_ATTEMPT_KEY,
    OUTCOMES_KEY,
    RULES,
    describe,
    evidence,
)
from ostinato.workers.detection.guidance import pattern_guidance
from ostinato.workers.store import Store
from ostinato.workers.store.patterns import PatternSighting, origin_stamp

RATE_KEYS = frozenset({FIRST_ATTEMPT_KEY})
"""Keys whose description divides by the job's outcomes: described anew whenever more outcomes arrive."""
FIRST_COLUMNS = ("origin", "label", "first_seen", "sheet_num", "instrument_name")
"""The earliest evidence of a (job, key): the lowest (origin stamp, label) and what goes with it."""
TOTAL_COLUMNS = (
    "job_hash",
    "key",
    "count",
    "extra",
    "label",
    "first_seen",
    "last_seen",
    "sheet_num",
    "instrument_name",
)

Slot = tuple[str, str]
"""(job hash, evidence key)."""
_UPSERTS: dict[str, Any] = {}
"""The totals' upsert per dialect, built once."""


@dataclass
class _Delta:
    """What this batch adds under one (job, key): sums, its earliest evidence and its latest time.

    The earliest evidence is the one with the lowest (origin stamp, label), as the store compares them; the
    stamp starts with the time and the sheet, so it is only worked out when those tie.
    """

    count: int
    extra: float
    seen_at: datetime
    sheet: int
    instrument: str | None
    label: str
    last_seen: datetime

    def offer(self, job: str, seen_at: datetime, sheet: int, instrument: str | None, label: str) -> None:
        """Keep this evidence as the earliest if it comes before the one kept."""
        if (seen_at, sheet) != (self.seen_at, self.sheet):
            earlier = (seen_at, sheet) < (self.seen_at, self.sheet)
        elif instrument == self.instrument:
            earlier = label < self.label
        else:
            earlier = (origin_stamp(seen_at, instrument, job, sheet), label) < (self.origin(job), self.label)
        if earlier:
            self.seen_at, self.sheet, self.instrument, self.label = seen_at, sheet, instrument, label

    def origin(self, job: str) -> str:
        return origin_stamp(self.seen_at, self.instrument, job, self.sheet)


@dataclass(frozen=True)
class _Total:
    """A (job, key) total as stored after this batch; times are None only on rows older than revision 0003."""

    count: int
    extra: float
    label: str
    first_seen: datetime | None
    last_seen: datetime | None
    sheet_num: int | None
    instrument_name: str | None


def _outcome_time(message: SheetOutcomeMessage) -> datetime:
    return message.payload.completed_at or message.payload.started_at


def _deltas(outcomes: Sequence[SheetOutcomeMessage]) -> dict[Slot, _Delta]:
    deltas: dict[Slot, _Delta] = {}
    for message in outcomes:
        o = message.payload
        job = message.job_hash
        seen_at = _outcome_time(message)
        sheet = o.sheet_num if o.sheet_num is not None else sheet_num_from_id(o.sheet_id)
        instrument = o.instrument_name or None
        for item in evidence(o):
            slot = (job, item.key)
            delta = deltas.get(slot)
            if delta is None:
                deltas[slot] = _Delta(item.count, item.extra, seen_at, sheet, instrument, item.label, seen_at)
            else:
                delta.count += item.count
                delta.extra += item.extra
                delta.last_seen = max(delta.last_seen, seen_at)
                delta.offer(job, seen_at, sheet, instrument, item.label)
    return deltas


def _total(row: Any) -> tuple[Slot, _Total]:
    job, key, count, extra, label, first_seen, last_seen, sheet_num, instrument = row
    total = _Total(int(count), float(extra), str(label), first_seen, last_seen, sheet_num, instrument)
    return (str(job), str(key)), total


def _add_to_totals(store: Store, deltas: dict[Slot, _Delta]) -> dict[Slot, _Total]:
    """Add the deltas to the stored totals in one statement (rows locked in key order); returns the totals.

    On PostgreSQL the rows travel as one JSON document (as ``Store.insert_rows`` sends them), so the statement
    is the same text every time and neither SQLAlchemy nor psycopg parses thousands of parameters again.
    """
    rows = [
        {
            "job_hash": job,
            "key": key,
            "count": d.count,
            "extra": d.extra,
            "origin": d.origin(job),
            "label": d.label,
            "first_seen": d.seen_at,
            "sheet_num": d.sheet,
            "instrument_name": d.instrument,
            "last_seen": d.last_seen,
        }
        for (job, key), d in sorted(deltas.items())
    ]
    statement = _UPSERTS.get(store.dialect)
    if statement is None:
        statement = _UPSERTS[store.dialect] = _upsert(store, list(rows[0]))
    parameters: Any = {"rows": to_json(rows).decode()} if store.dialect == "postgresql" else rows
    return dict(_total(row) for row in store.conn.execute(statement, parameters))


def _upsert(store: Store, names: list[str]) -> Any:
    """The statement that adds rows of ``names`` to the totals and returns them.

    Sums add up, the latest time is the later one, and the earliest evidence is the one with the lower
    (origin stamp, label), compared by code point on every database as Python compares them here.
    """
    c = detection_evidence.c
    statement = store.insert(detection_evidence)
    if store.dialect == "postgresql":
        source = (
            func.jsonb_to_recordset(cast(bindparam("rows", type_=Text()), JSONB()))
            .table_valued(*(column(name, c[name].type) for name in names))
            .render_derived(name="r", with_types=True)
        )
        statement = statement.from_select(names, select(*source.c))
    new = statement.excluded

    def first(row: Any) -> ColumnElement[Any]:
        return tuple_(store.bytewise(row.origin), store.bytewise(row.label))

    earlier = or_(c.origin.is_(None), first(new) < first(c))
    return statement.on_conflict_do_update(
        index_elements=[c.job_hash, c.key],
        set_={
            "count": c.count + new.count,
            "extra": c.extra + new.extra,
            "last_seen": store.later(func.coalesce(c.last_seen, new.last_seen), new.last_seen),
            **{name: case((earlier, new[name]), else_=c[name]) for name in FIRST_COLUMNS},
        },
    ).returning(*(c[name] for name in TOTAL_COLUMNS))


def _read_totals(store: Store, slots: Iterable[Slot]) -> dict[Slot, _Total]:
    wanted = set(slots)
    if not wanted:
        return {}
    c = detection_evidence.c
    query = select(*(c[name] for name in TOTAL_COLUMNS)).where(
        c.job_hash.in_(sorted({job for job, _ in wanted})), c.key.in_(sorted({key for _, key in wanted}))
    )
    found = dict(_total(row) for row in store.conn.execute(query))
    return {slot: total for slot, total in found.items() if slot in wanted}


def _sighting(job: str, key: str, total: _Total, outcomes: _Total, added: int) -> PatternSighting | None:
    """The job's sighting of the pattern under ``key``, or None while the job has not detected it.

    ``added`` is what this batch added to the total: the sighting counts 1 when that made it cross the
    rule's minimum, else 0.
    """
    reads_outcomes = key in RATE_KEYS
    times = [t for t in (total.last_seen, outcomes.last_seen if reads_outcomes else None) if t is not None]
    seen_at = max(times, default=outcomes.last_seen)
    if seen_at is None:  # only rows older than revision 0003, and the batch's own outcomes have a time
        return None
    pattern = describe(key, total.count, total.extra, outcomes.count, seen_at, total.label)
    if pattern is None:
        return None
    crossed = total.count - added < RULES[key.partition(":")[0]].minimum
    return PatternSighting(
        pattern_type=pattern.pattern_type.value,
        pattern_name=pattern.global_name,
        seen_at=seen_at,
        description=pattern.description,
        context_tags=list(pattern.context_tags),
        suggested_action=pattern_guidance(pattern),
        provenance_job_hash=job,
        provenance_sheet_num=total.sheet_num,
        instrument_name=total.instrument_name,
        count=1 if crossed else 0,
        first_seen_at=total.first_seen,
        rank=total.count + (outcomes.count if reads_outcomes else 0),
    )


def detect_sightings(store: Store, outcomes: Sequence[SheetOutcomeMessage]) -> list[PatternSighting]:
    """The pattern sightings a batch of outcomes adds, after adding its evidence to each job's totals.

    Every job of the batch has more outcomes now, so its first-attempt success rate is described again even
    when the batch brought no first-attempt success (the total is read, not locked: a batch adding to it
    locks the job's outcome count first, as this batch did, so one of the two sees the other's).
    """
    deltas = _deltas(outcomes)
    if not deltas:
        return []
    totals = _add_to_totals(store, deltas)
    jobs = sorted({job for job, _ in deltas})
    totals.update(
        _read_totals(store, [(job, key) for job in jobs for key in RATE_KEYS if (job, key) not in totals])
    )
    sightings = []
    for (job, key), total in sorted(totals.items()):
        if key == OUTCOMES_KEY:
            continue
        delta = deltas.get((job, key))
        sighting = _sighting(job, key, total, totals[(job, OUTCOMES_KEY)], delta.count if delta else 0)
        if sighting is not None:
            sightings.append(sighting)
    return sightings
