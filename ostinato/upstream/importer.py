"""The import itself: check the file and the store, then copy table by table in committed chunks.

Each chunk is one transaction of ``INSERT … ON CONFLICT DO NOTHING`` on the row's id, so a second import
changes nothing and an interrupted one is finished by running it again: rows committed before the
interruption count as "already present". A row that ostinato cannot store is refused with its reason, and
the report carries every reason with how many rows it refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ostinato.probes import reason
from ostinato.schema import migrate
from ostinato.schema.tables import evolution_trajectory, exploration_budget
from ostinato.upstream.errors import RefusedError, StoreNotReadyError
from ostinato.upstream.layout import DEFAULT_CHUNK_SIZE, KEY_COLUMN, TABLES
from ostinato.upstream.rows import CONVERTERS, Row, convert
from ostinato.upstream.source import UpstreamSource
from ostinato.upstream.values import Localize, localizer
from ostinato.workers.store import Store
from ostinato.workers.store.diversity import BUDGET_LOCK

EXAMPLES_PER_REASON = 3

Progress = Callable[[str, int, int], None]
"""Called with (table, rows done, rows in the table) when a table starts and after each chunk."""


@dataclass
class TableReport:
    """What happened to one table's rows."""

    table: str
    rows: int
    imported: int = 0
    present: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    """Per reason, the first few refused rows as "key: value"."""

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    def refuse(self, key: Any, refusal: RefusedError) -> None:
        self.refusals[refusal.reason] += 1
        examples = self.examples.setdefault(refusal.reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(f"{key}: {refusal.detail}" if refusal.detail else str(key))


@dataclass
class ImportReport:
    source: Path
    access: str
    zone: str
    tables: list[TableReport]

    @property
    def imported(self) -> int:
        return sum(t.imported for t in self.tables)

    @property
    def present(self) -> int:
        return sum(t.present for t in self.tables)

    @property
    def refused(self) -> int:
        return sum(t.refused for t in self.tables)


def check_store(store: Store) -> None:
    """The store must answer, and its tables have the newest migration's columns, before a row goes in."""
    try:
        revisions = migrate.current_revisions(store.engine)
    except SQLAlchemyError as error:
        raise StoreNotReadyError(f"the store does not answer: {reason(error)}") from None
    if revisions != migrate.newest_revisions():
        raise StoreNotReadyError("the store is not at the newest migration: run `ostinato migrate` first")


def import_upstream(
    path: Path,
    store: Store,
    *,
    zone: tzinfo | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> ImportReport:
    """Import the upstream store at ``path`` into ``store``.

    ``zone`` is the zone upstream's naive times were written in (None: this machine's local time).
    Raises ``UpstreamImportError`` before writing anything when the file or the store is unusable.
    """
    local = localizer(zone)
    with UpstreamSource.open(path) as source:
        counts = source.check()
        check_store(store)
        report = ImportReport(path, source.access, zone_label(zone), [])
        for name in TABLES:
            table_report = TableReport(name, counts[name])
            report.tables.append(table_report)
            done = 0
            if progress is not None:
                progress(name, done, counts[name])
            for chunk in source.rows(name, chunk_size):
                _import_chunk(store, name, chunk, local, table_report)
                done += len(chunk)
                if progress is not None:
                    progress(name, done, counts[name])
    return report


def zone_label(zone: tzinfo | None) -> str:
    """How the report names the zone naive times were read in."""
    if zone is not None:
        return str(zone)
    return f"this machine's local time ({datetime.now().astimezone().tzname()})"


def _import_chunk(
    store: Store, name: str, chunk: Sequence[Row], local: Localize, report: TableReport
) -> None:
    key = KEY_COLUMN[name]
    accepted: list[Row] = []
    for raw in chunk:
        try:
            accepted.append(convert(name, raw, local))
        except RefusedError as refusal:
            report.refuse(raw[key], refusal)
    if not accepted:
        return
    table = CONVERTERS[name][0]

    def work() -> tuple[int, int, list[tuple[Any, RefusedError]]]:
        rows, refused = accepted, list[tuple[Any, RefusedError]]()
        if name == "evolution_trajectory":
            rows, refused = _free_cycles(store, rows)
        if name == "exploration_budget":
            rows = _numbered(store, rows)
        ordered = sorted(rows, key=lambda row: row[key])
        written = store.insert_rows(table, ordered, returning=key, conflict=[key])
        return len(written), len(rows) - len(written), refused

    imported, present, refused = store.run(work)
    report.imported += imported
    report.present += present
    for row_key, late in refused:
        report.refuse(row_key, late)


def _free_cycles(store: Store, rows: list[Row]) -> tuple[list[Row], list[tuple[Any, RefusedError]]]:
    """A cycle is unique: one the store already holds under another id is refused, not a failed chunk."""
    c = evolution_trajectory.c
    query = select(c.cycle, c.id).where(c.cycle.in_([row["cycle"] for row in rows]))
    holders = dict(store.conn.execute(query).all())
    kept, refused = [], []
    for row in rows:
        holder = holders.get(row["cycle"])
        if holder is None or holder == row["id"]:
            kept.append(row)
        else:
            detail = f"cycle {row['cycle']}: {holder}"
            refused.append((row["id"], RefusedError("cycle already recorded under another id", detail)))
    return kept, refused


def _numbered(store: Store, rows: list[Row]) -> list[Row]:
    """Give each budget row the next ``seq`` of its job, in upstream's insertion order, under the same
    per-job lock as ``update_exploration_budget`` so a live adjustment and the import never share a number."""
    c = exploration_budget.c
    jobs = sorted({row["job_hash"] for row in rows})
    for job in jobs:
        store.advisory_lock(BUDGET_LOCK + job)
    query = select(c.job_hash, func.max(c.seq)).where(c.job_hash.in_(jobs)).group_by(c.job_hash)
    last: dict[str, int] = dict(store.conn.execute(query).all())
    numbered = []
    for row in rows:
        last[row["job_hash"]] = last.get(row["job_hash"], 0) + 1
        numbered.append({**row, "seq": last[row["job_hash"]]})
    return numbered
