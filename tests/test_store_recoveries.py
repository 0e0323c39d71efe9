"""SPEC-store §5 scenarios 50 and 51: learned wait times and their fallback to the static delay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ostinato.workers.store import Store

TOL = 1e-6


def successes(store: Store, waits: list[float], code: str = "E101", model: str | None = None) -> None:
    for wait in waits:
        store.record_error_recovery(code, 60.0, wait, True, model)


@pytest.mark.parametrize(
    ("waits", "expected"), [([60, 90, 120, 80, 70], 72.0), ([20, 25, 30], 22.5), ([60, 60], None)]
)
def test_learned_wait_time(store: Store, waits: list[float], expected: float | None) -> None:
    successes(store, waits)
    learned = store.get_learned_wait_time("E101")
    assert learned == (None if expected is None else pytest.approx(expected, abs=TOL))


def test_failures_do_not_count(store: Store) -> None:
    successes(store, [10, 15, 20])
    store.record_error_recovery("E101", 60.0, 5.0, False)
    assert store.get_learned_wait_time("E101") == pytest.approx(12.5, abs=TOL)


def test_sample_count_ignores_failures(store: Store) -> None:
    successes(store, [10, 15])
    store.record_error_recovery("E101", 60.0, 5.0, False)
    successes(store, [99], code="E999")
    assert store.get_error_recovery_sample_count("E101") == 2
    assert store.get_learned_wait_time("E101") is None
    assert store.get_learned_wait_time("E101", min_samples=2) == pytest.approx(11.25, abs=TOL)


def test_only_the_twenty_latest_successes_count(store: Store) -> None:
    successes(store, [1000.0] * 5)
    successes(store, [10.0] * 20)
    assert store.get_learned_wait_time("E101") == pytest.approx(10.0, abs=TOL)


def test_latest_is_by_event_time_not_arrival(store: Store) -> None:
    early = datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(20):
        store.record_error_recovery("E101", 60.0, 10.0, True, recorded_at=early + timedelta(minutes=index))
    store.record_error_recovery("E101", 60.0, 1000.0, True, recorded_at=early - timedelta(days=1))
    assert store.get_learned_wait_time("E101") == pytest.approx(10.0, abs=TOL)


def test_model_filter(store: Store) -> None:
    successes(store, [20, 25, 30], model="gpt-4")
    successes(store, [100, 100, 100], model="claude-3")
    assert store.get_learned_wait_time("E101", model="gpt-4") == pytest.approx(22.5, abs=TOL)
    assert store.get_learned_wait_time("E101", model="other") is None
    assert store.get_learned_wait_time("E101") == pytest.approx((62.5 + 20) / 2, abs=TOL)


def test_fallback_without_data(store: Store) -> None:
    assert store.get_learned_wait_time_with_fallback("E101", 60.0) == (60.0, 0.0, "static_fallback")


@pytest.mark.parametrize(
    ("static", "waits", "delay", "confidence", "source"),
    [
        (60.0, [25.0] * 10, 30.0, 1.0, "global_learned"),
        (60.0, [20.0, 25.0, 30.0], 47.142857, 0.3, "global_learned_blend"),
        (120.0, [50.0] * 5, 77.142857, 0.5, "global_learned_blend"),
    ],
)
def test_fallback_blends_towards_static(
    store: Store, static: float, waits: list[float], delay: float, confidence: float, source: str
) -> None:
    successes(store, waits)
    got_delay, got_confidence, got_source = store.get_learned_wait_time_with_fallback("E101", static)
    assert got_delay == pytest.approx(delay, abs=TOL)
    assert got_confidence == pytest.approx(confidence, abs=TOL)
    assert got_source == source


def test_fallback_confidence_counts_every_model(store: Store) -> None:
    successes(store, [20, 25, 30], model="gpt-4")
    successes(store, [40] * 7, model="claude-3")
    delay, confidence, source = store.get_learned_wait_time_with_fallback("E101", 60.0, model="gpt-4")
    assert delay == pytest.approx(30.0, abs=TOL)
    assert confidence == pytest.approx(1.0, abs=TOL)
    assert source == "global_learned"


def test_time_of_day_defaults_to_the_events_utc_hour(store: Store) -> None:
    at = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)
    store.record_error_recovery("E101", 60.0, 30.0, True, recorded_at=at)
    store.record_error_recovery("E101", 60.0, 30.0, True, time_of_day=4, recorded_at=at)
    window = store.get_optimal_execution_window()
    assert window["sample_count"] == 2
    store.record_error_recovery("E101", 60.0, 30.0, True, recorded_at=at + timedelta(minutes=10))
    assert store.get_optimal_execution_window()["optimal_hours"] == []
    store.record_error_recovery("E101", 60.0, 30.0, True, recorded_at=at - timedelta(minutes=10))
    assert store.get_optimal_execution_window()["optimal_hours"] == [23]


@pytest.mark.parametrize(("count", "confidence"), [(3, 0.3), (9, 0.9), (10, 1.0), (37, 1.0)])
def test_fallback_confidence_saturates_at_ten_successes(store: Store, count: int, confidence: float) -> None:
    """The capped count (it stops at ten rows) gives the confidence the full count gave."""
    successes(store, [30.0] * count)
    for _ in range(5):
        store.record_error_recovery("E101", 60.0, 5.0, False)
    assert store.get_error_recovery_sample_count("E101") == count
    _, found, _ = store.get_learned_wait_time_with_fallback("E101", 60.0)
    assert found == pytest.approx(min(count / 10, 1.0), abs=TOL)
    assert found == pytest.approx(confidence, abs=TOL)
