"""``ostinato status`` on real servers: queue depths, ingest lag, workers, maintenance runs, servers down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from conftest import KEY_PREFIX, Clock
from kombu.connection import Connection
from messages import outcome
from redis_server import RedisServer

from ostinato.broker import BATCH_COMPRESSION, BATCH_TASK, INGEST_QUEUE, MAINTENANCE_QUEUE, transport_options
from ostinato.probes import PROBE_TIMEOUT
from ostinato.producers.sender import producer_app
from ostinato.settings import Settings
from ostinato.status import Queues, collect, duration, message_sent_at, ping_workers
from ostinato.workers.maintenance import run_pass
from ostinato.workers.store import Store


def envelope(sent_at: datetime, sheet: int) -> dict[str, Any]:
    message = outcome(sheet, "job-status").model_copy(update={"sent_at": sent_at})
    return message.model_dump(mode="json")


def test_queues_lag_and_maintenance_runs(pg_store: Store, redis_client: redis.Redis, clock: Clock) -> None:
    prefix = f"{KEY_PREFIX}status-{uuid.uuid4().hex[:8]}:"  # its keys go with the run's
    settings = Settings(key_prefix=prefix)
    now = datetime.now(UTC).replace(microsecond=0)
    first, second, third = (now - timedelta(seconds=s) for s in (120, 90, 30))
    app = producer_app(settings, 2.0)
    oldest = envelope(first, 1)
    app.send_task(BATCH_TASK, args=[[oldest]], queue=INGEST_QUEUE)
    batch = [envelope(second + timedelta(seconds=30), 2), envelope(second, 3)]
    app.send_task(BATCH_TASK, args=[batch], queue=INGEST_QUEUE, compression=BATCH_COMPRESSION)
    app.send_task(BATCH_TASK, args=[[envelope(third, 4)]], queue=INGEST_QUEUE)
    app.send_task("ostinato.maintenance.entropy", queue=MAINTENANCE_QUEUE)
    clock.advance(seconds=900)
    run_pass(pg_store, "entropy", 900.0, lambda start: ({"snapshot": 1}, []))
    clock.advance(seconds=900)
    entropy = run_pass(pg_store, "entropy", 900.0, lambda start: ({"snapshot": 2}, []))
    trust = run_pass(pg_store, "trust", 300.0, lambda start: ({"promoted": []}, []))

    # A consumer takes the oldest message and holds it unacknowledged (closing gives it back).
    options = transport_options(settings)
    with Connection(settings.broker_url, transport_options=options) as connection:  # type: ignore[no-untyped-call]
        taken = connection.default_channel.basic_get(INGEST_QUEUE, no_ack=False)
        assert taken is not None and taken.decode()[0] == [[oldest]]
        waiting: bytes = redis_client.lindex(f"{prefix}{INGEST_QUEUE}", -1)  # type: ignore[assignment]
        assert json.loads(waiting)["headers"]["compression"] == "application/zstd"  # as producers send
        status = collect(settings)
    assert status.queues == Queues(ingest=2, maintenance=1, unacked=1, oldest_sent_at=second)
    assert status.lag_seconds == (status.checked_at - second).total_seconds()
    assert 90 <= status.lag_seconds < 100
    assert status.workers == []  # no worker on this prefix
    assert status.runs is not None
    assert [(r.task, r.period_start, r.summary) for r in status.runs] == [
        ("trust", trust.period_start, {"promoted": []}),
        ("entropy", entropy.period_start, {"snapshot": 2}),
    ]
    assert (status.redis_error, status.database_error) == (None, None)


def test_messages_without_a_send_time_leave_the_lag_unknown() -> None:
    assert message_sent_at(b"not json") is None
    assert (
        message_sent_at(b'{"body": "W10=", "properties": {"body_encoding": "base64"}, "headers": {}}') is None
    )


def test_a_live_worker_answers_the_ping(ingest_worker: Any) -> None:
    started = time.monotonic()
    assert ping_workers(Settings(key_prefix=KEY_PREFIX)) == [ingest_worker.hostname]
    assert time.monotonic() - started < 2


def test_status_answers_with_every_server_down() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ostinato.cli", "status"],
        check=False,
        env={
            **os.environ,
            "COLUMNS": "300",
            "OSTINATO_BROKER_URL": "redis://127.0.0.1:1/0",
            "OSTINATO_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/ostinato",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    rows = [line.split("│") for line in result.stdout.splitlines() if "│" in line]
    lines = {row[1].strip(): row[2].strip() for row in rows}
    refused = "Error 111 connecting to 127.0.0.1:1. Connection refused."
    assert lines["Redis"] == f"unreachable at redis://127.0.0.1:1/0: {refused}"
    assert lines["ingest lag"] == "unknown (Redis unreachable)"
    assert lines["workers"] == "unknown (Redis unreachable)"
    assert lines["database"].startswith("unreachable at postgresql+psycopg://postgres@127.0.0.1:1/ostinato: ")


def test_a_hung_redis_costs_the_probe_timeout_not_a_hang(database_url: str) -> None:
    server = RedisServer()
    server.start()
    server.pause()
    try:
        started = time.monotonic()
        status = collect(Settings(broker_url=server.url))
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    timeout = f"Timeout reading from 127.0.0.1:{server.port}"
    assert (status.redis_error, status.queues, status.workers) == (timeout, None, None)
    assert status.runs is not None and status.database_error is None
    assert PROBE_TIMEOUT <= elapsed < PROBE_TIMEOUT + 2


def test_durations_read_as_a_person_would() -> None:
    assert [duration(s) for s in (42, 185, 7800, 3 * 86400 + 4 * 3600 + 5)] == [
        "42.0 s",
        "3 min 5 s",
        "2 h 10 min",
        "3 d 4 h",
    ]
