"""What the producer and the workers must agree on about the broker: names, queues, key prefix."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from kombu import compression

from ostinato.settings import Settings

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

INGEST_QUEUE = "ostinato.ingest"
MAINTENANCE_QUEUE = "ostinato.maintenance"
BATCH_TASK = "ostinato.ingest.batch"
"""Takes one argument: a list of envelopes (JSON objects)."""
BATCH_COMPRESSION = "zstd"
"""How producers compress batch messages (kombu's ``application/zstd``; workers decompress any kombu method).

A batch of outcomes is megabytes of JSON whose tails repeat a lot: zstd makes it about 1/40 of that for
~2 µs per envelope. Every hop that handles the raw message gains: Redis holds (and keeps in its unacked
hash) a fraction of the bytes, and kombu base64-encodes, and its consumer parses, kilobytes instead of
megabytes."""
BATCH_COMPRESSION_LEVEL = 1
"""kombu compresses zstd at the library's default level, 3. For a batch, level 1 is no larger, compresses
faster and decompresses about three times faster in the worker (a 3.4 MB batch: 76 KB, 2.2 ms and 1.4 ms,
against 87 KB, 2.8 ms and 4.7 ms at level 3)."""


def use_batch_compression_level() -> None:
    """Make kombu compress ``application/zstd`` at :data:`BATCH_COMPRESSION_LEVEL` in this process.

    kombu keeps one compressor per content type, so this applies to every zstd message the process sends;
    the output is ordinary zstd that any reader decompresses.
    """
    compress: Callable[[bytes], bytes] = functools.partial(zstd.compress, level=BATCH_COMPRESSION_LEVEL)
    register: Callable[..., None] = compression.register
    register(compress, zstd.decompress, "application/zstd", aliases=["zstd", "zstandard"])


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
        # kombu's restore lock outlives a worker killed while holding it (for the milliseconds of one scan) by
        # its expiry, 300 s by default: short, so that rare kill still recovers within about 30 s. Two scans
        # at once restore each message once (kombu restores in a WATCH transaction).
        "unacked_mutex_expire": 10,
    }
    options.update(overrides)
    return options
