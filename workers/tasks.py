"""Ingest tasks: thin wrappers that run an ``Intake`` and broadcast discoveries after commit.

Task names are the wire contract: ``ostinato.ingest.batch`` takes a list of envelopes,
``ostinato.ingest.<kind>`` takes one envelope of that kind.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from ostinato.broker import BATCH_TASK, kind_task
from ostinato.schema.messages import KINDS
from ostinato.settings import get_settings
from ostinato.workers import runtime
from ostinato.workers.broadcast import publish_discoveries
from ostinato.workers.celery_app import app
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.intake import NOT_THE_MESSAGES_FAULT, Intake
from ostinato.workers.readmodel import request_publish

log = structlog.get_logger(__name__)

DECODED_ONCE = "ostinato.workers.request:DecodedOnceRequest"
MAX_INFRASTRUCTURE_RETRIES = 200
"""Attempts of one delivery that fail on the database. A worker attempts again only once its gate found the
database answering (``gate``), after a pause that grows to a minute: after about three hours of a database
that answers probes but fails every delivery, the delivery is dead-lettered with the last error (and when
even that fails, it is retried again: a delivery is never dropped)."""


def run_ingest(task: Task, raw: object, expected_kind: str | None) -> dict[str, int]:
    """Apply one delivery; a database failure or a delivery past its soft time limit is retried whole.

    The retry is a new message in Redis without a countdown; the worker's gate stops consuming until the
    database answers, so the retried delivery waits in Redis, not in the worker's memory.
    """
    settings = get_settings()
    intake = Intake(
        runtime.store(),
        delivery_id=str(task.request.id),
        task_name=task.name,
        detector=detect_sightings,
        discovery_ttl_seconds=settings.discovery_ttl_seconds,
    )
    try:
        report = intake(raw, expected_kind)
    except NOT_THE_MESSAGES_FAULT as error:
        if task.request.retries >= MAX_INFRASTRUCTURE_RETRIES and _gave_up(intake, raw, error, task):
            return {"applied": 0, "duplicates": 0, "dead_lettered": 1, "discoveries": 0}
        raise task.retry(exc=error, countdown=0, max_retries=None) from error
    runtime.settle_heap()
    broadcast = publish_discoveries(runtime.redis_client(), settings.patterns_channel, report.discoveries)
    if report.applied:
        request_publish(runtime.store(), runtime.redis_client(), settings)
    return {
        "applied": report.applied,
        "duplicates": report.duplicates,
        "dead_lettered": report.dead_lettered,
        "discoveries": broadcast,
    }


def _gave_up(intake: Intake, raw: object, error: BaseException, task: Task) -> bool:
    """Dead-letter a delivery that failed every attempt; False when the store refuses even that."""
    reason = f"gave up after {task.request.retries + 1} attempts that failed on the store: {error!r}"
    try:
        intake.give_up(raw, reason[:2000])
    except Exception:
        log.exception("give_up_failed", delivery=intake.delivery_id)
        return False
    return True


@app.task(name=BATCH_TASK, bind=True, shared=False, Request=DECODED_ONCE)  # type: ignore[untyped-decorator]
def ingest_batch(self: Task, envelopes: Any) -> dict[str, int]:
    return run_ingest(self, envelopes, None)


def _kind_task(kind: str) -> Task:
    def ingest_one(self: Task, envelope: Any) -> dict[str, int]:
        return run_ingest(self, envelope, kind)

    ingest_one.__name__ = f"ingest_{kind}"
    task: Task = app.task(name=kind_task(kind), bind=True, shared=False, Request=DECODED_ONCE)(ingest_one)
    return task


KIND_TASKS = {kind: _kind_task(kind) for kind in KINDS}
