"""The naive design the benchmark compares against: one Celery task and one INSERT per message."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from celery import Celery

from ostinato.broker import transport_options
from ostinato.settings import Settings

settings = Settings()
app = Celery("naive", set_as_current=False)
app.conf.update(
    broker_url=settings.broker_url,
    broker_transport_options=transport_options(settings),
    accept_content=["json"],
    task_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_default_queue="naive",
)
_connection: dict[int, psycopg.Connection[Any]] = {}
INSERT_EXECUTION = (
    "INSERT INTO executions (id, workspace_hash, job_hash, sheet_num, started_at, completed_at,"
    " duration_seconds, status, retry_count, success_without_retry, validation_pass_rate,"
    " confidence_score, error_codes) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,'[]')"
)


def connection() -> psycopg.Connection[Any]:
    pid = os.getpid()
    if pid not in _connection:
        url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
        _connection[pid] = psycopg.connect(url, autocommit=True)
    return _connection[pid]


def execution_row(
    outcome: dict[str, Any], workspace_hash: str, job_hash: str, sheet_num: int
) -> tuple[Any, ...]:
    """The parameters of ``INSERT_EXECUTION`` for one outcome (the floor of the benchmark uses them too)."""
    return (
        outcome["execution_id"],
        workspace_hash,
        job_hash,
        sheet_num,
        outcome["started_at"],
        outcome["completed_at"],
        outcome["execution_duration"],
        outcome["final_status"],
        outcome["retry_count"],
        outcome["success_without_retry"],
        outcome["validation_pass_rate"],
        outcome["validation_pass_rate"],
    )


@app.task(name="naive.insert", shared=False)  # type: ignore[untyped-decorator]
def insert(envelope: dict[str, Any]) -> None:
    row = execution_row(envelope["payload"], envelope["workspace_hash"], envelope["job_hash"], 0)
    connection().execute(INSERT_EXECUTION, row)
