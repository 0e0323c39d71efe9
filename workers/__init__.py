"""Worker side: the Celery app, ingest tasks, the store, detection and maintenance."""

from ostinato.workers.app import app

__all__ = ["app"]
