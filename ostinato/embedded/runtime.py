"""Everything ostinato does inside one process: a SQLite store, in-process delivery, broadcasts, rate limits
and the maintenance passes on a timer, for a runner on one machine or a demo with no servers.

Only the transport is replaced: validation, de-duplication, detection, the store, the scrubber and the
maintenance passes are the same code as in the distributed mode.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

import structlog

from ostinato.database import migrate_database
from ostinato.embedded.hub import Callback, EmbeddedSubscription, Hub
from ostinato.embedded.maintenance import MaintenanceThread
from ostinato.embedded.rate_limits import LocalRateLimits
from ostinato.embedded.sender import LocalSender
from ostinato.producers.preflight import read_only_engine
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.settings import Settings, get_settings
from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

_SHARED: dict[Path, Embedded] = {}
_LOCK = threading.Lock()
"""Guards ``_SHARED`` and every runtime's reference count."""


class Embedded:
    """Everything ostinato does, inside this process.

    Made directly, the runtime has one reference (its maker's), and ``close`` stops it whoever else uses
    it; ``shared`` gives the process's one runtime per file, stopped by the last ``release``. ``close`` is
    registered with ``atexit``, so a runner that exits normally applies what it reported first.
    """

    def __init__(
        self, path: str | Path, settings: Settings | None = None, *, maintenance: bool = True
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.database_url = f"sqlite:///{self.path}"
        self.settings = (settings or get_settings()).model_copy(update={"database_url": self.database_url})
        migrate_database(self.database_url)
        self.store = Store.from_url(self.database_url)
        self._reader = Store(read_only_engine(self.database_url))
        self.hub = Hub()
        self.rate_limits = LocalRateLimits()
        self.sender = LocalSender(self.store, self.settings, self.hub)
        self._maintenance = MaintenanceThread(self.store, self.settings, self.hub) if maintenance else None
        self._subscriptions: list[EmbeddedSubscription] = []
        self._users = 1
        self._closed = False
        atexit.register(self.close)
        log.info("embedded_started", path=str(self.path), maintenance=maintenance)

    @classmethod
    def shared(cls, path: str | Path, settings: Settings | None = None) -> Embedded:
        """The process's runtime for this file (made on first use, with these settings); ``release`` it."""
        key = Path(path).expanduser().resolve()
        with _LOCK:
            runtime = _SHARED.get(key)
            if runtime is None or runtime._closed:
                runtime = cls(key, settings)
                _SHARED[key] = runtime
            else:
                runtime._users += 1
            return runtime

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def maintenance_alive(self) -> bool:
        return self._maintenance is not None and self._maintenance.alive

    def acquire(self) -> Embedded:
        """One more reference, dropped by ``release``; for a user of a runtime someone else made."""
        with _LOCK:
            if self._closed:
                raise RuntimeError(f"the embedded runtime of {self.path} is closed")
            self._users += 1
        return self

    def release(self, timeout: float = 5.0) -> None:
        """Drop one reference: the last one closes the runtime, the others flush the delivery."""
        with _LOCK:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close(timeout)
        else:
            self.sender.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush the delivery, stop the threads and subscriptions, dispose of the engines."""
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            if _SHARED.get(self.path) is self:
                del _SHARED[self.path]
        atexit.unregister(self.close)
        self.sender.close(timeout)
        if self._maintenance is not None:
            self._maintenance.stop(timeout)
        self.hub.close()
        with _LOCK:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.stop(timeout)
        self.rate_limits.close()
        self.store.engine.dispose()
        self._reader.engine.dispose()
        log.info("embedded_stopped", path=str(self.path))

    def subscribe(self, job_hash: str | None, callback: Callback | None = None) -> EmbeddedSubscription:
        """Discoveries of jobs other than ``job_hash`` (None: every job's), caught up from the store first.

        With ``callback``: a started thread calls it for each event. Without: a subscription to iterate.
        """
        subscription = EmbeddedSubscription(self.hub, self._unexpired_discoveries, job_hash, callback)
        with _LOCK:
            self._subscriptions = [s for s in self._subscriptions if not s.closed]
            self._subscriptions.append(subscription)
        return subscription

    def _unexpired_discoveries(self) -> list[PatternDiscoveryEvent]:
        """The store's unexpired discoveries, oldest first, through the read-only engine."""
        return self._reader.get_active_pattern_discoveries()[::-1]

    def __enter__(self) -> Embedded:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
