"""Publishing pattern discoveries on the Redis channel ``{prefix}patterns`` once they are committed."""

from __future__ import annotations

from collections.abc import Sequence

import redis
import structlog

from ostinato.schema.records import PatternDiscoveryEvent

log = structlog.get_logger(__name__)


def publish_discoveries(client: redis.Redis, channel: str, events: Sequence[PatternDiscoveryEvent]) -> int:
    """Publish each event as JSON; returns how many were sent.

    A failure is logged, not raised: the events are already stored, and subscribers backfill unexpired ones
    from the store when they (re)connect, so a lost broadcast is caught up, never lost.
    """
    if not events:
        return 0
    try:
        with client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel, event.model_dump_json())
            pipe.execute()
    except redis.RedisError as error:
        log.warning("discovery_broadcast_failed", error=str(error), events=len(events))
        return 0
    return len(events)
