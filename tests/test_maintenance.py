"""Beat maintenance passes over constructed histories: SPEC-store's numbers, and once per period.

Every pass runs through ``maintenance.py`` directly (no Celery); ``test_beat.py`` runs them under real
``celery beat`` processes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import START, Clock
from sqlalchemy import func, select

from ostinato.schema.records import ExplorationBudgetRecord, PatternRecord, QuarantineStatus
from ostinato.schema.tables import (
    entropy_responses,
    executions,
    exploration_budget,
    maintenance_runs,
    pattern_applications,
    pattern_discovery_events,
    pattern_drift,
    pattern_entropy_history,
)
from ostinato.settings import Settings
from ostinato.workers import maintenance
from ostinato.workers.store import ApplicationInput, Store

TOL = 1e-6
JOB = "b30bc5a723c87366"
"""hash_job("job-A") (SPEC-store §5 scenario 2), as a pattern's provenance."""
RESPONSE_JOB = "daemon-entropy-check"


def count(store: Store, table: Any, *where: Any) -> int:
    query = select(func.count()).select_from(table).where(*where)
    return int(store.run(lambda: store.conn.execute(query).scalar_one()))


def apply(store: Store, pid: str, outcomes: str, groundings: Sequence[float | None] | None = None) -> None:
    """Apply a pattern once per letter of ``outcomes`` (S success, F failure), oldest first."""
    grounding = list(groundings) if groundings is not None else [None] * len(outcomes)
    for letter, g in zip(outcomes, grounding, strict=True):
        store.record_pattern_applications(
            [ApplicationInput(pid, letter == "S", store.now(), grounding_confidence=g)]
        )


def pattern(store: Store, name: str, outcomes: str = "", **kwargs: Any) -> str:
    pid = store.record_pattern("validation_failure", name, provenance_job_hash=JOB)
    apply(store, pid, outcomes, **kwargs)
    return pid


def record(store: Store, pid: str) -> PatternRecord:
    found = store.get_pattern_by_id(pid)
    assert found is not None
    return found


def budget(store: Store, job: str) -> ExplorationBudgetRecord:
    latest = store.get_exploration_budget(job)
    assert latest is not None
    return latest


def runs(store: Store, task: str) -> list[dict[str, Any]]:
    mr = maintenance_runs
    query = select(mr).where(mr.c.task == task).order_by(mr.c.period_start)
    return store.run(lambda: [dict(r._mapping) for r in store.conn.execute(query)])


# -- periods and claims --------------------------------------------------------------------------------------


def test_period_start_is_floor_of_now_over_period() -> None:
    at = datetime(2026, 6, 1, 12, 14, 59, 999000, tzinfo=UTC)
    assert maintenance.period_start(at, 900) == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert maintenance.period_start(at + timedelta(milliseconds=1), 900) == datetime(
        2026, 6, 1, 12, 15, tzinfo=UTC
    )
    assert maintenance.period_start(at, 2) == datetime(2026, 6, 1, 12, 14, 58, tzinfo=UTC)
    assert maintenance.period_start(at, 86400) == datetime(2026, 6, 1, tzinfo=UTC)


def test_every_pass_runs_once_per_period(store: Store, clock: Clock) -> None:
    config = Settings()
    for name, run in maintenance.PASSES.items():
        first = run(store, config)
        again = run(store, config)
        assert (first.ran, again.ran) == (True, False), name
        assert first.period_start == again.period_start
        clock.advance(seconds=maintenance.period_seconds(config, name))
        later = run(store, config)
        assert later.ran, name
        assert later.period_start == first.period_start + timedelta(
            seconds=maintenance.period_seconds(config, name)
        )
        assert [r["period_start"] for r in runs(store, name)] == [first.period_start, later.period_start]
        assert runs(store, name)[0]["summary"] == first.summary


def test_concurrent_passes_of_one_period_act_once(pg_store: Store) -> None:
    """Eight workers run the entropy pass at once: one snapshot, one response, seven do nothing."""
    store = pg_store
    pattern(store, "only", "S" * 10)
    config = Settings()
    barrier = threading.Barrier(8)
    results: list[maintenance.PassResult] = []

    def run() -> None:
        barrier.wait()
        results.append(maintenance.entropy_pass(store, config))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.ran for r in results) == [False] * 7 + [True]
    assert count(store, pattern_entropy_history) == 1
    assert count(store, entropy_responses) == 1
    assert count(store, maintenance_runs) == 1


# -- entropy -------------------------------------------------------------------------------------------------


def test_entropy_snapshot_healthy_at_the_default_threshold(store: Store) -> None:
    pattern(store, "dominant", "S" * 90)
    pattern(store, "rare", "S" * 10)
    result = maintenance.entropy_pass(store, Settings())
    [snapshot] = store.get_pattern_entropy_history()
    assert snapshot.shannon_entropy == pytest.approx(0.468996, abs=TOL)
    assert snapshot.diversity_index == pytest.approx(0.468996, abs=TOL)
    assert snapshot.dominant_pattern_share == pytest.approx(0.9, abs=TOL)
    assert (snapshot.total_applications, snapshot.threshold_exceeded) == (100, False)
    assert result.summary["reason"] == "Entropy 0.469 >= threshold 0.300 (healthy)"
    assert count(store, entropy_responses) == 0


def test_entropy_of_an_empty_store_is_not_low(store: Store) -> None:
    result = maintenance.entropy_pass(store, Settings())
    [snapshot] = store.get_pattern_entropy_history()
    assert (snapshot.diversity_index, snapshot.threshold_exceeded) == (0.0, False)
    assert result.summary["reason"] == "No pattern applications to analyze"


def test_entropy_response_below_threshold_and_its_cooldown(store: Store, clock: Clock) -> None:
    pattern(store, "dominant", "S" * 90)
    pattern(store, "rare", "S" * 10)
    stuck = pattern(store, "stuck")
    assert store.quarantine_pattern(stuck, "bad")
    config = Settings(entropy_threshold=0.5)

    first = maintenance.entropy_pass(store, config)
    assert first.summary["threshold_exceeded"] is True
    [snapshot] = store.get_pattern_entropy_history()
    assert snapshot.threshold_exceeded
    assert snapshot.unique_pattern_count == 3
    [response] = store.get_entropy_response_history()
    assert response.job_hash == RESPONSE_JOB
    assert response.entropy_at_trigger == pytest.approx(0.468996, abs=TOL)
    assert response.threshold_used == 0.5
    assert response.actions_taken == ["budget_boost", "quarantine_revisit"]
    assert response.patterns_revisited == [stuck]
    assert record(store, stuck).quarantine_status is QuarantineStatus.PENDING
    assert budget(store, RESPONSE_JOB).budget_value == pytest.approx(0.25, abs=TOL)

    clock.advance(seconds=900)
    second = maintenance.entropy_pass(store, config)
    assert second.ran
    assert not second.summary["responded"]
    assert second.summary["reason"].startswith("Cooldown active (")
    assert count(store, pattern_entropy_history) == 2
    assert count(store, entropy_responses) == 1

    clock.advance(seconds=2700)
    third = maintenance.entropy_pass(store, config)
    assert third.summary["responded"]
    assert count(store, entropy_responses) == 2
    assert budget(store, RESPONSE_JOB).budget_value == pytest.approx(0.35, abs=TOL)


# -- exploration budget --------------------------------------------------------------------------------------


def test_budget_boosts_to_the_ceiling_then_decays_to_the_floor(store: Store, clock: Clock) -> None:
    store.record_execution("ws", "job-active", 1)
    store.record_execution("ws", "job-idle", 1, completed_at=START - timedelta(days=2))
    pattern(store, "only", "S" * 10)
    config = Settings(maintenance_budget_period=60)

    def adjust() -> tuple[float, str]:
        result = maintenance.budget_pass(store, config)
        assert result.ran
        assert result.summary["jobs"] == 1
        clock.advance(seconds=60)
        latest = budget(store, "job-active")
        return latest.budget_value, latest.adjustment_type

    rising = [adjust() for _ in range(6)]
    assert [kind for _, kind in rising] == ["initial", "boost", "boost", "boost"] + ["ceiling_enforced"] * 2
    assert [value for value, _ in rising] == pytest.approx([0.15, 0.25, 0.35, 0.45, 0.50, 0.50], abs=TOL)
    assert budget(store, "job-active").adjustment_reason == "Budget 0.600 enforced to ceiling 0.500"

    pattern(store, "second", "S" * 10)
    falling = [adjust() for _ in range(46)]
    assert [kind for _, kind in falling] == ["decay"] * 44 + ["floor_enforced"] * 2
    expected = [0.5 * 0.95 ** (n + 1) for n in range(44)] + [0.05, 0.05]
    assert [value for value, _ in falling] == pytest.approx(expected, abs=TOL)
    assert falling[0][0] == pytest.approx(0.475, abs=TOL)
    assert falling[43][0] == pytest.approx(0.052337, abs=TOL)
    entropies = [b.entropy_at_time for b in reversed(store.get_exploration_budget_history("job-active", 60))]
    assert entropies == [0.0] * 6 + [1.0] * 46
    assert store.get_exploration_budget("job-idle") is None


# -- drift ---------------------------------------------------------------------------------------------------


def test_drift_is_stored_and_negative_drift_retired(store: Store, clock: Clock) -> None:
    falling = pattern(store, "falling", "S" * 5 + "F" * 5, groundings=[0.9] * 10)
    doubted = pattern(store, "doubted", "S" * 10, groundings=[0.9] * 5 + [0.3] * 5)
    young = pattern(store, "young", "S" * 4 + "F" * 5)
    config = Settings()

    result = maintenance.drift_pass(store, config)
    assert result.summary == {"measured": 2, "drifting": 1, "epistemic_drifting": 1, "retired": [falling]}
    rows = {d.pattern_id: d for d in maintenance.latest_drift(store)}
    assert set(rows) == {falling, doubted}
    f = rows[falling]
    assert f.effectiveness_before == pytest.approx(0.916667, abs=TOL)
    assert f.effectiveness_after == pytest.approx(0.083333, abs=TOL)
    assert f.drift_magnitude == pytest.approx(0.833333, abs=TOL)
    assert f.grounding_confidence_avg == pytest.approx(0.9, abs=TOL)
    assert (f.drift_direction, f.threshold_exceeded, f.retired) == ("negative", True, True)
    assert (f.confidence_before, f.confidence_after) == pytest.approx((0.9, 0.9), abs=TOL)
    assert (f.belief_change, f.belief_entropy) == pytest.approx((0.0, 0.0), abs=TOL)
    assert (f.epistemic_direction, f.epistemic_threshold_exceeded) == ("stable", False)
    d = rows[doubted]
    assert (d.drift_magnitude, d.drift_direction, d.threshold_exceeded) == (0.0, "stable", False)
    assert d.confidence_before == pytest.approx(0.9, abs=TOL)
    assert d.confidence_after == pytest.approx(0.3, abs=TOL)
    assert d.belief_change == pytest.approx(-0.6, abs=TOL)
    assert d.belief_entropy == pytest.approx(0.5, abs=TOL)
    assert (d.epistemic_direction, d.epistemic_threshold_exceeded, d.retired) == ("weakening", True, False)

    retired = record(store, falling)
    assert (retired.quarantine_status, retired.priority_score) == (QuarantineStatus.RETIRED, 0.0)
    assert retired.suggested_action == "Auto-retired: drift negative (0.83), effectiveness 0.92 → 0.08"
    assert record(store, doubted).quarantine_status is QuarantineStatus.PENDING
    assert record(store, young).quarantine_status is QuarantineStatus.PENDING

    assert not maintenance.drift_pass(store, config).ran
    assert count(store, pattern_drift) == 2
    clock.advance(seconds=3600)
    assert maintenance.drift_pass(store, config).ran
    assert count(store, pattern_drift) == 4
    second_claim = runs(store, "drift")[1]["ran_at"]
    assert all(d.measured_at > second_claim for d in maintenance.latest_drift(store))


# -- trust and quarantine ------------------------------------------------------------------------------------


def test_trust_and_quarantine_transitions_with_a_discovery(store: Store, clock: Clock) -> None:
    proven = pattern(store, "proven", "SSSSS")
    failing = pattern(store, "failing", "FFFFFS")
    undecided = pattern(store, "undecided", "SSSFF")
    unused = pattern(store, "unused")
    config = Settings()

    first = maintenance.trust_pass(store, config)
    assert (first.summary["promoted"], first.summary["quarantined"], first.summary["degraded"]) == (
        [proven],
        [failing],
        [],
    )
    assert first.summary["trust_recalculated"] == 4
    trust = {pid: record(store, pid) for pid in (proven, failing, undecided, unused)}
    assert trust[proven].quarantine_status is QuarantineStatus.VALIDATED
    assert trust[proven].validated_at is not None
    assert trust[failing].quarantine_status is QuarantineStatus.QUARANTINED
    assert trust[failing].quarantine_reason is None
    assert trust[undecided].quarantine_status is QuarantineStatus.PENDING
    scores = {pid: found.trust_score for pid, found in trust.items()}
    assert scores == pytest.approx({proven: 1.0, failing: 0.216667, undecided: 0.72, unused: 0.7}, abs=TOL)

    [event] = first.discoveries
    assert (event.pattern_id, event.pattern_name, event.pattern_type) == (
        proven,
        "proven",
        "validation_failure",
    )
    assert event.source_job_hash == JOB
    assert event.effectiveness_score == pytest.approx(0.975, abs=TOL)
    assert event.expires_at - event.recorded_at == timedelta(seconds=300)
    assert store.get_active_pattern_discoveries() == [event]

    assert not maintenance.trust_pass(store, config).ran
    assert count(store, pattern_discovery_events) == 1

    store.update_trust_score(unused, -0.3)
    apply(store, undecided, "S")
    apply(store, proven, "F" * 15)
    clock.advance(seconds=300)
    second = maintenance.trust_pass(store, config)
    assert second.ran
    assert (second.summary["promoted"], second.summary["quarantined"], second.summary["degraded"]) == (
        [undecided],
        [],
        [proven],
    )
    assert second.summary["trust_recalculated"] == 3
    assert [e.pattern_id for e in second.discoveries] == [undecided]
    assert second.discoveries[0].effectiveness_score == pytest.approx(0.612857, abs=TOL)
    scores = {pid: record(store, pid).trust_score for pid in trust}
    assert scores == pytest.approx(
        {proven: 0.275, failing: 0.216667, undecided: 0.866667, unused: 0.4}, abs=TOL
    )
    assert count(store, pattern_discovery_events) == 2


# -- priority, expiry, retention -----------------------------------------------------------------------------


def test_priority_recalculation_decays_with_age(store: Store, clock: Clock) -> None:
    fresh = pattern(store, "fresh", "SSSSS")
    gone = pattern(store, "gone", "SSSSS")
    assert store.retire_pattern(gone)
    assert record(store, fresh).priority_score == pytest.approx(0.585, abs=TOL)
    clock.advance(days=90)
    result = maintenance.priority_pass(store, Settings())
    assert result.summary == {"rescored": 2}
    decayed = record(store, fresh)
    assert decayed.effectiveness_score == pytest.approx(0.710775, abs=TOL)
    assert decayed.priority_score == pytest.approx(0.426465, abs=TOL)
    assert record(store, gone).priority_score == 0.0


def test_expiry_deletes_expired_events_only(store: Store, clock: Clock) -> None:
    pid = pattern(store, "new")
    store.record_pattern_discovery(pid, "new", "validation_failure", JOB, ttl_seconds=300)
    store.record_rate_limit_event("E101", 100, JOB)
    store.record_rate_limit_event("E101", 1000, JOB)
    clock.advance(seconds=400)
    result = maintenance.expiry_pass(store, Settings())
    assert result.summary == {"discoveries": 1, "rate_limits": 1}
    assert count(store, pattern_discovery_events) == 0
    assert len(store.get_active_rate_limits()) == 1


def test_retention_keeps_learning_data_and_current_budgets(store: Store, clock: Clock) -> None:
    pid = pattern(store, "steady", "S" * 10)
    store.record_execution("ws", "job-a", 1)
    for job in ("job-a", "job-a", "job-b", "job-b"):
        store.calculate_budget_adjustment(job, 0.5)
    store.record_pattern_entropy(store.calculate_pattern_entropy())
    store.trigger_entropy_response("job-r", 0.1, 0.3, boost_budget=False)
    config = Settings()
    maintenance.drift_pass(store, config)

    clock.advance(days=31)
    store.calculate_budget_adjustment("job-a", 0.5)
    store.record_pattern_entropy(store.calculate_pattern_entropy())
    store.trigger_entropy_response("job-r", 0.1, 0.3, boost_budget=False)
    maintenance.drift_pass(store, config)

    result = maintenance.retention_pass(store, config)
    assert result.summary == {
        "exploration_budget": 3,
        "pattern_entropy_history": 1,
        "entropy_responses": 1,
        "pattern_drift": 1,
        "maintenance_runs": 1,
    }
    assert count(store, exploration_budget) == 2
    assert budget(store, "job-b").budget_value == pytest.approx(0.1425, abs=TOL)
    assert budget(store, "job-a").budget_value == pytest.approx(0.135375, abs=TOL)
    assert count(store, pattern_entropy_history) == 1
    assert count(store, entropy_responses) == 1
    assert count(store, pattern_drift, pattern_drift.c.pattern_id == pid) == 1
    assert [r["task"] for r in runs(store, "drift")] == ["drift"]
    assert count(store, executions) == 1
    assert count(store, pattern_applications) == 10
