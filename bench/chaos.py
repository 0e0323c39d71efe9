"""Faults injected into a real deployment, and what each one cost: ``python bench/chaos.py``.

Every scenario runs real processes (producer processes on the producer library, ``celery`` workers) against a
Redis and a PostgreSQL this benchmark starts on free ports (the test suite's ``redis_server.py`` and
``postgres_server.py``), and kills or restarts only those.
Each outcome a producer publishes applies one probe pattern, so a message applied twice would show as a
second application row. Per scenario it prints what was sent (calls that returned an id), stored, lost,
doubled and dead-lettered, and how long the store took to catch up after the fault ended.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from ostinato.broker import INGEST_QUEUE
from ostinato.database import migrate_database
from ostinato.schema.tables import dead_letters, executions, pattern_applications
from ostinato.workers.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the suite's private servers
from postgres_server import PostgresServer
from redis_server import RedisServer

HERE = Path(__file__).resolve().parent
PROBE = ("chaos_probe", "applied by every outcome")
SETTLE_TIMEOUT = 180.0
STEMS = ("test", "file", "error", "build", "sheet", "retry")
VOCABULARY = [f"{stem}{n}" for stem in STEMS for n in range(40)]
"""Words of the producers' output tails: text that compresses about as much as real output does."""


@dataclass
class Row:
    scenario: str
    sent: int
    stored: int
    lost: int
    doubled: int
    dead_lettered: int
    recovery_seconds: float | None
    notes: list[str] = field(default_factory=list)


class Deployment:
    """One scenario's Redis, database, key prefix and spool, and the processes that use them."""

    def __init__(self, name: str, postgres: PostgresServer, *, aof: bool = False) -> None:
        self.name = name
        self.redis = RedisServer(persistent=aof)
        self.redis.start()
        self.postgres = postgres
        self.database_url = postgres.url(f"chaos_{name}_{uuid.uuid4().hex[:6]}")
        migrate_database(self.database_url)
        self.engine: Engine = create_engine(self.database_url, pool_pre_ping=True)
        self.probe = Store(self.engine).record_pattern(PROBE[0], PROBE[1], "chaos benchmark probe")
        self.work = Path(tempfile.mkdtemp(prefix=f"ostinato-chaos-{name}-"))
        self.ids = self.work / "sent.ids"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OSTINATO_")},
            "OSTINATO_BROKER_URL": self.redis.url,
            "OSTINATO_DATABASE_URL": self.database_url,
            "OSTINATO_KEY_PREFIX": f"chaos-{name}:",
            "OSTINATO_SPOOL_DIR": str(self.work / "spool"),
            "PYTHONPATH": str(HERE),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def worker(self, concurrency: int = 2, **overrides: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "-A", "ostinato.workers", "worker", "-c", str(concurrency)]
        command += ["-Q", "ostinato.ingest,ostinato.maintenance", "-l", "WARNING"]
        command += ["-n", f"chaos-{uuid.uuid4().hex[:6]}@%h"]
        return self._start(command, "worker", overrides)

    def producer(self, count: int, *, pause: float = 0.0, **overrides: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(HERE / "chaos.py"), "produce", "--count", str(count)]
        command += ["--ids", str(self.ids), "--probe", self.probe, "--pause", str(pause)]
        return self._start(command, "producer", overrides)

    def _start(self, command: list[str], role: str, overrides: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {**self.env, **{f"OSTINATO_{k.upper()}": v for k, v in overrides.items()}}
        log = (self.work / f"{role}-{len(self.processes)}.log").open("ab")
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def sent(self) -> set[str]:
        return set(self.ids.read_text().split()) if self.ids.exists() else set()

    def stored(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(select(executions.c.id)).scalars())

    def row(self, recovery: float | None, *notes: str) -> Row:
        sent, stored = self.sent(), self.stored()
        with self.engine.connect() as connection:
            applications = connection.execute(
                select(func.count())
                .select_from(pattern_applications)
                .where(pattern_applications.c.pattern_id == self.probe)
            ).scalar_one()
            letters = connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()
        return Row(
            self.name,
            len(sent),
            len(stored & sent),
            len(sent - stored),
            int(applications) - len(stored),
            int(letters),
            recovery,
            list(notes),
        )

    def queued(self) -> int:
        try:
            with self.redis.client() as client:
                return int(client.llen(f"chaos-{self.name}:{INGEST_QUEUE}"))
        except redis.RedisError:
            return -1

    def held(self) -> int:
        with self.redis.client() as client:
            return int(client.hlen(f"chaos-{self.name}:unacked"))

    def settle(self, what: Callable[[], bool] | None = None, timeout: float = SETTLE_TIMEOUT) -> float:
        """Seconds until every sent outcome is stored (and ``what`` holds); raises after ``timeout``."""
        start = time.monotonic()
        wait_for(
            lambda: self.sent() <= self.stored() and (what is None or what()),
            timeout,
            "the store to catch up",
        )
        return time.monotonic() - start

    def close(self) -> None:
        for process in self.processes:
            kill_group(process)
        self.engine.dispose()
        admin = create_engine(self.postgres.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            name = self.database_url.rsplit("/", 1)[1]
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        self.redis.cleanup()
        shutil.rmtree(self.work, ignore_errors=True)


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


@contextmanager
def deployment(name: str, postgres: PostgresServer, **options: bool) -> Iterator[Deployment]:
    setup = Deployment(name, postgres, **options)
    try:
        yield setup
    finally:
        setup.close()


# -- scenarios --------------------------------------------------------------------------------------------

SPOOL_BYTES = "200000"
"""A spool far smaller than the outage's outcomes need, so the full-spool policy decides."""
IN_MEMORY_QUEUE = 20_000
"""The sender's in-memory queue: callers meet the full-spool policy only once it is full too."""


def spool_full(postgres: PostgresServer, policy: str, count: int) -> Row:
    """Redis is away while a producer publishes more than its spool holds; then Redis comes back."""
    with deployment(f"spool_full_{policy}", postgres) as d:
        d.redis.stop()
        producer = d.producer(
            IN_MEMORY_QUEUE + count,
            spool_max_bytes=SPOOL_BYTES,
            spool_full_policy=policy,
            spool_block_seconds="120",
        )
        time.sleep(8)
        d.redis.start()
        back = time.monotonic()
        d.worker()
        producer.wait(SETTLE_TIMEOUT)
        d.settle()
        return d.row(time.monotonic() - back, producer_report(d))


def worker_sigkill(postgres: PostgresServer, count: int) -> Row:
    """A whole worker is SIGKILLed while it holds messages; a new one starts at once, default settings."""
    with deployment("worker_sigkill", postgres) as d:
        d.producer(count, pause=0.001).wait(SETTLE_TIMEOUT)  # small batches: many task messages
        first = d.worker()
        wait_for(lambda: d.held() > 0 and len(d.stored()) > 0, 60, "the worker to hold messages")
        held = d.held()
        kill_group(first)
        killed = time.monotonic()
        d.worker()
        d.settle(lambda: d.held() == 0 and d.queued() == 0)
        return d.row(time.monotonic() - killed, f"{held} task messages held at the kill")


def redis_restart(postgres: PostgresServer, count: int) -> Row:
    """Redis (with AOF) restarts while the worker holds messages; the worker must still be running after."""
    with deployment("redis_restart_aof", postgres, aof=True) as d:
        worker = d.worker()
        producer = d.producer(count, pause=0.002)
        wait_for(lambda: d.held() > 0, 60, "the worker to hold messages")
        d.redis.stop()
        d.redis.start()
        back = time.monotonic()
        producer.wait(SETTLE_TIMEOUT)
        d.settle()
        alive = worker.poll() is None
        return d.row(time.monotonic() - back, "worker alive afterwards" if alive else "WORKER EXITED")


def postgres_outage(postgres: PostgresServer, count: int, outage: float = 30.0) -> Row:
    """PostgreSQL stops for ``outage`` seconds while outcomes arrive; the worker's memory is watched."""
    with deployment("postgres_stop_30s", postgres) as d:
        worker = d.worker()
        producer = d.producer(count, pause=0.01)
        wait_for(lambda: len(d.stored()) > 0, 60, "the first outcome stored")
        time.sleep(2)
        before = tree_rss_mb(worker.pid)
        peak = before
        postgres.stop()
        until = time.monotonic() + outage
        while time.monotonic() < until:
            peak = max(peak, tree_rss_mb(worker.pid))
            time.sleep(0.5)
        postgres.start()
        back = time.monotonic()
        producer.wait(SETTLE_TIMEOUT)
        d.settle()
        peak = max(peak, tree_rss_mb(worker.pid))
        return d.row(
            time.monotonic() - back,
            f"worker RSS {before:.0f} MB, at most {peak:.0f} MB (+{peak - before:.0f})",
        )


def producer_sigkill(postgres: PostgresServer, count: int) -> Row:
    """A durable-mode producer is SIGKILLed mid-stream; the next producer on its spool resends the rest."""
    with deployment("producer_sigkill_durable", postgres) as d:
        d.worker()
        producer = d.producer(count, pause=0.0005, durable="true")
        wait_for(lambda: len(d.sent()) >= count // 3, 60, "a third of the calls")
        kill_group(producer)
        killed = time.monotonic()
        calls = len(d.sent())
        d.producer(0, durable="true").wait(SETTLE_TIMEOUT)
        d.settle()
        return d.row(time.monotonic() - killed, f"killed after {calls} of {count} calls returned")


def overload(postgres: PostgresServer, count: int, bound: int = 20, producers: int = 4) -> Row:
    """Producers at full speed against one slow worker, with a small queue bound."""
    with deployment("overload", postgres) as d:
        worker = d.worker(concurrency=1, ingest_queue_bound=str(bound))
        running = [d.producer(count, ingest_queue_bound=str(bound)) for _ in range(producers)]
        deepest = 0
        while any(p.poll() is None for p in running):
            deepest = max(deepest, d.queued())
            time.sleep(0.05)
        start = time.monotonic()
        while not d.sent() <= d.stored():
            deepest = max(deepest, d.queued())
            time.sleep(0.05)
            if time.monotonic() - start > SETTLE_TIMEOUT:
                break
        d.settle()
        assert worker.poll() is None
        return d.row(None, f"queue depth at most {deepest} task messages (bound {bound})")


def producer_report(d: Deployment) -> str:
    """The last line the first producer printed: its refusals, longest call and spool figures."""
    logs = sorted(d.work.glob("producer-*.log"))
    lines = logs[0].read_text().strip().splitlines() if logs else []
    return lines[-1] if lines else "(no report)"


# -- the producer process ---------------------------------------------------------------------------------


def produce(count: int, ids: Path, probe: str, pause: float) -> None:
    """Publish ``count`` outcomes; each id is appended to ``ids`` as soon as its call returns."""
    from ostinato.producers import Client
    from ostinato.producers.spool import SpoolFull

    client = Client("chaos-job", "/srv/chaos/workspace")
    ledger = os.open(ids, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    words = random.Random(count)
    refused = 0
    longest = 0.0
    for n in range(count):
        execution_id = str(uuid.uuid4())
        outcome = {
            "execution_id": execution_id,
            "sheet_id": f"sheet{n}",
            "sheet_num": n,
            "started_at": datetime.now(UTC),
            "validation_pass_rate": 1.0,
            "success_without_retry": n % 3 != 0,
            "patterns_applied": [probe],
            "stdout_tail": " ".join(words.choices(VOCABULARY, k=400)),
        }
        started = time.monotonic()
        try:
            client.record_outcome(outcome)
        except SpoolFull:
            refused += 1
            continue
        finally:
            longest = max(longest, time.monotonic() - started)
        os.write(ledger, f"{execution_id}\n".encode())
        if pause:
            time.sleep(pause)
    flushed = client.flush(120)
    stats = client.stats()
    spooled = stats["spooled"] + stats["journaled"]
    print(
        f"{refused} calls refused (SpoolFull), longest call {longest:.1f} s, {spooled} spooled, "
        f"{stats['dropped']} dropped, flush {'True' if flushed else 'False'}",
        flush=True,
    )
    client.close()


SCENARIOS: dict[str, Callable[[PostgresServer, int], Row]] = {
    "spool_full_block": lambda pg, n: spool_full(pg, "block", n),
    "spool_full_raise": lambda pg, n: spool_full(pg, "raise", n),
    "worker_sigkill": worker_sigkill,
    "redis_restart_aof": redis_restart,
    "postgres_stop_30s": postgres_outage,
    "producer_sigkill_durable": producer_sigkill,
    "overload": overload,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the scenarios (the default)")
    run.add_argument("scenarios", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    run.add_argument("--outcomes", type=int, default=3000)
    producer = sub.add_parser("produce")
    producer.add_argument("--count", type=int, required=True)
    producer.add_argument("--ids", type=Path, required=True)
    producer.add_argument("--probe", required=True)
    producer.add_argument("--pause", type=float, default=0.0)
    argv = sys.argv[1:]
    args = parser.parse_args(argv if argv[:1] in (["run"], ["produce"]) else ["run", *argv])
    if args.command == "produce":
        produce(args.count, args.ids, args.probe, args.pause)
        return
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    postgres = PostgresServer()
    postgres.start()
    rows = []
    try:
        for name in args.scenarios or SCENARIOS:
            print(f"-- {name}", flush=True)
            row = SCENARIOS[name](postgres, args.outcomes)
            rows.append(row)
            print_rows([row])
    finally:
        postgres.cleanup()
    print("\nall scenarios:")
    print_rows(rows)


def print_rows(rows: list[Row]) -> None:
    columns = ("sent", 6), ("stored", 6), ("lost", 5), ("doubled", 7), ("dead", 5), ("recovery s", 10)
    print(f"{'scenario':<26} " + " ".join(f"{name:>{width}}" for name, width in columns) + "  notes")
    for r in rows:
        recovery = "" if r.recovery_seconds is None else f"{r.recovery_seconds:.1f}"
        print(
            f"{r.scenario:<26} {r.sent:>6} {r.stored:>6} {r.lost:>5} {r.doubled:>7} {r.dead_lettered:>5} "
            f"{recovery:>10}  {'; '.join(r.notes)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
