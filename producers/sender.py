"""The background sender: batches envelopes into Celery task messages, spools what Redis cannot take now.

The runner's thread only ever touches memory and the local disk (when the in-memory queue is full, and in
durable mode): all network I/O happens on one daemon thread. A publish fails fast (no kombu reconnect loop,
short socket timeouts); the batch then goes to the spool, and spooled batches are resent oldest first,
before anything newer, as soon as Redis answers again. A publish that timed out may still have reached
Redis, so a resend can duplicate a batch: delivery is at least once, and the workers apply each
``message_id`` once.

Nothing is lost without a count in ``stats()`` and an error in the log. The spool is bounded
(``spool_max_bytes``); when it is full, ``spool_full_policy`` decides on the thread that writes it:

- ``block``: the caller waits up to ``spool_block_seconds`` for room (resending frees it), then gets
  ``SpoolFull``. The sender thread never drops: a batch the spool cannot take stays in memory and the
  thread takes no new envelopes, so the bounded queue fills and callers meet the policy.
- ``raise``: ``SpoolFull`` at once when the caller's envelope can be neither queued nor spooled.
- ``drop_oldest``: the oldest spooled batch is deleted to make room (``dropped``).

Either way a refused envelope counts in ``refused``; so does one larger than the whole bound, which no room
would ever take. Above ``ingest_queue_bound`` task messages in the ingest queue the sender publishes nothing
and spools instead (backpressure, see ``depth``). In durable mode ``submit`` returns once the envelope is
in the spool's journal on disk, and the thread publishes from the spool.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
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
from ostinato.producers.batching import Gatherer
from ostinato.producers.depth import IngestDepth
from ostinato.producers.spool import Batch, Spool, SpoolFull
from ostinato.settings import Settings, redact_url

log = structlog.get_logger(__name__)

Envelope = dict[str, Any] | str
"""A JSON object, or the same as JSON text (what the client sends: the worker validates text fastest)."""
STAT_NAMES = (
    "submitted",
    "published",
    "spooled",
    "journaled",
    "resent",
    "dropped",
    "refused",
    "publish_errors",
    "task_messages",
    "overflowed",
    "held_back",
)
LOSSES = ("dropped", "refused")
"""The counts of envelopes that will never reach the broker."""
ROOM_POLL = 0.05
"""Seconds a blocked caller waits between two looks for room (a resend also wakes it at once)."""


class EnvelopeSender(Protocol):
    """What a ``Client`` needs of its sender: ``Sender``, or ``embedded.LocalSender`` in one process."""

    def submit(self, envelope: Envelope, *, urgent: bool = False) -> None: ...
    def flush(self, timeout: float) -> bool: ...
    async def flush_async(self, timeout: float) -> bool: ...
    def release(self, timeout: float = 5.0) -> None: ...
    def stats(self) -> dict[str, int]: ...


_SHARED: dict[tuple[str, str, str, bool], tuple[Sender, int]] = {}
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
        self._policy = settings.spool_full_policy
        self._block_seconds = settings.spool_block_seconds
        self.durable = settings.durable
        self._owns_spool = spool is None
        if spool is None:
            spool = Spool(settings.spool_dir, settings.spool_max_bytes, segment_limit=batch_size)
        self.spool = spool
        self._app = producer_app(settings, publish_timeout)
        self._broker = redact_url(settings.broker_url)
        self._producer: Any = None
        self._redis_down = False
        self._depth = IngestDepth(settings, publish_timeout)
        self._backpressure = False
        self._gatherer: Gatherer[Envelope] = Gatherer(batch_size, queue_size)
        self._state = self._gatherer.state
        """The gatherer's lock guards the counts here too (and ``_backpressure``)."""
        self._spool_lock = threading.Lock()
        self._held: Batch = []
        """Envelopes due in the spool after its last batch that it had no room for: at most about a batch
        from the sender and one from a caller's overflow, kept in order and counted as in memory."""
        self._spool_full = False
        self._no_room_at: float = math.inf
        """The spool's size when the held envelopes last found no room in it."""
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._arrived = threading.Event()
        """Durable mode: set when a line reaches the journal, for a thread waiting for a first one."""
        self._shared_key: tuple[str, str, str, bool] | None = None
        self._thread = threading.Thread(target=self._run, name="ostinato-sender", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def shared(cls, settings: Settings) -> Sender:
        """The process's sender for these settings' broker, prefix, spool and mode; ``release`` when done.

        Jobs of one runner process share it, so their messages fill the same batches (one task message
        per batch is what makes ingest fast) and one spool, and only one thread publishes.
        """
        key = (settings.broker_url, settings.key_prefix, str(settings.spool_dir), settings.durable)
        with _SHARED_LOCK:
            sender, users = _SHARED.get(key, (None, 0))
            if sender is None or sender._gatherer.closed:
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
        """Queue ``envelope`` (durable: write it to the spool's journal and fsync); never network I/O.

        A full queue spills to the spool on disk. ``SpoolFull`` is the one exception: the spool is full
        too and the policy is ``raise``, or ``block`` and no room came within ``spool_block_seconds``.
        ``urgent`` makes the batch being gathered leave within the quiet period (``linger_seconds``) even
        while a stream keeps it filling: a pattern report is broadcast to every running job, so it should not
        wait behind a stream of outcomes.
        """
        with self._state:
            self._stats["submitted"] += 1
            self._gatherer.admit()
            if not self.durable and self._gatherer.put(envelope, urgent=urgent):
                return
        if self.durable:
            self._journal(envelope, urgent)
        else:
            self._overflow(envelope)

    def flush(self, timeout: float) -> bool:
        """True once nothing submitted so far waits in memory or in the spool, within ``timeout`` seconds.

        Losses do not make it False here (``Client.flush`` checks them, per client): they wait nowhere.
        """
        return self._gatherer.wait_settled(
            timeout, alive=self._thread.is_alive, pending=lambda: len(self.spool) > 0
        )

    async def flush_async(self, timeout: float) -> bool:
        """``flush`` for async runners, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` seconds, spool what is left, stop the thread, release the spool."""
        self.flush(timeout)
        if not self._gatherer.close():
            return
        atexit.unregister(self.close)
        self._arrived.set()
        self._thread.join(self._join_timeout)
        stopped = not self._thread.is_alive()
        with self._spool_lock:
            self._spool_remaining(last=True)
            self._reset_connection()
            if stopped:
                self._depth.close()
                if self._owns_spool:
                    self.spool.close()

    def stats(self) -> dict[str, int]:
        """Envelope counts, what is still pending, and whether backpressure holds batches back now.

        ``published`` includes ``resent`` (from the spool); ``overflowed`` counts envelopes a full queue moved
        to the spool on the caller's thread; ``journaled`` those durable mode wrote on it; ``task_messages``
        counts published batches, ``held_back`` batches spooled because the ingest queue was above its bound.
        ``dropped`` and ``refused`` are losses: each was also logged as an error.
        """
        with self._state:
            return {
                **self._stats,
                "in_memory": self._gatherer.in_memory,
                "spool_batches": len(self.spool),
                "spool_bytes": self.spool.bytes_used,
                "backpressure": int(self._backpressure),
            }

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the caller's side when the queue is full, and in durable mode -----------------------------------

    def _overflow(self, envelope: Envelope) -> None:
        """Queue full (or sender closed): the oldest queued batch goes to disk, never to the network; when the
        spool cannot take it, the policy decides whether the caller waits or hears ``SpoolFull``."""
        deadline: float | None = None
        while True:
            with self._spool_lock:
                if self._gatherer.closed:
                    self._held.extend(self._json_only([envelope]))
                    self._spool_or_drop(reason="sender_closed")
                    return
                if self._make_room():
                    if self._gatherer.put(envelope):
                        return
                    continue
            deadline = self._await_room(deadline)
            if deadline is None:
                return

    def _make_room(self) -> bool:
        """Under the spool lock: what is held goes to the spool, then the oldest queued batch; whether the
        queue has room now (the batch the spool could not take stays held, so memory stays bounded)."""
        if not self._store_held():
            return False
        if not self._gatherer.full():
            return True
        oldest = self._gatherer.take()
        with self._state:
            self._stats["overflowed"] += len(oldest)
        self._held.extend(self._json_only(oldest))
        self._store_held()
        return True

    def _journal(self, envelope: Envelope, urgent: bool) -> None:
        """Durable mode: the envelope's line is in the spool's journal, fsynced, before this returns."""
        line = _as_line(envelope)
        if line is None:
            self._settle(dropped=1, reason="not_json")
            return
        deadline: float | None = None
        while True:
            try:
                if self.spool.journal(line):
                    break
            except Exception as error:
                if self.spool.closed:
                    self._settle(dropped=1, reason="sender_closed")
                    return
                log.exception("journal_write_failed", spool=str(self.spool.path))
                self._refuse_caller("journal_write_failed", error)
                return
            if not self.spool.journal_fits(line):
                self._refuse_caller("larger_than_spool")
                return
            if self._policy == "drop_oldest" and self._drop_oldest():
                continue
            deadline = self._await_room(deadline)
            if deadline is None:
                return
        self._gatherer.signal(urgent=urgent)
        self._settle(journaled=1)
        self._arrived.set()
        count = self.spool.journal_count
        # 0: the line filled its segment, which is sealed
        self._gatherer.signal(full=count == 0 or count >= self._batch_size)

    def _await_room(self, deadline: float | None) -> float | None:
        """The caller's envelope found no room: wait a little for some, up to the policy's deadline (none
        under ``raise``); past it the envelope is refused, and None returned if that did not raise."""
        now = time.monotonic()
        if deadline is None:
            self._report_full()
            deadline = now + (0.0 if self._policy == "raise" else self._block_seconds)
        if now >= deadline:
            self._refuse_caller(f"spool_full_{self._policy}")
            return None
        with self._state:
            self._state.wait(min(deadline - now, ROOM_POLL))
        return deadline

    def _refuse_caller(self, reason: str, cause: Exception | None = None) -> None:
        """Count and log the caller's envelope as refused; tell the caller with ``SpoolFull`` unless the
        policy is ``drop_oldest``, which never raises (it waits for room only while the oldest batch is
        being published, so in practice it never refuses for want of room)."""
        self._settle(refused=1, reason=reason)
        if self._policy != "drop_oldest":
            raise SpoolFull(
                f"spool {self.spool.path} holds {self.spool.bytes_used} of {self.spool.max_bytes} bytes"
                f" (policy {self._policy}): {reason}"
            ) from cause

    # -- the spool and what it has no room for ------------------------------------------------------------

    def _store_held(self) -> bool:
        """Under the spool lock: spool the held envelopes as far as there is room (``drop_oldest``: made);
        True once none is left. Otherwise the rest stays held, in order, until room comes.

        Once nothing fitted, no append is tried (each compresses a batch) until the spool has shrunk.
        """
        while self._held:
            if self.spool.bytes_used >= self._no_room_at and not (
                self._policy == "drop_oldest" and self._drop_oldest()
            ):
                self._report_full()
                return False
            try:
                stored = self.spool.append(self._held)
            except Exception:
                if not self._spool_full:
                    log.exception("spool_write_failed", spool=str(self.spool.path))
                self._report_full()
                return False
            if stored:
                del self._held[:stored]
                self._settle(spooled=stored)
                self._no_room_at = math.inf
            elif not self.spool.fits_alone(self._held[0]):
                del self._held[0]
                self._settle(refused=1, reason="larger_than_spool")
            else:
                self._no_room_at = self.spool.bytes_used
        return True

    def _spool_or_drop(self, reason: str) -> None:
        """Under the spool lock, when no one will send again: spool what is held, drop the rest loudly."""
        if self.spool.closed:
            count, self._held = len(self._held), []
            self._settle(dropped=count, reason=reason)
            return
        if not self._store_held():
            count, self._held = len(self._held), []
            self._settle(dropped=count, reason="spool_full")

    def _drop_oldest(self) -> bool:
        """``drop_oldest``: delete the oldest spooled batch (not the one being published) to make room."""
        self._report_full()
        count = self.spool.drop_oldest()
        if count is None:
            return False
        with self._state:
            self._stats["dropped"] += count
        log.error("envelopes_dropped", count=count, reason="drop_oldest", spool=str(self.spool.path))
        return True

    def _report_full(self) -> None:
        """Log the spool's being full once, until the backlog has drained."""
        if not self._spool_full:
            self._spool_full = True
            log.error(
                "spool_full",
                spool=str(self.spool.path),
                bytes_used=self.spool.bytes_used,
                max_bytes=self.spool.max_bytes,
                policy=self._policy,
            )

    # -- the sender's thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._gatherer.stopping.is_set():
            try:
                self._step()
            except Exception:
                log.exception("sender_step_failed")
                self._gatherer.stopping.wait(self._retry_interval)
        with self._spool_lock:
            self._spool_remaining(last=False)

    def _step(self) -> None:
        """Resend the backlog first; while it cannot go, spool what comes in until the next retry."""
        self._gatherer.woken.clear()
        if not self._drain():
            self._hold_until_retry()
            return
        if self.durable:
            self._seal(first_wait=self._retry_interval, gather=self._linger, longest=self._max_linger)
            return
        batch = self._collect(first_wait=self._retry_interval, gather=self._linger, longest=self._max_linger)
        if not batch:
            return
        if self.spool.sealed or self._held or not self._may_publish() or not self._publish(batch):
            self._spool_batch(batch)
        else:
            self._settle(published=len(batch))

    def _drain(self) -> bool:
        """Publish the backlog oldest first, the spool's batches then what it had no room for; True once it
        is empty, False at the first batch that cannot go now (Redis away, backpressure)."""
        while not self._gatherer.stopping.is_set():
            if (head := self.spool.peek()) is not None:
                key, batch = head
                if not self._may_publish() or not self._publish(batch):
                    self.spool.release(key)
                    return False
                fresh = self.spool.remove(key)
                with self._state:
                    self._stats["published"] += len(batch)
                    self._stats["resent"] += 0 if fresh else len(batch)
                    self._state.notify_all()
                continue
            with self._spool_lock:
                if self.spool.sealed:
                    continue
                held, self._held = self._held, []
            if not held:
                self._spool_full = False
                return True
            if not self._may_publish() or not self._publish(held):
                with self._spool_lock:
                    self._held[:0] = held
                    self._store_held()
                return False
            self._settle(published=len(held))
        return False

    def _hold_until_retry(self) -> None:
        """Until the next retry, spool what comes in; with the spool full (``block``, ``raise``) take nothing
        new, so the queue fills and callers meet the policy."""
        retry_at = time.monotonic() + self._retry_interval
        while (left := retry_at - time.monotonic()) > 0 and not (
            self._gatherer.woken.is_set() or self._gatherer.stopping.is_set()
        ):
            if self.durable:
                if self._seal(first_wait=0.0, gather=left) is not None and self._backpressure:
                    with self._state:
                        self._stats["held_back"] += 1
                self.spool.compact()
            elif self._held:
                self._gatherer.woken.wait(left)
            else:
                self._spool_queued(wait=left)

    def _spool_queued(self, wait: float) -> None:
        """Once a batch is queued or ``wait`` has passed, spool what is queued; taken from the queue under the
        spool lock, as a caller's overflow takes it, so neither can put newer envelopes ahead of older."""
        self._gatherer.wait_for_batch(wait)
        with self._spool_lock:
            batch = self._gatherer.take()
            if batch and self._backpressure:
                with self._state:
                    self._stats["held_back"] += 1
            self._held.extend(self._json_only(batch))
            self._store_held()

    def _may_publish(self) -> bool:
        """False while the ingest queue holds more than ``ingest_queue_bound`` task messages. While Redis
        is away there is no asking: the publish finds out when it is back."""
        if self._redis_down:
            return True
        above = self._depth.above_bound()
        if above != self._backpressure:
            with self._state:
                self._backpressure = above
            if above:
                log.warning("ingest_backpressure", queue=self._depth.key, bound=self._depth.bound)
            else:
                log.info("ingest_backpressure_over", queue=self._depth.key, bound=self._depth.bound)
        return not above

    def _collect(self, *, first_wait: float, gather: float, longest: float | None = None) -> Batch:
        """A batch gathered as ``Gatherer.collect`` gathers, without what JSON cannot encode. ``flush`` and
        ``close`` cut it short; an urgent envelope makes it leave at most ``gather`` after it."""
        return self._json_only(self._gatherer.collect(first_wait=first_wait, gather=gather, longest=longest))

    def _seal(self, *, first_wait: float, gather: float, longest: float | None = None) -> int | None:
        """Durable mode: the journal's open segment sealed into a batch once gathered as ``_collect`` gathers
        (the envelopes are on disk already; this only decides the batches); its spool key, or None."""
        if first_wait > 0 and not self.spool.journal_count:
            self._arrived.clear()
            if not self.spool.journal_count and not self._arrived.wait(first_wait):
                return None
        self._gatherer.linger(lambda: self.spool.journal_count, gather=gather, longest=longest)
        return self.spool.seal()

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
        self._depth.published()
        with self._state:
            self._stats["task_messages"] += 1
        return True

    def _spool_batch(self, batch: Batch) -> None:
        """The thread's batch goes to the spool, ahead of what a caller's overflow holds (that is newer)."""
        if not batch:
            return
        with self._spool_lock:
            self._held[:0] = batch
            if self._backpressure:
                with self._state:
                    self._stats["held_back"] += 1
            self._store_held()

    def _spool_remaining(self, *, last: bool) -> None:
        """Under the spool lock, on stop: what is still in memory goes to disk, for the next Sender on this
        spool to resend; at ``close`` (``last``) what the spool has no room for is dropped, loudly."""
        while batch := self._collect(first_wait=0.0, gather=0.0):
            self._held.extend(batch)
        if last:
            self._spool_or_drop(reason="sender_closed")
        else:
            self._store_held()

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
        journaled: int = 0,
        dropped: int = 0,
        refused: int = 0,
        reason: str = "",
    ) -> None:
        """Count envelopes that left memory and wake ``flush``; a loss is always logged as an error."""
        counts = {
            "published": published,
            "spooled": spooled,
            "journaled": journaled,
            "dropped": dropped,
            "refused": refused,
        }
        with self._state:
            for name, count in counts.items():
                self._stats[name] += count
            self._gatherer.settle(sum(counts.values()))
        if dropped:
            log.error("envelopes_dropped", count=dropped, reason=reason, spool=str(self.spool.path))
        if refused:
            log.error("envelopes_refused", count=refused, reason=reason, spool=str(self.spool.path))

    def _reset_connection(self) -> None:
        """Forget the connection after a failure, so the next publish starts clean."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.connection.release()
            except Exception:
                log.debug("connection_release_failed", exc_info=True)


def _as_line(envelope: Envelope) -> str | None:
    """An envelope as one line of JSON text (JSON escapes every newline in it); None if not encodable."""
    if isinstance(envelope, str):
        return envelope.replace("\n", " ") if "\n" in envelope else envelope
    try:
        return json.dumps(envelope, separators=(",", ":"))
    except Exception:
        return None


def _encodable(envelope: Envelope) -> bool:
    try:
        json.dumps(envelope)
    except Exception:
        return False
    return True
