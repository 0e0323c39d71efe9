"""The preflight read model: a runner's local copy of what its reads need, kept fresh from Redis (issue 12).

Workers publish a snapshot after their commits (``ostinato.workers.readmodel``): the rows the preflight reads
query (every pattern; learned-wait recoveries; the latest exploration budget per job; unexpired discoveries;
the latest executions and escalation decisions) as the compressed image of an in-memory SQLite database with
the store's tables and indexes, in ``{prefix}readmodel:snapshot``, its version in
``{prefix}readmodel:version`` (both set together by one script), and the version on the pub/sub channel
``{prefix}readmodel``. A runner loads the latest image (``sqlite3`` ``deserialize``: milliseconds, where
re-inserting 50,000 patterns took seconds) and runs the store's own queries against it, so the selection rules
(SPEC-store §0.5) are those of the direct SQL reads, without a database URL or a PostgreSQL connection. A
notification, or a version poll every ``poll_interval`` seconds when one is lost, makes it load the new
snapshot. Whoever can write the prefix's Redis keys can change what runners read (as with every key of the
deployment)."""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import redis
import structlog

from ostinato.producers.preflight import Preflight
from ostinato.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Table

    from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAGIC = b"ORM2"
"""Format tag of the snapshot: a compressed SQLite image of the sections' tables."""
POLL_INTERVAL_S = 1.0
"""Fallback version poll when a notification is lost (Redis pub/sub delivers at most once)."""
FIRST_LOAD_TIMEOUT_S = 2.0
SECTIONS = (
    "patterns",
    "error_recoveries",
    "exploration_budget",
    "pattern_discovery_events",
    "executions",
    "escalation_decisions",
)
"""The tables of the snapshot; each section holds the rows (or the bounded part, see the workers' module)
the preflight reads query."""


@dataclass(frozen=True)
class Keys:
    snapshot: str
    version: str
    taken_at: str
    throttle: str
    channel: str


def keys(settings: Settings) -> Keys:
    prefix = settings.key_prefix
    return Keys(
        snapshot=f"{prefix}readmodel:snapshot",
        version=f"{prefix}readmodel:version",
        taken_at=f"{prefix}readmodel:taken_at",
        throttle=f"{prefix}readmodel:throttle",
        channel=f"{prefix}readmodel",
    )


def tables() -> dict[str, Table]:
    from ostinato.schema import tables as schema

    return {name: getattr(schema, name) for name in SECTIONS}


def encode(store: Store) -> bytes:
    """The store's in-memory SQLite database as an image (``sqlite3.Connection.serialize``), compressed: a
    runner loads it in milliseconds instead of re-inserting every row."""
    raw = store.engine.raw_connection()
    try:
        image: bytes = raw.driver_connection.serialize()  # type: ignore[union-attr]
    finally:
        raw.close()
    return MAGIC + zlib.compress(image, 1)


def image_store(blob: bytes, clock: Callable[[], datetime] | None = None) -> Store:
    """A store on an in-memory SQLite database loaded from ``encode``'s image."""
    import sqlite3

    from sqlalchemy.pool import StaticPool

    from ostinato.workers.store import create_store_engine, utcnow

    if not blob.startswith(MAGIC):
        raise ValueError(f"read model format {blob[:4]!r}, expected {MAGIC!r}")
    images = [zlib.decompress(blob[len(MAGIC) :])]

    def connect() -> sqlite3.Connection:
        # One connection (StaticPool) per copy; the image is not kept beside the database made from it.
        if not images:
            raise sqlite3.OperationalError("this read model copy is closed")
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        connection.deserialize(images.pop())
        return connection

    engine = create_store_engine("sqlite://", poolclass=StaticPool, creator=connect)
    return _snapshot_store_class()(engine, clock=clock or utcnow)


def memory_store(
    sections: dict[str, list[dict[str, Any]]], clock: Callable[[], datetime] | None = None
) -> Store:
    """An in-memory SQLite store holding ``sections`` (the snapshot's tables, with their indexes)."""
    from sqlalchemy.pool import StaticPool

    from ostinato.schema.tables import metadata
    from ostinato.workers.store import create_store_engine, utcnow

    engine = create_store_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    by_name = tables()
    metadata.create_all(engine, tables=list(by_name.values()))
    with engine.begin() as connection:
        for name, table in by_name.items():
            rows = sections.get(name, [])
            if rows:
                connection.execute(table.insert(), rows)
    return _snapshot_store_class()(engine, clock=clock or utcnow)


MEMO_ENTRIES = 4096


@functools.cache
def _snapshot_store_class() -> type[Store]:
    """``Store`` whose pattern and budget reads are memoised per arguments: a snapshot never changes, and
    the rows-to-records conversion is most of a read's time (about 2 ms at 50,000 patterns, a few µs from
    the memo). The memo holds at most ``MEMO_ENTRIES`` answers and goes with its snapshot."""
    from ostinato.workers.store import Store

    class SnapshotStore(Store):
        _memo: dict[Any, Any]

        def _memoised(self, name: str, call: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> Any:
            key = (name, _hashable(args), _hashable(sorted(kwargs.items())))
            memo = self.__dict__.setdefault("_memo", {})
            if key not in memo:
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[key] = call(*args, **kwargs)
            found = memo[key]
            return list(found) if isinstance(found, list) else found

        def get_patterns(self, *args: Any, **kwargs: Any) -> Any:
            return self._memoised("patterns", super().get_patterns, args, kwargs)

        def get_patterns_for_auto_apply(self, *args: Any, **kwargs: Any) -> Any:
            return self._memoised("auto", super().get_patterns_for_auto_apply, args, kwargs)

        def get_exploration_budget(self, *args: Any, **kwargs: Any) -> Any:
            return self._memoised("budget", super().get_exploration_budget, args, kwargs)

    return SnapshotStore


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    return value


@dataclass
class Loaded:
    version: int
    taken_at: float
    loaded_at: float
    store: Store
    lock: threading.Lock
    closed: bool = False


class ReadModel:
    """One process's copy of the read model, shared by its clients (``shared``/``release``).

    A thread listens on the channel and polls the version; each new version is loaded into a new store
    and swapped in whole, so a read sees one snapshot. Reads of one copy are serialised (each is well under
    a millisecond to a few milliseconds).
    """

    _shared: ClassVar[dict[tuple[str, str], ReadModel]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval: float = POLL_INTERVAL_S,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys(settings)
        self.poll_interval = poll_interval
        self._clock = clock
        self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)
        self._current: Loaded | None = None
        self._retired: Loaded | None = None
        self._refresh_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._users = 0
        self._thread: threading.Thread | None = None
        self._first = threading.Event()

    # -- sharing ----------------------------------------------------------------------------------------

    @classmethod
    def shared(cls, settings: Settings) -> ReadModel:
        key = (settings.broker_url, settings.key_prefix)
        with cls._shared_lock:
            model = cls._shared.get(key)
            if model is None:
                model = cls._shared[key] = cls(settings)
            model._users += 1
            return model

    def release(self) -> None:
        key = (self.settings.broker_url, self.settings.key_prefix)
        with self._shared_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._shared.get(key) is self:
                del self._shared[key]
        self.close()

    # -- state ------------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        current = self._current
        return 0 if current is None else current.version

    def current(self, wait: float = FIRST_LOAD_TIMEOUT_S) -> Loaded | None:
        """The loaded snapshot; the first call starts the refresher and waits up to ``wait`` for one."""
        self.start()
        if self._current is None:
            self._first.wait(wait)
        return self._current

    def start(self) -> None:
        with self._load_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="ostinato-readmodel", daemon=True)
                self._thread.start()

    def refresh(self) -> bool:
        """Load the published snapshot when it is newer than the copy; True when it loaded one."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        published = self._redis.get(self.keys.version)
        if published is None or int(published) <= self.version:
            self._first.set()
            return False
        version, blob = self._redis.mget(self.keys.version, self.keys.snapshot)
        if version is None or not isinstance(blob, bytes) or int(version) <= self.version:
            return False
        taken_at = float(self._redis.get(self.keys.taken_at) or 0.0)
        store = image_store(blob, self._clock)
        # The previous copy stays open until the next swap (a read that took it a moment ago finishes on
        # it); the one before it is closed now, under its lock, so old images never pile up in memory.
        retired, self._retired = self._retired, self._current
        self._current = Loaded(int(version), taken_at, time.time(), store, threading.Lock())
        self._first.set()
        if retired is not None:
            with retired.lock:
                retired.closed = True
                retired.store.engine.dispose()
        log.debug("read_model_loaded", version=int(version), bytes=len(blob))
        return True

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for loaded in (self._retired, self._current):
            if loaded is not None:
                with loaded.lock:
                    loaded.closed = True
                    loaded.store.engine.dispose()
        self._current = self._retired = None
        self._redis.close()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.keys.channel)
                self.refresh()  # after subscribing: a version published in between is not missed
                backoff = 0.5
                last_poll = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=min(self.poll_interval, 0.5))
                    due = time.monotonic() - last_poll >= self.poll_interval
                    if message is not None or due:
                        last_poll = time.monotonic()
                        self.refresh()
            except (redis.RedisError, OSError, ValueError) as error:
                log.warning("read_model_refresh_failed", error=str(error))
                self._first.set()  # reads give neutral answers now instead of waiting on each call
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()


class ReadModelPreflight(Preflight):
    """``Preflight`` answering from the read model: the same queries, on the local copy; no database URL.

    Before a first snapshot arrives (or when Redis never had one), every read gives its neutral answer.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model: ReadModel | None = None,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings, clock=clock, rng=rng)
        self._owns_model = model is None
        self.model = model or ReadModel.shared(settings)

    def close(self) -> None:
        if self._owns_model:
            self.model.release()

    def _read(self, what: str, neutral: T, work: Callable[[Store], T]) -> T:
        from sqlalchemy.exc import SQLAlchemyError

        for _ in range(3):  # a copy closed while this read waited for it: the newer one answers
            current = self.model.current()
            if current is None:
                return neutral
            with current.lock:
                if current.closed:
                    continue
                try:
                    return work(current.store)
                except SQLAlchemyError as error:
                    log.warning("read_model_read_failed", read=what, error=str(error))
                    return neutral
        return neutral
