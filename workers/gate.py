"""Stop taking task messages while the database is away, instead of holding retries in memory.

A delivery that meets an absent database is retried at once (a new message in Redis, no countdown) and
trips this worker's gate: the consumer stops consuming its task queues, a thread probes the database every
second, and the queues are consumed again once the probe answers. Until then the messages wait in Redis,
not in the worker; the deliveries it had already prefetched fail fast and go back the same way. A gate that
trips again within a minute of reopening stays closed longer each time (up to a minute), so a database that
answers the probe but fails every delivery does not spin through their retries.

The consumer is not thread-safe, so the gate acts on it only from the thread that runs it: at once when a
retry is reported there (the prefork pool reports results in the consumer's event loop), otherwise on the
consumer's timer. The probe thread only sets an event.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import bootsteps
from sqlalchemy import Engine, create_engine, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from ostinato.schema.tables import processed_messages
from ostinato.settings import get_settings

log = structlog.get_logger(__name__)

TICK_SECONDS = 0.25
PROBE_INTERVAL_SECONDS = 1.0
PROBE_CONNECT_TIMEOUT_SECONDS = 2
"""libpq's smallest connect timeout: a database host that drops packets costs a probe this long."""
MAX_HOLD_SECONDS = 60.0
QUIET_SECONDS = 60.0
"""A trip this long after the gate reopened starts a new outage: its hold starts from zero again."""


def probe_engine(url: str) -> Engine:
    """A pool-less engine that gives up connecting quickly."""
    connect_args: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PROBE_CONNECT_TIMEOUT_SECONDS
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def database_answers(engine: Engine) -> bool:
    """Whether the store can be read: the database is up and migrated (a missing table is not ready)."""
    try:
        with engine.connect() as connection:
            connection.execute(select(literal(1)).select_from(processed_messages).limit(1))
    except SQLAlchemyError:
        return False
    return True


def hold_seconds(trips: int) -> float:
    """How long the gate stays closed at least after the ``trips``-th trip of one outage."""
    return min(MAX_HOLD_SECONDS, 2.0 ** (trips - 1) - 1)


class DatabaseGate:
    """Closes a Celery consumer's task queues on a database failure and reopens them when it answers."""

    def __init__(self, probe: Callable[[], bool]) -> None:
        self.probe = probe
        self.consumer: Any = None
        self.consumer_thread: int | None = None
        self.closed_queues: list[str] | None = None
        self.trips = 0
        self._tripped = threading.Event()
        self._answered = threading.Event()
        self._stop_probing = threading.Event()
        self._closed_at = 0.0
        self._reopen_at = 0.0
        self._opened_at = 0.0

    @property
    def is_closed(self) -> bool:
        return self.closed_queues is not None

    def trip(self) -> None:
        """A delivery failed for want of its database (any thread)."""
        self._tripped.set()
        if threading.get_ident() == self.consumer_thread:
            self.tick()

    def tick(self) -> None:
        """Close or reopen as the trips and the probe say; runs on the consumer's timer."""
        consumer = self.consumer
        if consumer is None or consumer.task_consumer is None:
            return
        if not self.is_closed:
            if self._tripped.is_set():
                self._close(consumer)
        elif self._answered.is_set() and time.monotonic() >= self._reopen_at:
            self._reopen(consumer)

    def stop(self) -> None:
        self._stop_probing.set()

    def _close(self, consumer: Any) -> None:
        if time.monotonic() - self._opened_at > QUIET_SECONDS:
            self.trips = 0
        self.trips += 1
        queues = [queue.name for queue in consumer.task_consumer.queues]
        for name in queues:
            consumer.cancel_task_queue(name)
        self.closed_queues = queues
        self._closed_at = time.monotonic()
        self._reopen_at = self._closed_at + hold_seconds(self.trips)
        self._answered.clear()
        self._stop_probing = threading.Event()
        prober = threading.Thread(
            target=self._probe_until_answered, args=(self._stop_probing,), name="ostinato-db-probe"
        )
        prober.daemon = True
        prober.start()
        log.warning("database_away_consuming_paused", queues=queues, trips=self.trips)

    def _reopen(self, consumer: Any) -> None:
        queues = self.closed_queues or []
        for name in queues:
            consumer.add_task_queue(name)
        self.closed_queues = None
        self._tripped.clear()
        self._opened_at = time.monotonic()
        paused = round(time.monotonic() - self._closed_at, 1)
        log.warning("database_back_consuming_resumed", queues=queues, paused_s=paused)

    def _probe_until_answered(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.probe():
                self._answered.set()
                return
            stop.wait(PROBE_INTERVAL_SECONDS)


class GateStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Binds the gate to the worker's consumer after each (re)connection and drives it from its timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.entry: Any = None

    def start(self, parent: Any) -> None:
        gate = current()
        gate.consumer = parent
        gate.consumer_thread = threading.get_ident()
        self._cancel()
        self.entry = parent.timer.call_repeatedly(TICK_SECONDS, gate.tick)

    def stop(self, parent: Any) -> None:
        self._cancel()

    def shutdown(self, parent: Any) -> None:
        self._cancel()
        current().stop()

    def _cancel(self) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None


@functools.cache
def current() -> DatabaseGate:
    """This worker's gate (its consumer runs in the main process; pool children never use it)."""
    engine = probe_engine(get_settings().database_url)
    return DatabaseGate(lambda: database_answers(engine))
