"""Reads and maintenance at scale: a store filled by COPY to S, M and L, then every read and pass timed.

    python bench/scale.py [--sizes S M L] [--calls 200] [--keep]

Sizes: S = 10 k executions / 500 patterns, M = 100 k / 5 k, L = 1 M / 50 k with 2 M pattern applications
(applications are twice the executions at every size). Each size gets a scratch database
(``ostinato_scale_<size>_<run>``) migrated to the newest revision, filled with psycopg's ``cursor.copy``
using the project's id and hash helpers and skewed distributions (a few error codes take most recoveries, a
few patterns most applications, jobs with long budget histories), then vacuumed and analysed as autovacuum
would leave it. Per size it prints:

- every preflight read (``ostinato.producers.preflight.Preflight`` with direct SQL): p50 / p99 over
  ``--calls`` warm calls with arguments drawn from the data, and the Redis read model's figure when
  ``ostinato.producers.readmodel`` exists ("n/a" otherwise);
- the store calls behind ``ostinato stats``, ``ostinato drift`` and ``ostinato budget``;
- ingest of one 1,000-outcome batch (``workers/ingest.py`` ``apply_messages``);
- every maintenance pass once (the trust pass twice: the first recalculates every pattern, the next period
  only those applied since), with its wall time and number of SQL statements;
- table sizes.

L takes 10+ minutes on a 2-core machine, mostly the drift and priority passes.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
import structlog
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, event, text

from ostinato.database import migrate_database
from ostinato.schema.identity import content_hash, hash_job, hash_workspace, pattern_id
from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.settings import Settings
from ostinato.workers.store import Store
from ostinato.workers.store.base import new_id

ADMIN_URL = os.environ.get(
    "OSTINATO_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SIZES = {"S": (10_000, 500), "M": (100_000, 5_000), "L": (1_000_000, 50_000)}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAYS = 180
ERROR_CODES = [f"E{n:03d}" for n in (101, 102, 103, 201, 202, 301, 302, 401, 402, 501, 502, 503)]
MODELS = ["claude-sonnet", "claude-opus", "gpt-5", "gemini-pro"]
INSTRUMENTS = [None, None, "claude_cli", "codex_cli", "gemini_cli"]
PATTERN_TYPES = ["validation_failure", "semantic_failure", "retry_pattern", "success_pattern", "error_code"]
VALIDATIONS = ["file_exists", "regex", "command", "content_contains", "json_schema"]
OUTCOME_TAGS = ["success:first_attempt", "retry:effective", "completion:used"]
STATUSES = ["pending"] * 5 + ["validated"] * 3 + ["quarantined", "retired"]
ADJUSTMENTS = ["decay"] * 6 + ["boost"] * 2 + ["floor_enforced", "initial"]
ESCALATION_ACTIONS = ["retry", "skip", "abort", "modify_prompt"]
ESCALATION_OUTCOMES = ["success", "success", "skipped", None, "failed"]

console = Console()


@dataclass
class Data:
    """What the reads draw their arguments from."""

    jobs: list[str]
    workspaces: list[str]
    pattern_ids: list[str]


def zipf_choice(rng: random.Random, items: list[Any], skew: float = 1.1) -> Any:
    """An item with probability ~ 1 / rank^skew: a few items take most draws."""
    n = len(items)
    rank = int(n ** rng.random() ** skew)  # cheap heavy-headed draw
    return items[min(n - 1, max(0, rank - 1))]


def when(rng: random.Random) -> datetime:
    """A time in the last ``DAYS`` days, later times a little more likely (the store grows)."""
    return NOW - timedelta(seconds=DAYS * 86400 * rng.random() ** 1.3)


# -- scratch database ---------------------------------------------------------------------------------------


@contextmanager
def scratch_database(size: str, keep: bool) -> Iterator[str]:
    name = f"ostinato_scale_{size.lower()}_{uuid.uuid4().hex[:8]}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate_database(url)
    try:
        yield url
    finally:
        if keep:
            console.print(f"kept {name}")
        else:
            admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def columns(spec: str) -> list[str]:
    return spec.split()


def raw_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def copy_rows(
    conn: psycopg.Connection[Any], table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> int:
    count = 0
    with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def fill(url: str, executions_n: int, patterns_n: int, seed: int = 7) -> Data:
    """COPY a store of the given size; returns the jobs, workspaces and patterns the reads will ask about."""
    rng = random.Random(seed)
    jobs = [hash_job(f"job-{n}") for n in range(max(10, executions_n // 100))]
    workspaces = [hash_workspace(f"/srv/work/ws-{n}") for n in range(max(5, executions_n // 500))]
    pids: list[str] = []
    with psycopg.connect(raw_url(url)) as conn:
        # patterns
        def pattern_rows() -> Iterator[tuple[Any, ...]]:
            for n in range(patterns_n):
                kind = PATTERN_TYPES[n % len(PATTERN_TYPES)]
                name = f"pattern {n} {rng.choice(VALIDATIONS)} {rng.randrange(10**6)}"
                description = f"description of pattern {n}"
                pid = pattern_id(kind, name)
                pids.append(pid)
                first = when(rng)
                last = first + (NOW - first) * rng.random()
                status = rng.choice(STATUSES)
                tags = [f"validation:{rng.choice(VALIDATIONS)}", *rng.sample(OUTCOME_TAGS, rng.randint(0, 2))]
                priority = 0.0 if status == "retired" else rng.random()
                yield (
                    pid,
                    kind,
                    name,
                    description,
                    rng.randint(1, 500),
                    first,
                    last,
                    last,
                    rng.randint(0, 50),
                    rng.randint(0, 20),
                    rng.random(),
                    rng.random() * 0.1,
                    f"do {n}",
                    json.dumps(tags),
                    priority,
                    status,
                    rng.choice(jobs),
                    rng.randint(1, 50),
                    rng.random(),
                    last if status == "validated" else None,
                    content_hash(kind, name, description),
                    rng.choice(INSTRUMENTS),
                )

        copy_rows(
            conn,
            "patterns",
            columns(
                "id pattern_type pattern_name description occurrence_count first_seen last_seen "
                "last_confirmed "
                "led_to_success_count led_to_failure_count effectiveness_score variance suggested_action "
                "context_tags priority_score quarantine_status provenance_job_hash provenance_sheet_num "
                "trust_score validated_at content_hash instrument_name"
            ),
            pattern_rows(),
        )

        exec_ids: list[str] = []

        def execution_rows() -> Iterator[tuple[Any, ...]]:
            for _ in range(executions_n):
                eid = new_id()
                exec_ids.append(eid)
                done = when(rng)
                retries = rng.choice([0, 0, 0, 0, 1, 1, 2, 3])
                rate = rng.choice([1.0, 1.0, 1.0, 0.5, 0.0, 0.75])
                codes = [zipf_choice(rng, ERROR_CODES)] if rng.random() < 0.2 else []
                yield (
                    eid,
                    zipf_choice(rng, workspaces, 0.7),
                    zipf_choice(rng, jobs, 0.7),
                    rng.randint(1, 40),
                    done - timedelta(seconds=60),
                    done,
                    60.0,
                    "failed" if rate == 0.0 else "completed",
                    retries,
                    retries == 0 and rate == 1.0,
                    rate,
                    max(0.0, rate - 0.1 * retries),
                    rng.choice(MODELS),
                    json.dumps(codes),
                )

        copy_rows(
            conn,
            "executions",
            columns(
                "id workspace_hash job_hash sheet_num started_at completed_at duration_seconds status "
                "retry_count "
                "success_without_retry validation_pass_rate confidence_score model error_codes"
            ),
            execution_rows(),
        )
        copy_rows(
            conn,
            "processed_messages",
            ["message_id", "kind", "processed_at"],
            ((str(uuid.uuid4()), "sheet_outcome", NOW) for _ in range(executions_n)),
        )
        copy_rows(
            conn,
            "pattern_applications",
            columns(
                "id pattern_id execution_id applied_at pattern_led_to_success retry_count_before "
                "retry_count_after "
                "grounding_confidence application_mode validation_passed"
            ),
            (
                (
                    new_id(),
                    zipf_choice(rng, pids),
                    rng.choice(exec_ids),
                    when(rng),
                    rng.random() < 0.65,
                    rng.randint(0, 2),
                    rng.randint(0, 2),
                    rng.random(),
                    rng.choice(["exploitation", "exploitation", "exploration"]),
                    rng.random() < 0.7,
                )
                for _ in range(2 * executions_n)
            ),
        )

        def recovery_rows() -> Iterator[tuple[Any, ...]]:
            for _ in range(executions_n // 5):
                at = when(rng)
                yield (
                    new_id(),
                    zipf_choice(rng, ERROR_CODES),
                    rng.uniform(5, 120),
                    rng.uniform(5, 120),
                    rng.random() < 0.7,
                    at,
                    rng.choice(MODELS),
                    at.hour,
                )

        copy_rows(
            conn,
            "error_recoveries",
            columns(
                "id error_code suggested_wait actual_wait recovery_success recorded_at model time_of_day"
            ),
            recovery_rows(),
        )
        copy_rows(
            conn,
            "escalation_decisions",
            columns(
                "id job_hash sheet_num confidence action guidance validation_pass_rate retry_count "
                "outcome_after_action recorded_at model"
            ),
            (
                (
                    new_id(),
                    rng.choice(jobs),
                    rng.randint(1, 40),
                    rng.random(),
                    rng.choice(ESCALATION_ACTIONS),
                    "guidance",
                    rng.random(),
                    rng.randint(0, 5),
                    rng.choice(ESCALATION_OUTCOMES),
                    when(rng),
                    rng.choice(MODELS),
                )
                for _ in range(executions_n // 20)
            ),
        )

        def budget_rows() -> Iterator[tuple[Any, ...]]:
            for job in jobs:
                at = when(rng)
                for seq in range(rng.randint(1, 40)):
                    at += timedelta(hours=rng.randint(1, 12))
                    yield (
                        new_id(),
                        job,
                        at,
                        seq + 1,
                        rng.uniform(0.05, 0.5),
                        rng.random(),
                        rng.choice(ADJUSTMENTS),
                        "scale benchmark",
                    )

        copy_rows(
            conn,
            "exploration_budget",
            columns(
                "id job_hash recorded_at seq budget_value entropy_at_time adjustment_type adjustment_reason"
            ),
            budget_rows(),
        )
        hours = DAYS * 24
        copy_rows(
            conn,
            "pattern_entropy_history",
            columns(
                "id calculated_at shannon_entropy max_possible_entropy diversity_index unique_pattern_count "
                "effective_pattern_count total_applications dominant_pattern_share threshold_exceeded"
            ),
            (
                (
                    new_id(),
                    NOW - timedelta(hours=h),
                    rng.uniform(2, 8),
                    10.0,
                    rng.random(),
                    patterns_n,
                    patterns_n // 3,
                    2 * executions_n,
                    rng.random() * 0.3,
                    rng.random() < 0.1,
                )
                for h in range(hours)
            ),
        )
        copy_rows(
            conn,
            "entropy_responses",
            columns("id job_hash recorded_at entropy_at_trigger threshold_used actions_taken budget_boosted"),
            (
                (new_id(), "global", NOW - timedelta(hours=6 * h), 0.2, 0.3, '["budget_boost"]', True)
                for h in range(hours // 6)
            ),
        )
        copy_rows(
            conn,
            "pattern_discovery_events",
            columns(
                "id pattern_id pattern_name pattern_type source_job_hash recorded_at expires_at "
                "effectiveness_score context_tags"
            ),
            (
                (
                    new_id(),
                    pid,
                    "discovered",
                    rng.choice(PATTERN_TYPES),
                    rng.choice(jobs),
                    at,
                    at + timedelta(seconds=300),
                    rng.random(),
                    '["validation:file_exists"]',
                )
                for pid in rng.sample(pids, min(len(pids), 2000))
                for at in [NOW - timedelta(seconds=rng.randint(0, 3600))]
            ),
        )
        copy_rows(
            conn,
            "rate_limit_events",
            columns("id error_code model recorded_at expires_at source_job_hash duration_seconds"),
            (
                (
                    new_id(),
                    zipf_choice(rng, ERROR_CODES),
                    rng.choice(MODELS),
                    at,
                    at + timedelta(seconds=60),
                    rng.choice(jobs),
                    60.0,
                )
                for _ in range(500)
                for at in [NOW - timedelta(seconds=rng.randint(0, 7200))]
            ),
        )
        # Two earlier drift measurements per pattern, as beat would have left them.
        copy_rows(
            conn,
            "pattern_drift",
            columns(
                "pattern_id measured_at window_size effectiveness_before effectiveness_after drift_magnitude "
                "drift_direction threshold_exceeded"
            ),
            (
                (
                    pid,
                    NOW - timedelta(days=d),
                    5,
                    rng.random(),
                    rng.random(),
                    rng.random() * 0.5,
                    "stable",
                    False,
                )
                for pid in pids
                for d in (1, 2)
            ),
        )
    with psycopg.connect(raw_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return Data(jobs=jobs, workspaces=workspaces, pattern_ids=pids)


# -- measurement --------------------------------------------------------------------------------------------


class StatementCounter:
    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def timed(call: Callable[[], Any], calls: int) -> tuple[float, float]:
    for _ in range(5):
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def preflight_reads(data: Data, rng: random.Random) -> dict[str, Callable[[Any], Any]]:
    """Each read with arguments drawn afresh per call (popular and rare codes, jobs, shapes)."""
    from ostinato.producers.preflight import AutoApply, PatternContext

    def context() -> PatternContext:
        return PatternContext(
            validation_types=rng.sample(VALIDATIONS, 2),
            instrument_name=rng.choice(INSTRUMENTS),
            auto_apply=AutoApply() if rng.random() < 0.5 else None,
        )

    def similar(p: Any) -> Any:
        shape = rng.randrange(5)
        job, ws, sheet = rng.choice(data.jobs), rng.choice(data.workspaces), rng.randint(1, 40)
        if shape == 0:
            return p.similar_executions(job_hash=job)
        if shape == 1:
            return p.similar_executions(workspace_hash=ws)
        if shape == 2:
            return p.similar_executions(sheet_num=sheet)
        if shape == 3:
            return p.similar_executions(job_hash=job, sheet_num=sheet)
        return p.similar_executions(workspace_hash=ws, sheet_num=sheet)

    return {
        "relevant_patterns": lambda p: p.relevant_patterns(context(), job_hash=rng.choice(data.jobs)),
        "learned_wait": lambda p: p.learned_wait(
            zipf_choice(rng, ERROR_CODES), 30.0, rng.choice([None, *MODELS])
        ),
        "exploration_budget": lambda p: p.exploration_budget(rng.choice([*data.jobs[:50], None])),
        "recent_discoveries": lambda p: p.recent_discoveries(
            exclude_job_hash=rng.choice(data.jobs), pattern_type=rng.choice([None, *PATTERN_TYPES])
        ),
        "similar_executions": similar,
        "optimal_execution_window": lambda p: p.optimal_execution_window(
            zipf_choice(rng, ERROR_CODES), rng.choice(MODELS)
        ),
        # Without a code the window aggregates every recovery: it grows with history (README "Scale").
        "optimal_execution_window, no code": lambda p: p.optimal_execution_window(None, rng.choice(MODELS)),
        "patterns_for_auto_apply": lambda p: p.patterns_for_auto_apply(
            context_tags=[f"validation:{rng.choice(VALIDATIONS)}"] if rng.random() < 0.5 else None
        ),
        "similar_escalations": lambda p: p.similar_escalations(rng.random(), rng.random()),
    }


def readmodel_reads(settings: Settings, store: Store, data: Data, calls: int) -> dict[str, str]:
    """The same reads through the Redis read model, when ``ostinato.producers.readmodel`` exists.

    The hook for the read model another engineer builds: it publishes one snapshot from ``store`` (under a
    key prefix of its own, deleted afterwards) and times ``ReadModelPreflight``; every read says "n/a" while
    the module is missing and the error when its API differs from the one assumed here.
    """
    names = list(preflight_reads(data, random.Random(0)))
    if importlib.util.find_spec("ostinato.producers.readmodel") is None:
        return dict.fromkeys([*names, "publish"], "n/a")
    prefix = f"ostinato-scale-{uuid.uuid4().hex[:8]}:"
    settings = settings.model_copy(update={"key_prefix": prefix})
    client = redis.Redis.from_url(settings.broker_url)
    found: dict[str, str] = {}
    try:
        producer_side: Any = importlib.import_module("ostinato.producers.readmodel")
        worker_side: Any = importlib.import_module("ostinato.workers.readmodel")
        began = time.perf_counter()
        worker_side.publish_read_model(store, client, settings)
        found["publish"] = f"{time.perf_counter() - began:.3f} s"
        preflight = producer_side.ReadModelPreflight(settings, clock=store.clock, rng=random.Random(3))
        try:
            for name, read in preflight_reads(data, random.Random(11)).items():
                p50, p99 = timed(functools.partial(read, preflight), calls)
                found[name] = f"{p50:.2f} / {p99:.2f}"
        finally:
            preflight.close()
    except Exception as error:  # the read model is another engineer's moving target
        console.print(f"[yellow]read model not measured[/]: {error!r}")
        return dict.fromkeys([*names, "publish"], f"n/a ({type(error).__name__})")
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    return found


def outcome_batch(data: Data, rng: random.Random, n: int = 1000) -> list[SheetOutcomeMessage]:
    messages = []
    for index in range(n):
        failed = rng.random() < 0.3
        done = NOW - timedelta(seconds=rng.randint(0, 3600))
        payload = {
            "execution_id": str(uuid.uuid4()),
            "sheet_id": f"sheet{index % 40 + 1}",
            "model": rng.choice(MODELS),
            "instrument_name": "claude_cli",
            "started_at": done - timedelta(seconds=42),
            "completed_at": done,
            "execution_duration": 42.0,
            "retry_count": rng.choice([0, 0, 0, 1, 2]),
            "final_status": "failed" if failed else "completed",
            "validation_pass_rate": 0.5 if failed else 1.0,
            "success_without_retry": not failed,
            "validation_results": [
                {
                    "validation_type": kind,
                    "passed": not failed or kind == "regex",
                    "failure_reason": "file not created during run" if failed and kind != "regex" else None,
                    "confidence": 0.9,
                }
                for kind in ("file_exists", "regex", "command")
            ],
            "error_history": [{"error_code": zipf_choice(rng, ERROR_CODES), "message": "rate limit"}]
            if failed
            else [],
            "patterns_applied": rng.sample(data.pattern_ids, rng.randint(0, 2)),
            "grounding_confidence": 0.85,
        }
        messages.append(
            SheetOutcomeMessage(
                workspace_hash=rng.choice(data.workspaces),
                job_hash=rng.choice(data.jobs),
                sent_at=done,
                payload=payload,
            )
        )
    return messages


def table_sizes(url: str) -> list[tuple[str, int, int]]:
    query = """
        SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'
        ORDER BY pg_total_relation_size(c.oid) DESC
    """
    with psycopg.connect(raw_url(url)) as conn:
        return [(name, int(rows), int(size)) for name, rows, size in conn.execute(query)]


def run_size(size: str, calls: int, keep: bool) -> dict[str, Any]:
    from ostinato.producers.preflight import Preflight, read_only_engine
    from ostinato.workers.ingest import apply_messages
    from ostinato.workers.maintenance import PASSES, TRUST, latest_drift

    executions_n, patterns_n = SIZES[size]
    figures: dict[str, Any] = {"reads": {}, "cli": {}, "passes": {}}
    with scratch_database(size, keep) as url:
        start = time.perf_counter()
        data = fill(url, executions_n, patterns_n)
        figures["fill_s"] = time.perf_counter() - start
        console.print(f"[bold]{size}[/]: filled in {figures['fill_s']:.1f} s")
        settings = Settings(database_url=url)
        clock = [NOW + timedelta(minutes=1)]
        rng = random.Random(11)

        reader = Store(read_only_engine(url), clock=lambda: clock[0])
        preflight = Preflight(settings, store=reader, rng=random.Random(3))
        for name, read in preflight_reads(data, rng).items():
            figures["reads"][name] = timed(functools.partial(read, preflight), calls)
        figures["readmodel"] = readmodel_reads(settings, reader, data, calls)

        engine = create_engine(url)
        counter = StatementCounter(engine)
        store = Store(engine, clock=lambda: clock[0])

        def measure(section: str, name: str, call: Callable[[], Any]) -> None:
            counter.count = 0
            began = time.perf_counter()
            call()
            figures[section][name] = (time.perf_counter() - began, counter.count)

        measure("cli", "stats", store.get_learning_statistics)
        measure("cli", "drift", lambda: latest_drift(store, 50))
        measure(
            "cli",
            "budget",
            lambda: (
                store.get_exploration_budget_statistics(None),
                store.get_exploration_budget_history(None, 20),
            ),
        )
        batch = outcome_batch(data, rng)
        measure("cli", "ingest 1,000 outcomes", lambda: apply_messages(store, batch))
        for name, run in PASSES.items():
            measure("passes", name, functools.partial(run, store, settings))
        clock[0] += timedelta(seconds=settings.maintenance_trust_period)
        measure("passes", "trust (next period)", lambda: PASSES[TRUST](store, settings))
        figures["tables"] = table_sizes(url)
        preflight.close()
        engine.dispose()
    return figures


def report(results: dict[str, dict[str, Any]]) -> None:
    sizes = list(results)
    reads = Table(
        "preflight read (ms)", *(f"{s} p50 / p99" for s in sizes), title="preflight reads, direct SQL"
    )
    for name in next(iter(results.values()))["reads"]:
        reads.add_row(
            name, *(f"{results[s]['reads'][name][0]:.2f} / {results[s]['reads'][name][1]:.2f}" for s in sizes)
        )
    console.print(reads)
    model = Table(
        "read model (ms)", *(f"{s} p50 / p99" for s in sizes), title="preflight reads, Redis read model"
    )
    for name in next(iter(results.values()))["readmodel"]:
        model.add_row(name, *(results[s]["readmodel"][name] for s in sizes))
    console.print(model)
    for section, title in (("cli", "CLI store calls and ingest"), ("passes", "maintenance passes")):
        table = Table(title, *(f"{s} s (statements)" for s in sizes), title=title)
        for name in next(iter(results.values()))[section]:
            table.add_row(
                name,
                *(f"{results[s][section][name][0]:.3f} ({results[s][section][name][1]})" for s in sizes),
            )
        console.print(table)
    for s in sizes:
        table = Table(
            "table", "rows", "MB", title=f"table sizes at {s} (filled in {results[s]['fill_s']:.0f} s)"
        )
        for name, rows, size in results[s]["tables"]:
            table.add_row(name, str(rows), f"{size / 2**20:.1f}")
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["S", "M"])
    parser.add_argument("--calls", type=int, default=200, help="Warm calls per preflight read.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch databases.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = {size: run_size(size, args.calls, args.keep) for size in args.sizes}
    report(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
