"""Maintenance tasks for ``celery beat``: thin wrappers over ``maintenance`` that broadcast after commit.

Task names are ``ostinato.maintenance.<pass>``, routed to the ``ostinato.maintenance`` queue. Each message
expires after one period, so a backlog left by a stopped worker does not replay stale passes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Task

from ostinato.settings import Settings, get_settings
from ostinato.workers import runtime
from ostinato.workers.broadcast import publish_discoveries
from ostinato.workers.celery_app import app
from ostinato.workers.intake import NOT_THE_MESSAGES_FAULT
from ostinato.workers.maintenance import PASSES, period_seconds
from ostinato.workers.readmodel import request_publish

TASK_PREFIX = "ostinato.maintenance."
MAX_RETRIES = 3
"""A pass that misses its database is retried (once the worker's gate finds the database answering) a few
times; the next period's pass covers the rest."""
GATED = "ostinato.workers.request:GatedRequest"


def task_name(name: str) -> str:
    return TASK_PREFIX + name


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every maintenance pass, each at its configured period."""
    schedule: dict[str, dict[str, Any]] = {}
    for name in PASSES:
        period = period_seconds(settings, name)
        schedule[task_name(name)] = {
            "task": task_name(name),
            "schedule": timedelta(seconds=period),
            "options": {"expires": period},
        }
    return schedule


def run_maintenance(task: Task, name: str) -> dict[str, Any]:
    """Run one pass in this worker's store, then publish the discoveries it committed."""
    settings = get_settings()
    try:
        result = PASSES[name](runtime.store(), settings)
    except NOT_THE_MESSAGES_FAULT as error:
        raise task.retry(exc=error, countdown=0, max_retries=MAX_RETRIES) from error
    published = publish_discoveries(runtime.redis_client(), settings.patterns_channel, result.discoveries)
    if result.ran:
        request_publish(runtime.store(), runtime.redis_client(), settings)
    return {
        "task": name,
        "period_start": result.period_start.isoformat(),
        "ran": result.ran,
        "summary": result.summary,
        "published": published,
    }


def _maintenance_task(name: str) -> Task:
    def maintain(self: Task) -> dict[str, Any]:
        return run_maintenance(self, name)

    maintain.__name__ = f"maintain_{name}"
    task: Task = app.task(name=task_name(name), bind=True, shared=False, Request=GATED)(maintain)
    return task


MAINTENANCE_TASKS = {name: _maintenance_task(name) for name in PASSES}
