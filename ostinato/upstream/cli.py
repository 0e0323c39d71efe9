"""``ostinato import-sqlite PATH``: the import with a progress bar and a closing table of counts.

Exit codes: 0 when every row was imported or already present, 1 when some rows were refused (each reason
is listed), 2 when the file or the store is unusable (nothing was written), 3 when the store failed during the
import and 130 when interrupted (for both, run it again to finish: committed chunks count as already
present).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ostinato.settings import get_settings
from ostinato.upstream.errors import UpstreamImportError
from ostinato.upstream.layout import DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    from ostinato.upstream.importer import ImportReport
    from ostinato.workers.store import Store

EXIT_REFUSED = 1
EXIT_UNUSABLE = 2
EXIT_STORE_FAILED = 3
EXIT_INTERRUPTED = 130


def import_sqlite_command(
    path: Annotated[Path, typer.Argument(help="The upstream global-learning.db; read, never changed.")],
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="Zone upstream's naive times were written in (IANA name, e.g. Europe/Paris); "
            "default: this machine's.",
        ),
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Rows per transaction.")
    ] = DEFAULT_CHUNK_SIZE,
) -> None:
    """Import an upstream learning store (global-learning.db); running it again changes nothing."""
    from ostinato.workers.store import Store

    store = Store.from_url(get_settings().database_url)
    try:
        code = run_import(path, store, Console(), timezone=timezone, chunk_size=chunk_size)
    finally:
        store.engine.dispose()
    raise typer.Exit(code)


def run_import(
    path: Path,
    store: Store,
    console: Console,
    *,
    timezone: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """The command's work, on a given store and console; returns the exit code.

    The store and the importer are loaded here, not when ``ostinato`` starts, so other commands stay quick.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from ostinato.probes import reason
    from ostinato.upstream.importer import import_upstream

    try:
        zone = ZoneInfo(timezone) if timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        console.print(f"[red]unknown time zone[/] {timezone!r}: give an IANA name such as Europe/Paris")
        return EXIT_UNUSABLE
    columns = (
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        tasks = {}

        def progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done)

        try:
            report = import_upstream(path, store, zone=zone, chunk_size=chunk_size, progress=progress)
        except UpstreamImportError as error:
            bar.stop()
            console.print(f"[red]cannot import[/]: {error}")
            console.print("nothing was written")
            return EXIT_UNUSABLE
        except SQLAlchemyError as error:
            bar.stop()
            console.print(f"[red]the store failed[/]: {reason(error)}")
            console.print("chunks committed so far stay; run the command again to finish")
            return EXIT_STORE_FAILED
        except KeyboardInterrupt:
            bar.stop()
            console.print("[yellow]interrupted[/]: committed chunks stay; run the command again to finish")
            return EXIT_INTERRUPTED
    render(report, console)
    return EXIT_REFUSED if report.refused else 0


def render(report: ImportReport, console: Console) -> None:
    """Counts per table, then every refusal reason with a few of the rows it refused."""
    console.print(f"read {report.source} as {report.access}; naive upstream times taken as {report.zone}")
    counts = Table("table", "in file", "imported", "already present", "refused", title="import-sqlite")
    for t in report.tables:
        counts.add_row(
            t.table,
            str(t.rows),
            str(t.imported),
            str(t.present),
            f"[red]{t.refused}[/]" if t.refused else "0",
        )
    counts.add_section()
    counts.add_row(
        "total",
        str(sum(t.rows for t in report.tables)),
        str(report.imported),
        str(report.present),
        str(report.refused),
    )
    console.print(counts)
    if not report.refused:
        return
    reasons = Table("table", "reason", "rows", "examples (id: value)", title="refused rows")
    for t in report.tables:
        for why, rows in sorted(t.refusals.items()):
            reasons.add_row(t.table, why, str(rows), "\n".join(t.examples[why]))
    console.print(reasons)
