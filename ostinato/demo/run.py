"""``ostinato demo``: simulated runners on the real producer library, workers, beat and live broadcasts.

The runners learn while they work: before each sheet a runner asks the store for relevant patterns and
injects them; the world (``world.py``) rewards the helpful ones and punishes the misleading ones; ingest
scores every application, beat validates and quarantines, and later sheets get better advice.
"""

from __future__ import annotations

import queue
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url

from ostinato.demo.backends import Backend, EmbeddedBackend, ServerBackend, why_no_servers
from ostinato.demo.runner import RunnerSpec, quiet_logs
from ostinato.demo.show import live_table, store_figures, summary
from ostinato.demo.tally import Tally
from ostinato.demo.world import JobPlan, job_plans
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.settings import Settings, redact_url
from ostinato.workers.maintenance import PASSES

DRAIN_TIMEOUT = 60.0
"""How long the demo waits for the workers to apply what the runners published (a loaded machine is slow)."""
FINISH_GRACE = 5.0
REFRESH_SECONDS = 0.5


@dataclass(frozen=True)
class DemoOptions:
    runners: int = 4
    duration: float = 40.0
    """Seconds the runners run sheets; set-up, draining and the summary add a few more."""
    seed: int | None = None
    embedded: bool = False
    """Run in this process even when the servers answer."""
    embedded_path: Path | None = None


@dataclass(frozen=True)
class DemoResult:
    mode: str
    database_url: str
    sheets: int
    applied: int
    first_quarter: float
    last_quarter: float
    discoveries: int
    patterns: int
    new_job_guidance: list[str]


def run_demo(options: DemoOptions, settings: Settings, console: Console) -> DemoResult:
    quiet_logs()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(10**6)
    reason = "asked for with --embedded" if options.embedded else why_no_servers(settings)
    backend: Backend
    if reason is None:
        console.print(
            f"[bold]ostinato demo[/] on the servers: Redis {redact_url(settings.broker_url)}, "
            f"PostgreSQL {redact_url(settings.database_url)} (seed {seed})"
        )
        backend = ServerBackend(settings)
    else:
        path = (options.embedded_path or _configured_sqlite(settings) or settings.embedded_path).expanduser()
        path = path.resolve()
        console.print(
            f"[bold]ostinato demo[/] in embedded mode ({reason}): everything runs in this process, "
            f"the store is {path} (seed {seed})"
        )
        backend = EmbeddedBackend(settings, path)
    try:
        return _run(backend, options, seed, console)
    finally:
        backend.close()


def _run(backend: Backend, options: DemoOptions, seed: int, console: Console) -> DemoResult:
    rng = random.Random(seed)
    run_id = secrets.token_hex(4)
    plans = job_plans(options.runners, rng)
    tally = Tally()
    found: queue.Queue[PatternDiscoveryEvent] = queue.Queue()
    discoveries = 0
    announced: set[str] = set()
    subscription = backend.subscribe(found.put)
    settings = backend.settings.model_dump(mode="json")
    specs = [
        RunnerSpec(p, run_id, rng.randrange(2**31), options.duration, settings, backend.embedded)
        for p in plans
    ]
    runners = [backend.start_runner(spec) for spec in specs]
    console.print(
        f"{len(plans)} runners: "
        + ", ".join(f"{p.name} ({p.model}, {Path(p.workspace).name})" for p in plans)
    )
    progress = Progress(TextColumn("runners at work"), BarColumn(), TimeElapsedColumn(), console=console)
    clock = progress.add_task("run", total=options.duration)
    started = time.time()
    figures = store_figures(backend.store, list(tally.job_hashes))

    def frame() -> Group:
        return Group(progress, live_table(tally, figures, backend.waiting(), discoveries, backend.mode))

    with Live(frame(), console=console, refresh_per_second=4, transient=False) as live:
        stopped_at: float | None = None
        while stopped_at is None or not _all_reported(tally, plans, stopped_at):
            time.sleep(REFRESH_SECONDS)
            if stopped_at is None and not any(r.is_alive() for r in runners):
                stopped_at = time.time()
            tally.drain(backend.report)
            while True:
                try:
                    event = found.get_nowait()
                except queue.Empty:
                    break
                discoveries += 1
                live.console.print(_discovery_line(event, tally, announced))
            progress.update(clock, completed=min(options.duration, time.time() - started))
            figures = store_figures(backend.store, list(tally.job_hashes))
            live.update(frame())
        drain_until = time.time() + DRAIN_TIMEOUT
        while figures.applied < len(tally.sheets) and time.time() < drain_until:
            time.sleep(REFRESH_SECONDS)
            figures = store_figures(backend.store, list(tally.job_hashes))
            live.update(frame())
    subscription.stop()
    for name, run_pass in PASSES.items():
        if name in ("trust", "priority", "entropy", "budget", "drift"):
            run_pass(backend.store, backend.settings)
    rendered, told = summary(backend.store, backend.settings, tally, discoveries, seed)
    console.print(rendered)
    first, last = tally.quarter_rates()
    figures = store_figures(backend.store, list(tally.job_hashes))
    if figures.applied < len(tally.sheets):
        console.print(f"[red]{len(tally.sheets) - figures.applied} outcomes were not applied in time[/]")
        console.print(backend.trouble(), markup=False, highlight=False)
    return DemoResult(
        backend.mode,
        redact_url(backend.settings.database_url),
        len(tally.sheets),
        figures.applied,
        first,
        last,
        discoveries,
        figures.patterns,
        told,
    )


def _discovery_line(event: PatternDiscoveryEvent, tally: Tally, announced: set[str]) -> str:
    """A broadcast as it arrives: the first for a pattern is its discovery, a later one its validation by
    beat's trust pass."""
    job = tally.job_hashes.get(event.source_job_hash, f"job {event.source_job_hash[:8]}")
    if event.pattern_id in announced:
        return (
            f"[green]validated[/] {event.pattern_name} [dim]effectiveness {event.effectiveness_score:.2f}[/]"
        )
    announced.add(event.pattern_id)
    return f"[cyan]discovery[/] {event.pattern_name} [dim]({event.pattern_type})[/] from {job}"


def _configured_sqlite(settings: Settings) -> Path | None:
    """The file of a configured ``sqlite:///`` store: the demo runs embedded on it rather than elsewhere."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database)
    return None


def _all_reported(tally: Tally, plans: list[JobPlan], stopped_at: float) -> bool:
    """Every runner's last event is in (a process's queue may still hold some after it exits); a runner
    that died without saying so is given up on a few seconds after they all stopped."""
    return len(tally.finished) >= len(plans) or time.time() > stopped_at + FINISH_GRACE
