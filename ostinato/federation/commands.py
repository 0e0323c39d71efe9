"""The ``ostinato export`` and ``ostinato import-learnings`` commands (registered in ``ostinato.cli``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ostinato.settings import get_settings, redact_url

errors = Console(stderr=True)


def _store_url() -> str:
    return get_settings().database_url


def export_command(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Write the learnings here (YAML); '-' writes them to standard output."
        ),
    ],
    min_occurrences: Annotated[
        int, typer.Option("--min-occurrences", min=1, help="Leave out patterns seen fewer times.")
    ] = 1,
    include_inactive: Annotated[
        bool, typer.Option("--include-inactive", help="Also export soft-deleted patterns.")
    ] = False,
) -> None:
    """Export anonymised learnings (patterns, statistics, learned waits, defaults) to a YAML file.

    No executions, no job or workspace hashes, every text scrubbed; format: docs/learnings.schema.json.
    """
    from ostinato.federation.export import dump_learnings, export_learnings
    from ostinato.workers.store import Store

    store = Store.from_url(_store_url())
    try:
        learnings = export_learnings(
            store,
            settings=get_settings(),
            min_occurrences=min_occurrences,
            include_inactive=include_inactive,
        )
    finally:
        store.engine.dispose()
    document = dump_learnings(learnings)
    if str(output) == "-":
        sys.stdout.write(document)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document, encoding="utf-8")
    errors.print(
        f"[green]exported[/] {len(learnings.patterns)} patterns and {len(learnings.learned_waits)} learned "
        f"waits as export {learnings.export_id}" + ("" if str(output) == "-" else f" to {output}")
    )


def import_learnings_command(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="Learnings files written by `ostinato export`."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what the import would change, then roll it back.")
    ] = False,
) -> None:
    """Merge learnings files exported by other deployments into this store, each export at most once.

    Occurrences add up; effectiveness and trust average weighted by applications (see the README).
    """
    from ostinato.federation.export import load_learnings
    from ostinato.federation.importer import import_learnings
    from ostinato.workers.store import Store

    loaded = []
    for path in files:
        try:
            loaded.append((path, load_learnings(path.read_text(encoding="utf-8"))))
        except (ValueError, UnicodeDecodeError) as error:
            errors.print(f"[red]{path}: not a valid learnings file[/]\n{error}")
            raise typer.Exit(1) from error
    url = _store_url()
    store = Store.from_url(url)
    note = " (dry run: rolled back)" if dry_run else ""
    try:
        for path, learnings in loaded:
            report = import_learnings(store, learnings, settings=get_settings(), dry_run=dry_run)
            if not report.applied:
                typer.echo(f"{path}: export {report.export_id} already imported: nothing changed")
            else:
                typer.echo(
                    f"{path}: export {report.export_id} imported{note}: "
                    f"new patterns {report.patterns_created}, merged {report.patterns_merged}, "
                    f"learned waits {report.learned_waits} "
                    f"({report.recoveries_added} recoveries)"
                )
            if report.differing_defaults:
                errors.print(
                    f"[yellow]{path}: exported with other defaults than this deployment's:[/] "
                    + ", ".join(report.differing_defaults)
                )
    finally:
        store.engine.dispose()
    typer.echo(f"into {redact_url(url)}")
