"""Reading an upstream ``global-learning.db`` without ever changing it, and refusing a foreign one.

The file is opened read-only. A WAL-mode file needs its ``-shm`` index beside it, which a read-only
connection may have to create: when there is no ``-wal`` content the file is opened ``immutable`` (nothing
to index, nothing created), and when there is ``-wal`` content but no index, the file and its ``-wal`` are
copied to a private temporary folder and the copy is read. ``check`` looks at everything that could make
the import fail as a whole before the first row is written.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ostinato.upstream.errors import UpstreamFileError
from ostinato.upstream.layout import SCHEMA_VERSION, TABLES
from ostinato.upstream.values import decode_text

HEADER = b"SQLite format 3\x00"
HEADER_SIZE = 100
WAL_VERSION = 2
"""Bytes 18 and 19 of the header (file format write/read versions) are 2 in WAL mode."""


def _connect(uri: str) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True)
    connection.text_factory = decode_text
    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return connection


class UpstreamSource:
    """An open upstream file; use ``open`` and close it (or use it as a context manager)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, access: str, copy: Path | None) -> None:
        self.path = path
        self.connection = connection
        self.access = access
        """How the file was opened, for the report."""
        self._copy = copy

    @classmethod
    def open(cls, path: Path) -> UpstreamSource:
        """Open ``path`` read-only; ``UpstreamFileError`` for a missing file or one that is not SQLite."""
        path = Path(path)
        if not path.is_file():
            raise UpstreamFileError(f"{path} does not exist or is not a file")
        with path.open("rb") as handle:
            header = handle.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(HEADER):
            raise UpstreamFileError(f"{path} is not an SQLite database (it lacks the SQLite header)")
        wal = WAL_VERSION in (header[18], header[19])
        wal_file = Path(f"{path}-wal")
        pending = wal and wal_file.is_file() and wal_file.stat().st_size > 0
        uri = path.resolve().as_uri()
        try:
            if not wal:
                return cls(path, _connect(f"{uri}?mode=ro"), "read-only", None)
            if not pending:
                access = "read-only (WAL file, no -wal content)"
                return cls(path, _connect(f"{uri}?mode=ro&immutable=1"), access, None)
            if Path(f"{path}-shm").is_file():
                try:
                    return cls(path, _connect(f"{uri}?mode=ro"), "read-only (WAL file with its -wal)", None)
                except sqlite3.OperationalError:
                    pass
            return cls._open_copy(path, wal_file)
        except sqlite3.DatabaseError as error:
            raise UpstreamFileError(f"{path} cannot be read as SQLite: {error}") from None

    @classmethod
    def _open_copy(cls, path: Path, wal_file: Path) -> UpstreamSource:
        """Read a private copy of the file and its -wal, so no index is ever created beside the original."""
        folder = Path(tempfile.mkdtemp(prefix="ostinato-upstream-"))
        try:
            copy = folder / "global-learning.db"
            shutil.copyfile(path, copy)
            shutil.copyfile(wal_file, Path(f"{copy}-wal"))
            connection = _connect(f"{copy.as_uri()}?mode=ro")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(path, connection, "a private copy (WAL file with -wal content but no -shm index)", folder)

    def close(self) -> None:
        self.connection.close()
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)

    def __enter__(self) -> UpstreamSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def check(self) -> dict[str, int]:
        """Everything that would make the file as a whole unusable, then the row count of each table.

        Raises ``UpstreamFileError`` naming every problem found: corruption, a missing or unknown schema
        version, missing tables or columns.
        """
        try:
            return self._check()
        except sqlite3.DatabaseError as error:
            raise UpstreamFileError(f"{self.path} cannot be read as SQLite: {error}") from None

    def _check(self) -> dict[str, int]:
        verdict = [row[0] for row in self.connection.execute("PRAGMA quick_check").fetchall()]
        if verdict != ["ok"]:
            raise UpstreamFileError(f"{self.path} is corrupt: {'; '.join(map(str, verdict[:5]))}")
        present = {
            row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "schema_version" not in present:
            raise UpstreamFileError(
                f"{self.path} is not an upstream learning store: it has no schema_version table"
            )
        self._check_version()
        problems = []
        for table, columns in TABLES.items():
            if table not in present:
                problems.append(f"table {table} is missing")
                continue
            have = {row[1] for row in self.connection.execute(f'PRAGMA table_info("{table}")')}
            missing = [column for column in columns if column not in have]
            if missing:
                problems.append(f"table {table} lacks column(s) {', '.join(missing)}")
                continue
            try:
                self.connection.execute(f"{self._select(table)} LIMIT 0").fetchall()
            except sqlite3.DatabaseError as error:
                problems.append(f"table {table} cannot be read: {error}")
        if problems:
            raise UpstreamFileError(
                f"{self.path} does not have upstream's version-{SCHEMA_VERSION} layout: {'; '.join(problems)}"
            )
        count = 'SELECT count(*) FROM "{}"'
        return {table: self.connection.execute(count.format(table)).fetchone()[0] for table in TABLES}

    def _check_version(self) -> None:
        versions = [row[0] for row in self.connection.execute("SELECT version FROM schema_version")]
        if versions == [SCHEMA_VERSION]:
            return
        if len(versions) != 1 or not isinstance(versions[0], int):
            raise UpstreamFileError(
                f"{self.path} has an unreadable schema_version ({versions[:3]!r}); "
                f"this importer reads upstream schema version {SCHEMA_VERSION}"
            )
        hint = (
            "open it once with upstream, which migrates older stores to 15, then import it"
            if versions[0] < SCHEMA_VERSION
            else "it is newer than this importer knows"
        )
        raise UpstreamFileError(
            f"{self.path} has upstream schema version {versions[0]}; this importer reads version "
            f"{SCHEMA_VERSION} only ({hint})"
        )

    @staticmethod
    def _select(table: str) -> str:
        columns = ", ".join(f'"{column}"' for column in TABLES[table])
        return f'SELECT {columns} FROM "{table}" ORDER BY rowid'

    def rows(self, table: str, chunk_size: int) -> Iterator[list[dict[str, Any]]]:
        """The table's rows in upstream's insertion order, ``chunk_size`` at a time."""
        columns = TABLES[table]
        cursor = self.connection.execute(self._select(table))
        try:
            while chunk := cursor.fetchmany(chunk_size):
                yield [dict(zip(columns, values, strict=True)) for values in chunk]
        finally:
            cursor.close()
