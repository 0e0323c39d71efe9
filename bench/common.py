"""Shared scaffolding for the benchmarks: a throwaway database and key prefix, and worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from ostinato.database import migrate_database

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "OSTINATO_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("OSTINATO_BROKER_URL", "redis://127.0.0.1:6379/0")


@contextmanager
def isolated_environment(name: str) -> Iterator[dict[str, str]]:
    """A fresh migrated database and a Redis key prefix of their own; both removed afterwards."""
    run = uuid.uuid4().hex[:8]
    database = f"ostinato_bench_{name}_{run}"
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    prefix = f"ostinato-bench-{run}:"
    spool = f"/tmp/ostinato-bench-spool-{run}"
    env = {
        **os.environ,
        "OSTINATO_DATABASE_URL": url,
        "OSTINATO_BROKER_URL": BROKER_URL,
        "OSTINATO_KEY_PREFIX": prefix,
        "OSTINATO_SPOOL_DIR": spool,
    }
    os.environ.update(env)
    migrate_database(url)
    try:
        yield env
    finally:
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        client = redis.Redis.from_url(BROKER_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        shutil.rmtree(spool, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 when it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            found += _descendants(int(child))
    return found


def _named(name: str) -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                pids.append(int(comm.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


class CpuMeter:
    """CPU seconds spent by the worker process tree, PostgreSQL and Redis between ``start`` and ``stop``."""

    def __init__(self, worker_pid: int) -> None:
        self._groups: dict[str, Callable[[], list[int]]] = {
            "workers": lambda: _descendants(worker_pid),
            "postgres": lambda: _named("postgres"),
            "redis": lambda: _named("redis-server"),
        }
        self._start: dict[int, float] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> None:
        self._start = {pid: _cpu_seconds(pid) for pids in self._groups.values() for pid in pids()}

    def stop(self) -> dict[str, float]:
        for group, pids in self._groups.items():
            self.seconds[group] = sum(_cpu_seconds(pid) - self._start.get(pid, 0.0) for pid in pids())
        return self.seconds


@contextmanager
def worker_process(env: dict[str, str], app: str, queue: str, concurrency: int) -> Iterator[CpuMeter]:
    """A real ``celery worker`` subprocess, killed with its pool at the end; yields its CPU meter."""
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-c", str(concurrency)]
    loglevel = os.environ.get("OSTINATO_BENCH_LOGLEVEL", "WARNING")
    command += ["-P", "prefork", "-l", loglevel, "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]
    env = {**env, "PYTHONPATH": str(ROOT / "bench")}
    process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    try:
        yield CpuMeter(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until(condition: Callable[[], bool], timeout: float = 600.0, interval: float = 0.02) -> float:
    """Poll until ``condition`` holds; returns the monotonic time it was first seen to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark did not finish in time")
        time.sleep(interval)
    return time.monotonic()
