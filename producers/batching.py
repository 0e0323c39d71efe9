"""Gathering envelopes into batches: the bounded queue between the callers and one sending thread.

``Sender`` (to Redis) and ``embedded.LocalSender`` (to a local store) both gather with a ``Gatherer``: a
batch leaves when it is full, after ``gather`` seconds with nothing new, or ``longest`` seconds after its
first envelope, whichever comes first; an urgent envelope makes it leave within ``gather``. The gatherer
also counts what its owner holds in memory (queued, being sent, waiting for room), for ``flush``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

SETTLE_POLL = 0.05
"""Seconds ``wait_settled`` sleeps at most between two looks (each ``settle`` also wakes it at once)."""


class Gatherer(Generic[T]):
    """A bounded queue of items and the batches one thread gathers from it.

    ``state`` is the one lock (a condition on a re-entrant lock) for the queue's bookkeeping and the
    in-memory count; the owner guards its own counts with it too, so that a count and what it counts change
    together, and ``wait_settled`` wakes on every ``notify_all``. ``woken`` is set by ``wake`` (``flush``,
    ``close``: stop gathering, send now) and cleared by the owner's thread when it starts a round;
    ``stopping`` is set by ``stop``, and the owner's thread may sleep on it between retries. ``closed``
    (set by ``close``, read holding ``state``) says the queue takes nothing more.
    """

    def __init__(self, batch_size: int, queue_size: int) -> None:
        self.batch_size = batch_size
        self.state = threading.Condition()
        self.in_memory = 0
        """Items the owner took in and has not settled yet (queued, in a batch, waiting for room)."""
        self.closed = False
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=queue_size)
        """Items; a None only wakes the thread waiting for a first item (``stop``)."""
        self._gathered = threading.Event()
        """Set when the gathering thread should look again: a full batch is queued, an urgent item came,
        ``wake`` or ``stop``. It sleeps on this rather than waking for every item."""
        self._urgent_at: float | None = None

    # -- the callers' side --------------------------------------------------------------------------------

    def put(self, item: T, *, urgent: bool = False, timeout: float = 0.0) -> bool:
        """Queue ``item``, waiting up to ``timeout`` seconds for room; False if the queue stayed full, or
        is closed.

        A waiting put (``timeout`` > 0) must not be made holding ``state``: the thread needs it to take.
        """
        if self.closed:
            return False
        if timeout > 0:
            try:
                self._queue.put(item, timeout=timeout)
            except queue.Full:
                self._gathered.set()
                return False
            with self.state:
                self.signal(urgent=urgent, full=self._queue.qsize() >= self.batch_size)
            return True
        with self.state:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._gathered.set()
                return False
            self.signal(urgent=urgent, full=self._queue.qsize() >= self.batch_size)
            return True

    def signal(self, *, urgent: bool = False, full: bool = False) -> None:
        """Tell the gathering thread of an urgent item (its batch leaves within ``gather``) or a full batch;
        ``put`` does, and an owner that gathers elsewhere (a journal on disk) calls it itself."""
        with self.state:
            if urgent and self._urgent_at is None:
                self._urgent_at = time.monotonic()
                self._gathered.set()
            elif full:
                self._gathered.set()

    def full(self) -> bool:
        return self._queue.full()

    def take(self) -> list[T]:
        """Up to ``batch_size`` items queued now, oldest first, without waiting."""
        batch: list[T] = []
        self._take_into(batch)
        return batch

    def admit(self) -> None:
        """Count one item the owner took in; ``settle`` it once it has left memory."""
        with self.state:
            self.in_memory += 1

    def settle(self, count: int) -> None:
        """``count`` items left memory (sent, stored, dropped...): wake whoever waits in ``wait_settled``."""
        with self.state:
            self.in_memory -= count
            self.state.notify_all()

    def wait_settled(
        self, timeout: float, *, alive: Callable[[], bool], pending: Callable[[], bool] | None = None
    ) -> bool:
        """True once nothing is in memory (nor ``pending``, asked holding ``state``), within ``timeout``
        seconds; False at once when the sending thread is no longer ``alive``. Wakes the thread meanwhile,
        so the batch being gathered leaves now."""
        deadline = time.monotonic() + timeout
        with self.state:
            while self.in_memory or (pending is not None and pending()):
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    return False
                self.wake()
                self.state.wait(min(left, SETTLE_POLL))
            return True

    def wake(self) -> None:
        """Cut the gathering short: the batch leaves now, and an owner waiting on ``woken`` goes on."""
        self.woken.set()
        self._gathered.set()

    def close(self) -> bool:
        """Take nothing more (``closed``) and ``stop``; False, and nothing done, if closed already."""
        with self.state:
            if self.closed:
                return False
            self.closed = True
        self.stop()
        return True

    def stop(self) -> None:
        """Set ``stopping`` and wake the thread, even one waiting for a first item (when there is room)."""
        self.stopping.set()
        self.wake()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    # -- the gathering thread -----------------------------------------------------------------------------

    def collect(self, *, first_wait: float, gather: float, longest: float | None = None) -> list[T]:
        """Up to ``batch_size`` items: the first within ``first_wait`` (none waited for when 0), then more
        until none has come for ``gather`` seconds or ``longest`` (default ``gather``) has passed.

        So a lone item leaves after ``gather``, while a steady stream fills batches up to ``longest``: each
        batch costs the receiving side the same fixed work, whatever its size.
        """
        batch: list[T] = []
        if first_wait > 0:
            try:
                first = self._queue.get(timeout=first_wait)
            except queue.Empty:
                return []
            if first is None:
                return []
            batch.append(first)

        def fill() -> int:
            self._take_into(batch)
            return len(batch)

        self.linger(fill, gather=gather, longest=longest)
        return batch

    def linger(self, gathered: Callable[[], int], *, gather: float, longest: float | None = None) -> None:
        """Return once ``gathered()`` (the batch's size so far, asked holding ``state``) reaches
        ``batch_size``, or it has not grown for ``gather`` seconds, or ``longest`` (default ``gather``) has
        passed, or ``gather`` after an urgent item, or on ``wake`` or ``stop``.

        Between two looks the thread sleeps until a full batch is queued, an urgent item comes or the time
        is up, rather than waking for every item: the callers' threads keep the CPU.
        """
        now = time.monotonic()
        cap = now + (gather if longest is None else longest)
        quiet = now + gather
        seen = 0
        while True:
            self._gathered.clear()
            with self.state:  # so an urgent item's time and the item itself are taken together
                urgent_at, self._urgent_at = self._urgent_at, None
                count = gathered()
            now = time.monotonic()
            if count > seen:
                quiet, seen = now + gather, count
            if urgent_at is not None:
                cap = min(cap, urgent_at + gather)
            left = min(quiet, cap) - now
            if count >= self.batch_size or left <= 0 or self.woken.is_set() or self.stopping.is_set():
                return
            self._gathered.wait(left)

    def wait_for_batch(self, timeout: float) -> None:
        """Sleep until a full batch is queued, an urgent item comes, ``wake`` or ``stop``, or ``timeout``."""
        self._gathered.clear()
        if self._queue.qsize() < self.batch_size:
            self._gathered.wait(timeout)

    def _take_into(self, batch: list[T]) -> None:
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                batch.append(item)
