"""Beat without Celery: a thread that runs each maintenance pass once its period has passed.

The passes are the workers' own (``PASSES``), so their once-per-period claim in ``maintenance_runs`` still
holds if two processes share one SQLite file.
"""

from __future__ import annotations

import threading
import time

import structlog

from ostinato.embedded.hub import Hub
from ostinato.settings import Settings
from ostinato.workers.maintenance import PASSES, period_seconds
from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

RETRY_SECONDS = 5.0
"""A pass that failed (a locked or missing file) is tried again this soon, or at its period if shorter."""


class MaintenanceThread:
    """Every ``tick`` seconds, run the passes that are due and publish the discoveries they committed."""

    def __init__(self, store: Store, settings: Settings, hub: Hub, *, tick: float = 1.0) -> None:
        self._store = store
        self._settings = settings
        self._hub = hub
        self._tick = tick
        self._due = dict.fromkeys(PASSES, 0.0)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ostinato-maintenance", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run_due(self) -> None:
        """Run every pass whose time has come."""
        for name, run in PASSES.items():
            if self._stopping.is_set():
                break
            now = time.monotonic()
            if now < self._due[name]:
                continue
            period = period_seconds(self._settings, name)
            try:
                result = run(self._store, self._settings)
            except Exception:
                log.exception("maintenance_pass_failed", task=name)
                self._due[name] = now + min(period, RETRY_SECONDS)
                continue
            self._due[name] = now + period
            self._hub.publish(result.discoveries)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._tick):
            self._run_due()
