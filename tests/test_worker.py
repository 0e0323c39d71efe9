"""The ingest worker end to end: real Celery worker, real Redis queue, real PostgreSQL.

Malformed messages are put straight on the queue, as a buggy or hostile publisher would; each must end in
``dead_letters`` with a reason, while the valid messages around them are applied and the worker keeps going.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from messages import outcome

from ostinato.broker import BATCH_TASK, INGEST_QUEUE, kind_task
from ostinato.workers import app
from ostinato.workers.store import Store

pytestmark = pytest.mark.usefixtures("ingest_worker")


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.1)


def publish_raw(body: bytes, content_type: str, task: str = BATCH_TASK) -> None:
    """A task message built by hand, bypassing every check a well-behaved producer would make."""
    headers = {
        "lang": "py",
        "task": task,
        "id": str(uuid4()),
        "root_id": None,
        "parent_id": None,
        "group": None,
    }
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            routing_key=INGEST_QUEUE,
            exchange="",
            content_type=content_type,
            content_encoding="binary" if content_type == "application/x-python-serialize" else "utf-8",
            headers=headers,
            declare=[app.amqp.queues[INGEST_QUEUE]],
        )


def envelope_json(message: Any) -> dict[str, Any]:
    return json.loads(message.model_dump_json())  # type: ignore[no-any-return]


def broken(change: Callable[[dict[str, Any]], None], sheet: int) -> dict[str, Any]:
    raw = envelope_json(outcome(sheet, "job-broken"))
    change(raw)
    return raw


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "wrong type": lambda r: r["payload"].update(retry_count="three"),
    "missing field": lambda r: r["payload"].pop("sheet_id"),
    "unknown kind": lambda r: r.update(kind="telemetry"),
    "unknown schema version": lambda r: r.update(schema_version=2),
    "out-of-range score": lambda r: r["payload"].update(validation_pass_rate=1.5),
    "NaN": lambda r: r["payload"].update(grounding_confidence=float("nan")),
    "oversized text": lambda r: r["payload"].update(stdout_tail="x" * 10_000),
    "wrong envelope": lambda r: r.update(unexpected="field"),
    "raw job name instead of hash": lambda r: r.update(job_hash="my secret job"),
    "negative count": lambda r: r["payload"].update(retry_count=-1),
}


def letters(store: Store) -> list[dict[str, Any]]:
    return store.list_dead_letters(limit=1000)


def test_malformed_messages_are_dead_lettered_and_valid_ones_applied(pg_store: Store) -> None:
    bad = [broken(change, n) for n, change in enumerate(MALFORMED.values())]
    good = [envelope_json(outcome(100 + n, "job-good")) for n in range(5)]
    mixed = [item for pair in zip(bad, good + good, strict=False) for item in pair if item]
    app.send_task(BATCH_TASK, args=[mixed[:8]])
    app.send_task(BATCH_TASK, args=[mixed[8:]])
    app.send_task(BATCH_TASK, args=[{"not": "a list"}])
    app.send_task(kind_task("pattern_application"), args=[good[0]])
    publish_raw(b"{this is not json", "application/json")
    publish_raw(json.dumps([[[]], {}, {}]).encode(), "application/json", task="ostinato.ingest.nonexistent")
    expected_letters = len(MALFORMED) + 4
    wait_for(lambda: len(letters(pg_store)) >= expected_letters)
    wait_for(lambda: pg_store.get_execution_stats()["total_executions"] == 5)

    found = letters(pg_store)
    assert len(found) == expected_letters
    assert all(letter["reason"] for letter in found)
    reasons = " | ".join(letter["reason"] for letter in found)
    for needle in [
        "retry_count",
        "sheet_id",
        "telemetry",
        "schema_version",
        "validation_pass_rate",
        "grounding_confidence",
        "stdout_tail",
        "unexpected",
        "job_hash",
        "list of envelopes",
        "undecodable",
        "unknown task",
        "sent to the task for 'pattern_application'",
    ]:
        assert needle in reasons, needle
    # the worker is still alive and applying
    app.send_task(BATCH_TASK, args=[[envelope_json(outcome(200, "job-after"))]])
    wait_for(lambda: pg_store.get_execution_stats()["total_executions"] == 6)


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pickle payload executed",))


def test_pickle_task_message_is_refused(pg_store: Store) -> None:
    body = pickle.dumps(
        ((Exploit(),), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    )
    publish_raw(body, "application/x-python-serialize")
    wait_for(lambda: len(letters(pg_store)) >= 1)
    (letter,) = letters(pg_store)
    assert "application/x-python-serialize" in letter["reason"]
    assert pg_store.get_execution_stats()["total_executions"] == 0


def test_same_batch_delivered_twice_changes_nothing_the_second_time(pg_store: Store) -> None:
    batch = [envelope_json(outcome(n, "job-twice")) for n in range(20)]
    app.send_task(BATCH_TASK, args=[batch])
    wait_for(lambda: pg_store.get_execution_stats()["total_executions"] == 20)
    before = pg_store.get_learning_statistics()
    app.send_task(BATCH_TASK, args=[batch])
    app.send_task(BATCH_TASK, args=[batch[:5]])
    marker = envelope_json(outcome(999, "job-marker"))
    app.send_task(BATCH_TASK, args=[[marker]])
    wait_for(lambda: pg_store.get_execution_stats()["total_executions"] == 21)
    after = pg_store.get_learning_statistics()
    assert after["processed_messages"] == before["processed_messages"] + 1
    assert after["total_executions"] == before["total_executions"] + 1
