"""Ingest throughput: producer → Redis → Celery worker → PostgreSQL, next to two baselines.

    python bench/ingest.py [--outcomes 20000] [--naive 3000] [--rounds 3] [--concurrency 2] [--producers 2]

Prints end-to-end outcomes/s and publish calls/s for ostinato, the naive design (one Celery task and one
INSERT per message) and the floor (psycopg ``executemany`` of the same execution rows in one transaction),
all measured in the same run on this machine. Both designs publish from the same number of runner processes
(``--producers``), as a fleet of runners would. A second table gives the CPU time producers, workers,
PostgreSQL and Redis spent per outcome during the end-to-end run.

The end-to-end runs alternate between the two designs over ``--rounds`` rounds (ostinato first in odd rounds,
the naive design first in even ones), because a shared virtual machine's speed drifts by tens of percent
within minutes: each round's ratio compares runs a few seconds apart, and the run reports the median round
next to every round's figures.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
from common import isolated_environment, wait_until, worker_process
from rich.console import Console
from rich.table import Table

JOBS = 10
CPU_PARTS = ("producers", "workers", "postgres", "redis")
DESIGNS = {
    "ostinato": ("ostinato.workers", "ostinato.ingest", "processed_messages"),
    "naive": ("naive_app", "naive", "executions"),
}
TAIL = "\n".join(
    f"[{n:03d}] step ok: wrote /home/runner/work/build/artifact_{n}.json in {n * 3} ms" for n in range(40)
)


def realistic_outcome(rng: random.Random, index: int, pattern_ids: list[str]) -> dict[str, Any]:
    """A sheet outcome as a runner fills it in: results, errors, ~2 KiB tails, applied patterns."""
    failed = rng.random() < 0.3
    started = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(seconds=index)
    return {
        "execution_id": str(uuid4()),
        "sheet_id": f"sheet{index}",
        "model": "claude-sonnet",
        "instrument_name": "claude_cli",
        "started_at": started,
        "completed_at": started + timedelta(seconds=42),
        "execution_duration": 42.0 + rng.random(),
        "retry_count": rng.choice([0, 0, 0, 1, 2]),
        "final_status": "failed" if failed else "completed",
        "validation_pass_rate": 0.5 if failed else 1.0,
        "success_without_retry": not failed and rng.random() < 0.8,
        "validation_results": [
            {
                "validation_type": kind,
                "passed": not failed or kind == "regex",
                "failure_reason": "file not created during run" if failed and kind != "regex" else None,
                "confidence": 0.9,
            }
            for kind in ("file_exists", "regex", "command")
        ],
        "error_history": [{"error_code": "E101", "message": "rate limit from api.example.com"}]
        if failed
        else [],
        "patterns_applied": rng.sample(pattern_ids, min(len(pattern_ids), rng.randint(0, 2))),
        "stdout_tail": TAIL,
        "stderr_tail": "Traceback (most recent call last):\nTimeoutError: timed out" if failed else "",
        "grounding_confidence": 0.85,
    }


def count(url: str, table: str) -> int:
    """Rows in ``table``, over one connection kept per database (polling must not cost the run CPU)."""
    if url not in _CONNECTIONS:
        _CONNECTIONS[url] = psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
        )
    row = _CONNECTIONS[url].execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


def publish_share(design: str, share: int, seed: int, ready: Any, go: Any, results: Any) -> None:
    """One producer process: prepare its outcomes, wait for the start, publish them, report its figures.

    Reports (publish calls/s, CPU seconds from the start until everything was handed to Redis).
    """
    from ostinato.schema.identity import hash_job, hash_workspace, pattern_id

    rng = random.Random(seed)
    pattern_ids = (
        [pattern_id("semantic_insight", f"hint {k}") for k in range(4)] if design == "ostinato" else []
    )
    outcomes = [realistic_outcome(rng, seed * share + i, pattern_ids) for i in range(share)]
    # A runner reports each outcome as its sheet ends and does not hold thousands of them: keep the
    # benchmark's own prepared data out of the garbage collector's walks, for both designs alike.
    gc.freeze()
    if design == "ostinato":
        from ostinato.producers import Client

        clients = [Client(f"bench-job-{seed}-{j}", f"/srv/bench/{seed}/{j}") for j in range(JOBS)]
        ready.put(seed)
        go.wait()
        start, cpu = time.monotonic(), time.process_time()
        for i, outcome in enumerate(outcomes):
            clients[i % JOBS].record_outcome(outcome)
        published = time.monotonic()
        for client in clients:
            client.close(600)
    else:
        from naive_app import app

        for outcome in outcomes:
            outcome["started_at"] = outcome["started_at"].isoformat()
            outcome["completed_at"] = outcome["completed_at"].isoformat()
        envelope = {"workspace_hash": hash_workspace("/srv/bench"), "job_hash": hash_job("naive")}
        ready.put(seed)
        go.wait()
        start, cpu = time.monotonic(), time.process_time()
        for outcome in outcomes:
            app.send_task("naive.insert", args=[{**envelope, "payload": outcome}], queue="naive")
        published = time.monotonic()
    results.put((share / (published - start), time.process_time() - cpu))


def _start_producers(design: str, n: int, producers: int) -> tuple[list[Any], Any, Any, int]:
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    share = n // producers
    processes = [
        context.Process(target=publish_share, args=(design, share, seed, ready, go, results))
        for seed in range(producers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    return processes, go, results, share * producers


def _seed_patterns(design: str, url: str) -> None:
    """The runner hints that the realistic outcomes apply, written straight into the store."""
    if design != "ostinato":
        return
    from ostinato.workers.store import Store

    store = Store.from_url(url)
    for k in range(4):
        store.record_pattern("semantic_insight", f"hint {k}", "a runner's hint")
    store.engine.dispose()


def _drain(design: str, n: int, producers: int, concurrency: int) -> float:
    app_name, queue, table = DESIGNS[design]
    with isolated_environment(design) as env:
        url = env["OSTINATO_DATABASE_URL"]
        _seed_patterns(design, url)
        baseline = 0
        processes, go, results, total = _start_producers(design, n, producers)
        go.set()
        for _ in processes:
            results.get(timeout=600)
        for process in processes:
            process.join(60)
        with worker_process(env, app_name, queue, concurrency):
            wait_until(lambda: count(url, table) > 0, interval=0.01)
            first_time, first_count = time.monotonic(), count(url, table)
            done = wait_until(lambda: count(url, table) == baseline + total, interval=0.1)
        _CONNECTIONS.pop(url).close()
        return (baseline + total - first_count) / (done - first_time)


def _end_to_end(design: str, n: int, producers: int, concurrency: int) -> dict[str, float]:
    app_name, queue, table = DESIGNS[design]
    with isolated_environment(design) as env:
        url = env["OSTINATO_DATABASE_URL"]
        with worker_process(env, app_name, queue, concurrency) as meter:
            _seed_patterns(design, url)
            baseline = 0
            processes, go, results, total = _start_producers(design, n, producers)
            meter.start()
            start = time.monotonic()
            go.set()
            done = wait_until(lambda: count(url, table) == baseline + total, interval=0.1)
            cpu = meter.stop()
            _CONNECTIONS.pop(url).close()
            reports = [results.get(timeout=60) for _ in processes]
            for process in processes:
                process.join(60)
        cpu["producers"] = sum(seconds for _, seconds in reports)
        return {
            "seconds": done - start,
            "per_second": total / (done - start),
            "calls": sum(rate for rate, _ in reports),
            **{f"cpu_{part}": seconds / total for part, seconds in cpu.items()},
        }


def bench_floor(n: int) -> float:
    """Execution rows per second through psycopg's ``executemany`` in one transaction."""
    from naive_app import INSERT_EXECUTION, execution_row

    from ostinato.schema.identity import hash_job, hash_workspace

    with isolated_environment("floor") as env:
        url = env["OSTINATO_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        rng = random.Random(3)
        workspace, job = hash_workspace("/srv"), hash_job("floor")
        rows = [execution_row(realistic_outcome(rng, i, []), workspace, job, i) for i in range(n)]
        with psycopg.connect(url) as connection:
            start = time.monotonic()
            with connection.cursor() as cursor:
                cursor.executemany(INSERT_EXECUTION, rows)
            connection.commit()
            seconds = time.monotonic() - start
        return n / seconds


def run_rounds(args: argparse.Namespace, sizes: dict[str, int]) -> list[dict[str, dict[str, float]]]:
    """End-to-end figures of both designs, round by round, alternating which design goes first."""
    rounds = []
    for index in range(args.rounds):
        order = ("ostinato", "naive") if index % 2 == 0 else ("naive", "ostinato")
        figures = {
            design: _end_to_end(design, sizes[design], args.producers, args.concurrency) for design in order
        }
        ratio = figures["ostinato"]["per_second"] / figures["naive"]["per_second"]
        Console().print(
            f"round {index + 1}: ostinato {figures['ostinato']['per_second']:,.0f}/s, "
            f"naive {figures['naive']['per_second']:,.0f}/s, {ratio:.1f}×"
        )
        rounds.append(figures)
    return rounds


def median_figures(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outcomes", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3, help="end-to-end rounds of both designs")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--producers", type=int, default=2, help="runner processes publishing at once")
    args = parser.parse_args()

    console = Console(width=200)
    sizes = {"ostinato": args.outcomes, "naive": args.naive}
    rounds = run_rounds(args, sizes)
    ratios = [r["ostinato"]["per_second"] / r["naive"]["per_second"] for r in rounds]
    names = {
        "ostinato": "ostinato (producer → Redis → batch ingest)",
        "naive": "naive (one task + one INSERT per message)",
    }
    results = {design: median_figures([r[design] for r in rounds]) for design in names}
    for design in names:
        results[design]["drain"] = _drain(design, sizes[design], args.producers, args.concurrency)
    floor = bench_floor(args.outcomes)

    columns = ("design", "messages", "end to end /s", "drain /s", "publish calls/s")
    table = Table(*columns, title="ingest (end to end: median of rounds)")
    for design, name in names.items():
        figures = results[design]
        table.add_row(
            name,
            str(sizes[design]),
            f"{figures['per_second']:,.0f}",
            f"{figures['drain']:,.0f}",
            f"{figures['calls']:,.0f}",
        )
    table.add_row(
        "floor (psycopg executemany, one transaction)", str(args.outcomes), f"{floor:,.0f}", "—", "—"
    )
    console.print(table)
    parts_header = [f"{part} µs" for part in CPU_PARTS]
    cpu = Table("design", *parts_header, "total µs", title="CPU per outcome (end to end, median of rounds)")
    for design, name in names.items():
        parts = [results[design][f"cpu_{part}"] * 1e6 for part in CPU_PARTS]
        cpu.add_row(name, *(f"{value:,.0f}" for value in parts), f"{sum(parts):,.0f}")
    console.print(cpu)
    each = ", ".join(f"{ratio:.1f}×" for ratio in ratios)
    console.print(f"ostinato / naive, end to end: {statistics.median(ratios):.1f}× (median; rounds: {each})")
    console.print(f"ostinato / naive, drain: {results['ostinato']['drain'] / results['naive']['drain']:.1f}×")


if __name__ == "__main__":
    main()
