"""The background sender: batches envelopes into Celery task messages, spools what Redis cannot take now.

The runner's thread only ever touches memory (and, when the in-memory queue is full, the local disk): all
network I/O happens on one daemon thread. A publish fails fast (no kombu reconnect loop, short socket
timeouts); the batch then goes to the spool, and spooled batches are resent oldest first, before anything
newer, as soon as Redis answers again. A publish that timed out may still have reached Redis, so a resend can
duplicate a batch: delivery is at least once, and the workers apply each ``message_id`` once.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import queue
import threading
import time
from typing import Any, Protocol

import structlog
from celery import Celery

from ostinato.broker import (
    BATCH_COMPRESSION,
    BATCH_TASK,
    INGEST_QUEUE,
    transport_options,
    use_batch_compression_level,
)
from ostinato.producers.spool import Batch, Spool, SpoolFull
from ostinato.settings import Settings, redact_url

log = structlog.get_logger(__name__)

Envelope = dict[str, Any] | str
"""A JSON object, or the same as JSON text (what the client sends: the worker validates text fastest)."""
STAT_NAMES = (
    "submitted",
    "published",
    "spooled",
    "resent",
    "dropped",
    "publish_errors",
    "task_messages",
    "overflowed",
)


class EnvelopeSender(Protocol):
    """What a ``Client`` needs of its sender: ``Sender``, or ``embedded.LocalSender`` in one process."""

    def submit(self, envelope: Envelope, *, urgent: bool = False) -> None: ...
    def flush(self, timeout: float) -> bool: ...
    async def flush_async(self, timeout: float) -> bool: ...
    def release(self, timeout: float = 5.0) -> None: ...
    def stats(self) -> dict[str, int]: ...


_SHARED: dict[tuple[str, str, str], tuple[Sender, int]] = {}
_SHARED_LOCK = threading.Lock()


def producer_app(settings: Settings, publish_timeout: float) -> Celery:
    """A send-only Celery app whose publishes give up after about ``publish_timeout`` seconds."""
    use_batch_compression_level()
    app = Celery("ostinato.producers", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options(
            settings,
            socket_timeout=publish_timeout,
            socket_connect_timeout=publish_timeout,
            max_retries=0,
            retry_on_timeout=False,
        ),
        broker_connection_timeout=publish_timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=INGEST_QUEUE,
    )
    return app


class Sender:
    """Thread-safe ``submit`` of JSON-ready envelopes; one daemon thread publishes them in batches.

    ``close`` is registered with ``atexit`` until called, so a runner that exits normally flushes first.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int = 1000,
        linger_seconds: float = 0.05,
        max_linger_seconds: float = 0.25,
        queue_size: int = 20_000,
        publish_timeout: float = 2.0,
        retry_interval: float = 0.5,
        spool: Spool | None = None,
    ) -> None:
        self._batch_size = batch_size
        self._linger = linger_seconds
        self._max_linger = max(linger_seconds, max_linger_seconds)
        self._retry_interval = retry_interval
        self._join_timeout = publish_timeout + retry_interval + 1.0
        self._owns_spool = spool is None
        self.spool = spool if spool is not None else Spool(settings.spool_dir, settings.spool_max_bytes)
        self._app = producer_app(settings, publish_timeout)
        self._broker = redact_url(settings.broker_url)
        self._producer: Any = None
        self._redis_down = False
        self._queue: queue.Queue[Envelope] = queue.Queue(maxsize=queue_size)
        self._overflow_lock = threading.Lock()
        self._state = threading.Condition()
        self._closed = False
        self._in_memory = 0
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._wake = threading.Event()
        self._gathered = threading.Event()
        self._urgent_at: float | None = None
        self._stopping = threading.Event()
        self._shared_key: tuple[str, str, str] | None = None
        self._thread = threading.Thread(target=self._run, name="ostinato-sender", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def shared(cls, settings: Settings) -> Sender:
        """The process's sender for these settings' broker, prefix and spool; ``release`` when done.

        Jobs of one runner process share it, so their messages fill the same batches (one task message
        per batch is what makes ingest fast) and one spool, and only one thread publishes.
        """
        key = (settings.broker_url, settings.key_prefix, str(settings.spool_dir))
        with _SHARED_LOCK:
            sender, users = _SHARED.get(key, (None, 0))
            if sender is None or sender._closed:
                sender, users = cls(settings), 0
            _SHARED[key] = (sender, users + 1)
            sender._shared_key = key
            return sender

    def release(self, timeout: float = 5.0) -> None:
        """Flush; close when this was the last user of a shared sender (or when it is not shared)."""
        key = self._shared_key
        if key is None:
            self.close(timeout)
            return
        with _SHARED_LOCK:
            sender, users = _SHARED.get(key, (None, 0))
            last = sender is not self or users <= 1
            if sender is self:
                if last:
                    del _SHARED[key]
                else:
                    _SHARED[key] = (self, users - 1)
        if last:
            self.close(timeout)
        else:
            self.flush(timeout)

    def submit(self, envelope: Envelope, *, urgent: bool = False) -> None:
        """Queue ``envelope``; never network I/O, never raises; a full queue spills to the spool on disk.

        ``urgent`` makes the batch being gathered leave within the quiet period (``linger_seconds``) even
        while a stream keeps it filling: a pattern report is broadcast to every running job, so it should not
        wait behind a stream of outcomes.
        """
        with self._state:
            self._stats["submitted"] += 1
            self._in_memory += 1
            if not self._closed:
                try:
                    self._queue.put_nowait(envelope)
                    if urgent and self._urgent_at is None:
                        self._urgent_at = time.monotonic()
                        self._gathered.set()
                    elif self._queue.qsize() >= self._batch_size:
                        self._gathered.set()
                    return
                except queue.Full:
                    pass
        self._overflow(envelope)

    def flush(self, timeout: float) -> bool:
        """True once nothing submitted so far waits in memory or in the spool, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._state:
            while self._in_memory or len(self.spool):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._gathered.set()
                self._state.wait(min(left, 0.05))
            return True

    async def flush_async(self, timeout: float) -> bool:
        """``flush`` for async runners, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, spool what is left, stop the thread, release the spool."""
        self.flush(timeout)
        with self._state:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        self._stopping.set()
        self._wake.set()
        self._gathered.set()
        self._thread.join(self._join_timeout)
        with self._overflow_lock:
            self._spool_remaining()
            self._reset_connection()
            if self._owns_spool and not self._thread.is_alive():
                self.spool.close()

    def stats(self) -> dict[str, int]:
        """Envelope counts and what is still pending.

        ``published`` includes ``resent`` (from the spool); ``overflowed`` counts envelopes a full queue moved
        to the spool on the caller's thread; ``task_messages`` counts published batches.
        """
        with self._state:
            return {**self._stats, "in_memory": self._in_memory, "spool_batches": len(self.spool)}

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:
                log.exception("sender_step_failed")
                self._stopping.wait(self._retry_interval)
        self._spool_remaining()

    def _step(self) -> None:
        """Resend the spool first; while Redis is away, spool what comes in until the next retry."""
        self._wake.clear()
        if len(self.spool) and not self._resend_spool():
            retry_at = time.monotonic() + self._retry_interval
            while (left := retry_at - time.monotonic()) > 0 and not (
                self._wake.is_set() or self._stopping.is_set()
            ):
                self._spool_batch(self._collect(first_wait=0.0, gather=left))
            return
        batch = self._collect(first_wait=self._retry_interval, gather=self._linger, longest=self._max_linger)
        if not batch:
            return
        if len(self.spool) == 0 and self._publish(batch):
            self._settle(published=len(batch))
        else:
            self._spool_batch(batch)

    def _resend_spool(self) -> bool:
        """Publish spooled batches oldest first; False at the first failure (Redis still away)."""
        while not self._stopping.is_set() and (head := self.spool.peek()) is not None:
            key, batch = head
            if not self._publish(batch):
                return False
            self.spool.remove(key)
            with self._state:
                self._stats["resent"] += len(batch)
                self._stats["published"] += len(batch)
                self._state.notify_all()
        return not len(self.spool)

    def _collect(self, *, first_wait: float, gather: float, longest: float | None = None) -> Batch:
        """Up to ``batch_size`` envelopes: the first within ``first_wait``, then more until none has come for
        ``gather`` seconds or ``longest`` (default ``gather``) has passed since the first.

        So a lone message leaves after ``gather``, while a steady stream fills batches up to ``longest``:
        each batch costs the workers the same fixed work, whatever its size. An urgent envelope makes its
        batch leave at most ``gather`` after it. While gathering, the thread sleeps until a full batch is
        queued or an urgent envelope comes (``submit`` says so) or the time is up, rather than waking for
        every envelope: the runner's thread keeps the CPU. ``flush`` and ``close`` cut it short.
        """
        batch: Batch = []
        if first_wait > 0:
            try:
                batch.append(self._queue.get(timeout=first_wait))
            except queue.Empty:
                return []
        now = time.monotonic()
        cap = now + (gather if longest is None else longest)
        quiet = now + gather
        while True:
            self._gathered.clear()
            before = len(batch)
            with self._state:  # so an urgent envelope's time and the envelope itself are taken together
                urgent_at, self._urgent_at = self._urgent_at, None
                while len(batch) < self._batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            now = time.monotonic()
            if len(batch) > before:
                quiet = now + gather
            if urgent_at is not None:
                cap = min(cap, urgent_at + gather)
            left = min(quiet, cap) - now
            if len(batch) >= self._batch_size or left <= 0 or self._wake.is_set() or self._stopping.is_set():
                return self._json_only(batch)
            self._gathered.wait(left)

    def _publish(self, batch: Batch) -> bool:
        """One task message for the whole batch, or False after one fast attempt when Redis is away."""
        try:
            if self._producer is None:
                self._producer = self._app.connection_for_write().Producer()
            self._app.send_task(
                BATCH_TASK,
                args=[batch],
                queue=INGEST_QUEUE,
                producer=self._producer,
                retry=False,
                compression=BATCH_COMPRESSION,
                argsrepr=f"[<{len(batch)} envelopes>]",  # Celery's own repr walks the whole batch
            )
        except Exception as error:
            self._reset_connection()
            with self._state:
                self._stats["publish_errors"] += 1
            if not self._redis_down:
                log.warning("publish_failed", broker=self._broker, envelopes=len(batch), error=str(error))
            self._redis_down = True
            return False
        if self._redis_down:
            log.info("publish_recovered", broker=self._broker)
            self._redis_down = False
        with self._state:
            self._stats["task_messages"] += 1
        return True

    def _overflow(self, envelope: Envelope) -> None:
        """Queue full (or sender closed): the oldest queued batch goes to disk, never to the network."""
        with self._overflow_lock:
            if self._closed:
                if self.spool.closed:
                    self._settle(dropped=1, reason="sender_closed")
                else:
                    self._spool_batch(self._json_only([envelope]))
                return
            oldest: Batch = []
            while len(oldest) < self._batch_size:
                try:
                    oldest.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if oldest:
                with self._state:
                    self._stats["overflowed"] += len(oldest)
                self._spool_batch(self._json_only(oldest))
            try:
                self._queue.put_nowait(envelope)
            except queue.Full:
                self._spool_batch(self._json_only([envelope]))

    def _spool_batch(self, batch: Batch) -> None:
        if not batch:
            return
        try:
            self.spool.append(batch)
        except SpoolFull:
            self._settle(dropped=len(batch), reason="spool_full")
        except Exception:
            log.exception("spool_write_failed", spool=str(self.spool.path))
            self._settle(dropped=len(batch), reason="spool_error")
        else:
            self._settle(spooled=len(batch))

    def _spool_remaining(self) -> None:
        """On stop, what is still in memory goes to disk, for the next Sender on this spool to resend."""
        while batch := self._collect(first_wait=0.0, gather=0.0):
            self._spool_batch(batch)

    def _json_only(self, batch: Batch) -> Batch:
        """Drop (loudly) what JSON cannot encode, so one bad envelope neither blocks nor poisons a batch."""
        if all(isinstance(envelope, str) for envelope in batch):
            return batch
        try:
            json.dumps(batch)
        except Exception:
            good = [envelope for envelope in batch if _encodable(envelope)]
            bad = [envelope for envelope in batch if not _encodable(envelope)]
            self._settle(dropped=len(bad), reason="not_json")
            return good
        return batch

    def _settle(
        self,
        *,
        published: int = 0,
        spooled: int = 0,
        dropped: int = 0,
        reason: str = "",
    ) -> None:
        """Count envelopes that left memory and wake ``flush``; a drop is always logged as an error."""
        counts = {"published": published, "spooled": spooled, "dropped": dropped}
        with self._state:
            for name, count in counts.items():
                self._stats[name] += count
                self._in_memory -= count
            self._state.notify_all()
        if dropped:
            log.error("envelopes_dropped", count=dropped, reason=reason, spool=str(self.spool.path))

    def _reset_connection(self) -> None:
        """Forget the connection after a failure, so the next publish starts clean."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.connection.release()
            except Exception:
                log.debug("connection_release_failed", exc_info=True)


def _encodable(envelope: Envelope) -> bool:
    try:
        json.dumps(envelope)
    except Exception:
        return False
    return True
