"""``ostinato import-sqlite``: an upstream global-learning.db comes into the store exactly, once, read-only.

The expectations are written here from expected.json and SPEC-store §0 (fractions, one notion of retired,
UTC), independently of the importer's converters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer
from conftest import wipe
from rich.console import Console
from sqlalchemy import select
from typer.testing import CliRunner

from ostinato.schema.tables import metadata
from ostinato.upstream.cli import import_sqlite_command, run_import
from ostinato.upstream.errors import StoreNotReadyError, UpstreamFileError
from ostinato.upstream.importer import ImportReport, import_upstream
from ostinato.upstream.layout import KEY_COLUMN, TABLES
from ostinato.upstream.source import UpstreamSource
from ostinato.workers.store import Store, create_store_engine
from ostinato.workers.store.executions import execution_confidence

FIXTURES = Path("/work/shared/fixtures/upstream")
FIXTURE = FIXTURES / "global-learning.db"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
COUNTS: dict[str, int] = {t: n for t, n in EXPECTED["row_counts"].items() if t != "schema_version"}
NOBODY = 65534


def utc(text: str) -> datetime:
    """Upstream's times: an offset is kept, naive ones are UTC (the fixture generator's local zone)."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def expected_pattern(p: dict[str, Any]) -> dict[str, Any]:
    """§0.4: retired is one notion, status 'retired' with priority 0, whichever upstream had set."""
    retired = p["quarantine_status"] == "retired" or p["priority_score"] == 0
    return {
        **p,
        "quarantine_status": "retired" if retired else p["quarantine_status"],
        "priority_score": 0.0 if retired else p["priority_score"],
        "active": bool(p["active"]),
    }


def expected_execution(e: dict[str, Any]) -> dict[str, Any]:
    """§0.2: a percentage pass rate becomes a fraction and its confidence is computed on the fraction."""
    rate, confidence = e["validation_pass_rate"], e["confidence_score"]
    if rate > 1:
        rate = rate / 100
        confidence = execution_confidence(rate, e["retry_count"], bool(e["success_without_retry"]))
    return {
        **e,
        "started_at": utc(e["started_at"]),
        "completed_at": utc(e["completed_at"]),
        "success_without_retry": bool(e["success_without_retry"]),
        "validation_pass_rate": rate,
        "confidence_score": confidence,
        "error_codes": json.loads(e["error_codes"]),
    }


def dump(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every imported table's rows in key order."""
    result = {}
    with store.engine.connect() as connection:
        for name in TABLES:
            table = metadata.tables[name]
            rows = connection.execute(select(table).order_by(table.c[KEY_COLUMN[name]]))
            result[name] = [dict(row._mapping) for row in rows]
    return result


def stored_counts(store: Store) -> dict[str, int]:
    return {name: len(rows) for name, rows in dump(store).items()}


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def writable_copy(folder: Path, name: str = "global-learning.db") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / name
    shutil.copyfile(FIXTURE, copy)
    copy.chmod(0o644)
    return copy


def edit(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def import_utc(path: Path, store: Store, **options: Any) -> ImportReport:
    return import_upstream(path, store, zone=ZoneInfo("UTC"), **options)


@pytest.fixture
def read_only_folder() -> Iterator[Path]:
    """A folder in /tmp (so an unprivileged user can reach it) that the test may make read-only."""
    folder = Path(tempfile.mkdtemp(prefix="ostinato-upstream-test-"))
    yield folder
    folder.chmod(0o755)
    for child in folder.iterdir():
        child.chmod(0o644)
    shutil.rmtree(folder)


# -- the fixture, reproduced ----------------------------------------------------------------------------


def test_import_reproduces_expected_json(store: Store) -> None:
    before = fingerprint(FIXTURE)
    report = import_utc(FIXTURE, store, chunk_size=50)

    assert fingerprint(FIXTURE) == before
    assert {t.table: t.imported for t in report.tables} == COUNTS
    assert (report.present, report.refused) == (0, 0)
    assert stored_counts(store) == COUNTS

    stored = {row["id"]: row for row in dump(store)["patterns"]}
    assert len(EXPECTED["patterns"]) == COUNTS["patterns"]
    for upstream in EXPECTED["patterns"]:
        want = expected_pattern(upstream)
        assert {key: stored[want["id"]][key] for key in want} == want

    executions = {row["id"]: row for row in dump(store)["executions"]}
    for execution_id, upstream in EXPECTED["executions"].items():
        want = expected_execution(upstream)
        assert {key: executions[execution_id][key] for key in want} == want, execution_id


def test_conversions_beyond_the_status_fields(store: Store) -> None:
    import_utc(FIXTURE, store)
    rows = dump(store)
    by_id = {name: {row[KEY_COLUMN[name]]: row for row in rows[name]} for name in TABLES}

    rate_limit = by_id["rate_limit_events"]["66b3f7dd-30bd-4e21-9b07-2b26747ad6aa"]
    assert rate_limit["recorded_at"] == datetime(2026, 3, 2, 8, 2, 51, 730446, tzinfo=UTC)

    escalation = by_id["escalation_decisions"]
    assert sorted({row["validation_pass_rate"] for row in escalation.values()}) == [0.0, 0.2, 0.5, 0.75]

    pattern = by_id["patterns"]["a56b0d5b1257acd4"]
    assert pattern["context_tags"] == ["error:E101", "category:rate_limit", "retriable:True"]
    assert pattern["success_factors"]["time_of_day_bucket"] == "night"
    assert pattern["last_confirmed"] == datetime(2026, 3, 8, 22, 55, 7, 88224, tzinfo=UTC)

    application = by_id["pattern_applications"]["1274c60a-5800-443c-9810-503e0eaa7870"]
    assert application["pattern_led_to_success"] is False
    assert application["execution_id"] == "sheet_2"
    assert (application["application_mode"], application["validation_passed"]) == (None, None)

    response = by_id["entropy_responses"]["aec78f0b-add7-4157-8a7e-99d081f37f73"]
    assert response["actions_taken"] == ["budget_boost", "quarantine_revisit"]
    assert response["budget_boosted"] is True

    assert all(row["time_of_day"] == row["recorded_at"].hour for row in by_id["error_recoveries"].values())
    assert by_id["evolution_trajectory"]["4bd347eb-dc1e-4651-846b-fa1d3c73b95a"]["issue_classes"] == [
        "missing_tests",
        "schema_mismatch",
        "slow_sheets",
    ]


def test_budget_rows_are_numbered_per_job_in_upstream_order(store: Store) -> None:
    import_utc(FIXTURE, store, chunk_size=5)
    with sqlite3.connect(f"{FIXTURE.as_uri()}?mode=ro", uri=True) as upstream:
        ordered = upstream.execute("SELECT id, job_hash FROM exploration_budget ORDER BY rowid").fetchall()
    upstream.close()
    seq = {row["id"]: row["seq"] for row in dump(store)["exploration_budget"]}
    position: dict[str, int] = {}
    for budget_id, job in ordered:
        position[job] = position.get(job, 0) + 1
        assert seq[budget_id] == position[job]
    for job in position:
        latest = store.get_exploration_budget(job)
        assert latest is not None
        with sqlite3.connect(f"{FIXTURE.as_uri()}?mode=ro", uri=True) as upstream:
            want = upstream.execute(
                "SELECT id FROM exploration_budget WHERE job_hash = ? ORDER BY recorded_at DESC, rowid DESC",
                (job,),
            ).fetchone()[0]
        upstream.close()
        assert latest.id == want


def test_naive_times_are_read_in_the_given_zone(store: Store) -> None:
    import_upstream(FIXTURE, store, zone=ZoneInfo("Europe/Paris"))
    pattern = store.get_pattern_by_id("a56b0d5b1257acd4")
    assert pattern is not None
    assert pattern.first_seen == datetime(2026, 3, 2, 7, 2, 51, 730446, tzinfo=UTC)
    execution = {row["id"]: row for row in dump(store)["executions"]}["005b05d7-98f7-41fc-aded-171548ab7bf6"]
    assert execution["started_at"] == datetime(2026, 3, 5, 23, 1, 2, 691422, tzinfo=UTC)
    assert execution["completed_at"] == datetime(2026, 3, 6, 0, 34, 31, 538170, tzinfo=UTC)
    recoveries = dump(store)["error_recoveries"]
    assert all(row["time_of_day"] == row["recorded_at"].hour for row in recoveries)


# -- idempotent, resumable ------------------------------------------------------------------------------


def test_a_second_import_changes_nothing(store: Store) -> None:
    import_utc(FIXTURE, store, chunk_size=100)
    first = dump(store)
    report = import_utc(FIXTURE, store, chunk_size=100)
    assert {t.table: t.present for t in report.tables} == COUNTS
    assert (report.imported, report.refused) == (0, 0)
    assert dump(store) == first


def test_an_interrupted_import_is_finished_by_running_it_again(store: Store) -> None:
    import_utc(FIXTURE, store)
    complete = dump(store)
    wipe(store.engine)
    chunks = 0

    def interrupt(table: str, done: int, total: int) -> None:
        nonlocal chunks
        if done:
            chunks += 1
        if chunks == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_utc(FIXTURE, store, chunk_size=100, progress=interrupt)
    partial = stored_counts(store)
    assert 0 < sum(partial.values()) < sum(COUNTS.values())

    report = import_utc(FIXTURE, store, chunk_size=100)
    assert {t.table: t.imported + t.present for t in report.tables} == COUNTS
    assert report.present == sum(partial.values())
    assert dump(store) == complete


# -- read-only, never changed ---------------------------------------------------------------------------


def _read_everything(path: Path) -> dict[str, int]:
    with UpstreamSource.open(path) as source:
        source.check()
        return {t: sum(len(chunk) for chunk in source.rows(t, 500)) for t in TABLES}


def _read_as_nobody(path: Path) -> dict[str, Any]:
    """Read the whole file in a child process that has dropped root, so folder permissions really apply."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.close(reader)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer: dict[str, Any] = {"counts": _read_everything(path)}
        except BaseException as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        os.write(writer, json.dumps(answer).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        answer = json.loads(pipe.read())
    os.waitpid(child, 0)
    return answer


def _make_read_only(folder: Path) -> list[str]:
    for child in folder.iterdir():
        child.chmod(0o444)
    folder.chmod(0o555)
    return sorted(os.listdir(folder))


def test_a_wal_file_in_a_read_only_folder_imports(store: Store, read_only_folder: Path) -> None:
    copy = writable_copy(read_only_folder)
    with sqlite3.connect(copy) as connection:
        assert connection.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    connection.close()
    listing = _make_read_only(read_only_folder)
    before = fingerprint(copy)

    if os.geteuid() == 0:
        assert _read_as_nobody(copy) == {"counts": COUNTS}
    report = import_utc(copy, store)

    assert {t.table: t.imported for t in report.tables} == COUNTS
    assert sorted(os.listdir(read_only_folder)) == listing
    assert fingerprint(copy) == before


def test_a_wal_file_with_unmerged_wal_content_is_read_with_it(store: Store, read_only_folder: Path) -> None:
    """A crashed upstream leaves a -wal beside the file and no -shm: the -wal's rows still count."""
    work = read_only_folder / "work"
    copy = writable_copy(work)
    writer = sqlite3.connect(copy, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("DELETE FROM workspace_clusters WHERE workspace_hash = '5d0188c8e975298f'")
    shutil.copyfile(copy, read_only_folder / "global-learning.db")
    shutil.copyfile(f"{copy}-wal", read_only_folder / "global-learning.db-wal")
    writer.close()
    shutil.rmtree(work)
    target = read_only_folder / "global-learning.db"
    listing = _make_read_only(read_only_folder)
    before = fingerprint(target)

    if os.geteuid() == 0:
        assert _read_as_nobody(target) == {"counts": {**COUNTS, "workspace_clusters": 4}}
    report = import_utc(target, store)

    assert "private copy" in report.access
    assert {t.table: t.imported for t in report.tables} == {**COUNTS, "workspace_clusters": 4}
    assert sorted(os.listdir(read_only_folder)) == listing
    assert fingerprint(target) == before


def test_a_live_wal_file_is_read_through_its_index(store: Store, tmp_path: Path) -> None:
    """Upstream still running: its -wal and -shm exist, and the committed rows in the -wal are read."""
    copy = writable_copy(tmp_path)
    writer = sqlite3.connect(copy, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("DELETE FROM evolution_trajectory WHERE cycle = 7")
    before = fingerprint(copy)
    try:
        report = import_utc(copy, store)
        after = fingerprint(copy)
    finally:
        writer.close()
    assert "with its -wal" in report.access
    assert {t.table: t.imported for t in report.tables} == {**COUNTS, "evolution_trajectory": 6}
    assert after == before


# -- bad or foreign files: a clear error, nothing written -----------------------------------------------


def _text_file(folder: Path) -> Path:
    path = folder / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    return path


def _truncated(folder: Path) -> Path:
    path = folder / "truncated.db"
    path.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2])
    return path


def _scribbled(folder: Path) -> Path:
    path = folder / "scribbled.db"
    data = FIXTURE.read_bytes()
    path.write_bytes(data[:300_000] + b"\xff" * 4096 + data[304_096:])
    return path


def _version(version: int) -> Any:
    def make(folder: Path) -> Path:
        path = writable_copy(folder, f"v{version}.db")
        edit(path, f"UPDATE schema_version SET version = {version}")
        return path

    return make


def _without(table: str) -> Any:
    def make(folder: Path) -> Path:
        path = writable_copy(folder, f"no-{table}.db")
        edit(path, f"DROP TABLE {table}")
        return path

    return make


def _without_column(folder: Path) -> Path:
    path = writable_copy(folder, "no-column.db")
    edit(path, "ALTER TABLE executions DROP COLUMN confidence_score")
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.db"
    path.touch()
    return path


BAD_FILES = {
    "text file": (_text_file, "is not an SQLite database"),
    "empty file": (_empty, "is not an SQLite database"),
    "truncated": (_truncated, "cannot be read as SQLite: database disk image is malformed"),
    "scribbled over": (_scribbled, "cannot be read as SQLite: database disk image is malformed"),
    "newer schema": (_version(16), "has upstream schema version 16; this importer reads version 15 only"),
    "older schema": (_version(14), "has upstream schema version 14; this importer reads version 15 only"),
    "missing table": (_without("workspace_clusters"), "table workspace_clusters is missing"),
    "no schema_version": (_without("schema_version"), "it has no schema_version table"),
    "missing column": (_without_column, "table executions lacks column(s) confidence_score"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_refused_before_anything_is_written(store: Store, tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    before = fingerprint(path)
    with pytest.raises(UpstreamFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_utc(path, store)
    assert sum(stored_counts(store).values()) == 0
    assert fingerprint(path) == before


def test_a_missing_file_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UpstreamFileError, match="does not exist"):
        import_utc(tmp_path / "nowhere.db", store)


def test_an_unmigrated_or_unreachable_store_is_refused(tmp_path: Path) -> None:
    store = Store(create_store_engine(f"sqlite:///{tmp_path / 'blank.db'}"))
    with pytest.raises(StoreNotReadyError, match="ostinato migrate"):
        import_utc(FIXTURE, store)
    store.engine.dispose()
    closed = Store(create_store_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere"))
    with pytest.raises(StoreNotReadyError, match="the store does not answer"):
        import_utc(FIXTURE, closed)
    closed.engine.dispose()


# -- refused rows: reported, not skipped silently ------------------------------------------------------


BAD_ROWS = (
    "UPDATE patterns SET effectiveness_score = 1.7 WHERE id = '06b0eb7bcfa3619b'",
    "UPDATE patterns SET quarantine_status = 'maybe' WHERE id = '0a4a1735090b3ffe'",
    "UPDATE executions SET validation_pass_rate = 250 WHERE id = '005b05d7-98f7-41fc-aded-171548ab7bf6'",
    "UPDATE executions SET retry_count = -1 WHERE id = '02ac9e50-8bd6-4356-b0f8-84dcba08451b'",
    "UPDATE pattern_applications SET pattern_led_to_success = NULL "
    "WHERE id = '1274c60a-5800-443c-9810-503e0eaa7870'",
    "UPDATE error_recoveries SET recorded_at = 'last tuesday' "
    "WHERE id = '3bf5c06c-773d-4d73-a0a5-bb1a2a39966e'",
    "UPDATE escalation_decisions SET action = 'dance' WHERE id = 'b8222366-f87c-4122-a0c1-dbc26582b6ff'",
    "UPDATE escalation_decisions SET guidance = 'a' || char(0) || 'b' "
    "WHERE id = 'a3b37192-1bd0-4a1a-8f02-6fdf7e617a1a'",
    "UPDATE entropy_responses SET actions_taken = '{not json' "
    "WHERE id = 'aec78f0b-add7-4157-8a7e-99d081f37f73'",
    "UPDATE workspace_clusters SET cluster_id = CAST(x'ff41' AS TEXT) "
    "WHERE workspace_hash = '5d0188c8e975298f'",
)
REFUSALS = {
    "patterns": {"effectiveness_score outside 0..1": 1, "quarantine_status is not one of": 1},
    "executions": {"validation_pass_rate outside 0..100": 1, "retry_count outside 0..1000000000": 1},
    "pattern_applications": {"pattern_led_to_success is missing": 1},
    "error_recoveries": {"recorded_at is not an ISO time": 1},
    "escalation_decisions": {"action is not one of": 1, "guidance holds a NUL character": 1},
    "entropy_responses": {"actions_taken is not valid JSON": 1},
    "evolution_trajectory": {"cycle already recorded under another id": 1},
    "workspace_clusters": {"cluster_id is not valid UTF-8": 1},
}


def test_rows_ostinato_cannot_store_are_refused_with_their_reason(store: Store, tmp_path: Path) -> None:
    path = writable_copy(tmp_path)
    edit(path, *BAD_ROWS)
    store.record_evolution_entry(
        cycle=3,
        evolutions_completed=1,
        evolutions_deferred=0,
        issue_classes=["native"],
        cv_avg=0.5,
        implementation_loc=1,
        test_loc=1,
        loc_accuracy=1.0,
    )
    report = import_utc(path, store)

    refusals = {
        t.table: {_prefix(reason, REFUSALS.get(t.table, {})): n for reason, n in t.refusals.items()}
        for t in report.tables
        if t.refused
    }
    assert refusals == REFUSALS
    stored = stored_counts(store)
    for t in report.tables:
        native = 1 if t.table == "evolution_trajectory" else 0
        assert t.imported == t.rows - t.refused
        assert stored[t.table] == t.imported + native
    assert store.get_pattern_by_id("06b0eb7bcfa3619b") is None
    examples = report.tables[0].examples
    assert examples["effectiveness_score outside 0..1"] == ["06b0eb7bcfa3619b: 1.7"]

    console = Console(record=True, width=200)
    assert run_import(path, store, console, timezone="UTC") == 1
    output = console.export_text()
    assert "refused rows" in output
    assert "action is not one of abort, modify_prompt, retry, skip" in output


def _prefix(reason: str, known: dict[str, int]) -> str:
    return next((key for key in known if reason.startswith(key)), reason)


# -- the command ---------------------------------------------------------------------------------------


def test_the_command_imports_and_reports(pg_store: Store) -> None:
    app = typer.Typer()
    app.command()(import_sqlite_command)
    result = CliRunner().invoke(app, [str(FIXTURE), "--timezone", "UTC", "--chunk-size", "200"])
    assert result.exit_code == 0, result.output
    assert "import-sqlite" in result.output
    assert "1396" in result.output
    assert stored_counts(pg_store) == COUNTS

    again = CliRunner().invoke(app, [str(FIXTURE), "--timezone", "UTC"])
    assert again.exit_code == 0
    assert stored_counts(pg_store) == COUNTS


def test_the_command_explains_a_bad_file(pg_store: Store, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(import_sqlite_command)
    result = CliRunner().invoke(app, [str(_text_file(tmp_path))])
    assert result.exit_code == 2
    assert "is not an SQLite database" in _unwrapped(result.output)
    assert "nothing was written" in _unwrapped(result.output)

    zone = CliRunner().invoke(app, [str(FIXTURE), "--timezone", "Mars/Olympus"])
    assert zone.exit_code == 2
    assert "unknown time zone" in _unwrapped(zone.output)
    assert sum(stored_counts(pg_store).values()) == 0


def _unwrapped(output: str) -> str:
    """The console's output without the line breaks its 80 columns added."""
    return " ".join(output.split())
