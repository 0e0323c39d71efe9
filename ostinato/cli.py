"""The ``ostinato`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ostinato.settings import get_settings, redact_url

if TYPE_CHECKING:
    from ostinato.workers.store import Store

app = typer.Typer(
    help="ostinato: the distributed learning store for AI job orchestrators.", no_args_is_help=True
)
schema_app = typer.Typer(help="The wire contract.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
console = Console()


def _store() -> Store:
    from ostinato.workers.store import Store

    return Store.from_url(get_settings().database_url)


@app.command()
def migrate() -> None:
    """Create the database if needed and apply every migration."""
    from ostinato.database import migrate_database

    url = get_settings().database_url
    created = migrate_database(url)
    console.print(f"[green]migrated[/] {redact_url(url)}" + (" (database created)" if created else ""))


@app.command()
def stats() -> None:
    """Learning statistics of the store."""
    figures = _store().get_learning_statistics()
    table = Table("statistic", "value", title="ostinato learning statistics")
    for key, value in figures.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def patterns(
    pattern_type: Annotated[str | None, typer.Option("--type", help="Only this pattern type.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
) -> None:
    """Patterns by priority."""
    records = _store().get_patterns(pattern_type=pattern_type, min_priority=0.0, limit=limit)
    table = Table("id", "type", "name", "seen", "eff", "priority", "trust", "status", title="patterns")
    for r in records:
        table.add_row(
            r.id,
            r.pattern_type,
            r.pattern_name[:50],
            str(r.occurrence_count),
            f"{r.effectiveness_score:.3f}",
            f"{r.priority_score:.3f}",
            f"{r.trust_score:.2f}",
            r.quarantine_status.value,
        )
    console.print(table)


@schema_app.command("export")
def schema_export(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """The JSON Schema of the envelope and every message kind, for runners in other languages."""
    from ostinato.schema.messages import MESSAGE_ADAPTER

    document = json.dumps(MESSAGE_ADAPTER.json_schema(), indent=2)
    if output is None:
        typer.echo(document)
    else:
        output.write_text(document + "\n")
        console.print(f"wrote {output}")


@app.command()
def demo() -> None:
    """The main job. For now: migrate and print the store's statistics."""
    migrate()
    stats()


if __name__ == "__main__":
    app()
