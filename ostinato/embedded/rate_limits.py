"""The rate-limit fast path inside one process: what the Redis keys are to runners on many machines."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from ostinato.producers.rate_limits import NOT_LIMITED, RateLimitStatus


class _Limit(NamedTuple):
    expires_at: float
    error_code: str
    source_job_hash: str


class LocalRateLimits:
    """``RateLimits`` for jobs of one process: per-model expiries on the monotonic clock, thread-safe.

    As with the Redis script, the later expiry wins: a shorter limit never cuts a longer one short.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits: dict[str, _Limit] = {}

    def report(self, model: str, error_code: str, retry_after_seconds: float, source_job_hash: str) -> bool:
        """Announce a limit for ``retry_after_seconds``; True if this report now sets the model's expiry."""
        ttl = math.ceil(retry_after_seconds * 1000) / 1000
        if ttl <= 0:
            return False
        expires_at = self._clock() + ttl
        with self._lock:
            current = self._limits.get(model)
            if current is not None and current.expires_at >= expires_at:
                return False
            self._limits[model] = _Limit(expires_at, error_code, source_job_hash)
            return True

    def status(self, model: str) -> RateLimitStatus:
        """Limited or not; the caller's own job's limits count as well."""
        now = self._clock()
        with self._lock:
            current = self._limits.get(model)
            if current is None:
                return NOT_LIMITED
            if current.expires_at <= now:
                del self._limits[model]
                return NOT_LIMITED
        return RateLimitStatus(
            limited=True, seconds_left=current.expires_at - now, error_code=current.error_code
        )

    def close(self) -> None:
        """Forget every limit (they would expire with the process anyway)."""
        with self._lock:
            self._limits.clear()
