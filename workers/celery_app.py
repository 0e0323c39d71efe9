"""The Celery app and its whole configuration, in one place (``celery -A ostinato.workers worker``)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE, transport_options
from ostinato.settings import Settings, get_settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """JSON only, late acks, redelivery of what a dead worker held, no result backend."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
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


app = create_app()
