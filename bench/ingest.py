"""Ingest throughput: producer → Redis → Celery worker → PostgreSQL, next to two baselines.

    python bench/ingest.py [--outcomes 20000] [--naive 3000] [--concurrency 2]

Prints end-to-end outcomes/s and publish calls/s for ostinato, the naive design (one Celery task and one
INSERT per message) and the floor (psycopg ``executemany`` of the same execution rows in one transaction),
all measured in the same run on this machine.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
from common import isolated_environment, wait_until, worker_process
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

JOBS = 10
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
    engine = create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(value)


def bench_ostinato(n: int, concurrency: int) -> dict[str, float]:
    from ostinato.producers import Client
    from ostinato.schema.identity import pattern_id

    with isolated_environment("ostinato") as env:
        url = env["OSTINATO_DATABASE_URL"]
        clients = [Client(f"bench-job-{j}", f"/srv/bench/{j}") for j in range(JOBS)]
        pattern_ids = [pattern_id("semantic_insight", f"hint {k}") for k in range(4)]
        with worker_process(env, "ostinato.workers", "ostinato.ingest", concurrency):
            for k in range(4):
                clients[0].report_pattern("semantic_insight", f"hint {k}", "a runner's hint")
            clients[0].flush(60)
            wait_until(lambda: count(url, "processed_messages") == 4, timeout=120)
            rng = random.Random(1)
            outcomes = [realistic_outcome(rng, i, pattern_ids) for i in range(n)]
            start = time.monotonic()
            for i, outcome in enumerate(outcomes):
                clients[i % JOBS].record_outcome(outcome)
            published = time.monotonic()
            for client in clients:
                client.flush(600)
            done = wait_until(lambda: count(url, "processed_messages") == n + 4, interval=0.05)
            for client in clients:
                client.close()
        return {"seconds": done - start, "per_second": n / (done - start), "calls": n / (published - start)}


def bench_naive(n: int, concurrency: int) -> dict[str, float]:
    from naive_app import app

    from ostinato.schema.identity import hash_job, hash_workspace

    with isolated_environment("naive") as env:
        url = env["OSTINATO_DATABASE_URL"]
        rng = random.Random(2)
        envelopes: list[dict[str, Any]] = [
            {
                "workspace_hash": hash_workspace("/srv/bench"),
                "job_hash": hash_job("naive"),
                "payload": {**realistic_outcome(rng, i, []), "final_status": "completed"},
            }
            for i in range(n)
        ]
        for envelope in envelopes:
            envelope["payload"]["started_at"] = envelope["payload"]["started_at"].isoformat()
            envelope["payload"]["completed_at"] = envelope["payload"]["completed_at"].isoformat()
        app.conf.broker_transport_options = {"global_keyprefix": env["OSTINATO_KEY_PREFIX"]}
        with worker_process(env, "naive_app", "naive", concurrency):
            start = time.monotonic()
            for envelope in envelopes:
                app.send_task("naive.insert", args=[envelope], queue="naive")
            published = time.monotonic()
            done = wait_until(lambda: count(url, "executions") == n, interval=0.05)
        return {"seconds": done - start, "per_second": n / (done - start), "calls": n / (published - start)}


def bench_floor(n: int) -> dict[str, float]:
    from naive_app import INSERT_EXECUTION

    from ostinato.schema.identity import hash_job, hash_workspace

    with isolated_environment("floor") as env:
        url = env["OSTINATO_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        rng = random.Random(3)
        rows = [
            (
                o["execution_id"],
                hash_workspace("/srv"),
                hash_job("floor"),
                i,
                o["started_at"],
                o["completed_at"],
                o["execution_duration"],
                o["final_status"],
                o["retry_count"],
                o["success_without_retry"],
                o["validation_pass_rate"],
                o["validation_pass_rate"],
            )
            for i, o in enumerate(realistic_outcome(rng, i, []) for i in range(n))
        ]
        with psycopg.connect(url) as connection:
            start = time.monotonic()
            with connection.cursor() as cursor:
                cursor.executemany(INSERT_EXECUTION, rows)
            connection.commit()
            seconds = time.monotonic() - start
        return {"seconds": seconds, "per_second": n / seconds, "calls": float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outcomes", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()

    console = Console()
    runs: list[tuple[str, int, Callable[[], dict[str, float]]]] = [
        (
            "ostinato (producer → Redis → batch ingest)",
            args.outcomes,
            lambda: bench_ostinato(args.outcomes, args.concurrency),
        ),
        (
            "naive (one task + one INSERT per message)",
            args.naive,
            lambda: bench_naive(args.naive, args.concurrency),
        ),
        ("floor (psycopg executemany, one transaction)", args.outcomes, lambda: bench_floor(args.outcomes)),
    ]
    table = Table("design", "messages", "seconds", "outcomes/s end to end", "publish calls/s", title="ingest")
    rates = []
    for name, n, run in runs:
        figures = run()
        rates.append(figures["per_second"])
        console.print(f"{name}: {figures['per_second']:,.0f}/s")
        calls = figures["calls"]
        table.add_row(
            name,
            str(n),
            f"{figures['seconds']:.2f}",
            f"{figures['per_second']:,.0f}",
            "—" if math.isnan(calls) else f"{calls:,.0f}",
        )
    console.print(table)
    console.print(f"ostinato end to end / naive: {rates[0] / rates[1]:.1f}×")


if __name__ == "__main__":
    main()
