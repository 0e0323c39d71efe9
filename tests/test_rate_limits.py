"""The rate-limit fast path: a Redis key every runner sees at once, and the history message for the store."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import free_port
from sqlalchemy import select
from structlog.testing import capture_logs

from ostinato.producers import Client
from ostinato.producers.rate_limits import NOT_LIMITED, RateLimits, RateLimitStatus, rate_limit_key
from ostinato.producers.spool import Spool
from ostinato.schema.identity import hash_job
from ostinato.schema.tables import rate_limit_events
from ostinato.settings import Settings, get_settings
from ostinato.workers.store import Store

pytestmark = pytest.mark.usefixtures("ingest_worker", "redis_client")

JOB = "rate-limited-job"


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def model() -> str:
    """A model name of this test alone, so its key is fresh."""
    return f"model-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(JOB, "/srv/limits") as reporter:
        yield reporter


def answer_status_queries(conn: Connection) -> None:
    """Another runner process: answers ``rate_limit_status(model)`` for each model it is sent."""
    with Client("another-job", "/srv/another", publish=False, preflight=False) as other:
        while (model := conn.recv()) is not None:
            status = other.rate_limit_status(model)
            conn.send((status.limited, status.seconds_left, status.error_code))


def events_for(store: Store, model: str) -> list[Any]:
    with store.batch() as conn:
        query = select(rate_limit_events).where(rate_limit_events.c.model == model)
        return list(conn.execute(query))


def test_another_process_sees_the_limit_at_once_and_not_after_the_ttl(
    client: Client, model: str, pg_store: Store
) -> None:
    parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
    other = multiprocessing.get_context("spawn").Process(target=answer_status_queries, args=(child_end,))
    other.start()
    try:

        def ask() -> tuple[bool, float | None, str | None]:
            parent_end.send(model)
            answer: tuple[bool, float | None, str | None] = parent_end.recv()
            return answer

        assert ask() == (False, None, None)
        client.report_rate_limit(model, "E101", 1.5)
        limited, left, code = ask()
        assert (limited, code) == (True, "E101")
        assert left is not None and 1.0 < left <= 1.5
        own = client.rate_limit_status(model)  # the reporting job's own limit counts too
        assert own.limited and own.error_code == "E101"

        time.sleep(1.6)
        assert ask() == (False, None, None)
        assert client.rate_limit_status(model) == NOT_LIMITED
    finally:
        parent_end.send(None)
        other.join(30)
    assert other.exitcode == 0
    assert client.flush(30)
    wait_for(lambda: len(events_for(pg_store, model)) == 1)


def test_the_history_message_reaches_the_store(client: Client, model: str, pg_store: Store) -> None:
    message_id = client.report_rate_limit(model, "E104", 120)
    assert message_id is not None
    assert client.flush(30)
    wait_for(lambda: len(events_for(pg_store, model)) == 1)
    (event,) = events_for(pg_store, model)
    assert (event.error_code, event.duration_seconds, event.source_job_hash) == ("E104", 120, hash_job(JOB))
    assert event.expires_at - event.recorded_at == timedelta(seconds=96)  # upstream's 0.8 × duration


def test_a_shorter_limit_never_cuts_a_longer_one(
    client: Client, model: str, redis_client: redis.Redis, pg_store: Store
) -> None:
    key = rate_limit_key(get_settings().key_prefix, model)
    client.report_rate_limit(model, "E101", 30)
    client.report_rate_limit(model, "E102", 2)
    status = client.rate_limit_status(model)
    assert (status.limited, status.error_code) == (True, "E101")
    assert status.seconds_left is not None and 29 < status.seconds_left <= 30

    client.report_rate_limit(model, "E104", 60)
    status = client.rate_limit_status(model)
    assert status.error_code == "E104"
    assert status.seconds_left is not None and 59 < status.seconds_left <= 60
    stored = json.loads(redis_client.get(key) or b"{}")
    assert (stored["error_code"], stored["source_job_hash"]) == ("E104", client.job_hash)
    assert (
        59
        < (datetime.fromisoformat(stored["expires_at"]) - datetime.now().astimezone()).total_seconds()
        <= 60
    )
    assert client.flush(30)
    wait_for(lambda: len(events_for(pg_store, model)) == 3)  # every report is history, kept or not


def test_concurrent_reports_keep_the_latest_expiry(model: str) -> None:
    limits = RateLimits(get_settings())
    ttls = [5 + n for n in range(16)]
    threads = [
        threading.Thread(target=limits.report, args=(model, f"E{ttl}", ttl, "0123456789abcdef"))
        for ttl in ttls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = limits.status(model)
    assert status.error_code == f"E{max(ttls)}"
    assert status.seconds_left is not None and max(ttls) - 1 < status.seconds_left <= max(ttls)
    limits.close()


def test_redis_down_never_raises(tmp_path: Path, model: str) -> None:
    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=tmp_path / "spool")
    with capture_logs() as logs:
        reporter = Client(JOB, "/srv/limits", settings=settings)
        started = time.perf_counter()
        message_id = reporter.report_rate_limit(model, "E101", 60)
        status = reporter.rate_limit_status(model)
        elapsed = time.perf_counter() - started
        wait_for(lambda: reporter.stats()["spooled"] == 1, timeout=5)  # kept for history, not dropped
        reporter.close(timeout=0.5)
    assert message_id is not None
    assert status == NOT_LIMITED
    assert elapsed < 0.5
    events = {entry["event"] for entry in logs if entry["log_level"] == "warning"}
    assert {"rate_limit_report_failed", "rate_limit_status_failed"} <= events


def test_a_history_message_spooled_while_redis_is_down_stays_resendable(tmp_path: Path, model: str) -> None:
    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", spool_dir=tmp_path / "spool")
    reporter = Client(JOB, "/srv/limits", settings=settings)
    message_id = reporter.report_rate_limit(model, "E101", 60)
    reporter.close(timeout=0.5)
    spool = Spool(tmp_path / "spool", settings.spool_max_bytes)
    head = spool.peek()
    spool.close()
    assert head is not None
    (envelope,) = head[1]
    message = json.loads(envelope) if isinstance(envelope, str) else envelope
    assert (message["message_id"], message["kind"]) == (str(message_id), "rate_limit")
    assert (message["payload"]["model"], message["payload"]["retry_after_seconds"]) == (model, 60)


def test_a_broker_that_is_not_redis_has_no_fast_path() -> None:
    limits = RateLimits(Settings(broker_url="memory://"))
    assert not limits.report("m", "E101", 60, "0123456789abcdef")
    assert limits.status("m") == NOT_LIMITED


def test_a_zero_duration_writes_no_key(model: str, redis_client: redis.Redis) -> None:
    limits = RateLimits(get_settings())
    assert not limits.report(model, "E101", 0, "0123456789abcdef")
    assert redis_client.exists(limits.key(model)) == 0
    limits.close()


def test_switches(model: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = get_settings().model_copy(update={"spool_dir": tmp_path})
    with Client(JOB, "/srv/limits", settings=settings, publish=False) as quiet:
        assert quiet.report_rate_limit(model, "E101", 60) is None
        assert redis_client.exists(rate_limit_key(settings.key_prefix, model)) == 0
        writer = RateLimits(settings)
        writer.report(model, "E102", 60, "0123456789abcdef")
        writer.close()
        assert quiet.rate_limit_status(model).limited  # reads still work with publishing off
    with Client(JOB, "/srv/limits", settings=settings, enabled=False) as off:
        assert off.report_rate_limit(model, "E101", 60) is None
        assert off.rate_limit_status(model) == RateLimitStatus(limited=False)


def test_a_foreign_value_still_means_limited(model: str, redis_client: redis.Redis) -> None:
    limits = RateLimits(get_settings())
    redis_client.set(limits.key(model), "not json", px=5000)
    status = limits.status(model)
    assert status.limited and status.error_code is None
    limits.close()
