"""The Celery app and its whole configuration, in one place (``celery -A ostinato.workers worker``)."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE, transport_options
from ostinato.settings import Settings, get_settings
from ostinato.workers import json_codec
from ostinato.workers.transport import TRANSPORT


def celery_config(settings: Settings) -> dict[str, Any]:
    """JSON only, late acks, redelivery of what a dead worker held, no result backend."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport": TRANSPORT if settings.broker_url.startswith("redis://") else None,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        # A task still running when the broker connection drops finishes and applies its delivery; the
        # copy Redis delivers again is then a duplicate, skipped. Cancelling it would waste that work.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_prefetch_multiplier": settings.ingest_batch_prefetch,
        "worker_consumer": "ostinato.workers.consumer:DeadLetteringConsumer",
        "task_default_queue": INGEST_QUEUE,
        "task_queues": (Queue(INGEST_QUEUE), Queue(MAINTENANCE_QUEUE)),
        "task_routes": {
            "ostinato.ingest.*": {"queue": INGEST_QUEUE},
            "ostinato.maintenance.*": {"queue": MAINTENANCE_QUEUE},
        },
        "worker_hijack_root_logger": False,
        "include": ["ostinato.workers.tasks", "ostinato.workers.beat"],
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("ostinato")
    app.config_from_object(celery_config(settings))
    app.add_defaults(lambda: {"beat_schedule": _beat_schedule(settings)})
    return app


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    """The maintenance schedule, built when the configuration is first read (``beat`` imports this app)."""
    from ostinato.workers.beat import beat_schedule

    return beat_schedule(settings)


GC_THRESHOLDS = (100_000, 50, 100)
"""Collect less often than Python's default (700, 10, 10): a batch allocates hundreds of thousands of objects
that mostly live until the batch ends, and each early collection walks them all again."""


def _freeze_startup_heap(**_: object) -> None:
    """Move what start-up allocated (modules, the app) out of the garbage collector's sight.

    Without this each full collection walks the whole start-up heap again; with the thresholds above it saves
    about a third of an ingest worker's CPU. In the prefork parent it also keeps children from copying those
    pages on write. ``tasks`` freezes once more after a process's first delivery, for what that created
    (the engine, compiled statements).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


json_codec.install()
signals.worker_init.connect(_freeze_startup_heap, weak=False)
signals.worker_process_init.connect(_freeze_startup_heap, weak=False)
app = create_app()
