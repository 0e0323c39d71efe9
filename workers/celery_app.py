"""The Celery app and its whole configuration, in one place (``celery -A ostinato.workers worker``)."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE, transport_options
from ostinato.settings import Settings, get_settings
from ostinato.workers import json_codec
from ostinato.workers.gate import GateStep
from ostinato.workers.transport import TRANSPORT

SOFT_LIMIT_SHARE = 0.8
"""The soft time limit is this share of ``task_time_limit``: the task gets the rest to roll back and retry."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """JSON only, late acks, redelivery of what a dead worker held, no result backend.

    Recovery after a whole worker dies (SIGKILL, a lost machine): kombu delivers its unacknowledged messages
    again once they are older than ``visibility_timeout``, found by a live consumer's scan every
    ``unacked_restore_interval``, so about 20 s + 2 s by default. The price of that short timeout is that
    no message may stay unacknowledged longer while its worker is alive, or it would be delivered a second
    time: every task is stopped at ``task_time_limit`` (a soft limit first, which retries the delivery), and
    no task retries with a countdown (a countdown retry is held unacknowledged; ``LONGEST_COUNTDOWN_SECONDS``
    bounds any that is added). A database outage is waited out by the gate (``gate``), not by countdowns.
    Longer tasks or countdowns need a longer visibility timeout, and recovery takes that much longer.

    A task that still runs at the hard limit is killed and its message requeued, not acknowledged: it is not
    the message's fault, and acknowledging would drop it without a trace.
    """
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
        "task_acks_on_timeout": False,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_time_limit * SOFT_LIMIT_SHARE,
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
    app.steps["consumer"].add(GateStep)
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
