"""Transactions for the store: one per public call, or one shared by a whole batch.

A public call runs in the connection bound to the current context when there is one (``batch()`` or
``run()``), so many calls commit together; otherwise it opens its own transaction. ``run()`` retries the whole
unit of work on deadlocks and serialization failures, which is why the unit is a function and not a block.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import structlog
from pydantic_core import to_json
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Table,
    create_engine,
    event,
    func,
    literal,
    text,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.tables import UTCDateTime

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound="StoreBase")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
"""Serialization failure and deadlock: the transaction did nothing and may simply run again."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A random UUID (version 4) in its usual text form.

    Built from the random bytes directly: ``str(uuid.uuid4())`` spends most of its ~6 µs on the UUID
    object, and ingest makes one id per pattern application.
    """
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def create_store_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for the store; SQLite gets WAL, a busy timeout and write-locking transactions."""
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_retryable(error: BaseException) -> bool:
    """Deadlocks, serialization failures and a locked SQLite file are worth another try."""
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in RETRYABLE_SQLSTATES:
        return True
    return "database is locked" in str(error.orig)


class StoreBase:
    """Engine, clock and the transaction binding that every store operation shares."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_attempts: int = 10,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.max_attempts = max_attempts
        self._bound: ContextVar[Connection | None] = ContextVar(f"ostinato_store_{id(self)}", default=None)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def now(self) -> datetime:
        return self.clock()

    @property
    def conn(self) -> Connection:
        """The connection of the current transaction; only valid inside ``run``/``batch``/a public call."""
        connection = self._bound.get()
        if connection is None:
            raise RuntimeError("no store transaction is open in this context")
        return connection

    @contextmanager
    def batch(self) -> Iterator[Connection]:
        """One transaction for every store call in the block: one commit, or a rollback and re-raise."""
        if self._bound.get() is not None:
            yield self.conn
            return
        with self.engine.begin() as connection:
            token = self._bound.set(connection)
            try:
                yield connection
            finally:
                self._bound.reset(token)

    def run(self, work: Callable[[], T]) -> T:
        """Run ``work`` in one transaction, retrying it whole on deadlock or serialization failure."""
        if self._bound.get() is not None:
            return work()
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self.batch():
                    return work()
            except DBAPIError as error:
                if not is_retryable(error) or attempt == self.max_attempts:
                    raise
                log.info(
                    "store_transaction_retry", attempt=attempt, sqlstate=getattr(error.orig, "sqlstate", None)
                )
                time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def advisory_lock(self, key: str) -> None:
        """Serialise transactions that share ``key`` until commit (PostgreSQL; SQLite has one writer)."""
        if self.dialect == "postgresql":
            self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def insert_rows(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]],
        *,
        returning: str | Sequence[str] | None = None,
        conflict: Sequence[str] = (),
        add_on_conflict: Sequence[str] = (),
    ) -> list[Any]:
        """Insert many rows; a row whose ``conflict`` key exists is skipped, or adds ``add_on_conflict``.

        Returns the ``returning`` value (a tuple when it names several columns) of each row written. On
        PostgreSQL the rows travel as one JSON document, serialised in Rust by pydantic-core and expanded
        by ``jsonb_to_recordset``: a short statement with one parameter instead of a multi-row VALUES with
        thousands of parameters that SQLAlchemy compiles and the driver re-parses every time. Elsewhere it
        is a multi-row INSERT.
        """
        if not rows:
            return []
        names = [returning] if isinstance(returning, str) else list(returning or ())
        if self.dialect == "postgresql":
            result = self._insert_rows_postgresql(table, rows, names, conflict, add_on_conflict)
        else:
            result = self._insert_rows_sqlite(table, rows, names, conflict, add_on_conflict)
        if result is None:
            return []
        return [row[0] if isinstance(returning, str) else tuple(row) for row in result]

    def _insert_rows_postgresql(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]],
        names: list[str],
        conflict: Sequence[str],
        add_on_conflict: Sequence[str],
    ) -> CursorResult[Any] | None:
        columns = list(rows[0])
        shape = ", ".join(
            f"{name} {table.c[name].type.compile(dialect=self.engine.dialect)}" for name in columns
        )
        sql = (
            f"INSERT INTO {table.name} AS t ({', '.join(columns)}) "
            f"SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({shape})"
        )
        if add_on_conflict:
            sums = ", ".join(f"{name} = t.{name} + excluded.{name}" for name in add_on_conflict)
            sql += f" ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {sums}"
        elif conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
        document = {"rows": to_json(rows).decode()}
        if not names:
            self.conn.exec_driver_sql(sql, document)
            return None
        return self.conn.exec_driver_sql(f"{sql} RETURNING {', '.join(f't.{n}' for n in names)}", document)

    def _insert_rows_sqlite(
        self,
        table: Table,
        rows: Sequence[dict[str, Any]],
        names: list[str],
        conflict: Sequence[str],
        add_on_conflict: Sequence[str],
    ) -> CursorResult[Any] | None:
        statement = sqlite_insert(table)
        if add_on_conflict:
            statement = statement.on_conflict_do_update(
                index_elements=list(conflict),
                set_={name: table.c[name] + statement.excluded[name] for name in add_on_conflict},
            )
        elif conflict:
            statement = statement.on_conflict_do_nothing(index_elements=list(conflict))
        if not names:
            self.conn.execute(statement, list(rows))
            return None
        return self.conn.execute(statement.returning(*(table.c[n] for n in names)), list(rows))

    def later(self, column: Any, value: datetime | ColumnElement[Any]) -> ColumnElement[Any]:
        """The later of a stored time and an incoming one, so out-of-order messages never move it back."""
        return self._pick("greatest" if self.dialect == "postgresql" else "max", column, value)

    def earlier(self, column: Any, value: datetime | ColumnElement[Any]) -> ColumnElement[Any]:
        """The earlier of a stored time and an incoming one (first sightings)."""
        return self._pick("least" if self.dialect == "postgresql" else "min", column, value)

    @staticmethod
    def _pick(function: str, column: Any, value: datetime | ColumnElement[Any]) -> ColumnElement[Any]:
        incoming = value if isinstance(value, ColumnElement) else literal(value, UTCDateTime())
        return getattr(func, function)(column, incoming, type_=UTCDateTime())  # type: ignore[no-any-return]


def transactional(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Make a store method run in the bound transaction, or in its own retried one."""

    @functools.wraps(method)
    def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(lambda: method(self, *args, **kwargs))

    return cast(Callable[Concatenate[S, P], T], wrapper)
