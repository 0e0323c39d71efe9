"""``ostinato import-learnings``: merge a learnings file into this store, once per export.

One transaction per file. It first claims the export's id in ``processed_messages`` (kind
``learnings_import``), the ledger that makes every message's effect happen once: a second import of the same
export, sequential or concurrent, finds the id taken and changes nothing. Pattern rows are locked in id order
and merged with the formulas of :mod:`ostinato.federation.merge`; patterns new here are created with
provenance ``import:<export id>``. Learned waits become error-recovery rows (ids ``import:<export id>:<n>``)
that reproduce the exported aggregates, so counts and wait sums add up and the store's learned-wait formula
runs on the merged recoveries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update

from ostinato.federation.export import defaults_from
from ostinato.federation.merge import PatternFigures, combine, days_before
from ostinato.federation.models import LearnedWait, Learnings
from ostinato.schema.identity import content_hash
from ostinato.schema.records import QuarantineStatus
from ostinato.schema.tables import UTCDateTime, error_recoveries, patterns, processed_messages
from ostinato.settings import Settings
from ostinato.workers.store import Store, formulas

IMPORT_KIND = "learnings_import"
"""The ``processed_messages.kind`` of an applied export."""
PROVENANCE_PREFIX = "import:"


def provenance(export_id: str) -> str:
    """What ``provenance_job_hash`` says of a pattern an import created."""
    return f"{PROVENANCE_PREFIX}{export_id}"


@dataclass
class ImportReport:
    """What one import did (or, for a dry run, would have done)."""

    export_id: str
    applied: bool
    """False when this export had been imported before: then nothing changed."""
    patterns_created: int = 0
    patterns_merged: int = 0
    learned_waits: int = 0
    recoveries_added: int = 0
    differing_defaults: list[str] = field(default_factory=list)
    """Defaults of the export that differ from this deployment's (dotted names)."""


class _DryRunDoneError(Exception):
    def __init__(self, report: ImportReport) -> None:
        super().__init__("dry run")
        self.report = report


def differing_defaults(learnings: Learnings, settings: Settings) -> list[str]:
    """The defaults (``section.name``) the export was computed with that this deployment does not share."""
    theirs = learnings.defaults.model_dump()
    ours = defaults_from(settings).model_dump()
    return [
        f"{section}.{name}"
        for section, values in theirs.items()
        for name, value in values.items()
        if ours.get(section, {}).get(name) != value
    ]


def _priority(figures: PatternFigures, status: str, variance: float) -> float:
    """The store's priority of merged figures; a retired pattern keeps priority 0 (decision 4)."""
    if status == QuarantineStatus.RETIRED.value:
        return 0.0
    return formulas.priority(figures.effectiveness, figures.occurrences, variance)


def _twin(store: Store, figures: PatternFigures) -> str | None:
    """A stored pattern with the same content hash under another id (upsert step 2, for legacy rows)."""
    digest = content_hash(figures.pattern_type, figures.pattern_name, figures.description)
    query = (
        select(patterns.c.id)
        .where(patterns.c.content_hash == digest)
        .order_by(patterns.c.priority_score.desc(), patterns.c.id)
        .limit(1)
    )
    found = store.conn.execute(query).scalar()
    return None if found is None else str(found)


def _merge_existing(store: Store, targets: dict[str, list[PatternFigures]]) -> int:
    """Merge incoming figures into locked stored rows; returns how many rows changed."""
    if not targets:
        return 0
    rows = store.conn.execute(select(patterns).where(patterns.c.id.in_(sorted(targets)))).all()
    updates: list[dict[str, Any]] = []
    for row in rows:
        m = row._mapping
        merged = PatternFigures.from_row(m)
        for incoming in targets[m["id"]]:
            merged = combine(merged, incoming)
        digest = m["content_hash"]
        if merged.description != m["description"]:
            digest = content_hash(m["pattern_type"], m["pattern_name"], merged.description)
        updates.append(
            {
                "b_id": m["id"],
                "b_occurrences": merged.occurrences,
                "b_successes": merged.successes,
                "b_failures": merged.failures,
                "b_effectiveness": merged.effectiveness,
                "b_trust": merged.trust,
                "b_priority": _priority(merged, m["quarantine_status"], m["variance"] or 0.0),
                "b_first_seen": merged.first_seen,
                "b_last_seen": merged.last_seen,
                "b_last_confirmed": merged.last_confirmed,
                "b_description": merged.description,
                "b_action": merged.suggested_action,
                "b_tags": list(merged.context_tags),
                "b_digest": digest,
                "b_factors": None if merged.factors is None else merged.factors.model_dump(mode="json"),
                "b_factors_at": merged.factors_updated_at,
            }
        )
    if updates:
        store.conn.execute(
            update(patterns)
            .where(patterns.c.id == bindparam("b_id"))
            .values(
                occurrence_count=bindparam("b_occurrences"),
                led_to_success_count=bindparam("b_successes"),
                led_to_failure_count=bindparam("b_failures"),
                effectiveness_score=bindparam("b_effectiveness"),
                trust_score=bindparam("b_trust"),
                priority_score=bindparam("b_priority"),
                first_seen=bindparam("b_first_seen", type_=UTCDateTime()),
                last_seen=bindparam("b_last_seen", type_=UTCDateTime()),
                last_confirmed=bindparam("b_last_confirmed", type_=UTCDateTime()),
                description=bindparam("b_description"),
                suggested_action=bindparam("b_action"),
                context_tags=bindparam("b_tags", type_=patterns.c.context_tags.type),
                content_hash=bindparam("b_digest"),
                success_factors=bindparam("b_factors", type_=patterns.c.success_factors.type),
                success_factors_updated_at=bindparam("b_factors_at", type_=UTCDateTime()),
            ),
            updates,
        )
    return len(updates)


def _new_row(
    pid: str, figures: PatternFigures, export_id: str, created_at: datetime, now: datetime
) -> dict[str, Any]:
    status = figures.status.value
    return {
        "id": pid,
        "pattern_type": figures.pattern_type,
        "pattern_name": figures.pattern_name,
        "description": figures.description,
        "occurrence_count": figures.occurrences,
        "first_seen": figures.first_seen,
        "last_seen": figures.last_seen,
        "last_confirmed": figures.last_confirmed,
        "led_to_success_count": figures.successes,
        "led_to_failure_count": figures.failures,
        "effectiveness_score": figures.effectiveness,
        "variance": 0.0,
        "suggested_action": figures.suggested_action,
        "context_tags": list(figures.context_tags),
        "priority_score": _priority(figures, status, 0.0),
        "quarantine_status": status,
        "provenance_job_hash": provenance(export_id),
        "provenance_sheet_num": None,
        "quarantined_at": now if figures.status is QuarantineStatus.QUARANTINED else None,
        "validated_at": now if figures.status is QuarantineStatus.VALIDATED else None,
        "quarantine_reason": (
            f"Imported quarantined from learnings export {export_id}"
            if figures.status is QuarantineStatus.QUARANTINED
            else None
        ),
        "trust_score": figures.trust,
        "trust_calculation_date": created_at,
        "success_factors": None if figures.factors is None else figures.factors.model_dump(mode="json"),
        "success_factors_updated_at": figures.factors_updated_at,
        "active": True,
        "content_hash": content_hash(figures.pattern_type, figures.pattern_name, figures.description),
        "instrument_name": figures.instrument_name,
    }


def _merge_patterns(store: Store, learnings: Learnings, report: ImportReport) -> None:
    export_id = str(learnings.export_id)
    created_at = learnings.created_at
    incoming = {p.id: PatternFigures.from_learning(p, created_at) for p in learnings.patterns}
    targets: dict[str, list[PatternFigures]] = defaultdict(list)
    for pid in store.lock_patterns(incoming):
        targets[pid].append(incoming.pop(pid))
    fresh: dict[str, PatternFigures] = {}
    for pid, figures in sorted(incoming.items()):
        twin = _twin(store, figures)
        if twin is not None and store.lock_patterns([twin]):
            targets[twin].append(figures)
        else:
            fresh[pid] = figures
    now = store.now()
    rows = [_new_row(pid, figures, export_id, created_at, now) for pid, figures in sorted(fresh.items())]
    created = set(store.insert_rows(patterns, rows, returning="id", conflict=["id"]))
    # A pattern some runner created since the lookup above is merged into instead.
    raced = sorted(set(fresh) - created)
    for pid in store.lock_patterns(raced):
        targets[pid].append(fresh[pid])
    report.patterns_created += len(created)
    report.patterns_merged += _merge_existing(store, targets)


def recovery_rows(
    wait: LearnedWait, export_id: str, created_at: datetime, first: int
) -> list[dict[str, Any]]:
    """Error-recovery rows that reproduce one exported aggregate.

    Their count, successes, the sum and minimum of the successful waits and the sum of the failed ones are
    the export's: one success at the minimum, the others at (n·mean − min)/(n − 1), the failures at their
    mean.
    """
    recorded_at = days_before(created_at, wait.last_recorded_days_ago)
    waits: list[tuple[bool, float]] = []
    n = wait.successes
    if n:
        assert wait.mean_wait is not None and wait.min_wait is not None
        waits.append((True, wait.min_wait))
        if n > 1:
            rest = max(wait.min_wait, (n * wait.mean_wait - wait.min_wait) / (n - 1))
            waits.extend((True, rest) for _ in range(n - 1))
    if wait.failures:
        assert wait.failed_mean_wait is not None
        waits.extend((False, wait.failed_mean_wait) for _ in range(wait.failures))
    return [
        {
            "id": f"{provenance(export_id)}:{first + k}",
            "error_code": wait.error_code,
            "suggested_wait": wait.mean_suggested_wait,
            "actual_wait": actual,
            "recovery_success": success,
            "recorded_at": recorded_at,
            "model": wait.model,
            "time_of_day": None,
        }
        for k, (success, actual) in enumerate(waits)
    ]


RECOVERY_CHUNK = 5_000


def _add_recoveries(store: Store, learnings: Learnings, report: ImportReport) -> None:
    export_id = str(learnings.export_id)
    added = 0
    for wait in learnings.learned_waits:
        rows = recovery_rows(wait, export_id, learnings.created_at, added)
        for start in range(0, len(rows), RECOVERY_CHUNK):
            store.insert_rows(error_recoveries, rows[start : start + RECOVERY_CHUNK])
        added += len(rows)
    report.learned_waits = len(learnings.learned_waits)
    report.recoveries_added = added


def import_learnings(
    store: Store, learnings: Learnings, *, settings: Settings | None = None, dry_run: bool = False
) -> ImportReport:
    """Merge one export into the store in one transaction; nothing changes if it was imported before.

    ``dry_run`` does the whole import and rolls it back, so the report says what it would do.
    """
    export_id = str(learnings.export_id)
    differing = differing_defaults(learnings, settings or Settings())

    def work() -> ImportReport:
        report = ImportReport(export_id=export_id, applied=False, differing_defaults=differing)
        claim = {"message_id": export_id, "kind": IMPORT_KIND, "processed_at": store.now()}
        if not store.insert_rows(
            processed_messages, [claim], returning="message_id", conflict=["message_id"]
        ):
            return report
        report.applied = True
        _merge_patterns(store, learnings, report)
        _add_recoveries(store, learnings, report)
        return report

    if not dry_run:
        return store.run(work)
    try:
        with store.batch():
            raise _DryRunDoneError(work())
    except _DryRunDoneError as done:
        return done.report


def imported_exports(store: Store) -> list[tuple[str, datetime]]:
    """The exports this store has imported, oldest first: (export id, when)."""
    m = processed_messages.c
    query = (
        select(m.message_id, m.processed_at)
        .where(m.kind == IMPORT_KIND)
        .order_by(m.processed_at, m.message_id)
    )
    with store.batch() as connection:
        return [(str(export_id), at) for export_id, at in connection.execute(query)]
