"""SPEC-store §5 scenarios 26–31 (with §0.6's trust fix), retirement as status + priority 0, and the
atomic trust delta under concurrent writers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Clock

from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.workers.store import Store
from ostinato.workers.store.lifecycle import trust_score

TOL = 1e-6


def apply(store: Store, pid: str, outcomes: str) -> None:
    """Apply a sequence like "SSF" to a pattern, one application at a time."""
    for letter in outcomes:
        store.record_pattern_application(pid, "sheet_1", letter == "S")


def pattern(store: Store, name: str, outcomes: str = "", trust: float | None = None) -> str:
    pid = store.record_pattern("validation_failure", name)
    apply(store, pid, outcomes)
    if trust is not None:
        store.update_trust_score(pid, trust - 0.5)
    return pid


def get(store: Store, pid: str) -> PatternRecord:
    record = store.get_pattern_by_id(pid)
    assert record is not None
    return record


# -- scenario 26: calculate_trust_score ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "status", "expected"),
    [
        ("", None, 0.7),
        ("", QuarantineStatus.QUARANTINED, 0.5),
        ("", QuarantineStatus.VALIDATED, 0.8),
        ("SSSSS", None, 1.0),
        ("FFFFF", None, 0.3),
        ("SFS", None, 0.766667),
        ("SFS", QuarantineStatus.VALIDATED, 0.866667),
    ],
)
def test_calculate_trust(
    store: Store, clock: Clock, outcomes: str, status: QuarantineStatus | None, expected: float
) -> None:
    pid = pattern(store, "p", outcomes)
    if status is not None:
        assert store.update_quarantine_status(pid, status)
    assert store.calculate_trust_score(pid) == pytest.approx(expected, abs=TOL)
    record = get(store, pid)
    assert record.trust_score == pytest.approx(expected, abs=TOL)
    assert record.trust_calculation_date == clock.current


def test_trust_divides_by_applications_not_sightings(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    for _ in range(9):
        store.record_pattern("validation_failure", "p")
    apply(store, pid, "SSSSSSSSFF")
    assert get(store, pid).occurrence_count == 10
    assert store.calculate_trust_score(pid) == pytest.approx(0.86, abs=TOL)


def test_trust_decays_with_whole_days_since_confirmation(store: Store, clock: Clock) -> None:
    pid = pattern(store, "p")
    clock.advance(days=90)
    assert store.calculate_trust_score(pid) == pytest.approx(0.6458, abs=TOL)
    clock.advance(hours=23)
    assert store.calculate_trust_score(pid) == pytest.approx(0.6458, abs=TOL)
    clock.advance(hours=1)
    assert store.calculate_trust_score(pid) == pytest.approx(0.5 + 0.2 * 0.9 ** (91 / 30), abs=TOL)


def test_trust_of_missing_pattern_is_none(store: Store) -> None:
    assert store.calculate_trust_score("missing") is None


def test_trust_formula_is_clamped() -> None:
    assert trust_score(5, 0, 0, QuarantineStatus.VALIDATED.value) == 1.0
    assert trust_score(0, 5, 3000, QuarantineStatus.QUARANTINED.value) == pytest.approx(0.0, abs=1e-12)


def test_recalculate_trust_since_only_touches_recently_applied(store: Store, clock: Clock) -> None:
    early = pattern(store, "early", "S")
    idle = pattern(store, "idle")
    clock.advance(days=1)
    since = clock.current
    late = pattern(store, "late", "F")
    assert store.recalculate_all_trust_scores(since) == 1
    assert [get(store, p).trust_score for p in (early, idle, late)] == pytest.approx([0.5, 0.5, 0.3], abs=TOL)
    assert store.recalculate_all_trust_scores() == 3
    day_old = 0.2 * 0.9 ** (1 / 30)
    expected = [0.5 + 0.3 + day_old, 0.5 + day_old, 0.3]
    assert [get(store, p).trust_score for p in (early, idle, late)] == pytest.approx(expected, abs=TOL)


# -- scenario 27: update_trust_score ---------------------------------------------------------------------


def test_update_trust_adds_and_clamps(store: Store) -> None:
    up, down = pattern(store, "up"), pattern(store, "down")
    assert store.update_trust_score(up, 0.2) == pytest.approx(0.7, abs=TOL)
    assert store.update_trust_score(down, -0.2) == pytest.approx(0.3, abs=TOL)
    assert store.update_trust_score(up, 10) == 1.0
    assert store.update_trust_score(up, -10) == 0.0
    assert get(store, up).trust_score == 0.0
    assert get(store, down).trust_score == pytest.approx(0.3, abs=TOL)
    assert store.update_trust_score("missing", 0.1) is None


def test_concurrent_trust_deltas_are_never_lost(pg_store: Store) -> None:
    pid = pattern(pg_store, "hot")
    pg_store.update_trust_score(pid, -0.4)
    barrier = threading.Barrier(8)

    def nudge(_: int) -> None:
        barrier.wait()
        for _ in range(10):
            pg_store.update_trust_score(pid, 0.005)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(nudge, range(8)))
    assert get(pg_store, pid).trust_score == pytest.approx(0.5, abs=1e-9)


# -- scenario 28: auto-apply -----------------------------------------------------------------------------


def validated(store: Store, name: str, trust: float, tags: list[str] | None = None) -> str:
    pid = store.record_pattern("validation_failure", name, context_tags=tags)
    store.validate_pattern(pid)
    store.update_trust_score(pid, trust - 0.5)
    return pid


def ids(records: list[PatternRecord]) -> list[str]:
    return [r.id for r in records]


def test_auto_apply_requires_threshold(store: Store) -> None:
    high = validated(store, "high", 0.9)
    validated(store, "mid", 0.7)
    validated(store, "low", 0.5)
    assert ids(store.get_patterns_for_auto_apply(trust_threshold=0.85)) == [high]


def test_auto_apply_validation_and_retirement(store: Store) -> None:
    pending = pattern(store, "pending", trust=0.95)
    retired = pattern(store, "retired", trust=0.95)
    store.retire_pattern(retired)
    assert store.get_patterns_for_auto_apply() == []
    assert ids(store.get_patterns_for_auto_apply(require_validated=False)) == [pending]


def test_auto_apply_orders_by_trust_and_limits(store: Store) -> None:
    a, b, c = validated(store, "a", 0.88), validated(store, "b", 0.95), validated(store, "c", 0.86)
    assert ids(store.get_patterns_for_auto_apply()) == [b, a, c]
    d, e = validated(store, "d", 0.99), validated(store, "e", 0.9)
    top = store.get_patterns_for_auto_apply(limit=3)
    assert ids(top) == [d, b, e]
    assert [r.trust_score for r in top] == pytest.approx([0.99, 0.95, 0.9], abs=TOL)


def test_auto_apply_tag_filter(store: Store) -> None:
    web = validated(store, "web", 0.9, ["web", "http"])
    validated(store, "cli", 0.95, ["cli"])
    validated(store, "untagged", 0.97)
    assert ids(store.get_patterns_for_auto_apply(context_tags=["web"])) == [web]


# -- scenarios 29–30: automatic promotion ----------------------------------------------------------------


def test_promotion(store: Store) -> None:
    young = pattern(store, "young", "SS")
    good = pattern(store, "good", "SSSSS")
    bad = pattern(store, "bad", "FFFFFS")
    middling = pattern(store, "middling", "SSSFF")
    assert get(store, bad).effectiveness_score == pytest.approx(0.2042857, abs=TOL)
    assert get(store, middling).effectiveness_score == pytest.approx(0.595, abs=TOL)
    before = get(store, middling).last_seen

    assert store.promote_ready_patterns() == {"promoted": [good], "quarantined": [bad], "degraded": []}
    statuses = {p: get(store, p).quarantine_status for p in (young, good, bad, middling)}
    assert statuses == {
        young: QuarantineStatus.PENDING,
        good: QuarantineStatus.VALIDATED,
        bad: QuarantineStatus.QUARANTINED,
        middling: QuarantineStatus.PENDING,
    }
    promoted_at = get(store, good).validated_at
    assert promoted_at is not None and promoted_at > before
    assert get(store, bad).quarantined_at == promoted_at
    assert get(store, bad).quarantine_reason is None
    assert get(store, young).validated_at is None and get(store, young).quarantined_at is None

    assert store.promote_ready_patterns() == {"promoted": [], "quarantined": [], "degraded": []}
    assert get(store, good).validated_at == promoted_at


def test_degradation(store: Store) -> None:
    pid = pattern(store, "fading", "SSSSS")
    assert store.promote_ready_patterns()["promoted"] == [pid]
    apply(store, pid, "F" * 15)
    assert get(store, pid).effectiveness_score == pytest.approx(0.0785714, abs=TOL)
    assert store.promote_ready_patterns() == {"promoted": [], "quarantined": [], "degraded": [pid]}
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.QUARANTINED
    assert record.quarantined_at is not None and record.validated_at is not None
    assert record.quarantined_at > record.validated_at


# -- scenario 31: manual transitions ---------------------------------------------------------------------


def test_manual_transitions(store: Store) -> None:
    pid = pattern(store, "p")
    other = pattern(store, "other")
    assert store.quarantine_pattern(pid, "suspicious")
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.QUARANTINED
    assert record.quarantine_reason == "suspicious"
    assert record.quarantined_at is not None and record.quarantined_at > record.first_seen
    assert ids(store.get_quarantined_patterns()) == [pid]

    assert store.validate_pattern(pid)
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.VALIDATED
    assert record.quarantine_reason is None
    assert record.validated_at is not None and record.quarantined_at is not None
    assert record.validated_at > record.quarantined_at
    assert store.get_quarantined_patterns() == []

    assert store.retire_pattern(pid)
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.RETIRED
    assert record.priority_score == 0.0
    assert get(store, other).quarantine_status is QuarantineStatus.PENDING

    assert store.quarantine_pattern("missing", "x") is False
    assert store.validate_pattern("missing") is False
    assert store.retire_pattern("missing") is False
    assert store.update_quarantine_status("missing", QuarantineStatus.VALIDATED) is False


def test_update_quarantine_status_stamps_but_keeps_reason(store: Store, clock: Clock) -> None:
    pid = pattern(store, "p")
    store.quarantine_pattern(pid, "why")
    first = get(store, pid).quarantined_at
    assert store.update_quarantine_status(pid, "quarantined")
    record = get(store, pid)
    assert record.quarantined_at is not None and first is not None and record.quarantined_at > first
    assert record.quarantine_reason == "why"
    assert store.update_quarantine_status(pid, QuarantineStatus.VALIDATED)
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.VALIDATED
    assert record.validated_at == clock.current
    assert record.quarantine_reason == "why"
    assert store.update_quarantine_status(pid, QuarantineStatus.PENDING)
    assert get(store, pid).validated_at == record.validated_at
    with pytest.raises(ValueError):
        store.update_quarantine_status(pid, "active")


# -- retirement: one notion (§0.4) -----------------------------------------------------------------------


def test_retire_then_validate_restores_priority(store: Store) -> None:
    pid = pattern(store, "p", "SSSSS")
    assert get(store, pid).priority_score == pytest.approx(0.585, abs=TOL)
    store.retire_pattern(pid)
    apply(store, pid, "S")
    assert get(store, pid).priority_score == 0.0
    assert store.validate_pattern(pid)
    record = get(store, pid)
    assert record.quarantine_status is QuarantineStatus.VALIDATED
    # The application made while retired counts: S ×6 → (0.7 + 0.3 × 6.5/7) × 0.6.
    assert record.priority_score == pytest.approx(0.5871429, abs=TOL)


def test_status_update_out_of_retirement_rescores(store: Store) -> None:
    pid = pattern(store, "p")
    store.update_quarantine_status(pid, QuarantineStatus.RETIRED)
    assert get(store, pid).priority_score == 0.0
    store.update_quarantine_status(pid, QuarantineStatus.PENDING)
    record = get(store, pid)
    assert record.effectiveness_score == pytest.approx(0.55, abs=TOL)
    assert record.priority_score == pytest.approx(0.33, abs=TOL)


def test_prune_retires_deprecated_patterns(store: Store) -> None:
    doomed = pattern(store, "doomed", "S" + "F" * 9)
    borderline = pattern(store, "borderline", "SSSFFFFFFF")
    young = pattern(store, "young", "FF")
    assert get(store, doomed).priority_score > 0
    assert store.prune_deprecated_patterns() == 1
    record = get(store, doomed)
    assert record.quarantine_status is QuarantineStatus.RETIRED
    assert record.priority_score == 0.0
    for pid in (borderline, young):
        assert get(store, pid).quarantine_status is QuarantineStatus.PENDING
        assert get(store, pid).priority_score > 0
    assert ids(store.get_retired_patterns()) == [doomed]
    assert store.prune_deprecated_patterns() == 0


def test_high_and_low_trust_listings(store: Store) -> None:
    a, b = pattern(store, "a", trust=0.8), pattern(store, "b", trust=0.75)
    c, d = pattern(store, "c", trust=0.2), pattern(store, "d", trust=0.25)
    assert set(ids(store.get_high_trust_patterns())) == {a, b}
    assert set(ids(store.get_low_trust_patterns())) == {c, d}
    assert ids(store.get_high_trust_patterns(threshold=0.78)) == [a]
    assert len(store.get_low_trust_patterns(limit=1)) == 1
