"""Embedded mode: ostinato in one process, on a SQLite file, with no Redis and no PostgreSQL."""

from ostinato.embedded.hub import EmbeddedSubscription, Hub
from ostinato.embedded.rate_limits import LocalRateLimits
from ostinato.embedded.runtime import Embedded
from ostinato.embedded.sender import LocalSender

__all__ = ["Embedded", "EmbeddedSubscription", "Hub", "LocalRateLimits", "LocalSender"]
