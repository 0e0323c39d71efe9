"""Two real ``celery beat`` processes by mistake, one maintenance worker: every pass acts once per period.

The processes get this run's database and a key prefix of their own (so no other worker of the run takes
their messages), 2-second periods and no entropy cooldown, so every pass leaves a countable trace each period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery_process import group_running, wait_for
from conftest import KEY_PREFIX
from sqlalchemy import Engine, func, select

from ostinato.broker import MAINTENANCE_QUEUE
from ostinato.schema.tables import (
    entropy_responses,
    exploration_budget,
    maintenance_runs,
    pattern_drift,
    pattern_entropy_history,
)
from ostinato.settings import Settings
from ostinato.workers import maintenance
from ostinato.workers.beat import beat_schedule
from ostinato.workers.store import ApplicationInput, Store

pytestmark = pytest.mark.slow

PERIOD = 2
PERIODS_TO_RUN = 3


@contextlib.contextmanager
def process(command: list[str], log_path: Path, env: Mapping[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess in its own process group, SIGKILLed and reaped with all its children on leaving."""
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        wait_for(lambda: not group_running(child.pid), 10, f"process group {child.pid} to die")


def celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "ostinato.workers", *args]


def seed(store: Store) -> None:
    """One applied pattern (diversity 0, drifting) and a job that ran just now (its budget is adjusted)."""
    pid = store.record_pattern("validation_failure", "beat probe")
    outcomes = [True] * 5 + [False] * 5
    store.record_pattern_applications([ApplicationInput(pid, ok, store.now()) for ok in outcomes])
    store.record_execution("ws", "job-beat", 1)


def table_count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def runs_by_task(engine: Engine) -> Counter[str]:
    """Passes that ran, by task; each claimed one whole 2-second period (one row per task and period)."""
    with engine.connect() as connection:
        rows = connection.execute(select(maintenance_runs.c.task, maintenance_runs.c.period_start)).all()
    assert all(row.period_start.timestamp() % PERIOD == 0 for row in rows)
    return Counter(row.task for row in rows)


def test_schedule_covers_every_pass_at_its_period() -> None:
    schedule = beat_schedule(Settings(maintenance_drift_period=7.5))
    assert set(schedule) == {f"ostinato.maintenance.{name}" for name in maintenance.PASSES}
    drift = schedule["ostinato.maintenance.drift"]
    assert drift["task"] == "ostinato.maintenance.drift"
    assert drift["schedule"].total_seconds() == 7.5
    assert drift["options"] == {"expires": 7.5}
    from ostinato.workers import app

    assert app.conf.beat_schedule.keys() == schedule.keys()
    assert app.amqp.router.route({}, "ostinato.maintenance.trust")["queue"].name == MAINTENANCE_QUEUE


def test_two_beats_one_effect_per_period(
    pg_store: Store, pg_engine: Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``pg_store`` empties the database; the seed uses the real clock, as the subprocesses do."""
    seed(Store(pg_engine))
    periods = {f"OSTINATO_MAINTENANCE_{name.upper()}_PERIOD": str(PERIOD) for name in maintenance.PASSES}
    env = {
        **os.environ,
        **periods,
        "OSTINATO_KEY_PREFIX": f"{KEY_PREFIX}beat-{uuid.uuid4().hex[:8]}:",
        "OSTINATO_ENTROPY_COOLDOWN_SECONDS": "0",
    }
    worker_name = f"maintenance-{uuid.uuid4().hex[:8]}"
    worker_log = tmp_path / "worker.log"
    worker_command = celery("worker", "-Q", MAINTENANCE_QUEUE, "-c", "2", "-P", "prefork", "-l", "INFO")
    with process([*worker_command, "-n", f"{worker_name}@%h"], worker_log, env) as worker:

        def ready() -> bool:
            assert worker.poll() is None, worker_log.read_text()[-4000:]
            return " ready." in worker_log.read_text(errors="replace")

        wait_for(ready, 30, "the maintenance worker")
        with contextlib.ExitStack() as beats:
            for n in (1, 2):
                home = tmp_path / f"beat{n}"
                home.mkdir()
                command = celery(
                    "beat", "-s", str(home / "schedule"), "--pidfile", str(home / "beat.pid"), "-l", "INFO"
                )
                beats.enter_context(process(command, home / "beat.log", env))
            wait_for(
                lambda: min(runs_by_task(pg_engine)[name] for name in maintenance.PASSES) >= PERIODS_TO_RUN,
                PERIOD * (PERIODS_TO_RUN + 6),
                f"{PERIODS_TO_RUN} periods of every pass",
            )
        time.sleep(PERIOD)  # the worker finishes what the beats sent last

    runs = runs_by_task(pg_engine)
    assert table_count(pg_engine, pattern_entropy_history) == runs["entropy"]
    assert table_count(pg_engine, entropy_responses) == runs["entropy"]
    assert (
        table_count(pg_engine, exploration_budget, exploration_budget.c.job_hash == "job-beat")
        == runs["budget"]
    )
    assert (
        table_count(pg_engine, exploration_budget, exploration_budget.c.job_hash == "daemon-entropy-check")
        == runs["entropy"]
    )
    assert table_count(pg_engine, pattern_drift) == runs["drift"]

    sent = Counter[str]()
    for n in (1, 2):
        beat_log = (tmp_path / f"beat{n}" / "beat.log").read_text(errors="replace")
        sent.update(re.findall(r"Sending due task (ostinato\.maintenance\.\w+)", beat_log))
        assert "Sending due task ostinato.maintenance.entropy" in beat_log
    received = Counter(
        re.findall(
            r"Task (ostinato\.maintenance\.\w+)\[[-\w]+\] received", worker_log.read_text(errors="replace")
        )
    )
    assert received <= sent
    assert sum(received.values()) > sum(runs.values())  # both beats' messages arrived; duplicates did nothing
