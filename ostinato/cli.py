"""The ``ostinato`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ostinato.federation.commands import export_command, import_learnings_command
from ostinato.settings import get_settings, redact_url
from ostinato.upstream.cli import import_sqlite_command

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
def entropy(
    history: Annotated[bool, typer.Option("--history", help="Show the recorded snapshots.")] = False,
    limit: Annotated[int, typer.Option(help="How many snapshots.")] = 20,
) -> None:
    """Pattern entropy now, or its recorded history."""
    store = _store()
    rows = store.get_pattern_entropy_history(limit=limit) if history else [store.calculate_pattern_entropy()]
    table = Table("at", "shannon", "max", "diversity", "patterns", "effective", "applications", "dominant")
    for m in rows:
        table.add_row(
            m.calculated_at.isoformat(timespec="seconds"),
            f"{m.shannon_entropy:.4f}",
            f"{m.max_possible_entropy:.4f}",
            f"{m.diversity_index:.4f}",
            str(m.unique_pattern_count),
            str(m.effective_pattern_count),
            str(m.total_applications),
            f"{m.dominant_pattern_share:.3f}",
        )
    console.print(table)


DRIFT_COLUMNS = [
    "pattern",
    "measured",
    "before",
    "after",
    "drift",
    "direction",
    "exceeded",
    "conf before",
    "conf after",
    "belief Δ",
    "belief H",
    "epistemic",
    "retired",
]


@app.command()
def drift(
    limit: Annotated[int, typer.Option(help="How many patterns.")] = 50,
) -> None:
    """Effectiveness and epistemic drift as beat last measured them (latest per pattern)."""
    from ostinato.workers.maintenance import latest_drift

    rows = latest_drift(_store(), limit)
    if not rows:
        every = get_settings().maintenance_drift_period
        console.print(f"no drift measured yet: beat measures it every {every:.0f} s (ostinato beat)")
        return
    table = Table(*DRIFT_COLUMNS, title="drift (latest measurement per pattern)")
    for d in rows:
        table.add_row(
            (d.pattern_name or d.pattern_id)[:40],
            d.measured_at.isoformat(timespec="seconds"),
            _num(d.effectiveness_before),
            _num(d.effectiveness_after),
            _num(d.drift_magnitude),
            d.drift_direction or "",
            "yes" if d.threshold_exceeded else "no",
            _num(d.confidence_before),
            _num(d.confidence_after),
            _num(d.belief_change),
            _num(d.belief_entropy),
            (d.epistemic_direction or "") + (" (exceeded)" if d.epistemic_threshold_exceeded else ""),
            "yes" if d.retired else "",
        )
    console.print(table)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


@app.command()
def budget(
    job: Annotated[str | None, typer.Option("--job", help="The job hash (default: all jobs).")] = None,
) -> None:
    """Exploration budget: the current value, statistics and recent adjustments."""
    store = _store()
    stats_ = store.get_exploration_budget_statistics(job)
    console.print(stats_)
    table = Table("at", "job", "value", "type", "entropy", "reason", title="budget history")
    for b in store.get_exploration_budget_history(job, limit=20):
        table.add_row(
            b.recorded_at.isoformat(timespec="seconds"),
            b.job_hash,
            f"{b.budget_value:.4f}",
            b.adjustment_type,
            "" if b.entropy_at_time is None else f"{b.entropy_at_time:.3f}",
            b.adjustment_reason or "",
        )
    console.print(table)


dead_letters_app = typer.Typer(help="Messages that could not be applied.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
def dead_letters_list(
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    all_: Annotated[bool, typer.Option("--all", help="Include replayed ones.")] = False,
) -> None:
    """The newest dead letters with their reasons."""
    table = Table("id", "received", "kind", "task", "reason", title="dead letters")
    for letter in _store().list_dead_letters(limit, include_replayed=all_):
        table.add_row(
            letter["id"][:12],
            letter["received_at"].isoformat(timespec="seconds"),
            letter["kind"] or "",
            letter["task_name"] or "",
            letter["reason"][:90],
        )
    console.print(table)


@dead_letters_app.command("replay")
def dead_letters_replay(
    limit: Annotated[int, typer.Option(help="How many, oldest first.")] = 100,
) -> None:
    """Apply dead letters again (after a fix); those still invalid stay where they are."""
    from ostinato.workers.intake import Intake, validate

    store = _store()
    letters = list(reversed(store.list_dead_letters(limit)))
    replayed = []
    for letter in letters:
        try:
            body = json.loads(letter["raw_body"])
        except ValueError:
            continue
        envelopes = [body] if isinstance(body, dict) else body
        if validate(envelopes, None)[1]:
            continue
        Intake(store, delivery_id=f"replay:{letter['id']}", task_name="replay")(envelopes)
        replayed.append(letter["id"])
    store.mark_dead_letters_replayed(replayed)
    console.print(f"replayed {len(replayed)} of {len(letters)} dead letters")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run a Celery worker on the ingest and maintenance queues."""
    from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE
    from ostinato.workers import app as celery_app

    celery_app.worker_main(
        ["worker", "-Q", f"{INGEST_QUEUE},{MAINTENANCE_QUEUE}", "-c", str(concurrency), "-l", loglevel]
    )


@app.command()
def beat(
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    schedule: Annotated[
        Path | None, typer.Option(help="Beat's state file (default: celerybeat-schedule here).")
    ] = None,
) -> None:
    """Run Celery beat: it sends the maintenance passes to the maintenance queue, each at its period."""
    from ostinato.workers import app as celery_app

    argv = ["beat", "-l", loglevel]
    if schedule is not None:
        argv += ["-s", str(schedule)]
    celery_app.start(argv)


@app.command()
def demo(
    runners: Annotated[int, typer.Option(min=1, max=24, help="Simulated runners (jobs).")] = 4,
    duration: Annotated[float, typer.Option(min=5, help="Seconds the runners run sheets.")] = 40.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulated world (default: random).")] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Run everything in this process even if servers answer.")
    ] = False,
    store: Annotated[
        Path | None, typer.Option(help="The embedded SQLite store (default OSTINATO_EMBEDDED_PATH).")
    ] = None,
) -> None:
    """The main job: simulated runners learn from each other through ostinato while you watch.

    With Redis and PostgreSQL answering at the configured URLs it runs on them, with a Celery worker, beat
    and one process per runner; otherwise (or with --embedded) everything runs in this process on SQLite.
    """
    from ostinato.demo import DemoOptions, run_demo

    options = DemoOptions(runners, duration, seed, embedded, store)
    result = run_demo(options, get_settings(), console)
    again = "ostinato patterns  (or stats, entropy, drift, budget, dead-letters list)"
    if result.mode == "embedded" and result.database_url != get_settings().database_url:
        again = f"OSTINATO_DATABASE_URL={result.database_url} {again}"
    console.print(f"look again: {again}")


@app.command()
def status() -> None:
    """Queue depth, ingest lag, live workers and the last maintenance runs; answers with servers down."""
    from ostinato.status import collect, render

    settings = get_settings()
    render(collect(settings), settings, console)


@app.command()
def doctor() -> None:
    """Check Redis, redelivery, the database, the key prefix and the spool; exit 1 on any FAIL."""
    from ostinato.doctor import diagnose, exit_code, render

    findings = diagnose()
    render(findings, console)
    raise typer.Exit(exit_code(findings))


app.command("import-sqlite")(import_sqlite_command)
app.command("export")(export_command)
app.command("import-learnings")(import_learnings_command)

if __name__ == "__main__":
    app()
