"""Safe by default: a killed worker's messages come back quickly, a database outage is waited out in Redis.

Real ``celery -A ostinato.workers worker`` subprocesses; the database outage stops a PostgreSQL cluster of
the test's own (``postgres_server``), never the shared one.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery_process import celery_worker, wait_for
from messages import outcome
from postgres_server import PostgresServer
from sqlalchemy import Engine, text
from test_resilience import count, delete_prefixed, processed_ids, worker_env

from ostinato.broker import BATCH_TASK, INGEST_QUEUE, MAINTENANCE_QUEUE
from ostinato.producers.sender import producer_app
from ostinato.schema import migrate
from ostinato.schema.tables import dead_letters, executions, maintenance_runs
from ostinato.settings import Settings
from ostinato.workers.beat import task_name
from ostinato.workers.maintenance import EXPIRY
from ostinato.workers.store import Store, create_store_engine

pytestmark = pytest.mark.slow

BATCH = 20
MB = 1024 * 1024


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    value = f"ostinato-faults-{uuid.uuid4().hex[:12]}:"
    yield value
    delete_prefixed(redis_client, value)


class Publisher:
    """Sends batch tasks of ``BATCH`` fresh outcomes straight to the ingest queue, as a producer does."""

    def __init__(self, prefix: str) -> None:
        self.app = producer_app(Settings(key_prefix=prefix), 2.0)
        self.ids: set[str] = set()
        self.sent = 0

    def batch(self) -> None:
        messages = [outcome(self.sent * BATCH + n, "job-faults") for n in range(BATCH)]
        envelopes = [m.model_dump(mode="json") for m in messages]
        self.app.send_task(BATCH_TASK, args=[envelopes], queue=INGEST_QUEUE)
        self.ids.update(str(m.message_id) for m in messages)
        self.sent += 1

    def maintenance(self, name: str) -> None:
        self.app.send_task(task_name(name), queue=MAINTENANCE_QUEUE)


def queued(broker: redis.Redis, prefix: str, queue: str) -> int:
    return int(broker.llen(f"{prefix}{queue}"))


def unacked(broker: redis.Redis, prefix: str) -> int:
    return int(broker.hlen(f"{prefix}unacked"))


# --- a whole worker killed, with the default settings ----------------------------------------------------

KILLED_WITH = 4
"""Task messages the killed worker holds: two running (waiting on a table lock), two reserved."""


def default_timeouts(prefix: str) -> dict[str, str]:
    """The settings' own defaults (the test run's environment shortens them for the other tests)."""
    fields = Settings.model_fields
    names = ("visibility_timeout", "unacked_restore_interval", "task_time_limit")
    return {"OSTINATO_KEY_PREFIX": prefix} | {f"OSTINATO_{n.upper()}": str(fields[n].default) for n in names}


def test_a_killed_worker_s_messages_are_applied_within_30_s_with_the_default_settings(
    pg_store: Store, prefix: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    engine = pg_store.engine
    publisher = Publisher(prefix)
    env = default_timeouts(prefix)
    assert env["OSTINATO_VISIBILITY_TIMEOUT"] == "20.0"
    with celery_worker(tmp_path / "first.log", env) as first:
        first.wait_ready()
        with engine.connect() as lock:
            lock.execute(text("LOCK TABLE processed_messages IN ACCESS EXCLUSIVE MODE"))
            for _ in range(KILLED_WITH):
                publisher.batch()
            wait_for(lambda: unacked(redis_client, prefix) == KILLED_WITH, 10, "the worker to hold them all")
            first.kill()
            killed_at = time.monotonic()
            lock.rollback()
    assert queued(redis_client, prefix, INGEST_QUEUE) == 0
    assert processed_ids(engine) == set()

    with celery_worker(tmp_path / "second.log", env):
        wait_for(lambda: processed_ids(engine) == publisher.ids, 40, "the killed worker's messages applied")
        recovered_after = time.monotonic() - killed_at
        wait_for(lambda: unacked(redis_client, prefix) == 0, 10, "the unacked set to drain")

    assert recovered_after < 30, f"recovered after {recovered_after:.1f} s"
    assert count(engine, executions) == KILLED_WITH * BATCH
    assert count(engine, dead_letters) == 0
    print(
        f"\nwhole-worker SIGKILL with the default settings:"
        f" all {KILLED_WITH * BATCH} applied {recovered_after:.1f} s after"
    )


# --- a delivery past its time limit ----------------------------------------------------------------------


def test_a_delivery_past_its_soft_time_limit_is_retried_not_blamed(
    pg_store: Store, prefix: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A table lock keeps the delivery waiting past its soft limit (6.4 s of the test's 8 s): it is retried
    whole once the database serves again, nothing is dead-lettered and the worker's processes live on."""
    engine = pg_store.engine
    publisher = Publisher(prefix)
    with celery_worker(tmp_path / "worker.log", worker_env(prefix)) as worker:
        worker.wait_ready()
        with engine.connect() as lock:
            lock.execute(text("LOCK TABLE processed_messages IN ACCESS EXCLUSIVE MODE"))
            publisher.batch()
            wait_for(lambda: "SoftTimeLimitExceeded" in worker.log(), 15, "the soft time limit")
            lock.rollback()
        wait_for(lambda: processed_ids(engine) == publisher.ids, 30, "the delivery applied")
        wait_for(lambda: unacked(redis_client, prefix) == queued(redis_client, prefix, INGEST_QUEUE) == 0, 10)
        log = worker.log()

    # The soft limit interrupts the query; the rollback on that connection then fails, which is retried too.
    assert "Soft time limit (6.4s) exceeded" in log
    assert len(re.findall(r"retry: Retry in 0s", log)) == 1
    assert "Hard time limit" not in log
    assert count(engine, executions) == BATCH
    assert count(engine, dead_letters) == 0


# --- the database away for a while -----------------------------------------------------------------------

OUTAGE_BATCHES = 30
OUTAGE_SECONDS = 10.0
PREFETCH = Settings().ingest_batch_prefetch * 2
"""What a two-process worker may reserve: the prefetch multiplier times its concurrency."""
RSS_GROWTH_BOUND = 50 * MB


@pytest.fixture
def outage_database() -> Iterator[tuple[PostgresServer, str]]:
    server = PostgresServer()
    try:
        server.start()
        url = server.create_database("ostinato")
        migrate.upgrade(url)
        yield server, url
    finally:
        server.cleanup()


def test_a_database_outage_is_waited_out_in_redis_not_in_the_worker(
    outage_database: tuple[PostgresServer, str], prefix: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    server, url = outage_database
    engine: Engine = create_store_engine(url)
    publisher = Publisher(prefix)
    # One expiry period covers the whole test, so every expiry message is one pass.
    env = worker_env(prefix, OSTINATO_DATABASE_URL=url, OSTINATO_MAINTENANCE_EXPIRY_PERIOD="1e9")
    queues = f"{INGEST_QUEUE},{MAINTENANCE_QUEUE}"
    try:
        with celery_worker(tmp_path / "worker.log", env, queues=queues) as worker:
            worker.wait_ready()
            for _ in range(5):
                publisher.batch()
            wait_for(lambda: processed_ids(engine) == publisher.ids, 30, "the warm-up batches applied")
            warm = publisher.sent
            rss_before = worker.rss_bytes()

            server.stop()
            most_unacked = 0
            for n in range(OUTAGE_BATCHES):
                publisher.batch()
                if n % 10 == 0:
                    publisher.maintenance(EXPIRY)
                most_unacked = max(most_unacked, unacked(redis_client, prefix))
                time.sleep(OUTAGE_SECONDS / OUTAGE_BATCHES)
            wait_for(lambda: unacked(redis_client, prefix) == 0, 10, "the worker to give back what it held")
            time.sleep(1)
            in_queue = queued(redis_client, prefix, INGEST_QUEUE)
            maintenance_in_queue = queued(redis_client, prefix, MAINTENANCE_QUEUE)
            held_after = unacked(redis_client, prefix)
            rss_outage = worker.rss_bytes()
            paused_log = worker.log()

            server.start()
            restarted_at = time.monotonic()
            wait_for(lambda: processed_ids(engine) == publisher.ids, 60, "every message applied")
            applied_after = time.monotonic() - restarted_at
            wait_for(
                lambda: queued(redis_client, prefix, MAINTENANCE_QUEUE) == unacked(redis_client, prefix) == 0,
                30,
                "the maintenance messages to run",
            )
            rss_after = worker.rss_bytes()
            log = worker.log()

        assert most_unacked <= PREFETCH
        assert held_after == 0
        assert in_queue == publisher.sent - warm == OUTAGE_BATCHES
        assert maintenance_in_queue == OUTAGE_BATCHES // 10
        assert "database_away_consuming_paused" in paused_log
        assert "database_back_consuming_resumed" not in paused_log
        assert "database_back_consuming_resumed" in log
        assert rss_outage - rss_before < RSS_GROWTH_BOUND
        assert rss_after - rss_before < RSS_GROWTH_BOUND
        assert processed_ids(engine) == publisher.ids
        assert count(engine, executions) == publisher.sent * BATCH
        assert count(engine, dead_letters) == 0
        assert count(engine, maintenance_runs, maintenance_runs.c.task == EXPIRY) == 1
        print(
            f"\ndatabase away {OUTAGE_SECONDS:.0f} s: at most {most_unacked} messages held,"
            f" {in_queue} waited in Redis; RSS {rss_before / MB:.0f} MB before,"
            f" {rss_outage / MB:.0f} MB at the end of the outage,"
            f" {rss_after / MB:.0f} MB after; all applied {applied_after:.1f} s after the database was back"
        )
    finally:
        engine.dispose()
