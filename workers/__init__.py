"""Worker side: the Celery app, ingest tasks, the store, detection and maintenance."""
