"""Live pattern discoveries for a runner: the Redis channel ``{prefix}patterns``, caught up from the store.

Redis pub/sub keeps nothing and delivers at most once, to whoever is subscribed at that instant. A runner that
starts late, or whose connection drops, would lose discoveries; the workers therefore store every discovery
in ``pattern_discovery_events`` (with its expiry) before they publish it, and this module fills the hole from
there.

Why there is no gap: a worker COMMITs an event, then PUBLISHes it. On every (re)connect the subscriber
SUBSCRIBEs first, waits for Redis's confirmation, and only then reads the store's unexpired events. An event
published after the confirmation is delivered live on this connection; one published before it was committed
before it too, so the read that follows (a new statement, which sees every committed row) returns it. The
read is tied to the confirmation message rather than to our own connect call, so a re-subscription made by
redis-py on its own is followed by a read as well.

Why there are no duplicates: events found both ways are told apart by id. Delivered ids are remembered until
their event expires (plus a grace for clock skew); after that the store no longer returns them, so memory is
bounded by the number of unexpired events. A periodic re-read (``resync_interval``) also catches an event
whose PUBLISH a worker could not make (it logs and moves on: the row is stored).

Failures never reach the runner: a lost connection is logged and retried with jittered exponential backoff; a
store that cannot be read is retried likewise while live events keep flowing; a callback that raises is
logged. This module reads the store read-only with SQLAlchemy Core and never imports ``ostinato.workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import redis
import redis.asyncio
import structlog
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import make_url

from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.schema.tables import pattern_discovery_events
from ostinato.settings import Settings, get_settings, redact_url

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = structlog.get_logger(__name__)

Callback = Callable[[PatternDiscoveryEvent], object]
Source = Literal["live", "caught_up"]
PING_TOKEN = "ostinato-subscriber"
STAT_NAMES = ("connects", "live", "caught_up", "duplicates", "own", "invalid", "catch_up_failures")


class SubscribeOptions(TypedDict, total=False):
    """Tuning shared by every form of subscription; the defaults suit a runner."""

    engine: Engine | None
    """Read the store through this engine (shared, not disposed) instead of one made from the settings."""
    poll_interval: float
    """Longest a read blocks before the subscription looks at ``close()`` and its timers again."""
    ping_interval: float
    """After this much silence the connection is PINGed; no answer within as long again means it is dead."""
    max_backoff: float
    resync_interval: float | None
    """Re-read the store this often while connected (None: only on connect)."""
    grace_seconds: float
    """How long past its expiry an id is remembered, to absorb clock skew between hosts."""


class _StateOptions(SubscribeOptions, total=False):
    settings: Settings | None


class SeenIds:
    """Ids already delivered, each kept until its event expires plus ``grace``: bounded de-duplication."""

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, event: PatternDiscoveryEvent) -> bool:
        """True if the id is new (and is now remembered), False for a duplicate."""
        self.prune(time.time())
        if event.id in self._until:
            return False
        until = event.expires_at.timestamp() + self._grace
        self._until[event.id] = until
        heapq.heappush(self._heap, (until, event.id))
        return True

    def prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            _, event_id = heapq.heappop(self._heap)
            self._until.pop(event_id, None)

    def __len__(self) -> int:
        return len(self._until)


class _Backoff:
    """Exponential delays with jitter, so a fleet of runners does not reconnect in lockstep."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._failures = 0

    def next(self) -> float:
        delay = min(self._maximum, self._initial * 2.0**self._failures)
        self._failures = min(self._failures + 1, 32)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._failures = 0


class _StoreReader:
    """The store's unexpired discoveries, read-only."""

    def __init__(self, url: str, engine: Engine | None) -> None:
        self._url = url
        self._engine = engine
        self._owned = engine is None

    def unexpired(self, exclude_job_hash: str | None) -> list[PatternDiscoveryEvent]:
        table = pattern_discovery_events
        query = select(table).where(table.c.expires_at > datetime.now(UTC))
        if exclude_job_hash is not None:
            query = query.where(table.c.source_job_hash != exclude_job_hash)
        query = query.order_by(table.c.recorded_at, table.c.id)
        with self._get_engine().connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [PatternDiscoveryEvent.model_validate(dict(row)) for row in rows]

    def _get_engine(self) -> Engine:
        if self._engine is None:
            url = make_url(self._url)
            connect_args = {"connect_timeout": 5} if url.drivername.startswith("postgresql") else {}
            self._engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        return self._engine

    def dispose(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.dispose()
            self._engine = None


class _SubscriptionState:
    """What the sync and async forms share: filtering, de-duplication, timers and counters (no I/O)."""

    def __init__(
        self,
        job_hash: str | None,
        *,
        settings: Settings | None = None,
        engine: Engine | None = None,
        poll_interval: float = 0.5,
        ping_interval: float = 10.0,
        max_backoff: float = 10.0,
        resync_interval: float | None = 60.0,
        grace_seconds: float = 30.0,
    ) -> None:
        self.job_hash = job_hash
        self.settings = settings or get_settings()
        self.channel = self.settings.patterns_channel
        self.client_name = f"{self.settings.key_prefix}subscriber:{job_hash or 'all'}"
        """Shown by ``CLIENT LIST``, so an operator can see (and a test can cut) who listens."""
        self._poll_interval = poll_interval
        self._ping_interval = ping_interval
        self._resync_interval = resync_interval
        self._store = _StoreReader(self.settings.database_url, engine)
        self._seen = SeenIds(grace_seconds)
        self._counts: Counter[str] = Counter()
        self._pending: deque[PatternDiscoveryEvent] = deque()
        self._redis_backoff = _Backoff(0.1, max_backoff)
        self._store_backoff = _Backoff(0.5, max_backoff)
        self._next_connect = 0.0
        self._catch_up_at: float | None = None
        self._heard = 0.0
        self._ping_sent: float | None = None
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        """Subscribed, and caught up from the store since the last (re)connect."""
        return self._ready.is_set()

    def stats(self) -> dict[str, int]:
        """Counters since creation, and how many ids the de-duplication remembers now."""
        return {**{name: self._counts[name] for name in STAT_NAMES}, "remembered": len(self._seen)}

    def _admit(self, event: PatternDiscoveryEvent, source: Source) -> None:
        if self.job_hash is not None and event.source_job_hash == self.job_hash:
            self._counts["own"] += 1
        elif not self._seen.add(event):
            self._counts["duplicates"] += 1
        else:
            self._counts[source] += 1
            self._pending.append(event)

    def _on_message(self, message: dict[str, Any]) -> None:
        self._heard = time.monotonic()
        self._ping_sent = None
        kind = message.get("type")
        if _text(message.get("channel")) != self.channel:
            return
        if kind == "subscribe":
            self._counts["connects"] += 1
            self._redis_backoff.reset()
            self._catch_up_at = time.monotonic()
            log.info(
                "discovery_subscriber_connected",
                channel=self.channel,
                job_hash=self.job_hash,
                connects=self._counts["connects"],
            )
        elif kind == "message":
            try:
                event = PatternDiscoveryEvent.model_validate_json(message["data"])
            except ValueError as error:
                self._counts["invalid"] += 1
                log.warning("discovery_message_invalid", channel=self.channel, error=str(error))
                return
            self._admit(event, "live")

    def _catch_up_due(self) -> bool:
        return self._catch_up_at is not None and time.monotonic() >= self._catch_up_at

    def _caught_up(self, events: list[PatternDiscoveryEvent]) -> None:
        self._store_backoff.reset()
        for event in events:
            self._admit(event, "caught_up")
        resync = self._resync_interval
        self._catch_up_at = None if resync is None else time.monotonic() + resync
        self._ready.set()

    def _catch_up_failed(self, error: Exception) -> None:
        """Live events keep flowing; the read is retried on this connection (still after its SUBSCRIBE)."""
        delay = self._store_backoff.next()
        self._counts["catch_up_failures"] += 1
        self._catch_up_at = time.monotonic() + delay
        log.warning("discovery_catch_up_failed", error=_describe(error), retry_in=round(delay, 2))

    def _ping_due(self, heard_now: bool) -> bool:
        """Whether to PING now; raises ConnectionError when an earlier PING went unanswered too long."""
        now = time.monotonic()
        if heard_now:
            return False
        if self._ping_sent is not None:
            if now - self._ping_sent > self._ping_interval:
                raise redis.ConnectionError("no answer to PING on the subscription")
            return False
        if now - self._heard > self._ping_interval:
            self._ping_sent = now
            return True
        return False

    def _connected(self) -> None:
        self._heard = time.monotonic()
        self._ping_sent = None

    def _connection_lost(self, error: BaseException) -> None:
        self._ready.clear()
        self._catch_up_at = None
        delay = self._redis_backoff.next()
        self._next_connect = time.monotonic() + delay
        log.warning(
            "discovery_subscriber_disconnected",
            broker=redact_url(self.settings.broker_url),
            error=_describe(error),
            retry_in=round(delay, 2),
        )

    def _wait(self, deadline: float | None, stepped: bool) -> float | None:
        """How long the next round may block; None once ``deadline`` passed (after at least one round)."""
        if deadline is None:
            return self._poll_interval
        left = deadline - time.monotonic()
        if left <= 0 and stepped:
            return None
        return max(0.0, min(self._poll_interval, left))

    def _connect_wait(self) -> float:
        return max(0.0, self._next_connect - time.monotonic())

    def _redis_options(self) -> dict[str, Any]:
        """No hidden retries inside redis-py: failures surface here, where backoff and logging live."""
        return {
            "socket_connect_timeout": 5,
            "socket_timeout": 10,
            "socket_keepalive": True,
            "client_name": self.client_name,
        }


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else None


class Subscription(_SubscriptionState):
    """The iterator form: ``for event in subscription`` blocks for the next event; ``get(timeout)`` polls.

    One reader at a time; ``close()`` may be called from any thread and ends the iteration. A runner may read
    only between sheets: Redis holds what arrives meanwhile, and should it drop a reader that fell too far
    behind, the next read reconnects and catches up from the store.
    """

    def __init__(self, job_hash: str | None, **options: Unpack[_StateOptions]) -> None:
        super().__init__(job_hash, **options)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._client: redis.Redis | None = None
        self._pubsub: Any = None

    def get(self, timeout: float | None = None) -> PatternDiscoveryEvent | None:
        """The next event, or None after ``timeout`` seconds (None: wait) or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stepped = False
        with self._lock:
            while True:
                if self._closed.is_set():
                    self._release()
                    return None
                if self._pending:
                    return self._pending.popleft()
                wait = self._wait(deadline, stepped)
                if wait is None:
                    return None
                self._step(wait)
                stepped = True

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Connect (if nobody reads yet) until subscribed and caught up; events seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set() and not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._lock.acquire(timeout=min(left, self._poll_interval)):
                try:
                    if not self._closed.is_set():
                        self._step(min(left, self._poll_interval))
                finally:
                    self._lock.release()
        return self._ready.is_set()

    def close(self) -> None:
        """Stop: the connection and (unless shared) the engine are released; iteration ends."""
        self._closed.set()
        if self._lock.acquire(timeout=self._poll_interval + 15):
            try:
                self._release()
            finally:
                self._lock.release()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _step(self, wait: float) -> None:
        """One bounded round: (re)connect when due, read one message, catch up when due."""
        if self._pubsub is None:
            pause = self._connect_wait()
            if pause > 0:
                self._closed.wait(min(wait, pause))
                return
            try:
                self._connect()
            except Exception as error:
                self._drop(error)
                return
        try:
            message = self._pubsub.get_message(timeout=wait)
            if message is not None:
                self._on_message(message)
            if self._ping_due(message is not None):
                self._pubsub.ping(PING_TOKEN)
        except Exception as error:
            self._drop(error)
            return
        if self._catch_up_due():
            try:
                events = self._store.unexpired(self.job_hash)
            except Exception as error:
                self._catch_up_failed(error)
            else:
                self._caught_up(events)

    def _connect(self) -> None:
        client = redis.Redis.from_url(
            self.settings.broker_url, retry=Retry(NoBackoff(), 0), **self._redis_options()
        )
        pubsub = client.pubsub()
        self._client, self._pubsub = client, pubsub
        pubsub.subscribe(self.channel)
        self._connected()

    def _drop(self, error: BaseException) -> None:
        self._teardown()
        self._connection_lost(error)

    def _teardown(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                pubsub.close()
        with contextlib.suppress(Exception):
            if client is not None:
                client.close()

    def _release(self) -> None:
        self._teardown()
        self._store.dispose()
        self._ready.clear()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> PatternDiscoveryEvent:
        event = self.get(None)
        if event is None:
            raise StopIteration
        return event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SubscriptionThread:
    """The callback form: a daemon thread calls ``callback(event)`` for each event until ``stop()``."""

    def __init__(self, subscription: Subscription, callback: Callback) -> None:
        self.subscription = subscription
        self._callback = callback
        self._thread = threading.Thread(
            target=self._run, name=f"ostinato-discoveries-{subscription.job_hash}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        for event in self.subscription:
            try:
                self._callback(event)
            except Exception:
                log.exception("discovery_callback_failed", event_id=event.id, pattern_id=event.pattern_id)

    @property
    def ready(self) -> bool:
        return self.subscription.ready

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return self.subscription.wait_ready(timeout)

    def stats(self) -> dict[str, int]:
        return self.subscription.stats()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 20.0) -> None:
        """Close the subscription and wait for the thread (unless called from the callback itself)."""
        self.subscription.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> SubscriptionThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class AsyncSubscription(_SubscriptionState):
    """The async form (redis.asyncio): ``async for event in subscription``; the store is read in a thread."""

    def __init__(self, job_hash: str | None, **options: Unpack[_StateOptions]) -> None:
        super().__init__(job_hash, **options)
        self._lock = asyncio.Lock()
        self._closed = False
        self._client: redis.asyncio.Redis | None = None
        self._pubsub: Any = None

    async def get(self, timeout: float | None = None) -> PatternDiscoveryEvent | None:
        """The next event, or None after ``timeout`` seconds (None: wait) or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stepped = False
        async with self._lock:
            while True:
                if self._closed:
                    await self._release()
                    return None
                if self._pending:
                    return self._pending.popleft()
                wait = self._wait(deadline, stepped)
                if wait is None:
                    return None
                await self._step(wait)
                stepped = True

    async def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self._ready.is_set() and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            async with self._lock:
                if not self._closed:
                    await self._step(min(left, self._poll_interval))
        return self._ready.is_set()

    async def aclose(self) -> None:
        self._closed = True
        async with self._lock:
            await self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    async def _step(self, wait: float) -> None:
        if self._pubsub is None:
            pause = self._connect_wait()
            if pause > 0:
                await asyncio.sleep(min(wait, pause))
                return
            try:
                await self._connect()
            except Exception as error:
                await self._drop(error)
                return
        try:
            message = await self._pubsub.get_message(timeout=wait)
            if message is not None:
                self._on_message(message)
            if self._ping_due(message is not None):
                await self._pubsub.ping(PING_TOKEN)
        except Exception as error:
            await self._drop(error)
            return
        if self._catch_up_due():
            try:
                events = await asyncio.to_thread(self._store.unexpired, self.job_hash)
            except Exception as error:
                self._catch_up_failed(error)
            else:
                self._caught_up(events)

    async def _connect(self) -> None:
        client = redis.asyncio.Redis.from_url(
            self.settings.broker_url, retry=AsyncRetry(NoBackoff(), 0), **self._redis_options()
        )
        pubsub = client.pubsub()
        self._client, self._pubsub = client, pubsub
        await pubsub.subscribe(self.channel)
        self._connected()

    async def _drop(self, error: BaseException) -> None:
        await self._teardown()
        self._connection_lost(error)

    async def _teardown(self) -> None:
        pubsub, client = self._pubsub, self._client
        self._pubsub = self._client = None
        with contextlib.suppress(Exception):
            if pubsub is not None:
                await pubsub.aclose()
        with contextlib.suppress(Exception):
            if client is not None:
                await client.aclose()

    async def _release(self) -> None:
        await self._teardown()
        self._store.dispose()
        self._ready.clear()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> PatternDiscoveryEvent:
        event = await self.get(None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@overload
def subscribe(
    job_hash: str | None,
    *,
    settings: Settings | None = None,
    callback: None = None,
    **options: Unpack[SubscribeOptions],
) -> Subscription: ...


@overload
def subscribe(
    job_hash: str | None,
    *,
    settings: Settings | None = None,
    callback: Callback,
    **options: Unpack[SubscribeOptions],
) -> SubscriptionThread: ...


def subscribe(
    job_hash: str | None,
    *,
    settings: Settings | None = None,
    callback: Callback | None = None,
    **options: Unpack[SubscribeOptions],
) -> Subscription | SubscriptionThread:
    """Pattern discoveries of other jobs, caught up on every (re)connect, each delivered once.

    ``job_hash`` is this runner's job (its own discoveries are skipped; None receives every job's). Without
    ``callback``: a ``Subscription`` to iterate (it connects on first use). With one: a started
    ``SubscriptionThread`` calling it for each event. See the module docstring for why nothing is missed.
    """
    subscription = Subscription(job_hash, settings=settings, **options)
    if callback is None:
        return subscription
    return SubscriptionThread(subscription, callback)


def subscribe_async(
    job_hash: str | None, *, settings: Settings | None = None, **options: Unpack[SubscribeOptions]
) -> AsyncSubscription:
    """The asyncio twin of ``subscribe``: ``async with subscribe_async(h) as s: async for event in s``."""
    return AsyncSubscription(job_hash, settings=settings, **options)
