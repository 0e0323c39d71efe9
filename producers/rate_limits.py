"""The rate-limit fast path: one Redis key per model, with the announced TTL, that every runner reads.

The store keeps the history (and upstream's 0.8 × duration expiry) through the ordinary ``rate_limit``
message; this key is what lets another runner see a limit within milliseconds instead of after ingest.
Expiry is Redis's own (PTTL), so runners on machines whose clocks disagree still agree on the seconds left.
The fast path is advisory: a Redis error is logged and answered as "not limited", never raised.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ostinato.settings import Settings, redact_url

if TYPE_CHECKING:
    import redis

log = structlog.get_logger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_TIMEOUT = 0.5
"""Seconds a runner waits for Redis before going on without the fast path."""

# Keeps the later expiry: a shorter limit never cuts a longer one short. KEYS[1] the key, ARGV[1] the
# value, ARGV[2] the TTL in milliseconds. Returns 1 when written, 0 when the stored limit lasts longer.
_KEEP_LATER = """
local left = redis.call('PTTL', KEYS[1])
if left >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class RateLimitStatus:
    """What Redis says about a model now; ``seconds_left`` and ``error_code`` are None when not limited."""

    limited: bool
    seconds_left: float | None = None
    error_code: str | None = None


NOT_LIMITED = RateLimitStatus(limited=False)


class RateLimiter(Protocol):
    """What a ``Client`` needs: ``RateLimits`` here, ``ostinato.embedded.LocalRateLimits`` in one process."""

    def report(
        self, model: str, error_code: str, retry_after_seconds: float, source_job_hash: str
    ) -> bool: ...
    def status(self, model: str) -> RateLimitStatus: ...
    def close(self) -> None: ...


def rate_limit_key(key_prefix: str, model: str) -> str:
    return f"{key_prefix}ratelimit:{model}"


class RateLimits:
    """Writes and reads the per-model keys; thread-safe, connects on first use, never raises."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        client: redis.Redis | None = None,
    ) -> None:
        self.key_prefix = settings.key_prefix
        self._url = settings.broker_url
        self._timeout = timeout
        self._client = client
        self._script: Any = None
        self._lock = threading.Lock()

    def key(self, model: str) -> str:
        return rate_limit_key(self.key_prefix, model)

    def report(self, model: str, error_code: str, retry_after_seconds: float, source_job_hash: str) -> bool:
        """Announce a limit for ``retry_after_seconds``; True if this report now sets the key's expiry."""
        ttl_ms = math.ceil(retry_after_seconds * 1000)
        if ttl_ms <= 0:
            return False
        expires_at = datetime.now(UTC) + timedelta(milliseconds=ttl_ms)
        value = json.dumps(
            {
                "error_code": error_code,
                "expires_at": expires_at.isoformat(),
                "source_job_hash": source_job_hash,
            }
        )
        try:
            script = self._keep_later()
            if script is None:
                return False
            return bool(script(keys=[self.key(model)], args=[value, ttl_ms]))
        except Exception as error:
            log.warning(
                "rate_limit_report_failed", model=model, broker=redact_url(self._url), error=str(error)
            )
            return False

    def status(self, model: str) -> RateLimitStatus:
        """Limited or not, from the key alone; the caller's own job's limits count as well."""
        try:
            client = self._connect()
            if client is None:
                return NOT_LIMITED
            pipe = client.pipeline(transaction=True)
            pipe.get(self.key(model))
            pipe.pttl(self.key(model))
            raw, left_ms = pipe.execute()
        except Exception as error:
            log.warning(
                "rate_limit_status_failed", model=model, broker=redact_url(self._url), error=str(error)
            )
            return NOT_LIMITED
        if raw is None or left_ms is None or left_ms <= 0:
            return NOT_LIMITED
        return RateLimitStatus(limited=True, seconds_left=left_ms / 1000, error_code=_error_code(raw))

    def close(self) -> None:
        with self._lock:
            client, self._client, self._script = self._client, None, None
        if client is not None:
            client.close()

    def _connect(self) -> redis.Redis | None:
        """The client, made on first use; None when the broker is not Redis (no fast path there)."""
        with self._lock:
            if self._client is None:
                if not self._url.startswith(REDIS_SCHEMES):
                    return None
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                self._client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            return self._client

    def _keep_later(self) -> Any:
        client = self._connect()
        if client is None:
            return None
        with self._lock:
            if self._script is None:
                self._script = client.register_script(_KEEP_LATER)
            return self._script


def _error_code(raw: bytes | str) -> str | None:
    """The error code of a stored value; a value this module did not write still means "limited"."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    code = value.get("error_code") if isinstance(value, dict) else None
    return code if isinstance(code, str) else None
