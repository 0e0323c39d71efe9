"""Shared scaffolding for the benchmarks: a throwaway database and key prefix, and worker processes."""

from __future__ import annotations

import os
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
    env = {
        **os.environ,
        "OSTINATO_DATABASE_URL": url,
        "OSTINATO_BROKER_URL": BROKER_URL,
        "OSTINATO_KEY_PREFIX": prefix,
        "OSTINATO_SPOOL_DIR": f"/tmp/ostinato-bench-spool-{run}",
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


@contextmanager
def worker_process(env: dict[str, str], app: str, queue: str, concurrency: int) -> Iterator[None]:
    """A real ``celery worker`` subprocess, killed with its pool at the end."""
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-c", str(concurrency)]
    loglevel = os.environ.get("OSTINATO_BENCH_LOGLEVEL", "WARNING")
    command += ["-P", "prefork", "-l", loglevel, "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]
    env = {**env, "PYTHONPATH": str(ROOT / "bench")}
    process = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    try:
        yield
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
