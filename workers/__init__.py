"""Worker side: the Celery app, ingest tasks, the store, detection and maintenance.

The Celery app is loaded on first access (``celery -A ostinato.workers`` asks for ``app``), so importing the
store for reads does not load Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery


def __getattr__(name: str) -> Any:
    if name == "app":
        from ostinato.workers.celery_app import app

        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
