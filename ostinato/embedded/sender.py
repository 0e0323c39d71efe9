"""In-process delivery: ``Sender``'s batching, with the worker's ``Intake`` where the broker would be.

A daemon thread gathers envelopes into batches with the producer's sender's ``Gatherer`` (size and time
bounded, ``urgent`` cutting the wait short) and applies each batch to the store the way an ingest task
does: validation, de-duplication by ``message_id``, detection and dead letters are the workers' own code.
Discoveries go to the in-process hub after the commit. A batch the store cannot take now (a locked file, a
full disk) is kept and retried with backoff; the caller is never told, as with a broker that is away.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import structlog

from ostinato.broker import BATCH_TASK
from ostinato.embedded.hub import Hub
from ostinato.producers.batching import Gatherer
from ostinato.producers.sender import Envelope
from ostinato.settings import Settings
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.intake import INFRASTRUCTURE_ERRORS, Intake
from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

STAT_NAMES = (
    "submitted",
    "applied",
    "duplicates",
    "dead_lettered",
    "discoveries",
    "batches",
    "apply_errors",
    "dropped",
)
ROOM_POLL = 0.1


class LocalSender:
    """Thread-safe ``submit``; one daemon thread applies the envelopes to the store in batches.

    Same interface as ``ostinato.producers.sender.Sender``. The queue holds ``queue_size`` envelopes; when it
    is full, ``submit`` waits for room (backpressure: there is no spool, and the store is local, so waiting
    is short unless the file is locked). ``flush`` means applied to the store.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        hub: Hub,
        *,
        batch_size: int = 1000,
        linger_seconds: float = 0.05,
        max_linger_seconds: float = 0.25,
        queue_size: int = 20_000,
        retry_interval: float = 0.2,
        max_retry_interval: float = 5.0,
    ) -> None:
        self._store = store
        self._hub = hub
        self._discovery_ttl = settings.discovery_ttl_seconds
        self._linger = linger_seconds
        self._max_linger = max(linger_seconds, max_linger_seconds)
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._gatherer: Gatherer[Envelope] = Gatherer(batch_size, queue_size)
        self._state = self._gatherer.state
        """The gatherer's lock guards the counts here too."""
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._thread = threading.Thread(target=self._run, name="ostinato-embedded-sender", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, envelope: Envelope, *, urgent: bool = False) -> None:
        """Queue ``envelope`` for the store; never raises; waits for room while the queue is full.

        ``urgent`` makes the batch being gathered leave within the quiet period (``linger_seconds``), as
        with the producer's sender. After ``close`` the envelope is dropped and the drop logged as an error.
        """
        with self._state:
            self._stats["submitted"] += 1
            if self._gatherer.closed:
                self._stats["dropped"] += 1
                log.error("envelopes_dropped", count=1, reason="embedded_sender_closed")
                return
            self._gatherer.admit()
            if self._gatherer.put(envelope, urgent=urgent):
                return
        self._wait_for_room(envelope, urgent)

    def flush(self, timeout: float) -> bool:
        """True once everything submitted so far is applied to the store, within ``timeout`` seconds."""
        return self._gatherer.wait_settled(timeout, alive=self._thread.is_alive)

    async def flush_async(self, timeout: float) -> bool:
        """``flush`` for async runners, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    def release(self, timeout: float = 5.0) -> None:
        """Flush only: the embedded runtime owns this sender and closes it with itself."""
        self.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, stop the thread; what is still unapplied is logged as lost."""
        self.flush(timeout)
        if not self._gatherer.close():  # also wakes the thread waiting for a first envelope
            return
        self._thread.join(max(timeout, 1.0))
        with self._state:
            lost = self._gatherer.in_memory
        if lost:
            log.error("envelopes_unapplied", count=lost, reason="embedded_sender_closed")

    def stats(self) -> dict[str, int]:
        """Envelope counts; ``in_memory`` is what is submitted but not applied yet."""
        with self._state:
            return {**self._stats, "in_memory": self._gatherer.in_memory}

    def __enter__(self) -> LocalSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_for_room(self, envelope: Envelope, urgent: bool) -> None:
        while not self._gatherer.put(envelope, urgent=urgent, timeout=ROOM_POLL):
            if self._gatherer.stopping.is_set() or not self._thread.is_alive():
                with self._state:
                    self._stats["dropped"] += 1
                    self._gatherer.settle(1)
                log.error("envelopes_dropped", count=1, reason="embedded_sender_stopped")
                return

    def _run(self) -> None:
        gatherer = self._gatherer
        while not gatherer.stopping.is_set():
            gatherer.woken.clear()
            try:
                batch = gatherer.collect(first_wait=0.5, gather=self._linger, longest=self._max_linger)
                if batch:
                    self._deliver(batch, retry=True)
            except Exception:
                log.exception("embedded_sender_step_failed")
                gatherer.stopping.wait(self._retry_interval)
        while batch := gatherer.collect(first_wait=0.0, gather=0.0):
            self._deliver(batch, retry=False)

    def _deliver(self, batch: list[Envelope], *, retry: bool) -> None:
        """Apply one batch (one delivery id, kept across retries), publish its discoveries, settle it."""
        intake = Intake(
            self._store,
            delivery_id=f"embedded-{uuid.uuid4().hex}",
            task_name=BATCH_TASK,
            detector=detect_sightings,
            discovery_ttl_seconds=self._discovery_ttl,
        )
        delay = self._retry_interval
        failures = 0
        while True:
            try:
                report = intake(batch)
                break
            except Exception as error:
                failures += 1
                with self._state:
                    self._stats["apply_errors"] += 1
                if not isinstance(error, INFRASTRUCTURE_ERRORS):
                    log.exception("embedded_apply_failed", envelopes=len(batch), retry_in=delay)
                elif failures == 1:
                    log.warning("embedded_apply_failed", envelopes=len(batch), error=_describe(error))
                if not retry or self._gatherer.stopping.wait(delay):
                    return
                delay = min(delay * 2, self._max_retry_interval)
        if failures:
            log.info("embedded_apply_recovered", envelopes=len(batch), failures=failures)
        published = self._hub.publish(report.discoveries)
        with self._state:
            self._stats["applied"] += report.applied
            self._stats["duplicates"] += report.duplicates
            self._stats["dead_lettered"] += report.dead_lettered
            self._stats["discoveries"] += published
            self._stats["batches"] += 1
            self._gatherer.settle(len(batch))


def _describe(error: Exception) -> str:
    """The driver's message, without the statement and its parameters (a batch's would be megabytes)."""
    return f"{type(error).__name__}: {getattr(error, 'orig', None) or error}"[:300]
