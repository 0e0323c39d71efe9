"""``ostinato.compat.GlobalLearningStore``, driven as upstream's legacy runner drove its store (§4.1).

Every test runs twice: embedded (a SQLite file in tmp_path; every read sees the writes before it, as with
upstream's single file) and against the real workers (this run's database and key prefix, a Celery worker in
the process; reads wait until the worker has applied the writes). Numbers are SPEC-store's (§2, §5).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import redis
from conftest import KEY_PREFIX
from sqlalchemy import insert

from ostinato.compat import (
    UNSUPPORTED,
    GlobalLearningStore,
    PatternProvenance,
    get_global_store,
)
from ostinato.embedded import Embedded
from ostinato.schema.identity import hash_job, hash_workspace, pattern_id
from ostinato.schema.tables import workspace_clusters
from ostinato.settings import Settings, get_settings
from ostinato.workers.store import Store

T = TypeVar("T")

RELEVANT_TAGS = ["validation:file_exists", "success:first_attempt", "retry:effective", "completion:used"]
"""The legacy runner's context tags for a sheet with one file_exists validation (SPEC-store §3.4)."""
EXPLOITATION_THRESHOLD = 0.3


class SheetStatus(StrEnum):
    """Upstream's sheet status enum (its values are what travel)."""

    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class SheetOutcome:
    """Upstream's ``marianne.learning.outcomes.SheetOutcome``, field for field (SPEC-store §3.1)."""

    sheet_id: str
    job_id: str
    validation_results: list[dict[str, Any]]
    execution_duration: float
    retry_count: int
    completion_mode_used: bool
    final_status: SheetStatus
    validation_pass_rate: float
    success_without_retry: bool
    patterns_detected: list[str] = field(default_factory=list)
    timestamp: datetime = field(default_factory=lambda: datetime.now(tz=UTC))
    failure_category_counts: dict[str, int] = field(default_factory=dict)
    semantic_patterns: list[str] = field(default_factory=list)
    fix_suggestions: list[str] = field(default_factory=list)
    patterns_applied: list[str] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""
    error_history: list[dict[str, Any]] = field(default_factory=list)
    grounding_passed: bool | None = None
    grounding_confidence: float | None = None
    grounding_guidance: str | None = None


@dataclass
class Mode:
    """One way to run the facade: ``open`` makes a store, ``until`` reads until the writes have landed."""

    name: str
    make: Callable[..., GlobalLearningStore]
    wait: bool
    opened: list[GlobalLearningStore] = field(default_factory=list)

    def open(self, **kwargs: Any) -> GlobalLearningStore:
        store = self.make(**kwargs)
        self.opened.append(store)
        return store

    def until(self, read: Callable[[], T], done: Callable[[T], bool], timeout: float = 60.0) -> T:
        """Embedded: the first read must see the writes already. Distributed: poll until a worker applied."""
        value = read()
        deadline = time.monotonic() + timeout
        while not done(value):
            assert self.wait, f"an embedded read did not see the writes before it: {value!r}"
            assert time.monotonic() < deadline, f"timed out waiting for the worker: {value!r}"
            time.sleep(0.1)
            value = read()
        return value


@pytest.fixture(params=["embedded", "distributed"])
def mode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mode]:
    if request.param == "embedded":
        runtime = Embedded(tmp_path / "store.db", Settings(), maintenance=False)
        current = Mode("embedded", lambda **kw: GlobalLearningStore(embedded=runtime, **kw), wait=False)
    else:
        request.getfixturevalue("ingest_worker")
        request.getfixturevalue("pg_store")  # an empty database for this test
        settings = get_settings()
        current = Mode("distributed", lambda **kw: GlobalLearningStore(settings=settings, **kw), wait=True)
    yield current
    for store in current.opened:
        store.close()
    if request.param == "embedded":
        runtime.close()


def test_the_legacy_runner_loop(mode: Mode, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    store = mode.open(job_name="job-A", workspace=workspace)

    # Patterns in the store, named directly (as the daemon's writers did): upstream's deterministic ids.
    pid = store.record_pattern(
        "validation_failure",
        "File  Not Created",
        "File was not created",
        context_tags=["validation:file_exists"],
        provenance=PatternProvenance(job_hash=hash_job("job-A"), sheet_num=2),
    )
    assert pid == "5d4dc4465839e7be"  # SPEC-store §5 scenario 1
    insight = store.record_pattern(
        "semantic_insight", "[prompt_improvement] say where files go", "Say where files go"
    )
    assert insight == pattern_id("semantic_insight", "[prompt_improvement] say where files go")

    # A. Before the sheet: the relevant patterns (exploitation threshold, the sheet's tags), then without
    # tags as the runner's fallback.
    relevant = mode.until(
        lambda: store.get_patterns(min_priority=EXPLOITATION_THRESHOLD, limit=5, context_tags=RELEVANT_TAGS),
        lambda found: len(found) == 1,
    )
    assert [(p.id, p.priority_score, p.effectiveness_score, p.occurrence_count) for p in relevant] == [
        (pid, 0.5, 0.5, 1)
    ]
    assert (relevant[0].description, relevant[0].context_tags) == ("File was not created", RELEVANT_TAGS[:1])
    provenance = store.get_pattern_provenance(pid)
    assert provenance is not None
    assert (provenance["provenance_job_hash"], provenance["provenance_sheet_num"]) == ("b30bc5a723c87366", 2)
    untagged = mode.until(
        lambda: store.get_patterns(min_priority=EXPLOITATION_THRESHOLD, limit=5),
        lambda found: len(found) == 2,
    )
    assert {p.id for p in untagged} == {pid, insight}

    # ... then the learned wait before a retry: nothing learned yet, the static delay.
    assert store.get_learned_wait_time_with_fallback("E101", 60.0) == (60.0, 0.0, "static_fallback")
    for wait in (20.0, 25.0, 30.0):
        store.record_error_recovery("E101", 60.0, wait, True, model="claude")
    store.record_error_recovery("E101", 60.0, 5.0, False, model="claude")
    delay, confidence, source = mode.until(
        lambda: store.get_learned_wait_time_with_fallback("E101", 60.0),
        lambda wait: wait[2] != "static_fallback",
    )
    # Scenario 51: learned (mean 25 + min 20) / 2 = 22.5, floored at 30; confidence 3/10 = 0.3 < 0.7, so the
    # delay blends 3/7 of 30 with 4/7 of 60.
    assert (confidence, source) == (0.3, "global_learned_blend")
    assert delay == pytest.approx(3 / 7 * 30 + 4 / 7 * 60, abs=1e-9)
    assert delay == pytest.approx(47.142857, abs=1e-6)
    assert store.get_learned_wait_time("E101") == 22.5
    assert store.get_error_recovery_sample_count("E101") == 3

    # E. After the sheet: the outcome, then feedback for every applied pattern.
    outcome = SheetOutcome(
        sheet_id="job-A-sheet3",
        job_id="job-A",
        validation_results=[{"rule_type": "file_exists", "passed": True, "confidence": 1.0}],
        execution_duration=12.5,
        retry_count=0,
        completion_mode_used=False,
        final_status=SheetStatus.COMPLETED,
        validation_pass_rate=1.0,
        success_without_retry=True,
        patterns_applied=["⚠ File was not created (seen 1x, 50% effective)"],
        stdout_tail="wrote /home/runner/out.txt",
    )
    execution_id = store.record_outcome(outcome, workspace, model="claude")
    assert UUID(execution_id).version == 4
    for _ in range(5):
        store.record_pattern_application(pid, execution_id, True, 0, 0, "exploitation", True)

    record = mode.until(
        lambda: store.get_pattern_by_id(pid), lambda r: r is not None and r.led_to_success_count == 5
    )
    assert record is not None
    # Scenario 13: five successes → (0.7·1 + 0.3·5.5/6) = 0.975, priority 0.975 × 0.6 = 0.585.
    assert (record.led_to_success_count, record.led_to_failure_count) == (5, 0)
    assert record.effectiveness_score == pytest.approx(0.975, abs=1e-9)
    assert record.priority_score == pytest.approx(0.585, abs=1e-9)

    [execution] = mode.until(
        lambda: store.get_similar_executions(job_hash=hash_job("job-A")), lambda found: len(found) == 1
    )
    assert execution.id == execution_id
    assert (execution.workspace_hash, execution.sheet_num, execution.status) == (
        hash_workspace(workspace),
        3,
        "completed",
    )
    assert (execution.model, execution.duration_seconds, execution.confidence_score) == ("claude", 12.5, 1.0)
    assert store.get_execution_stats() == {
        "total_executions": 1,
        "success_without_retry_rate": 1.0,
        "total_patterns": 2,  # one outcome reaches no detector's minimum
        "avg_pattern_effectiveness": pytest.approx((0.975 + 0.5) / 2, abs=1e-9),
        "total_error_recoveries": 4,
        "unique_workspaces": 1,
    }

    # The next sheet's query ranks the applied pattern by its new priority.
    ranked = store.get_patterns(min_priority=EXPLOITATION_THRESHOLD, limit=5)
    assert [(p.id, p.priority_score) for p in ranked] == [(pid, pytest.approx(0.585)), (insight, 0.5)]


def test_a_rate_limit_is_seen_by_another_runner(mode: Mode) -> None:
    model = f"claude-{uuid4().hex[:8]}"
    hitting = mode.open(job_name="job-A")
    other = mode.open(job_name="job-B")
    assert other.is_rate_limited(model=model) == (False, None)

    # C. The backend reports a rate limit: record it (300 s announced).
    event_id = hitting.record_rate_limit_event("E101", 300.0, "job-A", model=model)
    assert UUID(event_id).version == 4

    # B. Another runner checks before its next attempt, at once: limited for 0.8 × 300 s, minus the moment
    # that passed (scenario 45).
    limited, left = other.is_rate_limited(model=model)
    assert limited
    assert left is not None
    assert 235.0 < left <= 240.0
    assert other.is_rate_limited(error_code="E101", model=model)[0]
    assert other.is_rate_limited(error_code="E999", model=model) == (False, None)
    assert other.is_rate_limited(model=f"{model}-other") == (False, None)
    assert hitting.is_rate_limited(model=model)[0]  # the job's own limits count (scenario 46)

    # The store keeps the history: the full duration, the hashed job, expiry at 0.8 × the duration.
    [event] = mode.until(lambda: other.get_active_rate_limits(model=model), lambda found: len(found) == 1)
    assert (event.error_code, event.model, event.duration_seconds) == ("E101", model, 300.0)
    assert event.source_job_hash == hash_job("job-A")
    assert (event.expires_at - event.recorded_at).total_seconds() == pytest.approx(240.0, abs=1e-3)
    limited, left = mode.until(other.is_rate_limited, lambda answer: answer[0])  # every model
    assert left is not None
    assert 235.0 < left <= 240.0

    with pytest.raises(ValueError, match="needs the model"):
        hitting.record_rate_limit_event("E101", 60.0, "job-A")


def test_pattern_ids_occurrences_and_discoveries(mode: Mode) -> None:
    a = mode.open(job_name="job-A")
    b = mode.open(job_name="job-B")
    first = a.record_pattern("validation_failure", "File  Not Created", "File was not created")
    record = mode.until(lambda: b.get_pattern_by_id(first), lambda r: r is not None)
    again = b.record_pattern("validation_failure", "file not created")
    assert again == first == "5d4dc4465839e7be"  # every spelling of the name (scenarios 1 and 4)
    record = mode.until(
        lambda: b.get_pattern_by_id(first), lambda r: r is not None and r.occurrence_count == 2
    )
    assert record is not None
    assert record.description == "File was not created"
    assert record.content_hash == "cbb21a7e06210c9451a95431591dd82e"
    assert record.provenance_job_hash == hash_job("job-A")  # no provenance given: the facade's job

    # The worker recorded the new pattern's discovery: other jobs see it, its own job does not.
    [seen] = mode.until(lambda: b.check_recent_pattern_discoveries(exclude_job_id="job-B"), bool)
    assert (seen.pattern_id, seen.source_job_hash) == (first, hash_job("job-A"))
    assert a.check_recent_pattern_discoveries(exclude_job_id="job-A") == []
    assert [e.pattern_id for e in a.get_active_pattern_discoveries()] == [first]

    with pytest.raises(ValueError, match="16 lowercase hex"):
        a.record_pattern("x", "y", provenance_job_hash="job-A")


def test_escalations_and_evolution(mode: Mode) -> None:
    store = mode.open()
    # Scenario 53 in fractions: the decision that worked ranks first; the distant one is left out.
    store.record_escalation_decision("job-A", 1, 0.50, "retry", 0.60, 1, outcome_after_action="failed")
    store.record_escalation_decision(
        "job-A", 2, 0.55, "modify_prompt", 0.65, 1, outcome_after_action="success"
    )
    store.record_escalation_decision("job-A", 3, 0.90, "skip", 0.95, 0, outcome_after_action="success")
    similar = mode.until(
        lambda: store.get_similar_escalation(0.52, 0.62), lambda found: len(found) == 2, timeout=60
    )
    assert [(d.confidence, d.validation_pass_rate, d.outcome_after_action) for d in similar] == [
        (0.55, 0.65, "success"),
        (0.50, 0.60, "failed"),
    ]
    history = store.get_escalation_history(job_id="job-A")
    assert [d.sheet_num for d in history] == [3, 2, 1]
    assert {d.job_hash for d in history} == {hash_job("job-A")}
    with pytest.raises(ValueError):
        store.record_escalation_decision("job-A", 4, 0.5, "retry", 62.0, 1)  # a percentage, not a fraction

    store.record_evolution_entry(16, 3, 1, ["a", "b"], 0.5, 120, 80, 0.9)
    store.record_evolution_entry({"cycle": 17, **_evolution_fields(["a"])})
    store.record_evolution_cycle(18, 5, 3, "three of five", "PARTIAL", {"patterns": 2})
    trajectory = mode.until(store.get_trajectory, lambda found: len(found) == 3)
    assert [(e.cycle, e.evolutions_completed, e.evolutions_deferred) for e in trajectory] == [
        (18, 3, 2),
        (17, 2, 0),
        (16, 3, 1),
    ]
    assert trajectory[0].issue_classes == ["partial"]
    assert trajectory[0].notes == 'three of five\n\nOutcome: PARTIAL\nLearning snapshot: {"patterns": 2}'
    assert store.get_recurring_issues() == {"a": [17, 16]}  # scenario 63
    with pytest.raises(sqlite3.IntegrityError):
        store.record_evolution_entry(16, 1, 0, ["c"], 0.1, 1, 1, 1.0)
    with pytest.raises(TypeError, match="missing required fields: cv_avg"):
        store.record_evolution_entry({"cycle": 19, **_evolution_fields(["c"]), "cv_avg": None})


def _evolution_fields(issues: list[str]) -> dict[str, Any]:
    return {
        "evolutions_completed": 2,
        "evolutions_deferred": 0,
        "issue_classes": issues,
        "cv_avg": 0.4,
        "implementation_loc": 10,
        "test_loc": 5,
        "loc_accuracy": 1.0,
    }


def test_unsupported_methods_raise_with_their_reason(tmp_path: Path) -> None:
    with GlobalLearningStore(tmp_path / "store.db") as store:
        calls: dict[str, Callable[[], object]] = {
            "clear_all": store.clear_all,
            "update_pattern_effectiveness": lambda: store.update_pattern_effectiveness("p"),
            "recalculate_all_pattern_priorities": store.recalculate_all_pattern_priorities,
            "soft_delete_pattern": lambda: store.soft_delete_pattern("p"),
            "quarantine_pattern": lambda: store.quarantine_pattern("p", "bad"),
            "validate_pattern": lambda: store.validate_pattern("p"),
            "retire_pattern": lambda: store.retire_pattern("p"),
            "update_quarantine_status": lambda: store.update_quarantine_status("p", "validated"),
            "promote_ready_patterns": store.promote_ready_patterns,
            "calculate_trust_score": lambda: store.calculate_trust_score("p"),
            "recalculate_all_trust_scores": store.recalculate_all_trust_scores,
            "update_trust_score": lambda: store.update_trust_score("p", 0.1),
            "update_success_factors": lambda: store.update_success_factors("p", ["file_exists"]),
            "assign_workspace_cluster": lambda: store.assign_workspace_cluster("w", "c"),
            "retire_drifting_patterns": store.retire_drifting_patterns,
            "update_exploration_budget": lambda: store.update_exploration_budget("j", 0.2, "boost"),
            "calculate_budget_adjustment": lambda: store.calculate_budget_adjustment("j", 0.2),
            "record_pattern_entropy": lambda: store.record_pattern_entropy(store.calculate_pattern_entropy()),
            "trigger_entropy_response": lambda: store.trigger_entropy_response("j", 0.1, 0.3),
            "cleanup_expired_rate_limits": store.cleanup_expired_rate_limits,
            "cleanup_expired_pattern_discoveries": store.cleanup_expired_pattern_discoveries,
            "record_pattern_discovery": lambda: store.record_pattern_discovery("p", "n", "t", "job-A"),
            "update_escalation_outcome": lambda: store.update_escalation_outcome("e", "success"),
        }

        def batch() -> None:
            with store.batch_connection():
                pass

        calls["batch_connection"] = batch
        assert set(calls) == set(UNSUPPORTED)
        for name, call in calls.items():
            with pytest.raises(NotImplementedError, match=rf"GlobalLearningStore\.{name} .*: "):
                call()
        assert "§0.17" in UNSUPPORTED["assign_workspace_cluster"]


def test_upstream_constructor_singleton_and_imported_clusters(tmp_path: Path) -> None:
    path = tmp_path / "global-learning.db"
    first = get_global_store(path)
    assert get_global_store(path) is first
    assert first.embedded
    assert first.db_path == path.resolve()
    pid = first.record_pattern("retry_success", "retry:effective", "Retrying works")
    assert first.get_pattern_by_id(pid) is not None  # read after write, as upstream's one file
    second = get_global_store(tmp_path / "other.db")  # a different path replaces the singleton
    assert second is not first
    assert second.get_pattern_by_id(pid) is None

    # Clustering: rows an import brought are read; nothing assigns new ones.
    hash_a, hash_b = "a" * 16, "b" * 16
    writer = Store.from_url(f"sqlite:///{path}")
    with writer.batch() as connection:
        connection.execute(
            insert(workspace_clusters),
            [
                {
                    "workspace_hash": hash_a,
                    "cluster_id": "c1",
                    "assigned_at": datetime(2026, 1, 1, tzinfo=UTC),
                },
                {
                    "workspace_hash": hash_b,
                    "cluster_id": "c1",
                    "assigned_at": datetime(2026, 1, 2, tzinfo=UTC),
                },
            ],
        )
    writer.engine.dispose()
    assert first.get_workspace_cluster(hash_a) == "c1"
    assert first.get_workspace_cluster("c" * 16) is None
    assert first.get_similar_workspaces("c1") == [hash_b, hash_a]
    first.close()
    second.close()

    upstream = tmp_path / "upstream.db"
    with sqlite3.connect(upstream) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    with pytest.raises(ValueError, match="is an upstream global learning store"):
        GlobalLearningStore(upstream)


def test_without_the_store_reads_raise_sqlite_errors_and_rate_limits_still_cross(
    redis_client: redis.Redis,
) -> None:
    """Store errors reach the caller as upstream's ``sqlite3`` errors; preflight reads answer neutrally; a
    rate limit reaches another runner through Redis alone, before (here: without) any worker applying it."""
    missing = get_settings().database_url.rsplit("/", 1)[0] + f"/ostinato_missing_{uuid4().hex[:8]}"
    blind = get_settings().model_copy(update={"database_url": missing})
    model = f"claude-{uuid4().hex[:8]}"
    with GlobalLearningStore(settings=blind) as hitting, GlobalLearningStore(settings=blind) as other:
        with pytest.raises(sqlite3.OperationalError, match="ostinato store"):
            other.get_patterns()
        assert other.get_learned_wait_time_with_fallback("E101", 60.0) == (60.0, 0.0, "static_fallback")
        assert other.get_patterns_for_auto_apply() == []

        hitting.record_rate_limit_event("E104", 300.0, "job-A", model=model)
        limited, left = other.is_rate_limited(model=model)
        assert limited
        assert left is not None
        assert 235.0 < left <= 240.0
        assert other.is_rate_limited(error_code="E104", model=model)[0]
        with pytest.raises(sqlite3.OperationalError):
            other.is_rate_limited()  # every model: only the store knows them all
    # Upstream's 0.8 × 300 s in the facade's key; the producer's own key keeps the full duration for
    # ostinato's clients (Client.rate_limit_status).
    assert 235_000 < redis_client.pttl(f"{KEY_PREFIX}compat:ratelimit:{model}") <= 240_000
    assert 295_000 < redis_client.pttl(f"{KEY_PREFIX}ratelimit:{model}") <= 300_000
