"""SPEC-store §5 scenarios 32–38: effectiveness drift, epistemic drift and drift auto-retirement (§0.4)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.schema.tables import patterns
from ostinato.workers.store import Store
from ostinato.workers.store.drift import (
    belief_entropy,
    effectiveness_drift,
    epistemic_drift,
    weighted_belief_change,
    weighted_drift,
    window_effectiveness,
)

TOL = 1e-6


def pattern(store: Store, name: str = "p") -> str:
    return store.record_pattern("validation_failure", name, f"{name} description")


def apply(store: Store, pid: str, outcomes: str, grounding: float | list[float | None] | None = None) -> None:
    """Apply a sequence like "SSF" (oldest first); grounding is one value for all, or one per application."""
    for index, letter in enumerate(outcomes):
        g = grounding[index] if isinstance(grounding, list) else grounding
        store.record_pattern_application(pid, "x", letter in "ST", grounding_confidence=g)


def ground(store: Store, pid: str, values: Sequence[float | None]) -> None:
    """Successful applications carrying these grounding values, oldest first."""
    apply(store, pid, "S" * len(values), list(values))


def get(store: Store, pid: str) -> PatternRecord:
    record = store.get_pattern_by_id(pid)
    assert record is not None
    return record


# -- pure maths ------------------------------------------------------------------------------------------


def test_window_effectiveness_and_weights() -> None:
    assert window_effectiveness(5, 5) == pytest.approx(0.916667, abs=TOL)
    assert window_effectiveness(0, 5) == pytest.approx(0.083333, abs=TOL)
    assert weighted_drift(0.833333, 0.9) == pytest.approx(0.925926, abs=TOL)
    assert weighted_drift(0.833333, 0.3) == pytest.approx(1.666667, abs=TOL)
    assert weighted_belief_change(-0.6, 0.5) == pytest.approx(0.9, abs=TOL)
    assert weighted_belief_change(-0.5, 0.384615) == pytest.approx(0.692308, abs=TOL)


def test_belief_entropy_is_capped_and_zero_for_zero_mean() -> None:
    assert belief_entropy([0.0, 0.0, 0.0, 3.0]) == 1.0
    assert belief_entropy([0.0, 0.0]) == 0.0
    assert belief_entropy([0.9] * 5 + [0.3] * 5) == pytest.approx(0.5, abs=TOL)


def test_pure_functions_need_two_full_windows() -> None:
    assert effectiveness_drift("p", "n", [True] * 9, [None] * 9) is None
    assert epistemic_drift("p", "n", [0.5] * 9) is None
    with pytest.raises(ValueError, match="window_size"):
        effectiveness_drift("p", "n", [], [], window_size=0)


# -- scenario 32–35: effectiveness drift -----------------------------------------------------------------


def test_scenario_32_success_then_failure_drifts_negative(store: Store) -> None:
    pid = pattern(store)
    apply(store, pid, "SSSSSFFFFF", 0.9)
    metrics = store.calculate_effectiveness_drift(pid)
    assert metrics is not None
    assert metrics.pattern_id == pid
    assert metrics.pattern_name == "p"
    assert metrics.effectiveness_before == pytest.approx(0.916667, abs=TOL)
    assert metrics.effectiveness_after == pytest.approx(0.083333, abs=TOL)
    assert metrics.drift_magnitude == pytest.approx(0.833333, abs=TOL)
    assert metrics.grounding_confidence_avg == pytest.approx(0.9, abs=TOL)
    assert weighted_drift(metrics.drift_magnitude, metrics.grounding_confidence_avg) == pytest.approx(
        0.925926, abs=TOL
    )
    assert metrics.drift_direction == "negative"
    assert metrics.threshold_exceeded
    assert metrics.applications_analyzed == 10
    assert metrics.window_size == 5
    at_099 = store.calculate_effectiveness_drift(pid, drift_threshold=0.99)
    assert at_099 is not None
    assert not at_099.threshold_exceeded


def test_scenario_33_low_grounding_amplifies_at_most_twice(store: Store) -> None:
    low = pattern(store, "low")
    apply(store, low, "SSSSSFFFFF", 0.3)
    metrics = store.calculate_effectiveness_drift(low)
    assert metrics is not None
    assert metrics.grounding_confidence_avg == pytest.approx(0.3, abs=TOL)
    assert weighted_drift(metrics.drift_magnitude, metrics.grounding_confidence_avg) == pytest.approx(
        1.666667, abs=TOL
    )
    assert metrics.threshold_exceeded
    bare = pattern(store, "bare")
    apply(store, bare, "SSSSSFFFFF")
    ungrounded = store.calculate_effectiveness_drift(bare)
    assert ungrounded is not None
    assert ungrounded.grounding_confidence_avg == 1.0


def test_scenario_34_directions_windows_and_missing_history(store: Store) -> None:
    rising = pattern(store, "rising")
    apply(store, rising, "FFFFFSSSSS", 0.9)
    flat = pattern(store, "flat")
    apply(store, flat, "S" * 10)
    short = pattern(store, "short")
    apply(store, short, "S" * 9)
    rising_metrics = store.calculate_effectiveness_drift(rising)
    flat_metrics = store.calculate_effectiveness_drift(flat)
    assert rising_metrics is not None
    assert rising_metrics.drift_direction == "positive"
    assert flat_metrics is not None
    assert (flat_metrics.drift_direction, flat_metrics.drift_magnitude) == ("stable", 0.0)
    assert not flat_metrics.threshold_exceeded
    assert store.calculate_effectiveness_drift(short) is None
    assert store.calculate_effectiveness_drift("no-such-pattern") is None


def test_scenario_34_window_sizes(store: Store) -> None:
    six = pattern(store, "six")
    apply(store, six, "S" * 6)
    twenty = pattern(store, "twenty")
    apply(store, twenty, "S" * 20)
    by_three = store.calculate_effectiveness_drift(six, window_size=3)
    by_ten = store.calculate_effectiveness_drift(twenty, window_size=10)
    assert by_three is not None
    assert by_three.applications_analyzed == 6
    assert by_ten is not None
    assert by_ten.applications_analyzed == 20


def test_only_the_newest_two_windows_count(store: Store) -> None:
    pid = pattern(store)
    apply(store, pid, "FFFFF" + "SSSSSFFFFF", 0.9)
    metrics = store.calculate_effectiveness_drift(pid)
    assert metrics is not None
    assert metrics.effectiveness_before == pytest.approx(0.916667, abs=TOL)
    assert metrics.applications_analyzed == 10


@pytest.mark.parametrize(
    ("sequence", "before", "after", "direction"),
    [
        ("TTTTFTTFFF", 0.75, 0.416667, "negative"),
        ("TTTTFTTTFF", 0.75, 0.583333, "negative"),
        ("TFTFTTFTFT", 0.583333, 0.583333, "stable"),
    ],
)
def test_scenario_35_mixed_sequences(
    store: Store, sequence: str, before: float, after: float, direction: str
) -> None:
    pid = pattern(store)
    apply(store, pid, sequence.replace("T", "S"), 0.9)
    metrics = store.calculate_effectiveness_drift(pid)
    assert metrics is not None
    assert metrics.effectiveness_before == pytest.approx(before, abs=TOL)
    assert metrics.effectiveness_after == pytest.approx(after, abs=TOL)
    assert metrics.effectiveness_after - metrics.effectiveness_before == pytest.approx(
        after - before, abs=TOL
    )
    assert metrics.drift_direction == direction


def test_scenario_35_threshold_boundaries(store: Store) -> None:
    pid = pattern(store)
    apply(store, pid, "SSSSFSSFFF", 0.9)
    loose = store.calculate_effectiveness_drift(pid, drift_threshold=0.9)
    strict = store.calculate_effectiveness_drift(pid, drift_threshold=0.01)
    assert loose is not None
    assert strict is not None
    assert loose.drift_magnitude == pytest.approx(0.333333, abs=TOL)
    assert weighted_drift(loose.drift_magnitude, loose.grounding_confidence_avg) == pytest.approx(
        0.370370, abs=TOL
    )
    assert not loose.threshold_exceeded
    assert strict.threshold_exceeded


# -- scenario 36–37: drifting patterns and retirement -------------------------------------------------------


def test_scenario_36_drifting_patterns_by_magnitude(store: Store) -> None:
    falling = pattern(store, "falling")
    apply(store, falling, "SSSSSFFFFF", 0.9)
    steady = pattern(store, "steady")
    apply(store, steady, "S" * 10, 0.9)
    slipping = pattern(store, "slipping")
    apply(store, slipping, "SSSSFSSFFF", 0.9)
    drifting = store.get_drifting_patterns()
    assert [m.pattern_id for m in drifting] == [falling, slipping]
    assert [m.pattern_id for m in store.get_drifting_patterns(limit=1)] == [falling]
    assert store.get_drifting_patterns(drift_threshold=0.99) == []


def test_orphan_applications_are_not_reported(store: Store) -> None:
    pid = pattern(store)
    apply(store, pid, "SSSSSFFFFF")
    with store.batch() as conn:
        conn.execute(patterns.delete().where(patterns.c.id == pid))
    assert store.get_drifting_patterns() == []
    assert store.get_pattern_drift_summary()["patterns_analyzed"] == 0


def test_scenario_37_negative_drift_is_retired(store: Store) -> None:
    falling = pattern(store, "falling")
    apply(store, falling, "SSSSSFFFFF", 0.9)
    rising = pattern(store, "rising")
    apply(store, rising, "FFFFFSSSSS", 0.9)
    before = get(store, falling)
    retired = store.retire_drifting_patterns()
    assert [(r[0], r[1]) for r in retired] == [(falling, "falling")]
    assert retired[0][2] == pytest.approx(0.833333, abs=TOL)
    after = get(store, falling)
    assert after.priority_score == 0.0
    assert after.suggested_action == "Auto-retired: drift negative (0.83), effectiveness 0.92 → 0.08"
    assert after.quarantine_status is QuarantineStatus.RETIRED
    assert (after.description, after.occurrence_count) == (before.description, before.occurrence_count)
    assert get(store, rising).quarantine_status is QuarantineStatus.PENDING
    assert get(store, rising).priority_score > 0
    assert falling in {r.id for r in store.get_retired_patterns()}


def test_scenario_37_positive_drift_only_when_asked(store: Store) -> None:
    rising = pattern(store, "rising")
    apply(store, rising, "FFFFFSSSSS", 0.9)
    assert store.retire_drifting_patterns() == []
    retired = store.retire_drifting_patterns(require_negative_drift=False)
    assert [r[0] for r in retired] == [rising]
    record = get(store, rising)
    assert record.suggested_action == "Auto-retired: drift positive (0.83), effectiveness 0.08 → 0.92"
    assert record.quarantine_status is QuarantineStatus.RETIRED


def test_retirement_is_idempotent_and_sticks(store: Store) -> None:
    pid = pattern(store)
    apply(store, pid, "SSSSSFFFFF", 0.9)
    first = store.retire_drifting_patterns()
    assert store.retire_drifting_patterns() == first
    apply(store, pid, "S", 0.9)
    store.recalculate_all_pattern_priorities()
    assert get(store, pid).priority_score == 0.0
    assert get(store, pid).quarantine_status is QuarantineStatus.RETIRED


def test_drift_summary(store: Store) -> None:
    empty = store.get_pattern_drift_summary()
    assert empty == {
        "total_patterns": 0,
        "patterns_analyzed": 0,
        "patterns_drifting": 0,
        "avg_drift_magnitude": 0.0,
        "most_drifted": None,
    }
    falling = pattern(store, "falling")
    apply(store, falling, "SSSSSFFFFF", 0.9)
    steady = pattern(store, "steady")
    apply(store, steady, "S" * 12)
    pattern(store, "short")
    summary = store.get_pattern_drift_summary()
    assert summary["total_patterns"] == 3
    assert summary["patterns_analyzed"] == 2
    assert summary["patterns_drifting"] == 1
    assert summary["avg_drift_magnitude"] == pytest.approx(0.833333 / 2, abs=TOL)
    assert summary["most_drifted"] == falling


# -- scenario 38: epistemic drift ----------------------------------------------------------------------------


def test_scenario_38_weakening_belief(store: Store) -> None:
    pid = pattern(store)
    ground(store, pid, [0.9] * 5 + [0.3] * 5)
    metrics = store.calculate_epistemic_drift(pid)
    assert metrics is not None
    assert metrics.confidence_before == pytest.approx(0.9, abs=TOL)
    assert metrics.confidence_after == pytest.approx(0.3, abs=TOL)
    assert metrics.belief_change == pytest.approx(-0.6, abs=TOL)
    assert metrics.belief_entropy == pytest.approx(0.5, abs=TOL)
    assert weighted_belief_change(metrics.belief_change, metrics.belief_entropy) == pytest.approx(
        0.9, abs=TOL
    )
    assert metrics.drift_direction == "weakening"
    assert metrics.threshold_exceeded
    assert metrics.applications_analyzed == 10


def test_scenario_38_strengthening_and_stable(store: Store) -> None:
    rising = pattern(store, "rising")
    ground(store, rising, [0.3] * 5 + [0.9] * 5)
    steady = pattern(store, "steady")
    ground(store, steady, [0.8] * 10)
    up = store.calculate_epistemic_drift(rising)
    flat = store.calculate_epistemic_drift(steady)
    assert up is not None
    assert up.belief_change == pytest.approx(0.6, abs=TOL)
    assert up.drift_direction == "strengthening"
    assert flat is not None
    assert flat.belief_change == pytest.approx(0.0, abs=TOL)
    assert flat.belief_entropy == pytest.approx(0.0, abs=TOL)
    assert flat.drift_direction == "stable"
    assert not flat.threshold_exceeded


def test_scenario_38_only_grounded_applications_count(store: Store) -> None:
    bare = pattern(store, "bare")
    apply(store, bare, "S" * 10)
    mixed = pattern(store, "mixed")
    ground(store, mixed, [0.7, None, 0.7, 0.7, 0.7, 0.7, None, 0.7, 0.7, 0.7, 0.7, 0.7])
    assert store.calculate_epistemic_drift(bare) is None
    assert store.calculate_epistemic_drift("no-such-pattern") is None
    metrics = store.calculate_epistemic_drift(mixed)
    assert metrics is not None
    assert metrics.applications_analyzed == 10


def test_scenario_38_small_window_and_capped_entropy(store: Store) -> None:
    small = pattern(store, "small")
    ground(store, small, [0.9, 0.9, 0.9, 0.4, 0.4, 0.4])
    wild = pattern(store, "wild")
    ground(store, wild, [0.01, 0.99] * 5)
    metrics = store.calculate_epistemic_drift(small, window_size=3)
    assert metrics is not None
    assert metrics.belief_change == pytest.approx(-0.5, abs=TOL)
    assert metrics.belief_entropy == pytest.approx(0.384615, abs=TOL)
    assert weighted_belief_change(metrics.belief_change, metrics.belief_entropy) == pytest.approx(
        0.692308, abs=TOL
    )
    assert metrics.applications_analyzed == 6
    capped = store.calculate_epistemic_drift(wild)
    assert capped is not None
    assert 0.0 <= capped.belief_entropy <= 1.0


def test_epistemic_drifting_patterns_and_summary(store: Store) -> None:
    assert store.get_epistemic_drift_summary() == {
        "total_patterns": 0,
        "patterns_analyzed": 0,
        "patterns_with_epistemic_drift": 0,
        "avg_belief_change": 0.0,
        "avg_belief_entropy": 0.0,
        "most_unstable": None,
    }
    falling = pattern(store, "falling")
    ground(store, falling, [0.9] * 5 + [0.3] * 5)
    easing = pattern(store, "easing")
    ground(store, easing, [0.9] * 5 + [0.7] * 5)
    steady = pattern(store, "steady")
    ground(store, steady, [0.8] * 10)
    assert [m.pattern_id for m in store.get_epistemic_drifting_patterns()] == [falling, easing]
    assert [m.pattern_id for m in store.get_epistemic_drifting_patterns(limit=1)] == [falling]
    summary = store.get_epistemic_drift_summary()
    assert summary["total_patterns"] == 3
    assert summary["patterns_analyzed"] == 3
    assert summary["patterns_with_epistemic_drift"] == 2
    assert summary["avg_belief_change"] == pytest.approx((-0.6 - 0.2) / 3, abs=TOL)
    easing_entropy = belief_entropy([0.9] * 5 + [0.7] * 5)
    assert summary["avg_belief_entropy"] == pytest.approx((0.5 + easing_entropy) / 3, abs=TOL)
    assert summary["most_unstable"] == falling


# -- the beat's report ---------------------------------------------------------------------------------------


def test_drift_report_gives_both_measures_per_pattern(store: Store) -> None:
    grounded = pattern(store, "a-grounded")
    ground(store, grounded, [0.9] * 5 + [0.3] * 5)
    bare = pattern(store, "b-bare")
    apply(store, bare, "SSSSSFFFFF")
    short = pattern(store, "c-short")
    apply(store, short, "S" * 9, 0.5)
    report = store.drift_report()
    assert [r.pattern_id for r in report] == sorted([grounded, bare])
    by_id = {r.pattern_id: r for r in report}
    grounded_epistemic = by_id[grounded].epistemic
    bare_effectiveness = by_id[bare].effectiveness
    assert by_id[grounded].effectiveness is not None
    assert grounded_epistemic is not None
    assert grounded_epistemic.belief_change == pytest.approx(-0.6, abs=TOL)
    assert bare_effectiveness is not None
    assert bare_effectiveness.drift_direction == "negative"
    assert by_id[bare].epistemic is None
    assert [r.pattern_id for r in store.drift_report(min_applications=9)] == sorted([grounded, bare, short])
