"""Publishing the preflight read model (``ostinato.producers.readmodel``) to Redis after commits.

A worker process that committed asks for a publish (``request_publish``); a background thread of that process
publishes at most once per ``MIN_INTERVAL_S``, and not at all when a snapshot taken after its last commit is
already published (by any worker). Across workers, a throttle key lets one snapshot be taken at a time and
at most one per interval; a worker whose commit is not covered yet tries again when the throttle ends. So a
committed change is in Redis within about ``MIN_INTERVAL_S`` plus one or two snapshots' time, and the
database answers at most one snapshot query at a time whatever the number of workers.

Publishing is off unless ``OSTINATO_READ_MODEL_PUBLISH`` is set (``1``/``true``/``on``): runners read
through SQL by default, and a snapshot of every pattern is not free.

Sections and their bounds: every pattern (the selection needs all of them); the recoveries' columns that
learned waits and windows aggregate (all rows: the sample count covers every success); the latest budget
per job; unexpired discoveries; the latest ``RECENT_ROWS`` executions and escalation decisions.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
import structlog
from sqlalchemy import Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from ostinato.producers.readmodel import Keys, encode, keys, memory_store, tables
from ostinato.schema.tables import (
    error_recoveries,
    escalation_decisions,
    executions,
    exploration_budget,
    pattern_discovery_events,
)
from ostinato.settings import Settings
from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

MIN_INTERVAL_S = 0.5
RECENT_ROWS = 5_000
ENV_SWITCH = "OSTINATO_READ_MODEL_PUBLISH"
HOLD_MS = 30_000
"""Longest a snapshot may hold the throttle (a worker that dies taking one delays the next this long)."""

_PUBLISH = """
local previous = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[2]) <= previous then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], version)
return version
"""


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() in {"1", "true", "on", "yes"}


def _queries(store: Store) -> dict[str, Select[Any]]:
    now = store.clock()
    latest_budget = (
        select(
            exploration_budget,
            func.row_number()
            .over(
                partition_by=exploration_budget.c.job_hash,
                order_by=(
                    exploration_budget.c.recorded_at.desc(),
                    exploration_budget.c.seq.desc(),
                    exploration_budget.c.id.desc(),
                ),
            )
            .label("rank"),
        )
    ).subquery()
    budget_columns = [latest_budget.c[column.name] for column in exploration_budget.columns]
    return {
        "patterns": select(tables()["patterns"]),
        "error_recoveries": select(error_recoveries),
        "exploration_budget": select(*budget_columns).where(latest_budget.c.rank == 1),
        "pattern_discovery_events": select(pattern_discovery_events).where(
            pattern_discovery_events.c.expires_at > now
        ),
        "executions": select(executions)
        .order_by(executions.c.completed_at.desc(), executions.c.id.desc())
        .limit(RECENT_ROWS),
        "escalation_decisions": select(escalation_decisions)
        .order_by(escalation_decisions.c.recorded_at.desc(), escalation_decisions.c.id.desc())
        .limit(RECENT_ROWS),
    }


def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The read model's rows, read in one transaction."""
    with store.engine.connect() as connection:
        return {
            name: [dict(row) for row in connection.execute(query).mappings()]
            for name, query in _queries(store).items()
        }


def publish_read_model(store: Store, client: redis.Redis, settings: Settings) -> int:
    """Take a snapshot now and publish it; the new version, or 0 when a later snapshot was already there."""
    names = keys(settings)
    taken_at = time.time()
    copy = memory_store(snapshot(store))
    try:
        blob = encode(copy)
    finally:
        copy.engine.dispose()
    version = client.eval(
        _PUBLISH, 3, names.snapshot, names.version, names.taken_at, blob, repr(taken_at), names.channel
    )
    log.debug("read_model_published", version=version, bytes=len(blob), seconds=time.time() - taken_at)
    return int(version)


class Publisher:
    """One process's debounced publisher (see the module's docstring)."""

    def __init__(
        self, store: Store, client: redis.Redis, settings: Settings, min_interval: float = MIN_INTERVAL_S
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.keys: Keys = keys(settings)
        self.min_interval = min_interval
        self.published = 0
        self._committed_at: float | None = None
        self._last_publish = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """A commit happened: make sure a snapshot taken after now gets published."""
        with self._cond:
            self._committed_at = time.time()
            if self._thread is None:
                name = "ostinato-readmodel-publish"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._committed_at is None and not self._stop:
                    self._cond.wait()
                if self._stop or self._committed_at is None:
                    return
                committed_at = self._committed_at
            pause = self._last_publish + self.min_interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                retry_in = self._publish_once(committed_at)
            except (redis.RedisError, SQLAlchemyError, OSError) as error:
                log.warning("read_model_publish_failed", error=str(error))
                retry_in = 1.0
            with self._cond:
                if retry_in is None and self._committed_at == committed_at:
                    self._committed_at = None
            if retry_in:
                time.sleep(retry_in)

    def _publish_once(self, committed_at: float) -> float | None:
        """None when the commit is covered now; else seconds to wait before trying again."""
        taken = self.client.get(self.keys.taken_at)
        if taken is not None and float(taken) > committed_at:
            return None  # a snapshot that began after the commit is published already
        # The throttle is held while the snapshot is taken (a large store takes seconds), so snapshots never
        # overlap, then kept for ``min_interval`` after it: at most one snapshot per interval in all.
        if not self.client.set(self.keys.throttle, "1", nx=True, px=HOLD_MS):
            left = self.client.pttl(self.keys.throttle)
            return min(max(int(left), 10), 250) / 1000
        self._last_publish = time.monotonic()
        try:
            publish_read_model(self.store, self.client, self.settings)
        except BaseException:
            self.client.delete(self.keys.throttle)
            raise
        self.client.set(self.keys.throttle, "1", px=max(1, int(self.min_interval * 1000)))
        self.published += 1
        return None


_publishers: dict[int, Publisher] = {}
_lock = threading.Lock()


def request_publish(store: Store, client: redis.Redis, settings: Settings) -> None:
    """After a commit, in a worker: publish the read model soon (when publishing is switched on)."""
    if not enabled():
        return
    pid = os.getpid()
    with _lock:
        publisher = _publishers.get(pid)
        if publisher is None:
            publisher = _publishers[pid] = Publisher(store, client, settings)
    publisher.request()
