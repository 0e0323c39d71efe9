"""Where the demo runs: on the servers (a Celery worker, beat and runner processes) or all in this process.

Both give the demo the same four things: a store to read, runners started on the producer library, live
discoveries, and how much is waiting to be applied.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE
from ostinato.demo.runner import RunnerSpec, run_runner
from ostinato.embedded import Embedded
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.settings import Settings, redact_url
from ostinato.workers.store import Store

DEMO_PERIODS = {
    "entropy": 4.0,
    "budget": 4.0,
    "drift": 4.0,
    "trust": 2.0,
    "priority": 4.0,
    "expiry": 10.0,
    "retention": 60.0,
}
"""Maintenance periods in seconds for the demo: a minute-long run sees every pass several times."""
PROBE_TIMEOUT = 2
TROUBLE_LINES = 30

OnDiscovery = Callable[[PatternDiscoveryEvent], object]


class Alive(Protocol):
    """A runner thread or process."""

    def is_alive(self) -> bool: ...


class Stoppable(Protocol):
    def stop(self, timeout: float = ...) -> None: ...


class Backend(Protocol):
    mode: str
    settings: Settings
    store: Store
    report: Any
    """Where runners put their events (a queue the demo drains)."""
    embedded: str | None
    """The embedded store's path, for the runners' clients; None on the servers."""

    def start_runner(self, spec: RunnerSpec) -> Alive: ...
    def subscribe(self, callback: OnDiscovery) -> Stoppable: ...
    def waiting(self) -> int: ...
    def trouble(self) -> str:
        """Where to look when outcomes were not applied in time."""
        ...

    def close(self) -> None: ...


DEMO_DRIFT = {"drift_window": 30, "drift_threshold": 0.3}
"""The demo's runners apply a pattern hundreds of times a minute, and drift is measured every few
seconds: over the default window of 5 applications one unlucky failure is a drift of 0.2, and even windows
of 20 retired a good pattern now and then (for good). Over 30, 0.3 is about four standard deviations."""


def demo_settings(settings: Settings) -> Settings:
    periods = {f"maintenance_{name}_period": seconds for name, seconds in DEMO_PERIODS.items()}
    return settings.model_copy(update={**periods, **DEMO_DRIFT})


def why_no_servers(settings: Settings) -> str | None:
    """None when Redis and PostgreSQL both answer at the configured URLs, else what did not answer."""
    if make_url(settings.database_url).get_backend_name() != "postgresql":
        return f"the configured store is {redact_url(settings.database_url)}"
    try:
        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT
        )
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError):
        return f"Redis does not answer at {redact_url(settings.broker_url)}"
    server = make_url(settings.database_url).set(database="postgres")
    engine = create_engine(server, connect_args={"connect_timeout": PROBE_TIMEOUT})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return f"PostgreSQL does not answer at {redact_url(settings.database_url)}"
    finally:
        engine.dispose()
    return None


class EmbeddedBackend:
    """Everything in this process: runners are threads, the store a SQLite file."""

    mode = "embedded"

    def __init__(self, settings: Settings, path: Path) -> None:
        self.runtime = Embedded.shared(path, demo_settings(settings))
        self.settings = self.runtime.settings
        self.store = self.runtime.store
        self.embedded: str | None = str(path)
        self.report: queue.Queue[Any] = queue.Queue()

    def start_runner(self, spec: RunnerSpec) -> threading.Thread:
        thread = threading.Thread(target=run_runner, args=(spec, self.report), daemon=True)
        thread.start()
        return thread

    def subscribe(self, callback: OnDiscovery) -> Stoppable:
        return self.runtime.subscribe(None, callback)

    def waiting(self) -> int:
        return self.runtime.sender.stats()["in_memory"]

    def trouble(self) -> str:
        return f"the embedded delivery's counts: {self.runtime.sender.stats()}"

    def close(self) -> None:
        self.runtime.release()


class ServerBackend:
    """The distributed shape: a process per runner, a Celery worker and beat, Redis and PostgreSQL."""

    mode = "servers"
    embedded: str | None = None

    def __init__(self, settings: Settings, *, concurrency: int = 2) -> None:
        from ostinato.database import migrate_database

        self.settings = demo_settings(settings)
        migrate_database(self.settings.database_url)
        self.store = Store.from_url(self.settings.database_url)
        self._context = multiprocessing.get_context("spawn")
        self.report = self._context.Queue()
        self._redis = redis.Redis.from_url(self.settings.broker_url, socket_timeout=5)
        self._workdir = tempfile.TemporaryDirectory(prefix="ostinato-demo-")
        self.log_path = Path(self._workdir.name) / "celery.log"
        env = {**os.environ, **_environment(self.settings)}
        celery = [sys.executable, "-m", "celery", "-A", "ostinato.workers"]
        log = self.log_path.open("ab")
        self._services = [
            subprocess.Popen(
                [
                    *celery,
                    "worker",
                    *("-Q", f"{INGEST_QUEUE},{MAINTENANCE_QUEUE}", "-c", str(concurrency), "-l", "WARNING"),
                    *("-n", f"ostinato-demo-{os.getpid()}@%h", "--without-mingle"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [*celery, "beat", "-l", "WARNING", "-s", str(Path(self._workdir.name) / "beat-schedule")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        ]
        log.close()

    def start_runner(self, spec: RunnerSpec) -> Alive:
        process = self._context.Process(target=run_runner, args=(spec, self.report), name=spec.plan.name)
        process.start()
        return process

    def subscribe(self, callback: OnDiscovery) -> Stoppable:
        from ostinato.producers.subscriber import subscribe

        return subscribe(None, settings=self.settings, callback=callback)

    def waiting(self) -> int:
        """Task messages queued for the workers (each a batch of envelopes)."""
        try:
            return int(self._redis.llen(f"{self.settings.key_prefix}{INGEST_QUEUE}"))
        except redis.RedisError:
            return -1

    def trouble(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-TROUBLE_LINES:]
        return "the last lines the Celery worker and beat logged:\n" + "\n".join(lines)

    def close(self) -> None:
        for service in self._services:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
        for service in self._services:
            try:
                service.wait(15)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
        self.store.engine.dispose()
        self._redis.close()
        self.report.close()
        self._workdir.cleanup()


def _environment(settings: Settings) -> dict[str, str]:
    """The settings as ``OSTINATO_*`` variables, for the worker and beat processes."""
    values = settings.model_dump(mode="json")
    return {f"OSTINATO_{name.upper()}": str(value) for name, value in values.items()}
