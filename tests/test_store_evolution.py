"""SPEC-store §5 scenario 63: the evolution trajectory, its duplicate cycles and recurring issues."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from ostinato.workers.store import Store
from ostinato.workers.store.evolution import DuplicateCycleError


def entry(store: Store, cycle: int, issues: Sequence[str] = ("a",)) -> str:
    return store.record_evolution_entry(cycle, 2, 1, list(issues), 0.4, 120, 80, 0.9)


def test_a_cycle_is_recorded_once(store: Store) -> None:
    entry(store, 16)
    with pytest.raises(DuplicateCycleError, match="16"):
        entry(store, 16)
    assert [e.cycle for e in store.get_trajectory()] == [16]


def test_a_duplicate_cycle_does_not_abort_the_batch(store: Store) -> None:
    with store.batch():
        store.record_execution("a" * 16, "b" * 16, 1)
        entry(store, 16)
        with pytest.raises(DuplicateCycleError):
            entry(store, 16)
        entry(store, 17)
    assert [e.cycle for e in store.get_trajectory()] == [17, 16]
    assert store.get_execution_stats()["total_executions"] == 1


def test_recurring_issues(store: Store) -> None:
    entry(store, 16, ["a", "b"])
    entry(store, 17, ["a"])
    entry(store, 18, ["c"])
    assert store.get_recurring_issues(min_occurrences=2) == {"a": [17, 16]}
    assert store.get_recurring_issues(min_occurrences=1) == {"a": [17, 16], "b": [16], "c": [18]}
    assert store.get_recurring_issues(min_occurrences=1, window_cycles=2) == {"a": [17], "c": [18]}
    assert store.get_recurring_issues(window_cycles=2) == {}


def test_trajectory_range_and_fields(store: Store) -> None:
    for cycle in range(10, 16):
        entry(store, cycle)
    assert [e.cycle for e in store.get_trajectory(start_cycle=12, end_cycle=14)] == [14, 13, 12]
    assert [e.cycle for e in store.get_trajectory(start_cycle=14)] == [15, 14]
    assert [e.cycle for e in store.get_trajectory(end_cycle=11)] == [11, 10]
    assert [e.cycle for e in store.get_trajectory(limit=2)] == [15, 14]
    assert [e.cycle for e in store.get_evolution_history(last_n=3)] == [15, 14, 13]
    latest = store.get_trajectory(limit=1)[0]
    assert (latest.evolutions_completed, latest.evolutions_deferred, latest.issue_classes) == (2, 1, ["a"])
    assert (latest.cv_avg, latest.implementation_loc, latest.test_loc, latest.loc_accuracy) == (
        0.4,
        120,
        80,
        0.9,
    )
    assert (latest.research_candidates_resolved, latest.research_candidates_created, latest.notes) == (
        0,
        0,
        "",
    )


def test_record_evolution_cycle(store: Store) -> None:
    store.record_evolution_cycle(21, 5, 3, "tightened retries", "PARTIAL", {"patterns": 12})
    [record] = store.get_evolution_history()
    assert record.cycle == 21
    assert (record.evolutions_completed, record.evolutions_deferred) == (3, 2)
    assert record.issue_classes == ["partial"]
    assert (record.cv_avg, record.implementation_loc, record.test_loc, record.loc_accuracy) == (
        0.0,
        0,
        0,
        1.0,
    )
    assert record.notes == (
        f"tightened retries\n\nOutcome: PARTIAL\nLearning snapshot: {json.dumps({'patterns': 12})}"
    )
    with pytest.raises(ValueError, match="unknown cycle outcome"):
        store.record_evolution_cycle(22, 1, 1, "x", "MAYBE", {})  # type: ignore[arg-type]
