"""The gatherer on its own: when a batch leaves (full, quiet, capped, urgent), the in-memory count, waking.

Timings are checked with wide margins: the machine may be a loaded two-core one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ostinato.producers.batching import Gatherer


class Collector:
    """A thread that gathers batches as a sender's does, noting when each left."""

    def __init__(self, gatherer: Gatherer[int], *, gather: float, longest: float) -> None:
        self.gatherer = gatherer
        self.batches: list[tuple[float, list[int]]] = []
        self._gather = gather
        self._longest = longest
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.gatherer.stopping.is_set():
            self.gatherer.woken.clear()
            batch = self.gatherer.collect(first_wait=0.5, gather=self._gather, longest=self._longest)
            if batch:
                self.batches.append((time.monotonic(), batch))
                self.gatherer.settle(len(batch))

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.batches) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        self.gatherer.stop()
        self._thread.join(5)
        assert not self._thread.is_alive()


def submit(gatherer: Gatherer[int], item: int, *, urgent: bool = False) -> None:
    gatherer.admit()
    assert gatherer.put(item, urgent=urgent)


@pytest.fixture
def stopping() -> Iterator[list[Collector]]:
    """Collectors to stop after the test, whatever it asserted."""
    collectors: list[Collector] = []
    yield collectors
    for collector in collectors:
        collector.stop()


def test_a_full_batch_leaves_at_once(stopping: list[Collector]) -> None:
    collector = Collector(Gatherer(batch_size=10, queue_size=100), gather=5.0, longest=30.0)
    stopping.append(collector)
    started = time.monotonic()
    for n in range(10):
        submit(collector.gatherer, n)
    assert collector.wait_for(1, 2.0)
    left_at, batch = collector.batches[0]
    assert batch == list(range(10))
    assert left_at - started < 2.0  # the quiet period alone would have held it for 5 s


def test_a_lone_item_leaves_after_the_quiet_period(stopping: list[Collector]) -> None:
    gather = 0.3
    collector = Collector(Gatherer(batch_size=100, queue_size=100), gather=gather, longest=30.0)
    stopping.append(collector)
    started = time.monotonic()
    submit(collector.gatherer, 7)
    assert collector.wait_for(1, 5.0)
    left_at, batch = collector.batches[0]
    assert batch == [7]
    assert gather * 0.9 <= left_at - started < gather + 2.0


def test_an_urgent_item_leaves_within_the_quiet_period_in_a_stream(stopping: list[Collector]) -> None:
    """A stream that never goes quiet would hold the batch for ``longest`` (20 s) but for the urgent item."""
    gather = 0.3
    collector = Collector(Gatherer(batch_size=10_000, queue_size=10_000), gather=gather, longest=20.0)
    stopping.append(collector)
    for n in range(5):
        submit(collector.gatherer, n)
        time.sleep(0.02)
    urgent_at = time.monotonic()
    submit(collector.gatherer, 5, urgent=True)
    n = 6
    while not collector.batches and time.monotonic() - urgent_at < 10:
        submit(collector.gatherer, n)
        n += 1
        time.sleep(0.02)
    assert collector.batches, "the urgent item was held back by the stream"
    left_at, batch = collector.batches[0]
    assert batch[:6] == list(range(6))
    assert left_at - urgent_at < gather + 2.0


def test_a_steady_stream_makes_batches_of_at_most_longest(stopping: list[Collector]) -> None:
    """One item every 20 ms never leaves 0.5 s of quiet, so without ``longest`` (1 s) the whole stream would
    be one batch: batches leave ``longest`` after their first item."""
    gather, longest = 0.5, 1.0
    collector = Collector(Gatherer(batch_size=10_000, queue_size=10_000), gather=gather, longest=longest)
    stopping.append(collector)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 3.5:
        submit(collector.gatherer, n)
        n += 1
        time.sleep(0.02)
    assert collector.gatherer.wait_settled(10, alive=lambda: True)
    items = [item for _, batch in collector.batches for item in batch]
    assert items == list(range(n)), "every item once, in order"
    # 3.5 s of stream in batches of up to 1 s: about 4 (a stall of the stream longer than 0.5 s adds one).
    assert 3 <= len(collector.batches) <= 7
    first_left = collector.batches[0][0]
    assert longest * 0.9 <= first_left - started < longest + 2.0


def test_wait_settled_counts_what_is_in_memory_and_wakes_the_gathering() -> None:
    """``wake`` cuts a long quiet period short, and a thread no longer alive makes it False at once."""
    collector = Collector(Gatherer(batch_size=100, queue_size=100), gather=30.0, longest=60.0)
    try:
        for n in range(3):
            submit(collector.gatherer, n)
        started = time.monotonic()
        assert collector.gatherer.wait_settled(10, alive=lambda: True)
        assert time.monotonic() - started < 5.0
        assert collector.gatherer.in_memory == 0
        assert [batch for _, batch in collector.batches] == [[0, 1, 2]]

        collector.gatherer.admit()
        assert not collector.gatherer.wait_settled(10, alive=lambda: False)
        assert not collector.gatherer.wait_settled(0.05, alive=lambda: True, pending=lambda: False)
        collector.gatherer.settle(1)
        assert not collector.gatherer.wait_settled(0.05, alive=lambda: True, pending=lambda: True)
        assert collector.gatherer.wait_settled(0.05, alive=lambda: True, pending=lambda: False)
    finally:
        collector.stop()


def test_a_full_or_closed_queue_refuses_and_close_wakes_a_thread_waiting_for_a_first_item() -> None:
    gatherer: Gatherer[int] = Gatherer(batch_size=2, queue_size=3)
    assert all(gatherer.put(n) for n in range(3))
    assert gatherer.full()
    assert not gatherer.put(3)
    assert not gatherer.put(3, timeout=0.05)
    assert gatherer.take() == [0, 1]
    assert gatherer.take() == [2]
    assert gatherer.take() == []

    got: list[list[int]] = []
    waiting = threading.Thread(target=lambda: got.append(gatherer.collect(first_wait=30.0, gather=30.0)))
    waiting.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert gatherer.close()
    waiting.join(10)
    assert not waiting.is_alive() and got == [[]]
    assert time.monotonic() - started < 5.0
    assert gatherer.closed and gatherer.stopping.is_set()
    assert not gatherer.close(), "only the first close does anything"
    assert not gatherer.put(4)
