"""Preflight reads through the producer client: pattern selection as the legacy runner did it, learned
waits, budgets, discoveries, executions, windows and escalations, and the switches that turn them off."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from ostinato.producers import Client
from ostinato.producers.preflight import (
    NO_WINDOW,
    AutoApply,
    ExecutionWindow,
    LearnedWait,
    PatternContext,
    Preflight,
)
from ostinato.schema.identity import hash_job
from ostinato.schema.tables import patterns
from ostinato.settings import Settings, get_settings
from ostinato.workers.store import Store

JOB = "preflight-job"
OTHER = "preflight-other"
FILE_CONTEXT = PatternContext(validation_types=["file_exists"])
ALWAYS_EXPLOIT = 0  # random.Random(0).random() ≈ 0.844: above any budget (ceiling 0.5)
ALWAYS_EXPLORE = 31  # ≈ 0.012: below any budget (floor 0.05)
BETWEEN_DEFAULT_AND_CEILING = 3  # ≈ 0.238: explores at budget 0.5, exploits at the default 0.15
BETWEEN_FLOOR_AND_DEFAULT = 14  # ≈ 0.107: explores at the default 0.15, exploits at budget 0.05


def first_draw(seed: int) -> float:
    return random.Random(seed).random()


@pytest.fixture
def client(pg_store: Store) -> Any:
    """A client of JOB that reads this run's database through its own read-only engine."""
    del pg_store
    with Client(JOB, "/srv/preflight", publish=False) as reader:
        yield reader


def pattern(
    store: Store,
    name: str,
    *,
    priority: float,
    effectiveness: float = 0.5,
    occurrences: int = 1,
    description: str | None = None,
    tags: list[str] | None = None,
    instrument: str | None = None,
    trust: float | None = None,
) -> str:
    """A pattern with the given scores; tagged for the file_exists context unless told otherwise."""
    pid = store.record_pattern(
        "semantic_insight",
        name,
        description,
        ["validation:file_exists"] if tags is None else tags,
        instrument_name=instrument,
    )
    values: dict[str, Any] = {
        "priority_score": priority,
        "effectiveness_score": effectiveness,
        "occurrence_count": occurrences,
    }
    if trust is not None:
        values["trust_score"] = trust
    force(store, pid, **values)
    return pid


def force(store: Store, pid: str, **values: Any) -> None:
    with store.batch() as conn:
        conn.execute(update(patterns).where(patterns.c.id == pid).values(**values))


def chosen(
    client: Client, context: PatternContext = FILE_CONTEXT, seed: int = ALWAYS_EXPLOIT, **kw: Any
) -> list[str]:
    return [p.pattern_id for p in client.relevant_patterns(context, rng=random.Random(seed), **kw)]


# -- pattern selection ------------------------------------------------------------------------------------


def test_context_tags_follow_the_legacy_runner() -> None:
    context = PatternContext(validation_types=["file_exists", "regex", "file_exists", "command"])
    assert context.context_tags() == [
        "validation:file_exists",
        "validation:regex",
        "validation:command",
        "success:first_attempt",
        "retry:effective",
        "completion:used",
    ]
    assert PatternContext().context_tags() == ["success:first_attempt", "retry:effective", "completion:used"]


def test_exploitation_and_exploration_thresholds(pg_store: Store, client: Client) -> None:
    at_threshold = pattern(pg_store, "at threshold", priority=0.3)
    below = pattern(pg_store, "just below", priority=0.29)
    floor = pattern(pg_store, "at floor", priority=0.05)
    pattern(pg_store, "under floor", priority=0.04)

    assert chosen(client, seed=ALWAYS_EXPLOIT) == [at_threshold]
    explored = client.relevant_patterns(FILE_CONTEXT, rng=random.Random(ALWAYS_EXPLORE))
    assert [p.pattern_id for p in explored] == [at_threshold, below, floor]
    assert [p.application_mode for p in explored] == ["exploitation", "exploration", "exploration"]
    assert not any(p.auto_applied for p in explored)


def test_epsilon_is_the_jobs_exploration_budget(pg_store: Store, client: Client) -> None:
    assert 0.15 <= first_draw(BETWEEN_DEFAULT_AND_CEILING) < 0.5
    assert 0.05 <= first_draw(BETWEEN_FLOOR_AND_DEFAULT) < 0.15
    proven = pattern(pg_store, "proven", priority=0.9)
    untested = pattern(pg_store, "untested", priority=0.1)

    # No budget recorded for the job (another job's does not count): epsilon 0.15.
    pg_store.update_exploration_budget(hash_job(OTHER), 0.5, "boost")
    assert chosen(client, seed=BETWEEN_DEFAULT_AND_CEILING) == [proven]
    assert chosen(client, seed=BETWEEN_FLOOR_AND_DEFAULT) == [proven, untested]

    pg_store.update_exploration_budget(client.job_hash, 0.5, "boost")
    assert chosen(client, seed=BETWEEN_DEFAULT_AND_CEILING) == [proven, untested]

    pg_store.update_exploration_budget(client.job_hash, 0.05, "decay")
    assert chosen(client, seed=BETWEEN_FLOOR_AND_DEFAULT) == [proven]
    budget = client.exploration_budget()
    assert budget is not None and budget.budget_value == pytest.approx(0.05)


def test_seeded_choice_is_reproducible(pg_store: Store, client: Client) -> None:
    pattern(pg_store, "proven", priority=0.9)
    pattern(pg_store, "untested", priority=0.1)
    rng_a, rng_b = random.Random(42), random.Random(42)
    runs_a = [client.relevant_patterns(FILE_CONTEXT, rng=rng_a) for _ in range(20)]
    runs_b = [client.relevant_patterns(FILE_CONTEXT, rng=rng_b) for _ in range(20)]
    assert runs_a == runs_b
    assert {len(run) for run in runs_a} == {1, 2}


def test_quarantined_retired_and_inactive_are_excluded_unless_asked(pg_store: Store, client: Client) -> None:
    kept = pattern(pg_store, "pending", priority=0.5)
    validated = pattern(pg_store, "validated", priority=0.4)
    pg_store.validate_pattern(validated)
    quarantined = pattern(pg_store, "quarantined", priority=0.9)
    pg_store.quarantine_pattern(quarantined, "bad advice")
    retired = pattern(pg_store, "retired", priority=0.9)
    pg_store.retire_pattern(retired)
    force(pg_store, retired, priority_score=0.8)  # retired by status even with a priority
    deleted = pattern(pg_store, "deleted", priority=0.7)
    pg_store.soft_delete_pattern(deleted)

    assert chosen(client) == [kept, validated]
    assert chosen(client, include_quarantined=True) == [quarantined, kept, validated]
    assert chosen(client, include_retired=True) == [retired, kept, validated]
    assert chosen(client, include_inactive=True) == [deleted, kept, validated]


def test_excluded_patterns_do_not_crowd_out_the_limit(pg_store: Store, client: Client) -> None:
    for n in range(6):
        pid = pattern(pg_store, f"retired {n}", priority=0.9)
        pg_store.retire_pattern(pid)
        force(pg_store, pid, priority_score=0.9)
    wanted = [pattern(pg_store, f"useful {n}", priority=0.5 - n / 100) for n in range(3)]
    assert chosen(client) == wanted
    assert [p.pattern_id for p in client.relevant_patterns(FILE_CONTEXT, 2, rng=random.Random(0))] == wanted[
        :2
    ]


def test_limit_defaults_to_five(pg_store: Store, client: Client) -> None:
    ids = [pattern(pg_store, f"tip number {n}", priority=0.9 - n / 100) for n in range(8)]
    assert chosen(client) == ids[:5]


def test_instrument_scoping(pg_store: Store, client: Client) -> None:
    claude = pattern(pg_store, "claude only", priority=0.9, instrument="claude")
    gemini = pattern(pg_store, "gemini only", priority=0.8, instrument="gemini")
    universal = pattern(pg_store, "everyone", priority=0.7)
    assert chosen(client, PatternContext(["file_exists"], instrument_name="claude")) == [claude, universal]
    assert chosen(client, PatternContext(["file_exists"], instrument_name="gemini")) == [gemini, universal]
    assert chosen(client, FILE_CONTEXT) == [claude, gemini, universal]


def test_tags_filter_and_retry_without_tags(pg_store: Store, client: Client) -> None:
    files = pattern(pg_store, "file advice", priority=0.6, tags=["validation:file_exists"])
    regex = pattern(pg_store, "regex advice", priority=0.7, tags=["validation:regex"])
    untagged = pattern(pg_store, "general advice", priority=0.5, tags=[])
    outcome = pattern(pg_store, "first attempt", priority=0.4, tags=["success:first_attempt"])

    assert chosen(client, FILE_CONTEXT) == [files, outcome]
    assert chosen(client, PatternContext(["regex", "file_exists"])) == [regex, files, outcome]
    force(pg_store, outcome, context_tags=["other"])
    # Nothing shares a tag with a "command" sheet: the query runs again without tags, same threshold.
    assert chosen(client, PatternContext(["command"])) == [regex, files, untagged, outcome]


def test_retry_without_tags_keeps_the_instrument_and_threshold(pg_store: Store, client: Client) -> None:
    pattern(pg_store, "other instrument", priority=0.9, tags=[], instrument="gemini")
    low = pattern(pg_store, "low", priority=0.1, tags=[])
    mine = pattern(pg_store, "mine", priority=0.6, tags=[], instrument="claude")
    context = PatternContext(["command"], instrument_name="claude")
    assert chosen(client, context) == [mine]
    assert chosen(client, context, seed=ALWAYS_EXPLORE) == [mine, low]


def test_guidance_strings_in_the_global_format(pg_store: Store, client: Client) -> None:
    high = pattern(
        pg_store,
        "explicit paths",
        priority=0.9,
        effectiveness=0.98,
        occurrences=3,
        description="Use explicit paths",
    )
    moderate = pattern(pg_store, "write_output_first", priority=0.8, effectiveness=0.5)
    low = pattern(
        pg_store, "shell globbing", priority=0.7, effectiveness=0.4, occurrences=12, description="Avoid globs"
    )
    found = client.relevant_patterns(FILE_CONTEXT, rng=random.Random(ALWAYS_EXPLOIT))
    assert [(p.pattern_id, p.guidance) for p in found] == [
        (high, "✓ Use explicit paths (seen 3x, 98% effective)"),
        (moderate, "○ write_output_first (seen 1x, 50% effective)"),
        (low, "⚠ Avoid globs (seen 12x, 40% effective)"),
    ]
    assert found[0].priority_score == pytest.approx(0.9)
    assert found[0].effectiveness_score == pytest.approx(0.98)


def test_near_duplicates_are_removed(pg_store: Store, client: Client) -> None:
    pattern(pg_store, "a", priority=0.9, effectiveness=0.6, description="File not created error")
    better = pattern(pg_store, "b", priority=0.8, effectiveness=0.95, description="file_not_created")
    timeout = pattern(pg_store, "c", priority=0.7, effectiveness=0.5, description="Timeout on the build")
    pattern(pg_store, "d", priority=0.6, effectiveness=0.3, description="the FILE not created problem")
    found = client.relevant_patterns(FILE_CONTEXT, rng=random.Random(ALWAYS_EXPLOIT))
    assert [p.pattern_id for p in found] == [better, timeout]
    assert found[0].guidance == "✓ file_not_created (seen 1x, 95% effective)"


def test_auto_apply_patterns_come_first(pg_store: Store, client: Client) -> None:
    regular = [pattern(pg_store, f"regular {n}", priority=0.9 - n / 10) for n in range(5)]
    trusted = pattern(pg_store, "trusted", priority=0.1, trust=0.9)
    pg_store.validate_pattern(trusted)
    also_regular = pattern(pg_store, "trusted but pending", priority=0.95, trust=0.95)
    untagged_trusted = pattern(
        pg_store, "trusted elsewhere", priority=0.9, trust=0.95, tags=["validation:regex"]
    )
    pg_store.validate_pattern(untagged_trusted)

    context = PatternContext(["file_exists"], auto_apply=AutoApply())
    found = client.relevant_patterns(context, rng=random.Random(ALWAYS_EXPLOIT))
    assert [p.pattern_id for p in found] == [trusted, also_regular, *regular[:3]]
    assert [(p.auto_applied, p.application_mode) for p in found[:2]] == [
        (True, "exploitation"),
        (False, "exploitation"),
    ]
    # Without auto-apply the trusted pattern's low priority keeps it out of an exploiting sheet.
    assert chosen(client, FILE_CONTEXT) == [also_regular, *regular[:4]]
    lenient = PatternContext(["file_exists"], auto_apply=AutoApply(require_validated_status=False))
    assert chosen(client, lenient)[:2] == [also_regular, trusted]


def test_auto_apply_honours_exclusions_and_instrument(pg_store: Store, client: Client) -> None:
    quarantined = pattern(pg_store, "trusted quarantined", priority=0.9, trust=0.95)
    pg_store.quarantine_pattern(quarantined)
    elsewhere = pattern(pg_store, "trusted elsewhere", priority=0.2, trust=0.95, instrument="gemini")
    pg_store.validate_pattern(elsewhere)
    context = PatternContext(
        ["file_exists"], instrument_name="claude", auto_apply=AutoApply(require_validated_status=False)
    )
    assert chosen(client, context) == []
    raw = client.patterns_for_auto_apply(0.9, require_validated=False)
    assert {p.id for p in raw} == {quarantined, elsewhere}


def test_empty_store_and_zero_limit(pg_store: Store, client: Client) -> None:
    assert client.relevant_patterns(FILE_CONTEXT) == []
    pattern(pg_store, "some", priority=0.9)
    assert client.relevant_patterns(FILE_CONTEXT, 0) == []


# -- other reads ------------------------------------------------------------------------------------------


def recoveries(store: Store, code: str, waits: list[float], *, success: bool = True) -> None:
    for wait in waits:
        store.record_error_recovery(code, 60, wait, success)


def assert_wait(actual: LearnedWait, delay: float, confidence: float, source: str) -> None:
    assert actual.delay == pytest.approx(delay, abs=1e-6)
    assert actual.confidence == pytest.approx(confidence, abs=1e-9)
    assert actual.source == source


def test_learned_wait_scenario_51(pg_store: Store, client: Client) -> None:
    recoveries(pg_store, "E_BLEND", [20, 25, 30])
    recoveries(pg_store, "E_FULL", [25] * 10)
    recoveries(pg_store, "E_HALF", [50] * 5)
    recoveries(pg_store, "E_FEW", [10, 10])
    recoveries(pg_store, "E_FEW", [10], success=False)

    assert client.learned_wait("E_NONE", 60) == (60, 0.0, "static_fallback")
    assert client.learned_wait("E_FEW", 60) == LearnedWait(60, 0.0, "static_fallback")
    assert_wait(client.learned_wait("E_FULL", 60), 30.0, 1.0, "global_learned")
    assert_wait(client.learned_wait("E_BLEND", 60), 47.142857, 0.3, "global_learned_blend")
    assert_wait(client.learned_wait("E_HALF", 120), 77.142857, 0.5, "global_learned_blend")


def test_learned_wait_by_model(pg_store: Store, client: Client) -> None:
    for wait, model in [(100, "a"), (100, "a"), (100, "a"), (40, "b"), (40, "b"), (40, "b")]:
        pg_store.record_error_recovery("E101", 60, wait, True, model)
    # The wait is learned per model; the confidence counts every model's successes (6 → 0.6), as upstream.
    assert_wait(
        client.learned_wait("E101", 60, model="a"), 6 / 7 * 100 + 1 / 7 * 60, 0.6, "global_learned_blend"
    )
    assert_wait(
        client.learned_wait("E101", 60, model="b"), 6 / 7 * 40 + 1 / 7 * 60, 0.6, "global_learned_blend"
    )


def test_exploration_budget_of_own_and_other_jobs(pg_store: Store, client: Client) -> None:
    assert client.exploration_budget() is None
    pg_store.update_exploration_budget(client.job_hash, 0.2, "initial")
    pg_store.update_exploration_budget(hash_job(OTHER), 0.4, "boost")
    own = client.exploration_budget()
    other = client.exploration_budget(hash_job(OTHER))
    assert own is not None and own.job_hash == client.job_hash
    assert own.budget_value == pytest.approx(0.2)
    assert other is not None and other.budget_value == pytest.approx(0.4)


def test_recent_discoveries_skip_the_own_job(pg_store: Store, client: Client) -> None:
    now = datetime.now(UTC)
    theirs = pg_store.record_pattern_discovery(
        "p1", "theirs", "semantic_insight", hash_job(OTHER), 0.8, recorded_at=now
    )
    mine = pg_store.record_pattern_discovery(
        "p2", "mine", "semantic_insight", client.job_hash, 0.9, recorded_at=now + timedelta(seconds=1)
    )
    pg_store.record_pattern_discovery(
        "p3", "expired", "semantic_insight", hash_job(OTHER), recorded_at=now - timedelta(hours=1)
    )
    weak = pg_store.record_pattern_discovery(
        "p4", "weak", "error", hash_job(OTHER), 0.2, recorded_at=now - timedelta(seconds=1)
    )
    assert [e.id for e in client.recent_discoveries()] == [theirs.id, weak.id]
    assert {e.id for e in client.recent_discoveries(include_own=True)} == {theirs.id, mine.id, weak.id}
    assert [e.id for e in client.recent_discoveries(min_effectiveness=0.5)] == [theirs.id]
    assert [e.id for e in client.recent_discoveries(pattern_type="error")] == [weak.id]
    assert [e.id for e in client.recent_discoveries(include_own=True, limit=1)] == [mine.id]


def test_similar_executions(pg_store: Store, client: Client) -> None:
    base = datetime(2026, 6, 1, 12, tzinfo=UTC)
    for n in range(3):
        pg_store.record_execution(
            client.workspace_hash,
            client.job_hash,
            1,
            completed_at=base + timedelta(minutes=n),
            execution_id=f"x{n}",
        )
    pg_store.record_execution(client.workspace_hash, hash_job(OTHER), 1, completed_at=base, execution_id="y")
    found = client.similar_executions(job_hash=client.job_hash, sheet_num=1, limit=2)
    assert [e.id for e in found] == ["x2", "x1"]
    assert len(client.similar_executions(workspace_hash=client.workspace_hash)) == 4


def test_optimal_execution_window_scenario_52(pg_store: Store, client: Client) -> None:
    assert client.optimal_execution_window() == NO_WINDOW
    for hour, success, count in [(10, True, 5), (14, False, 5), (16, True, 2)]:
        for _ in range(count):
            pg_store.record_error_recovery("E101", 60, 60, success, time_of_day=hour)
    window = client.optimal_execution_window("E101")
    assert (window.optimal_hours, window.avoid_hours, window.sample_count) == ((10,), (14,), 12)
    assert window.confidence == pytest.approx(0.24)
    assert client.optimal_execution_window("E999") == ExecutionWindow((), (), 0.0, 0)


def test_similar_escalations_scenario_53(pg_store: Store, client: Client) -> None:
    failed = pg_store.record_escalation_decision(
        hash_job(OTHER), 1, 0.50, "retry", 0.60, 1, outcome_after_action="failed"
    )
    worked = pg_store.record_escalation_decision(
        hash_job(OTHER), 2, 0.55, "retry", 0.65, 1, outcome_after_action="success"
    )
    pg_store.record_escalation_decision(
        hash_job(OTHER), 3, 0.90, "skip", 0.95, 0, outcome_after_action="success"
    )
    assert [e.id for e in client.similar_escalations(0.52, 0.62)] == [worked, failed]
    assert [e.id for e in client.similar_escalations(0.52, 0.62, limit=1)] == [worked]


def test_patterns_for_auto_apply(pg_store: Store, client: Client) -> None:
    trusted = pattern(pg_store, "trusted", priority=0.2, trust=0.9)
    pg_store.validate_pattern(trusted)
    pattern(pg_store, "pending", priority=0.9, trust=0.95)
    assert [p.id for p in client.patterns_for_auto_apply()] == [trusted]
    assert client.patterns_for_auto_apply(context_tags=["validation:regex"]) == []


def test_a_preflight_with_its_own_clock(pg_store: Store) -> None:
    """The store's clock decides what is unexpired; an injected clock and rng make the reads exact."""
    event = pg_store.record_pattern_discovery("p1", "early", "semantic_insight", hash_job(OTHER))
    settings = get_settings()
    early = Preflight(settings, clock=lambda: event.recorded_at + timedelta(seconds=10))
    late = Preflight(settings, clock=lambda: event.recorded_at + timedelta(seconds=301))
    try:
        assert [e.id for e in early.recent_discoveries()] == [event.id]
        assert late.recent_discoveries() == []
    finally:
        early.close()
        late.close()


def test_reads_cannot_write(pg_store: Store, client: Client) -> None:
    pattern(pg_store, "some", priority=0.9)
    reader = Preflight(get_settings())
    try:
        reader.relevant_patterns(FILE_CONTEXT)
        store = reader._store_for_reads()
        with pytest.raises(DBAPIError, match="read-only"):
            store.record_pattern("semantic_insight", "written by a runner")
    finally:
        reader.close()


# -- switches and failures --------------------------------------------------------------------------------

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def all_reads(client: Client) -> list[Any]:
    return [
        client.relevant_patterns(FILE_CONTEXT),
        client.learned_wait("E101", 60),
        client.exploration_budget(),
        client.recent_discoveries(),
        client.similar_executions(),
        client.optimal_execution_window(),
        client.patterns_for_auto_apply(),
        client.similar_escalations(0.5, 0.5),
    ]


NEUTRAL: list[Any] = [[], (60, 0.0, "static_fallback"), None, [], [], NO_WINDOW, [], []]


@pytest.mark.parametrize(("enabled", "preflight"), [(False, True), (True, False)])
def test_switched_off_reads_never_touch_the_database(enabled: bool, preflight: bool, tmp_path: Path) -> None:
    settings = Settings(database_url=UNREACHABLE, spool_dir=tmp_path)
    client = Client(JOB, "/srv/x", settings=settings, enabled=enabled, publish=False, preflight=preflight)
    with capture_logs() as logs, client as off:
        started = time.perf_counter()
        assert all_reads(off) == NEUTRAL
        assert time.perf_counter() - started < 0.05
        assert off._preflight is None
    assert not logs


def test_an_unreachable_store_gives_neutral_answers_and_is_not_hammered(tmp_path: Path) -> None:
    settings = Settings(database_url=UNREACHABLE, spool_dir=tmp_path)
    with capture_logs() as logs, Client(JOB, "/srv/x", settings=settings, publish=False) as client:
        assert all_reads(client) == NEUTRAL
        assert all_reads(client) == NEUTRAL
    failures = [entry for entry in logs if entry["event"] == "preflight_read_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert "nowhere" in failures[0]["database"]


def test_importing_the_producer_does_not_load_the_workers() -> None:
    code = (
        "import sys, ostinato.producers\n"
        "bad = [m for m in sys.modules if m.startswith(('ostinato.workers', 'celery.worker'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert out.stdout.strip() == "[]"
