"""Bounded looks at Redis and the database for the operator commands (``status``, ``doctor``).

An operator runs these when something is wrong, so a server that is down or hung must cost a couple of
seconds and a one-line reason, never a hang or a traceback.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

PROBE_TIMEOUT = 2.0
"""Seconds to connect to, or wait for an answer from, Redis or the database."""


def redis_client(url: str, timeout: float = PROBE_TIMEOUT) -> redis.Redis:
    """A client that gives up after ``timeout`` seconds: no retries (a hung server would cost each one)."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def database_engine(url: str, timeout: float = PROBE_TIMEOUT) -> Engine:
    """An engine that connects within ``timeout`` seconds (PostgreSQL) and keeps no connection open."""
    connect_args: dict[str, object] = {}
    if make_url(url).get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, round(timeout))
    return create_engine(url, connect_args=connect_args, poolclass=NullPool)


def reason(error: BaseException) -> str:
    """The first line of an error, short enough for a table cell."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:199] + "…"
