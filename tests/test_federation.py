"""Federation (issue 11): ``ostinato export`` then ``ostinato import-learnings`` between two databases.

The expected figures are computed here from the README's formulas, from the exported YAML and the target's
rows as they were before the import, independently of ``ostinato.federation.merge``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from conftest import START, Clock, wipe
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from ostinato.federation.commands import export_command, import_learnings_command
from ostinato.federation.export import dump_learnings, export_learnings, load_learnings
from ostinato.federation.importer import IMPORT_KIND, import_learnings, imported_exports
from ostinato.federation.models import Learnings, learnings_json_schema_text
from ostinato.producers.scrub import Scrubber
from ostinato.schema import migrate
from ostinato.schema.identity import hash_job, hash_workspace, pattern_id
from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.schema.tables import error_recoveries, patterns, processed_messages
from ostinato.settings import get_settings
from ostinato.workers.store import Store, create_store_engine, formulas

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "learnings.schema.json"

HOME = "/home/dana"
USER = "dana"
SECRET_KEY = "sk-proj-" + "Q7wErTy9UiOp2AsDfGh4JkLz"
OTHER_KEY = "sk-proj-" + "M3nBvCx8ZaQwE5rTyU1iOpLk"
EMAIL = "dana.smith@example.org"
PRIVATE_PATH = f"{HOME}/clients/acme-merger/report.md"
JOB_HASH = hash_job("acme-merger-nightly")
WORKSPACE_HASH = hash_workspace(f"{HOME}/clients/acme-merger")
SCRUBBER = Scrubber(home=HOME, user=USER, hostnames=(), env={})

SHARED = ("retry_success", "rate limit on model x")
SOURCE_ONLY = ("validation_failure", "file not created")
QUARANTINED = ("semantic_failure", "hallucinated import")
TARGET_ONLY = ("completion_mode", "explicit format helps")


def _at(days: float = 0, hours: float = 0) -> datetime:
    return START + timedelta(days=days, hours=hours)


def _apply(store: Store, pid: str, outcomes: str, start: datetime, grounding: float | None = None) -> None:
    """One application per letter, S (success) or F (failure), an hour apart."""
    for k, letter in enumerate(outcomes):
        store.record_pattern_application(
            pid,
            f"exec-{pid}-{k}",
            letter == "S",
            grounding_confidence=grounding,
            applied_at=start + timedelta(hours=k),
        )


def seed_source(store: Store) -> dict[str, str]:
    """Patterns, applications, success factors, recoveries and executions, with private data planted."""
    ids: dict[str, str] = {}
    ids["source_only"] = store.record_pattern(
        *SOURCE_ONLY,
        description=f"Output missing at {PRIVATE_PATH}; key {SECRET_KEY}; tell {EMAIL}",
        context_tags=["validation:file_exists", f"owner:{EMAIL}"],
        suggested_action=f"Create {PRIVATE_PATH} before finishing",
        provenance_job_hash=JOB_HASH,
        provenance_sheet_num=3,
        instrument_name="claude-code",
        seen_at=_at(-20),
        count=4,
    )
    _apply(store, ids["source_only"], "SSFSS", _at(-10), grounding=0.8)
    store.update_success_factors(
        ids["source_only"],
        validation_types=["file_exists", "content_regex"],
        error_categories=["missing_output"],
        prior_sheet_status="completed",
        grounding_confidence=0.8,
        at=_at(-6),
    )
    store.calculate_trust_score(ids["source_only"])
    ids["shared"] = store.record_pattern(
        *SHARED,
        description="Provider answers 429 under load",
        context_tags=["error:E429", "model:x"],
        provenance_job_hash=JOB_HASH,
        seen_at=_at(-30),
        count=7,
    )
    _apply(store, ids["shared"], "SSSFS", _at(-5))
    store.update_success_factors(
        ids["shared"], validation_types=["http_status"], error_categories=["rate_limit"], at=_at(-4)
    )
    store.update_success_factors(ids["shared"], validation_types=["retry"], at=_at(-3))
    store.calculate_trust_score(ids["shared"])
    ids["quarantined"] = store.record_pattern(*QUARANTINED, seen_at=_at(-12), count=2)
    _apply(store, ids["quarantined"], "FFF", _at(-9))
    store.quarantine_pattern(ids["quarantined"], reason=f"seen by {EMAIL}")
    # Two names that become one once scrubbed: exported as one pattern, merged by the formulas.
    ids["key_a"] = store.record_pattern("error", f"token {SECRET_KEY} rejected", seen_at=_at(-8), count=3)
    ids["key_b"] = store.record_pattern("error", f"token {OTHER_KEY} rejected", seen_at=_at(-7), count=2)
    _apply(store, ids["key_a"], "SFFF", _at(-6))
    _apply(store, ids["key_b"], "SSS", _at(-6))
    store.record_execution(WORKSPACE_HASH, JOB_HASH, 3, execution_id="exec-acme-0001", model="x")
    for wait in (10.0, 20.0, 45.0):
        store.record_error_recovery("E101", 30.0, wait, True, "model-x", recorded_at=_at(-2))
    store.record_error_recovery("E101", 30.0, 5.0, False, "model-x", recorded_at=_at(-1))
    for wait in (40.0, 60.0):
        store.record_error_recovery("E429", 50.0, wait, True, None, recorded_at=_at(-3))
    return ids


def seed_target(store: Store) -> dict[str, str]:
    ids: dict[str, str] = {}
    ids["shared"] = store.record_pattern(
        *SHARED, context_tags=["model:x", "tier:free"], seen_at=_at(-40), count=3
    )
    _apply(store, ids["shared"], "SFFF", _at(-15), grounding=0.6)
    store.update_success_factors(
        ids["shared"], validation_types=["http_status"], error_categories=["timeout"], at=_at(-14)
    )
    store.validate_pattern(ids["shared"])
    store.calculate_trust_score(ids["shared"])
    ids["target_only"] = store.record_pattern(*TARGET_ONLY, seen_at=_at(-2))
    for wait in (12.0, 18.0):
        store.record_error_recovery("E101", 30.0, wait, True, "model-x", recorded_at=_at(-4))
    store.record_error_recovery("E101", 30.0, 2.0, False, "model-x", recorded_at=_at(-4))
    return ids


@pytest.fixture(
    params=[("postgresql", "sqlite"), ("sqlite", "postgresql")], ids=["pg-to-sqlite", "sqlite-to-pg"]
)
def stores(request: pytest.FixtureRequest, pg_engine: Engine, sqlite_engine: Engine) -> tuple[Store, Store]:
    """A source and a target store on two databases (one PostgreSQL, one SQLite), both empty."""
    engines = {"postgresql": pg_engine, "sqlite": sqlite_engine}
    source, target = (engines[name] for name in request.param)
    wipe(source)
    wipe(target)
    return Store(source, clock=Clock(START)), Store(target, clock=Clock(START + timedelta(hours=1)))


def snapshot(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables an import writes, in a stable order."""
    with store.engine.connect() as connection:
        return {
            table.name: [
                dict(row._mapping)
                for row in connection.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in (patterns, error_recoveries, processed_messages)
        }


def pattern(store: Store, kind: tuple[str, str]) -> PatternRecord:
    record = store.get_pattern_by_id(pattern_id(*kind))
    assert record is not None
    return record


def exported(document: str, kind: tuple[str, str]) -> dict[str, Any]:
    data = yaml.safe_load(document)
    [entry] = [p for p in data["patterns"] if (p["pattern_type"], p["pattern_name"]) == kind]
    return dict(entry)


def weighted(e1: float, a1: int, e2: float, a2: int) -> float:
    """The README's formula: (e1·a1 + e2·a2)/(a1 + a2), the local value when both weights are 0."""
    return e1 if a1 + a2 == 0 else (e1 * a1 + e2 * a2) / (a1 + a2)


def test_export_is_anonymised_and_valid(stores: tuple[Store, Store], tmp_path: Path) -> None:
    source, _ = stores
    seed_source(source)
    document = dump_learnings(export_learnings(source, scrubber=SCRUBBER))
    for private in (
        SECRET_KEY,
        OTHER_KEY,
        "sk-",
        EMAIL,
        "example.org",
        HOME,
        "/home/",
        USER,
        JOB_HASH,
        WORKSPACE_HASH,
        "exec-acme-0001",
        "exec-",
    ):
        assert private not in document, private
    data = yaml.safe_load(document)
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    assert set(data) == {
        "format",
        "format_version",
        "export_id",
        "created_at",
        "defaults",
        "patterns",
        "learned_waits",
    }
    assert data["format"] == "ostinato-learnings"
    assert data["format_version"] == 1
    assert not any(
        key in json.dumps(data) for key in ("job_hash", "workspace_hash", "provenance", "execution")
    )
    # What the scrubber left of the planted text.
    entry = exported(document, SOURCE_ONLY)
    # The scrubber's rule for the home directory: it becomes ~ (other absolute paths become <path>).
    assert (
        entry["description"]
        == "Output missing at ~/clients/acme-merger/report.md; key <redacted>; tell <email>"
    )
    assert entry["suggested_action"] == "Create ~/clients/acme-merger/report.md before finishing"
    assert entry["context_tags"] == ["validation:file_exists", "owner:<email>"]
    assert entry["instrument_name"] == "claude-code"
    assert load_learnings(document) == Learnings.model_validate(data)
    assert len(data["patterns"]) == 4  # the two "token … rejected" rows are one pattern once scrubbed


def test_rows_that_scrub_to_one_name_export_as_one_merged_pattern(stores: tuple[Store, Store]) -> None:
    source, _ = stores
    ids = seed_source(source)
    a, b = source.get_pattern_by_id(ids["key_a"]), source.get_pattern_by_id(ids["key_b"])
    assert a is not None and b is not None
    document = dump_learnings(export_learnings(source, scrubber=SCRUBBER))
    entry = exported(document, ("error", "token <redacted> rejected"))
    assert entry["occurrences"] == a.occurrence_count + b.occurrence_count == 5
    assert (entry["successes"], entry["failures"]) == (1 + 3, 3 + 0)
    # Local is the first row by id.
    first, second = sorted([a, b], key=lambda r: r.id)
    assert entry["effectiveness"] == pytest.approx(
        weighted(
            first.effectiveness_score, first.applications, second.effectiveness_score, second.applications
        )
    )
    assert entry["effectiveness"] != pytest.approx(a.effectiveness_score)


def test_import_merges_with_the_readme_formulas(stores: tuple[Store, Store], tmp_path: Path) -> None:
    source, target = stores
    seed_source(source)
    seed_target(target)
    learnings = export_learnings(source, scrubber=SCRUBBER)
    document = dump_learnings(learnings)
    path = tmp_path / "learnings.yaml"
    path.write_text(document, encoding="utf-8")
    created_at = learnings.created_at
    local = pattern(target, SHARED)
    local_waits = snapshot(target)["error_recoveries"]

    report = import_learnings(target, load_learnings(path.read_text(encoding="utf-8")))

    assert report.applied
    assert (report.patterns_created, report.patterns_merged) == (3, 1)
    export_id = str(learnings.export_id)
    assert [export_id] == [e for e, _ in imported_exports(target)]

    # A pattern both stores know: the README's formulas.
    theirs = exported(document, SHARED)
    merged = pattern(target, SHARED)
    a_local, a_theirs = local.applications, theirs["successes"] + theirs["failures"]
    assert merged.occurrence_count == local.occurrence_count + theirs["occurrences"] == 3 + 7
    assert merged.led_to_success_count == local.led_to_success_count + theirs["successes"]
    assert merged.led_to_failure_count == local.led_to_failure_count + theirs["failures"]
    expected_eff = (local.effectiveness_score * a_local + theirs["effectiveness"] * a_theirs) / (
        a_local + a_theirs
    )
    assert merged.effectiveness_score == pytest.approx(expected_eff, abs=1e-12)
    assert merged.trust_score == pytest.approx(
        (local.trust_score * a_local + theirs["trust"] * a_theirs) / (a_local + a_theirs), abs=1e-12
    )
    assert merged.priority_score == pytest.approx(formulas.priority(expected_eff, 10), abs=1e-12)
    assert merged.quarantine_status is QuarantineStatus.VALIDATED  # the local status stays
    assert merged.context_tags == ["model:x", "tier:free", "error:E429"]
    assert merged.description == "Provider answers 429 under load"  # local had none
    assert merged.first_seen == min(
        local.first_seen, created_at - timedelta(days=theirs["first_seen_days_ago"])
    )
    assert merged.last_confirmed == max(
        local.last_confirmed, created_at - timedelta(days=theirs["last_confirmed_days_ago"])
    )
    assert merged.provenance_job_hash == local.provenance_job_hash  # where it was first seen here
    factors, local_factors = merged.success_factors, local.success_factors
    assert factors is not None and local_factors is not None
    their_factors = theirs["success_factors"]
    assert (
        factors["occurrence_count"] == local_factors["occurrence_count"] + their_factors["occurrence_count"]
    )
    assert factors["validation_types"] == ["http_status", "retry"]
    assert factors["error_categories"] == ["rate_limit", "timeout"]
    assert factors["success_rate"] == pytest.approx(
        weighted(
            local_factors["success_rate"],
            local_factors["occurrence_count"],
            their_factors["success_rate"],
            their_factors["occurrence_count"],
        )
    )

    # A pattern new here: the export's figures, provenance "import:<export id>".
    theirs = exported(document, SOURCE_ONLY)
    new = pattern(target, SOURCE_ONLY)
    assert new.provenance_job_hash == f"import:{export_id}"
    assert new.provenance_sheet_num is None
    assert (new.occurrence_count, new.led_to_success_count, new.led_to_failure_count) == (4, 4, 1)
    assert new.effectiveness_score == theirs["effectiveness"]
    assert new.trust_score == theirs["trust"]
    assert new.priority_score == pytest.approx(formulas.priority(theirs["effectiveness"], 4))
    assert new.description == theirs["description"]
    assert new.instrument_name == "claude-code"
    assert new.last_confirmed == created_at - timedelta(days=theirs["last_confirmed_days_ago"])
    quarantined = pattern(target, QUARANTINED)
    assert quarantined.quarantine_status is QuarantineStatus.QUARANTINED
    assert quarantined.quarantine_reason == f"Imported quarantined from learnings export {export_id}"
    assert pattern(target, TARGET_ONLY).occurrence_count == 1  # untouched

    # Learned waits: recoveries add up; mean weighted by successes, min of the minima.
    wait = next(w for w in yaml.safe_load(document)["learned_waits"] if w["error_code"] == "E101")
    assert (wait["recoveries"], wait["successes"], wait["mean_wait"], wait["min_wait"]) == (4, 3, 25.0, 10.0)
    assert wait["learned_wait"] == pytest.approx((25.0 + 10.0) / 2)
    local_success = [r["actual_wait"] for r in local_waits if r["recovery_success"]]
    n = len(local_success) + wait["successes"]
    mean = (sum(local_success) + wait["mean_wait"] * wait["successes"]) / n
    assert target.get_error_recovery_sample_count("E101") == n == 5
    assert target.get_learned_wait_time("E101", "model-x") == pytest.approx((mean + min(10.0, 12.0)) / 2)
    assert target.get_learned_wait_time("E429") is None  # 2 successes: below the 3 it takes
    assert target.get_learned_wait_time("E429", min_samples=2) == pytest.approx((50.0 + 40.0) / 2)
    rows = snapshot(target)["error_recoveries"]
    assert len(rows) == len(local_waits) + 4 + 2
    assert all(r["id"].startswith(f"import:{export_id}:") for r in rows if r not in local_waits)


def test_importing_the_same_export_again_changes_nothing(stores: tuple[Store, Store], tmp_path: Path) -> None:
    source, target = stores
    seed_source(source)
    seed_target(target)
    document = dump_learnings(export_learnings(source, scrubber=SCRUBBER))
    first = import_learnings(target, load_learnings(document))
    after_first = snapshot(target)
    again = import_learnings(target, load_learnings(document))
    assert first.applied and not again.applied
    assert (again.patterns_created, again.patterns_merged, again.recoveries_added) == (0, 0, 0)
    assert snapshot(target) == after_first
    claims = [r for r in after_first["processed_messages"] if r["kind"] == IMPORT_KIND]
    assert [r["message_id"] for r in claims] == [yaml.safe_load(document)["export_id"]]


def test_a_dry_run_changes_nothing(stores: tuple[Store, Store]) -> None:
    source, target = stores
    seed_source(source)
    seed_target(target)
    learnings = export_learnings(source, scrubber=SCRUBBER)
    before = snapshot(target)
    dry = import_learnings(target, learnings, dry_run=True)
    assert snapshot(target) == before
    real = import_learnings(target, learnings)
    assert (dry.applied, dry.patterns_created, dry.patterns_merged) == (True, 3, 1)
    assert (real.patterns_created, real.patterns_merged, real.recoveries_added) == (
        3,
        1,
        dry.recoveries_added,
    )


def test_concurrent_imports_of_one_export_apply_it_once(pg_engine: Engine) -> None:
    wipe(pg_engine)
    store = Store(pg_engine, clock=Clock())
    seed_source(store)
    learnings = export_learnings(store, scrubber=SCRUBBER)
    before = pattern(store, SHARED).occurrence_count
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda _: import_learnings(store, learnings), range(2)))
    assert sorted(r.applied for r in reports) == [False, True]
    assert pattern(store, SHARED).occurrence_count == 2 * before


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == learnings_json_schema_text(), (
        "regenerate it: python -m ostinato.federation.models > docs/learnings.schema.json"
    )


def test_files_that_are_not_learnings_are_refused() -> None:
    with pytest.raises(ValueError, match="format_version 2 is not supported"):
        load_learnings("format: ostinato-learnings\nformat_version: 2\n")
    with pytest.raises(ValueError, match="not a learnings file"):
        load_learnings("- just\n- a list\n")


# -- the command functions ----------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    """The two commands on an app of their own, as ``ostinato.cli`` registers them."""
    app = typer.Typer()
    app.command("export")(export_command)
    app.command("import-learnings")(import_learnings_command)
    get_settings.cache_clear()
    yield app
    monkeypatch.undo()
    get_settings.cache_clear()


def _sqlite_store(path: Path) -> Store:
    engine = create_store_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    return Store(engine, clock=Clock(datetime(2026, 6, 1, tzinfo=UTC)))


def test_commands_export_then_import(
    cli: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = _sqlite_store(tmp_path / "a.db"), _sqlite_store(tmp_path / "b.db")
    seed_source(source)
    seed_target(target)
    runner = CliRunner()
    output = tmp_path / "out" / "learnings.yaml"

    monkeypatch.setenv("OSTINATO_DATABASE_URL", f"sqlite:///{tmp_path / 'a.db'}")
    get_settings.cache_clear()
    result = runner.invoke(cli, ["export", "--output", str(output)])
    assert result.exit_code == 0, result.output
    learnings = load_learnings(output.read_text(encoding="utf-8"))
    assert len(learnings.patterns) == 4
    assert SECRET_KEY not in output.read_text(encoding="utf-8")

    monkeypatch.setenv("OSTINATO_DATABASE_URL", f"sqlite:///{tmp_path / 'b.db'}")
    get_settings.cache_clear()
    before = pattern(target, SHARED).occurrence_count
    result = runner.invoke(cli, ["import-learnings", str(output)])
    assert result.exit_code == 0, result.output
    assert "imported" in result.output
    assert pattern(target, SHARED).occurrence_count == before + 7
    result = runner.invoke(cli, ["import-learnings", str(output), str(output)])
    assert result.exit_code == 0, result.output
    assert "already imported" in result.output
    assert pattern(target, SHARED).occurrence_count == before + 7

    bad = tmp_path / "bad.yaml"
    bad.write_text("format: ostinato-learnings\nformat_version: 1\npatterns: []\n", encoding="utf-8")
    result = runner.invoke(cli, ["import-learnings", str(bad)])
    assert result.exit_code == 1
    source.engine.dispose()
    target.engine.dispose()
