"""kombu's Redis transport with a channel that still closes when Redis has gone away.

When the broker connection drops, Celery's consumer first calls ``Connection.collect()``, which closes the
channels and then detaches the transport from its connection (``transport.client = None``), and then
``Connection.close()``, which closes the default channel a second time. kombu 5.7's ``Channel.close`` reads
the reply of the BRPOP it has in flight before anything else (kombu/transport/redis.py, ``Channel.close``);
on a dead socket that read raises ``ConnectionError``, so the first close stops before the virtual close
that restores the unacknowledged messages. The second close gets that far, but without ``transport.client``
the restore cannot build a Redis client (``_connparams`` reads ``self.connection.client.hostname``) and
raises ``AttributeError``, which Celery treats as unrecoverable: the worker exits.

This channel finishes its close when a network step fails, so the restore is tried while the transport is
still attached. If Redis is still away the restore fails too; the messages then stay in Redis's unacked
hash, where the visibility-timeout scan of a live consumer finds them.
"""

from __future__ import annotations

import contextlib

import structlog
from kombu.transport import TRANSPORT_ALIASES, redis, virtual

log = structlog.get_logger(__name__)

TRANSPORT = "ostinato-redis"
"""The ``broker_transport`` alias of :class:`Transport`; logs show broker URLs as ``ostinato-redis://``."""


class Channel(redis.Channel):
    def close(self) -> None:
        """Close without Redis if need be; a close that cannot reach Redis is not an error."""
        try:
            super().close()  # type: ignore[no-untyped-call]
        except self.connection_errors as error:
            log.warning("broker_channel_closed_without_redis", error=repr(error))
            if not self.closed:
                with contextlib.suppress(*self.connection_errors):
                    self._finish_close()

    def _finish_close(self) -> None:
        """The rest of ``redis.Channel.close`` after its failed network step, in its order."""
        self._in_poll = False
        if self.connection is not None:
            self.connection.cycle.discard(self)
        self._disconnect_pools()  # type: ignore[no-untyped-call]
        self._close_clients()  # type: ignore[no-untyped-call]
        virtual.Channel.close(self)  # type: ignore[no-untyped-call]


class Transport(redis.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(TRANSPORT, f"{__name__}:Transport")
