"""What the producer and the workers must agree on about the broker: names, queues, key prefix."""

from __future__ import annotations

from typing import Any

from ostinato.settings import Settings

INGEST_QUEUE = "ostinato.ingest"
MAINTENANCE_QUEUE = "ostinato.maintenance"
BATCH_TASK = "ostinato.ingest.batch"
"""Takes one argument: a list of envelopes (JSON objects)."""
BATCH_COMPRESSION = "zstd"
"""How producers compress batch messages (kombu's ``application/zstd``; workers decompress any kombu method).

A batch of outcomes is megabytes of JSON whose tails repeat a lot: zstd makes it about 1/30 of that for
~2 µs per envelope. Every hop that handles the message whole gains: Redis holds (and keeps in its unacked
hash) a fraction of the bytes, and the worker's consumer process parses and re-encodes a few kilobytes
instead of megabytes, which was a quarter of a worker's CPU."""


def kind_task(kind: str) -> str:
    """The task that takes one envelope of ``kind``: ``ostinato.ingest.<kind>``."""
    return f"ostinato.ingest.{kind}"


def transport_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """kombu Redis transport options; the key prefix keeps deployments and test runs apart."""
    options: dict[str, Any] = {
        "global_keyprefix": settings.key_prefix,
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        # kombu's restore lock outlives a worker killed while holding it by its expiry (300 s by default);
        # restoring twice is harmless because every message is applied once.
        "unacked_mutex_expire": 60,
    }
    options.update(overrides)
    return options
