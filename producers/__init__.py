"""The runner-side client: publish, scrub, batch, spool, rate limits, preflight reads, broadcasts.

This package never loads ``ostinato.workers`` or Celery's worker at import; preflight reads load the store's
read queries on first use.
"""

from ostinato.producers.client import BeforeSend, Client
from ostinato.producers.preflight import (
    AutoApply,
    ExecutionWindow,
    LearnedWait,
    PatternContext,
    Preflight,
    RelevantPattern,
)
from ostinato.producers.rate_limits import RateLimits, RateLimitStatus
from ostinato.producers.spool import SpoolFull
from ostinato.producers.subscriber import subscribe, subscribe_async

__all__ = [
    "AutoApply",
    "BeforeSend",
    "Client",
    "ExecutionWindow",
    "LearnedWait",
    "PatternContext",
    "Preflight",
    "RateLimitStatus",
    "RateLimits",
    "RelevantPattern",
    "SpoolFull",
    "subscribe",
    "subscribe_async",
]
