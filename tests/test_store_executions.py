"""SPEC-store §5 scenarios 48, 49 and 52: executions, their confidence, statistics and the optimal window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import START, Clock

from ostinato.schema.identity import sheet_num_from_id
from ostinato.workers.store import Store
from ostinato.workers.store.executions import ExecutionInput, execution_confidence

TOL = 1e-6
WS_A = "a" * 16
WS_B = "b" * 16
JOB = "c" * 16


def row(execution_id: str, **fields: Any) -> ExecutionInput:
    values: dict[str, Any] = {"workspace_hash": WS_A, "job_hash": JOB, "sheet_num": 1, **fields}
    return ExecutionInput(id=execution_id, **values)


def test_record_execution_returns_a_uuid(store: Store) -> None:
    execution_id = store.record_execution(WS_A, JOB, 1, status="completed", validation_pass_rate=1.0)
    assert len(execution_id) == 36
    [record] = store.get_recent_executions()
    assert record.id == execution_id
    assert record.job_hash == JOB
    assert record.workspace_hash == WS_A


@pytest.mark.parametrize(
    ("sheet_id", "number"), [("job-sheet42", 42), ("review-task-17", 17), ("job3-sheetX", 0), ("", 0)]
)
def test_sheet_numbers_come_from_trailing_digits(sheet_id: str, number: int) -> None:
    assert sheet_num_from_id(sheet_id) == number


def test_execution_stats(store: Store) -> None:
    for index in range(5):
        store.record_execution(
            WS_A if index < 3 else WS_B, JOB, index, success_without_retry=index < 3, retry_count=index
        )
    stats = store.get_execution_stats()
    assert stats["total_executions"] == 5
    assert stats["success_without_retry_rate"] == pytest.approx(0.6, abs=TOL)
    assert stats["unique_workspaces"] == 2


def test_execution_stats_of_an_empty_store(store: Store) -> None:
    assert store.get_execution_stats() == {
        "total_executions": 0,
        "success_without_retry_rate": 0.0,
        "total_patterns": 0,
        "avg_pattern_effectiveness": 0.0,
        "total_error_recoveries": 0,
        "unique_workspaces": 0,
    }


@pytest.mark.parametrize(
    ("pass_rate", "retries", "clean", "expected"),
    [
        (1.0, 0, True, 1.0),
        (1.0, 5, False, 0.5),
        (1.0, 10, False, 0.5),
        (0.8, 0, True, 0.9),
        (0.0, 5, False, 0.0),
        (0.5, 0, False, 0.5),
        (0.75, 2, False, 0.55),
    ],
)
def test_execution_confidence(pass_rate: float, retries: int, clean: bool, expected: float) -> None:
    assert execution_confidence(pass_rate, retries, clean) == pytest.approx(expected, abs=TOL)


def test_confidence_is_stored_with_the_execution(store: Store) -> None:
    store.record_execution(WS_A, JOB, 1, validation_pass_rate=0.75, retry_count=2)
    [record] = store.get_recent_executions()
    assert record.confidence_score == pytest.approx(0.55, abs=TOL)


def test_a_resent_execution_is_not_duplicated(store: Store) -> None:
    batch = [row("exec-1"), row("exec-2")]
    assert store.record_executions(batch) == 2
    assert store.record_executions(batch) == 0
    assert store.record_executions([row("exec-2"), row("exec-3")]) == 1
    assert store.get_execution_stats()["total_executions"] == 3


def test_one_id_twice_in_a_batch_is_recorded_once(store: Store) -> None:
    assert store.record_executions([row("exec-1", sheet_num=1), row("exec-1", sheet_num=2)]) == 1
    [record] = store.get_recent_executions()
    assert record.sheet_num == 1
    assert store.record_executions([]) == 0


def test_a_large_batch_is_recorded_whole(store: Store) -> None:
    batch = [row(f"exec-{index:05d}", sheet_num=index) for index in range(2500)]
    assert store.record_executions(batch) == 2500
    assert store.record_executions(batch) == 0


def test_recent_and_similar_executions_are_newest_first(store: Store) -> None:
    store.record_executions(
        [
            row("e1", completed_at=START + timedelta(minutes=1)),
            row("e2", completed_at=START + timedelta(minutes=3), workspace_hash=WS_B),
            row("e3", completed_at=START + timedelta(minutes=2), sheet_num=7),
            row("e4", completed_at=START + timedelta(minutes=2), sheet_num=7),
        ]
    )
    assert [r.id for r in store.get_recent_executions()] == ["e2", "e4", "e3", "e1"]
    assert [r.id for r in store.get_recent_executions(limit=2)] == ["e2", "e4"]
    assert [r.id for r in store.get_recent_executions(workspace_hash=WS_B)] == ["e2"]
    assert [r.id for r in store.get_similar_executions(sheet_num=7)] == ["e4", "e3"]
    assert [r.id for r in store.get_similar_executions(job_hash=JOB, workspace_hash=WS_A)] == [
        "e4",
        "e3",
        "e1",
    ]
    assert store.get_similar_executions(job_hash="f" * 16) == []


def test_records_are_clamped_when_read(store: Store) -> None:
    store.record_executions(
        [
            row(
                "e1",
                validation_pass_rate=100.0,
                duration_seconds=-3.0,
                retry_count=-1,
                error_codes=["E1", "E2"],
            )
        ]
    )
    [record] = store.get_recent_executions()
    assert record.validation_pass_rate == 1.0
    assert record.confidence_score == 1.0
    assert record.duration_seconds == 0.0
    assert record.retry_count == 0
    assert record.error_codes == ["E1", "E2"]


def test_completion_time_defaults_to_the_store_clock(store: Store, clock: Clock) -> None:
    store.record_executions([row("e1", started_at=START)])
    [record] = store.get_recent_executions()
    assert record.started_at == START
    assert record.completed_at is not None
    assert START < record.completed_at <= clock.current


def recoveries(store: Store, hour: int, successes: int, failures: int, code: str = "E101") -> None:
    for index in range(successes + failures):
        store.record_error_recovery(code, 30.0, 30.0, index < successes, time_of_day=hour)


def test_optimal_execution_window(store: Store) -> None:
    recoveries(store, 10, 5, 0)
    recoveries(store, 14, 0, 5)
    window = store.get_optimal_execution_window()
    assert window["optimal_hours"] == [10]
    assert window["avoid_hours"] == [14]
    assert window["sample_count"] == 10
    assert window["confidence"] == pytest.approx(0.2, abs=TOL)


def test_optimal_window_ignores_thin_hours_and_filters_by_code(store: Store) -> None:
    recoveries(store, 10, 5, 0)
    recoveries(store, 3, 2, 0)
    recoveries(store, 14, 0, 18, code="E999")
    window = store.get_optimal_execution_window(error_code="E101", model="ignored")
    assert window["optimal_hours"] == [10]
    assert window["avoid_hours"] == []
    assert window["sample_count"] == 7
    assert store.get_optimal_execution_window()["confidence"] == pytest.approx(0.5, abs=TOL)


def test_optimal_window_without_data(store: Store) -> None:
    assert store.get_optimal_execution_window() == {
        "optimal_hours": [],
        "avoid_hours": [],
        "confidence": 0.0,
        "sample_count": 0,
    }


def test_learning_statistics(store: Store, clock: Clock) -> None:
    pid = store.record_pattern("validation_failure", "p")
    store.record_pattern("validation_failure", "q")
    store.record_pattern_application(pid, "e1", True)
    store.record_execution(WS_A, JOB, 1, success_without_retry=True)
    store.record_error_recovery("E101", 10.0, 10.0, True)
    store.record_rate_limit_event("E101", 300.0, JOB)
    store.record_rate_limit_event("E101", 1.0, JOB)
    store.record_pattern_discovery(pid, "p", "validation_failure", JOB)
    store.record_dead_letter("{}", "bad")
    clock.advance(seconds=10)
    stats = store.get_learning_statistics()
    assert stats["total_executions"] == 1
    assert stats["success_without_retry_rate"] == 1.0
    assert stats["total_patterns"] == 2
    assert stats["patterns_pending"] == 2
    assert stats["patterns_validated"] == 0
    assert stats["active_patterns"] == 2
    assert stats["pattern_applications"] == 1
    assert stats["total_error_recoveries"] == 1
    assert stats["active_rate_limits"] == 1
    assert stats["active_pattern_discoveries"] == 1
    assert stats["dead_letters_pending"] == 1
    assert stats["dead_letters_total"] == 1
    assert stats["processed_messages"] == 0
    assert all(isinstance(value, int | float) for value in stats.values())
