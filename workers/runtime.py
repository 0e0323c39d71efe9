"""Per-process resources of a worker: the store and a Redis client, created on first use after fork."""

from __future__ import annotations

import gc
import os

import redis

from ostinato.settings import get_settings
from ostinato.workers.store import Store, create_store_engine

CONNECT_TIMEOUT_SECONDS = 5
"""A database host that drops packets fails a delivery in this long, well within its soft time limit."""

_stores: dict[int, Store] = {}
_redis: dict[int, redis.Redis] = {}
_settled: set[int] = set()


def store() -> Store:
    """This process's store; a forked child never reuses its parent's connections."""
    pid = os.getpid()
    if pid not in _stores:
        url = get_settings().database_url
        timeout = {} if url.startswith("sqlite") else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        _stores[pid] = Store(create_store_engine(url, connect_args=timeout))
    return _stores[pid]


def redis_client() -> redis.Redis:
    """This process's Redis client, for broadcasts."""
    pid = os.getpid()
    if pid not in _redis:
        _redis[pid] = redis.Redis.from_url(
            get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5
        )
    return _redis[pid]


def settle_heap() -> None:
    """Once per process, after its first delivery: freeze what that built to last (the engine, compiled
    statements, caches), so later garbage collections skip it like the start-up heap."""
    pid = os.getpid()
    if pid not in _settled:
        _settled.add(pid)
        gc.freeze()
