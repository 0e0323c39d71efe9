"""In-process broadcasts: pattern discoveries from the delivery and maintenance threads to subscribers.

The embedded twin of the Redis channel and ``producers/subscriber.py``. A subscription attaches its inbox to
the hub first and only then reads the store's unexpired discoveries (catch-up): an event committed before
the attach is in the store, one published after it is in the inbox, so nothing falls between the two.
Events found both ways are told apart by id.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import structlog

from ostinato.producers.subscriber import SeenIds
from ostinato.schema.records import PatternDiscoveryEvent

log = structlog.get_logger(__name__)

Callback = Callable[[PatternDiscoveryEvent], object]
Inbox = queue.SimpleQueue[PatternDiscoveryEvent | None]
"""A subscriber's events in order; None means "stop" (the subscription or the hub was closed)."""
STAT_NAMES = ("live", "caught_up", "duplicates", "own", "catch_up_failures", "callback_errors")
CATCH_UP_RETRY = 1.0


class Hub:
    """Fan-out of events to every attached inbox; thread-safe, never blocks a publisher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inboxes: list[Inbox] = []
        self._closed = False

    def attach(self) -> Inbox:
        """A new inbox that receives every event published from now on (none once the hub is closed)."""
        inbox: Inbox = queue.SimpleQueue()
        with self._lock:
            if self._closed:
                inbox.put(None)
            else:
                self._inboxes.append(inbox)
        return inbox

    def detach(self, inbox: Inbox) -> None:
        with self._lock:
            if inbox in self._inboxes:
                self._inboxes.remove(inbox)

    def publish(self, events: Sequence[PatternDiscoveryEvent]) -> int:
        """Hand each event to every inbox; returns how many events were published."""
        if not events:
            return 0
        with self._lock:
            inboxes = list(self._inboxes)
        for inbox in inboxes:
            for event in events:
                inbox.put(event)
        return len(events)

    def close(self) -> None:
        """Tell every subscriber to stop; later attaches get a closed inbox."""
        with self._lock:
            self._closed = True
            inboxes, self._inboxes = self._inboxes, []
        for inbox in inboxes:
            inbox.put(None)


class EmbeddedSubscription:
    """Other jobs' discoveries, caught up from the store, then live from the hub, each delivered once.

    With a callback, a daemon thread calls it for each event until ``stop()``; a callback that raises is
    logged and delivery goes on. Without one, iterate it (or ``get(timeout)``) from one thread at a time.
    """

    def __init__(
        self,
        hub: Hub,
        catch_up: Callable[[], list[PatternDiscoveryEvent]],
        job_hash: str | None,
        callback: Callback | None = None,
        *,
        grace_seconds: float = 30.0,
    ) -> None:
        self.job_hash = job_hash
        self._hub = hub
        self._inbox = hub.attach()
        self._catch_up = catch_up
        self._catch_up_at: float | None = 0.0
        self._seen = SeenIds(grace_seconds)
        self._pending: deque[PatternDiscoveryEvent] = deque()
        self._counts: Counter[str] = Counter()
        self._reading = threading.Lock()
        self._caught_up = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if callback is not None:
            self._thread = threading.Thread(
                target=self._run, args=(callback,), name=f"ostinato-discoveries-{job_hash}", daemon=True
            )
            self._thread.start()

    @property
    def ready(self) -> bool:
        """Caught up from the store: every discovery committed before now is delivered or queued."""
        return self._caught_up.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until caught up; without a callback thread, catch up here (events are kept for ``get``)."""
        if self._thread is None and self._reading.acquire(timeout=timeout):
            try:
                self._try_catch_up()
            finally:
                self._reading.release()
        return self._caught_up.wait(timeout)

    def get(self, timeout: float | None = None) -> PatternDiscoveryEvent | None:
        """The next event, or None after ``timeout`` seconds (None: wait) or once stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._reading:
            while not self._closed.is_set():
                self._try_catch_up()
                if self._pending:
                    return self._pending.popleft()
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                if self._catch_up_at is not None:
                    retry_in = max(0.0, self._catch_up_at - time.monotonic())
                    wait = retry_in if wait is None else min(wait, retry_in)
                try:
                    event = self._inbox.get(timeout=wait)
                except queue.Empty:
                    continue
                if event is None:
                    self._closed.set()
                else:
                    self._admit(event, "live")
        return None

    def stats(self) -> dict[str, int]:
        return {name: self._counts[name] for name in STAT_NAMES}

    def stop(self, timeout: float = 5.0) -> None:
        """End delivery and wait for the callback thread (unless called from the callback itself)."""
        self._closed.set()
        self._hub.detach(self._inbox)
        self._inbox.put(None)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    close = stop

    def _run(self, callback: Callback) -> None:
        while (event := self.get()) is not None:
            try:
                callback(event)
            except Exception:
                self._counts["callback_errors"] += 1
                log.exception("discovery_callback_failed", event_id=event.id, pattern_id=event.pattern_id)

    def _try_catch_up(self) -> None:
        if self._catch_up_at is None or time.monotonic() < self._catch_up_at:
            return
        try:
            events = self._catch_up()
        except Exception as error:
            self._counts["catch_up_failures"] += 1
            self._catch_up_at = time.monotonic() + CATCH_UP_RETRY
            log.warning("discovery_catch_up_failed", error=f"{type(error).__name__}: {error}"[:300])
            return
        for event in events:
            self._admit(event, "caught_up")
        self._catch_up_at = None
        self._caught_up.set()

    def _admit(self, event: PatternDiscoveryEvent, source: str) -> None:
        if self.job_hash is not None and event.source_job_hash == self.job_hash:
            self._counts["own"] += 1
        elif not self._seen.add(event):
            self._counts["duplicates"] += 1
        else:
            self._counts[source] += 1
            self._pending.append(event)

    def __iter__(self) -> EmbeddedSubscription:
        return self

    def __next__(self) -> PatternDiscoveryEvent:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def __enter__(self) -> EmbeddedSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
