"""SPEC-store §5 scenarios 39–44: pattern entropy, exploration budget and entropy response (§0.9 included)."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from conftest import START, Clock
from sqlalchemy import func, select

from ostinato.schema.records import EntropyMetrics, QuarantineStatus
from ostinato.schema.tables import entropy_responses, exploration_budget, patterns
from ostinato.workers.store import ApplicationInput, Store
from ostinato.workers.store.diversity import REVISIT_REASON, budget_step, enforce_bounds, entropy_metrics

TOL = 1e-6
T = TypeVar("T")


def applied(store: Store, counts: list[int]) -> list[str]:
    """One pattern per count, each with that many applications; returns their ids."""
    ids = []
    for index, count in enumerate(counts):
        pid = store.record_pattern("validation_failure", f"pattern {index}")
        store.record_pattern_applications([ApplicationInput(pid, True, store.now()) for _ in range(count)])
        ids.append(pid)
    return ids


def quarantined(store: Store, count: int) -> list[str]:
    """Quarantined patterns, oldest sighting first."""
    ids = [store.record_pattern("error", f"quarantined {n}") for n in range(count)]
    for pid in ids:
        assert store.quarantine_pattern(pid, "bad")
    return ids


def budget(store: Store, job: str = "job") -> float:
    latest = store.get_exploration_budget(job)
    assert latest is not None
    return latest.budget_value


def count_rows(store: Store, table: object) -> int:
    with store.batch() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


# -- scenario 39: entropy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "entropy", "max_entropy", "diversity", "dominant"),
    [
        ([10, 10], 1.0, 1.0, 1.0, 0.5),
        ([90, 10], 0.468996, 1.0, 0.468996, 0.9),
        ([5], 0.0, 1.0, 0.0, 1.0),
        ([1, 1, 2], 1.5, 1.584963, 0.946395, 0.5),
        ([], 0.0, 0.0, 0.0, 0.0),
    ],
)
def test_scenario_39_entropy_formula(
    counts: list[int], entropy: float, max_entropy: float, diversity: float, dominant: float
) -> None:
    metrics = entropy_metrics(counts, len(counts), START)
    assert metrics.shannon_entropy == pytest.approx(entropy, abs=TOL)
    assert metrics.max_possible_entropy == pytest.approx(max_entropy, abs=TOL)
    assert metrics.diversity_index == pytest.approx(diversity, abs=TOL)
    assert metrics.dominant_pattern_share == pytest.approx(dominant, abs=TOL)
    assert metrics.total_applications == sum(counts)
    assert not metrics.threshold_exceeded


@pytest.mark.parametrize(
    ("counts", "diversity", "dominant"), [([10, 10], 1.0, 0.5), ([90, 10], 0.468996, 0.9), ([5], 0.0, 1.0)]
)
def test_scenario_39_entropy_in_the_store(
    store: Store, counts: list[int], diversity: float, dominant: float
) -> None:
    applied(store, counts)
    metrics = store.calculate_pattern_entropy()
    assert metrics.diversity_index == pytest.approx(diversity, abs=TOL)
    assert metrics.dominant_pattern_share == pytest.approx(dominant, abs=TOL)
    assert (metrics.unique_pattern_count, metrics.effective_pattern_count) == (len(counts), len(counts))
    assert metrics.total_applications == sum(counts)


def test_scenario_39_unapplied_patterns_and_empty_store(store: Store) -> None:
    empty = store.calculate_pattern_entropy()
    assert (empty.shannon_entropy, empty.diversity_index, empty.unique_pattern_count) == (0.0, 0.0, 0)
    applied(store, [3, 0])
    metrics = store.calculate_pattern_entropy()
    assert (metrics.unique_pattern_count, metrics.effective_pattern_count) == (2, 1)
    assert metrics.diversity_index == 0.0


def test_entropy_history_newest_first(store: Store, clock: Clock) -> None:
    first = store.calculate_pattern_entropy()
    applied(store, [1, 3])
    second = store.calculate_pattern_entropy().model_copy(update={"threshold_exceeded": True})
    ids = [store.record_pattern_entropy(first), store.record_pattern_entropy(second)]
    assert len(set(ids)) == 2
    history = store.get_pattern_entropy_history()
    assert history == [second, first]
    assert store.get_pattern_entropy_history(limit=1) == [second]
    assert isinstance(history[0], EntropyMetrics)


# -- scenario 40: when to respond ----------------------------------------------------------------------------


def test_scenario_40_no_applications(store: Store) -> None:
    needed, diversity, reason = store.check_entropy_response_needed("job")
    assert (needed, diversity) == (False, None)
    assert "No pattern applications" in reason


def test_scenario_40_single_pattern_needs_a_response(store: Store) -> None:
    applied(store, [10])
    assert store.check_entropy_response_needed("job") == (True, 0.0, "Entropy 0.000 < threshold 0.300")


def test_scenario_40_diverse_patterns_are_healthy(store: Store) -> None:
    applied(store, [10] * 5)
    needed, diversity, reason = store.check_entropy_response_needed("job")
    assert not needed
    assert diversity == pytest.approx(1.0, abs=TOL)
    assert "healthy" in reason


def test_scenario_40_cooldown_per_job(store: Store, clock: Clock) -> None:
    applied(store, [10])
    store.trigger_entropy_response("job", 0.0, 0.3)
    needed, diversity, reason = store.check_entropy_response_needed("job", cooldown_seconds=3600)
    assert (needed, diversity) == (False, None)
    assert reason.startswith("Cooldown active (")
    assert store.check_entropy_response_needed("other-job")[0]
    clock.advance(hours=2)
    assert store.check_entropy_response_needed("job", cooldown_seconds=3600)[:2] == (True, 0.0)


# -- scenario 41–43: budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored", "kind"),
    [
        (0.01, 0.05, "floor_enforced"),
        (0.80, 0.50, "ceiling_enforced"),
        (0.05, 0.05, "decay"),
        (0.50, 0.50, "decay"),
    ],
)
def test_scenario_41_floor_and_ceiling(store: Store, value: float, stored: float, kind: str) -> None:
    record = store.update_exploration_budget("job", value, "decay", adjustment_reason="given")
    assert record.budget_value == pytest.approx(stored, abs=TOL)
    assert record.adjustment_type == kind
    assert store.get_exploration_budget("job") == record


def test_enforcement_reasons() -> None:
    assert enforce_bounds(0.01, "decay", None, 0.05, 0.5) == (
        0.05,
        "floor_enforced",
        "Budget 0.010 enforced to floor 0.050",
    )
    assert enforce_bounds(0.8, "boost", None, 0.05, 0.5)[2] == "Budget 0.800 enforced to ceiling 0.500"
    assert enforce_bounds(0.2, "boost", "why", 0.05, 0.5) == (0.2, "boost", "why")
    value, kind, reason = budget_step(0.2, 0.3, 0.9, 0.1, 0.3)
    assert value == pytest.approx(0.18, abs=TOL)
    assert (kind, reason) == ("decay", "Entropy 0.300 >= threshold, decaying")


def test_scenario_42_initial_boost_and_decay(store: Store) -> None:
    initial = store.calculate_budget_adjustment("a", 0.5)
    assert (initial.budget_value, initial.adjustment_type) == (0.15, "initial")
    assert initial.adjustment_reason == "Initial budget set"
    boost = store.calculate_budget_adjustment("a", 0.2)
    assert boost.budget_value == pytest.approx(0.25, abs=TOL)
    assert boost.adjustment_type == "boost"
    assert boost.adjustment_reason == "Entropy 0.200 < threshold 0.300"
    assert boost.entropy_at_time == 0.2
    store.update_exploration_budget("b", 0.20, "initial")
    decay = store.calculate_budget_adjustment("b", 0.6)
    assert decay.budget_value == pytest.approx(0.19, abs=TOL)
    assert decay.adjustment_type == "decay"


def test_scenario_42_threshold_decays(store: Store) -> None:
    store.update_exploration_budget("job", 0.20, "initial")
    record = store.calculate_budget_adjustment("job", 0.3, decay_rate=0.90)
    assert record.budget_value == pytest.approx(0.18, abs=TOL)
    assert record.adjustment_type == "decay"


def test_scenario_42_sequence(store: Store) -> None:
    values = [
        store.calculate_budget_adjustment("job", 0.6, initial_budget=0.20).budget_value,
        store.calculate_budget_adjustment("job", 0.6, decay_rate=0.90).budget_value,
        store.calculate_budget_adjustment("job", 0.1).budget_value,
    ]
    assert values == pytest.approx([0.20, 0.18, 0.28], abs=TOL)


def test_scenario_42_floor_and_cap(store: Store) -> None:
    store.update_exploration_budget("low", 0.06, "initial")
    decays = [store.calculate_budget_adjustment("low", 0.6, decay_rate=0.90) for _ in range(10)]
    assert min(r.budget_value for r in decays) >= 0.05
    assert decays[-1].adjustment_type == "floor_enforced"
    store.update_exploration_budget("high", 0.45, "initial")
    capped = store.calculate_budget_adjustment("high", 0.1)
    assert (capped.budget_value, capped.adjustment_type) == (0.50, "ceiling_enforced")


def test_scenario_43_statistics_and_isolation(store: Store) -> None:
    assert store.get_exploration_budget_statistics() == {
        "current_budget": None,
        "avg_budget": 0.0,
        "min_budget": 0.0,
        "max_budget": 0.0,
        "total_adjustments": 0,
        "floor_enforcements": 0,
        "boost_count": 0,
        "decay_count": 0,
    }
    for value, kind in [(0.15, "initial"), (0.25, "boost"), (0.20, "decay"), (0.01, "decay")]:
        store.update_exploration_budget("job", value, kind)
    stats = store.get_exploration_budget_statistics("job")
    assert stats["total_adjustments"] == 4
    assert stats["current_budget"] == pytest.approx(0.05, abs=TOL)
    assert (stats["floor_enforcements"], stats["boost_count"], stats["decay_count"]) == (1, 1, 1)
    assert (stats["min_budget"], stats["max_budget"]) == pytest.approx((0.05, 0.25), abs=TOL)
    assert stats["avg_budget"] == pytest.approx(0.1625, abs=TOL)
    store.update_exploration_budget("job-a", 0.15, "initial")
    store.update_exploration_budget("job-b", 0.25, "initial")
    assert (budget(store, "job-a"), budget(store, "job-b")) == pytest.approx((0.15, 0.25), abs=TOL)
    assert store.get_exploration_budget_statistics()["total_adjustments"] == 6
    assert store.get_exploration_budget(None) == store.get_exploration_budget("job-b")


def test_history_newest_first_even_when_the_clock_steps_back(store: Store, clock: Clock) -> None:
    store.update_exploration_budget("job", 0.10, "initial")
    clock.advance(hours=-1)
    second = store.update_exploration_budget("job", 0.20, "boost")
    third = store.update_exploration_budget("job", 0.30, "boost")
    assert store.get_exploration_budget("job") == third
    history = store.get_exploration_budget_history("job")
    assert [r.budget_value for r in history] == [0.30, 0.20, 0.10]
    assert history[0].recorded_at >= history[1].recorded_at >= history[2].recorded_at
    assert store.calculate_budget_adjustment("job", 0.1).budget_value == pytest.approx(0.40, abs=TOL)
    assert second.recorded_at == history[1].recorded_at
    assert [r.budget_value for r in store.get_exploration_budget_history("job", limit=2)] == pytest.approx(
        [0.40, 0.30]
    )


# -- scenario 44: the response -------------------------------------------------------------------------------


def test_scenario_44_boost_from_existing_and_default_budget(store: Store) -> None:
    store.update_exploration_budget("job", 0.15, "initial")
    response = store.trigger_entropy_response("job", 0.1, 0.3)
    assert budget(store, "job") == pytest.approx(0.25, abs=TOL)
    assert response.budget_boosted
    assert "budget_boost" in response.actions_taken
    latest = store.get_exploration_budget("job")
    assert latest is not None
    assert latest.adjustment_type == "boost"
    assert latest.adjustment_reason == "Entropy response: diversity 0.100 < 0.300"
    assert latest.entropy_at_time == 0.1
    store.trigger_entropy_response("fresh", 0.1, 0.3)
    assert budget(store, "fresh") == pytest.approx(0.25, abs=TOL)
    store.trigger_entropy_response("daemon", 0.1, 0.3, budget_boost_amount=0.15)
    assert budget(store, "daemon") == pytest.approx(0.30, abs=TOL)


def test_scenario_44_quarantine_revisit(store: Store) -> None:
    ids = quarantined(store, 5)
    response = store.trigger_entropy_response("job", 0.1, 0.3, max_quarantine_revisits=2)
    assert response.quarantine_revisits == 2
    assert response.patterns_revisited == [ids[4], ids[3]]
    assert response.actions_taken == ["budget_boost", "quarantine_revisit"]
    for pid in ids:
        record = store.get_pattern_by_id(pid)
        assert record is not None
        revisited = pid in response.patterns_revisited
        assert record.quarantine_status is (
            QuarantineStatus.PENDING if revisited else QuarantineStatus.QUARANTINED
        )
        assert record.quarantine_reason == (REVISIT_REASON if revisited else "bad")
        assert record.quarantined_at is not None


def test_scenario_44_no_actions(store: Store) -> None:
    quarantined(store, 1)
    response = store.trigger_entropy_response("job", 0.1, 0.3, boost_budget=False, revisit_quarantine=False)
    assert (response.actions_taken, response.quarantine_revisits, response.budget_boosted) == ([], 0, False)
    assert response.patterns_revisited == []
    assert store.get_exploration_budget("job") is None
    assert store.get_last_entropy_response("job") == response


def test_response_history_and_statistics(store: Store) -> None:
    empty = store.get_entropy_response_statistics()
    assert empty == {
        "total_responses": 0,
        "avg_entropy_at_trigger": 0.0,
        "budget_boosts": 0,
        "quarantine_revisits": 0,
        "last_response": None,
    }
    quarantined(store, 2)
    first = store.trigger_entropy_response("a", 0.1, 0.3, max_quarantine_revisits=1)
    second = store.trigger_entropy_response("b", 0.2, 0.3, boost_budget=False)
    assert store.get_entropy_response_history() == [second, first]
    assert store.get_entropy_response_history("a") == [first]
    assert store.get_last_entropy_response() == second
    stats = store.get_entropy_response_statistics()
    assert stats["total_responses"] == 2
    assert stats["avg_entropy_at_trigger"] == pytest.approx(0.15, abs=TOL)
    assert (stats["budget_boosts"], stats["quarantine_revisits"]) == (1, 2)
    assert stats["last_response"] == second.recorded_at.isoformat()
    assert store.get_entropy_response_statistics("a")["quarantine_revisits"] == 1


def test_respond_to_entropy_checks_then_acts(store: Store, clock: Clock) -> None:
    healthy = store.respond_to_entropy("job")
    assert (healthy.needed, healthy.response) == (False, None)
    applied(store, [10])
    outcome = store.respond_to_entropy("job", budget_boost_amount=0.2)
    assert outcome.needed
    assert outcome.diversity == 0.0
    assert outcome.response is not None
    assert (outcome.response.entropy_at_trigger, outcome.response.threshold_used) == (0.0, 0.3)
    assert budget(store, "job") == pytest.approx(0.35, abs=TOL)
    again = store.respond_to_entropy("job")
    assert (again.needed, again.response) == (False, None)
    assert again.reason.startswith("Cooldown active")
    clock.advance(hours=2)
    assert store.respond_to_entropy("job").response is not None


# -- §0.9: concurrency ---------------------------------------------------------------------------------------


def run_together(count: int, call: Callable[[int], T]) -> list[T]:
    """Start ``count`` threads at the same instant and collect what each returned."""
    barrier = threading.Barrier(count)

    def start(n: int) -> T:
        barrier.wait()
        return call(n)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def test_concurrent_budget_adjustments_never_share_a_base(pg_store: Store) -> None:
    pg_store.update_exploration_budget("job", 0.50, "initial", floor=0.0)

    def adjust(_: int) -> None:
        for _round in range(5):
            pg_store.calculate_budget_adjustment("job", 0.6, floor=0.0)

    run_together(8, adjust)
    expected = 0.50
    for _step in range(40):
        expected *= 0.95
    assert budget(pg_store, "job") == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.5 * math.pow(0.95, 40), abs=1e-12)
    history = pg_store.get_exploration_budget_history("job", limit=100)
    assert len(history) == 41
    values = [r.budget_value for r in reversed(history)]
    assert all(
        later == pytest.approx(earlier * 0.95, abs=1e-15) for earlier, later in itertools.pairwise(values)
    )
    with pg_store.batch() as conn:
        seqs = (
            conn.execute(select(exploration_budget.c.seq).order_by(exploration_budget.c.seq)).scalars().all()
        )
    assert seqs == list(range(1, 42))


def test_concurrent_responders_respond_once(pg_store: Store) -> None:
    applied(pg_store, [10])
    outcomes = run_together(8, lambda _: pg_store.respond_to_entropy("job"))
    assert sum(o.response is not None for o in outcomes) == 1
    assert all(o.reason.startswith("Cooldown active") for o in outcomes if o.response is None)
    assert count_rows(pg_store, entropy_responses) == 1
    assert count_rows(pg_store, exploration_budget) == 1
    assert budget(pg_store, "job") == pytest.approx(0.25, abs=TOL)


def test_concurrent_responses_revisit_each_pattern_once(pg_store: Store) -> None:
    ids = quarantined(pg_store, 5)
    responses = run_together(8, lambda n: pg_store.trigger_entropy_response(f"job-{n}", 0.1, 0.3))
    revisited = [pid for r in responses for pid in r.patterns_revisited]
    assert sorted(revisited) == sorted(ids)
    with pg_store.batch() as conn:
        statuses = set(conn.execute(select(patterns.c.quarantine_status)).scalars())
    assert statuses == {"pending"}
