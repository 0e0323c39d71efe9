"""How deep the ingest queue is: the producer's backpressure signal, read on the sender's thread.

When workers fall behind, task messages pile up in Redis, which holds them in memory. Above
``settings.ingest_queue_bound`` the sender stops publishing and keeps batches in its spool on the runner's
disk instead, and resends them, oldest first, once the queue is below the bound again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from ostinato.broker import INGEST_QUEUE
from ostinato.settings import Settings

if TYPE_CHECKING:
    import redis

log = structlog.get_logger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
CHECK_INTERVAL = 0.5
"""Seconds between two LLENs: a round trip per batch would cost more than it tells."""


class IngestDepth:
    """``LLEN`` of the prefixed ingest queue, asked at most every ``interval`` seconds; one thread only.

    Between two answers each publish counts one more message, so a stream of batches stops at the bound
    rather than half a second past it. An unanswered ``LLEN`` means "unknown": the publish finds out.
    """

    def __init__(self, settings: Settings, timeout: float, interval: float = CHECK_INTERVAL) -> None:
        self.bound = settings.ingest_queue_bound
        self.key = f"{settings.key_prefix}{INGEST_QUEUE}"
        self._url = settings.broker_url
        self._timeout = timeout
        self._interval = interval
        self._client: redis.Redis | None = None
        self._depth = 0
        self._checked_at = float("-inf")

    def above_bound(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            self._depth = self._ask()
        return self._depth > self.bound

    def published(self) -> None:
        self._depth += 1

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _ask(self) -> int:
        if not self._url.startswith(REDIS_SCHEMES):
            return 0
        try:
            if self._client is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                self._client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            return int(self._client.llen(self.key))
        except Exception as error:
            log.debug("ingest_depth_unknown", error=str(error))
            return 0
