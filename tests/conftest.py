"""Shared fixtures: each test run gets its own PostgreSQL database and Redis key prefix, and removes them."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ADMIN_URL = os.environ.get("OSTINATO_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]
DATABASE_NAME = f"ostinato_test_{RUN_ID}"
KEY_PREFIX = f"ostinato-test-{RUN_ID}:"
# The Celery app reads its settings when ostinato.workers is first imported, so this run's database, key
# prefix and spool must be in the environment before that (and child processes inherit them).
os.environ["OSTINATO_DATABASE_URL"] = ADMIN_URL.rsplit("/", 1)[0] + f"/{DATABASE_NAME}"
os.environ["OSTINATO_KEY_PREFIX"] = KEY_PREFIX
os.environ["OSTINATO_SPOOL_DIR"] = tempfile.mkdtemp(prefix=f"ostinato-spool-{RUN_ID}-")
os.environ.setdefault("OSTINATO_BROKER_URL", "redis://127.0.0.1:6379/0")
os.environ["OSTINATO_VISIBILITY_TIMEOUT"] = "30"
os.environ["OSTINATO_UNACKED_RESTORE_INTERVAL"] = "1"

import pytest  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import Engine, create_engine, delete, text  # noqa: E402

from ostinato.schema import migrate  # noqa: E402
from ostinato.schema.tables import metadata  # noqa: E402
from ostinato.workers.store import Store, create_store_engine  # noqa: E402

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A test clock that moves forward 1 ms on every read, so event order is always well defined."""

    def __init__(self, start: datetime = START, tick: timedelta = timedelta(milliseconds=1)) -> None:
        self.current = start
        self.tick = tick

    def __call__(self) -> datetime:
        self.current += self.tick
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run, dropped at the end."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{DATABASE_NAME}"'))
    url = os.environ["OSTINATO_DATABASE_URL"]
    migrate.upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """The shared Redis; every key this run made (they all carry its prefix) is deleted at the end."""
    client = redis.Redis.from_url(os.environ["OSTINATO_BROKER_URL"])
    yield client
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def pg_engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("sqlite") / "store.db"
    engine = create_store_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def wipe(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(delete(table))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, clock: Clock) -> Store:
    """An empty store on PostgreSQL and, in a second run of the test, on SQLite (embedded mode)."""
    engine: Engine = request.getfixturevalue(
        "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    )
    wipe(engine)
    return Store(engine, clock=clock)


@pytest.fixture
def pg_store(pg_engine: Engine, clock: Clock) -> Store:
    """An empty store on PostgreSQL only (concurrency tests)."""
    wipe(pg_engine)
    return Store(pg_engine, clock=clock)


@pytest.fixture(scope="session")
def ingest_worker(database_url: str, redis_client: redis.Redis) -> Iterator[object]:
    """A real Celery worker (Celery's own embedded worker, thread pool) on this run's prefixed queues."""
    from celery.contrib.testing.worker import start_worker

    import ostinato.workers.tasks  # noqa: F401  (registers the tasks)
    from ostinato.workers import app

    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="WARNING"
    ) as worker:
        yield worker
