"""SPEC-store §5 scenarios 1–24: identity, upsert, soft delete, filters, effectiveness and priority."""

from __future__ import annotations

from datetime import timedelta
from uuid import RFC_4122, UUID

import pytest
from conftest import START, Clock
from sqlalchemy import func, select, update

from ostinato.schema.identity import content_hash, hash_job, pattern_id
from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.schema.tables import pattern_applications, patterns
from ostinato.workers.store import Store, formulas
from ostinato.workers.store.base import new_id
from ostinato.workers.store.patterns import PatternSighting

TOL = 1e-6


def apply(store: Store, pid: str, outcomes: str, grounding: list[float | None] | None = None) -> None:
    """Apply a sequence like "SSF" to a pattern, one application at a time."""
    for index, letter in enumerate(outcomes):
        g = grounding[index] if grounding else None
        store.record_pattern_application(pid, "sheet_1", letter == "S", grounding_confidence=g)


def test_identity_hashes() -> None:
    assert pattern_id("validation_failure", "File  Not Created") == "5d4dc4465839e7be"
    assert pattern_id("validation_failure", "file not created") == "5d4dc4465839e7be"
    assert content_hash("validation_failure", "file not created", "File was not created") == (
        "cbb21a7e06210c9451a95431591dd82e"
    )
    assert content_hash("validation_failure", "file not created", None) == "f760f79df58794beb65b04546604c488"
    assert hash_job("job-A") == "b30bc5a723c87366"
    assert hash_job("job-A", "cfg123") == "c2c0d1aeb4a7c07c"


@pytest.mark.parametrize(
    ("outcomes", "effectiveness", "priority"),
    [("SS", 0.55, 0.33), ("SSSSS", 0.975, 0.585), ("FFFFF", 0.025, 0.015), ("SSSFF", 0.595, 0.357)],
)
def test_effectiveness_and_priority(
    store: Store, outcomes: str, effectiveness: float, priority: float
) -> None:
    pid = store.record_pattern("validation_failure", "p")
    apply(store, pid, outcomes)
    record = store.get_pattern_by_id(pid)
    assert record is not None
    assert record.effectiveness_score == pytest.approx(effectiveness, abs=TOL)
    assert record.priority_score == pytest.approx(priority, abs=TOL)


def get(store: Store, pid: str) -> PatternRecord:
    record = store.get_pattern_by_id(pid)
    assert record is not None
    return record


def ids(records: list[PatternRecord]) -> set[str]:
    return {r.id for r in records}


def set_priority(store: Store, pid: str, value: float) -> None:
    with store.batch() as conn:
        conn.execute(update(patterns).where(patterns.c.id == pid).values(priority_score=value))


# -- scenarios 3–11: defaults, upsert, soft delete, filters ---------------------------------------------


def test_new_pattern_defaults(store: Store, clock: Clock) -> None:
    pid = store.record_pattern(
        "validation_failure",
        "File Not Created",
        "File was not created",
        provenance_job_hash="b30bc5a723c87366",
        provenance_sheet_num=3,
    )
    record = get(store, pid)
    assert pid == "5d4dc4465839e7be"
    assert (record.occurrence_count, record.led_to_success_count, record.led_to_failure_count) == (1, 0, 0)
    assert (record.effectiveness_score, record.priority_score, record.trust_score) == (0.5, 0.5, 0.5)
    assert record.variance == 0.0
    assert record.quarantine_status is QuarantineStatus.PENDING
    assert record.active is True
    assert record.first_seen == record.last_seen == record.last_confirmed == record.trust_calculation_date
    assert START < record.first_seen <= clock.current
    assert (record.provenance_job_hash, record.provenance_sheet_num) == ("b30bc5a723c87366", 3)
    assert record.pattern_name == "File Not Created"
    assert record.content_hash == "cbb21a7e06210c9451a95431591dd82e"
    assert record.context_tags == []
    assert (record.instrument_name, record.quarantined_at, record.validated_at) == (None, None, None)


def test_rerecording_updates_in_place(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p", "first", ["a", "b"], instrument_name="ollama")
    assert store.record_pattern("validation_failure", "P ", "second", instrument_name="claude") == pid
    record = get(store, pid)
    assert record.occurrence_count == 2
    assert record.description == "second"
    assert record.content_hash == content_hash("validation_failure", "p", "second")
    assert record.instrument_name == "ollama"
    assert record.context_tags == ["a", "b"]  # §0.8: no tags keeps the stored tags
    store.record_pattern("validation_failure", "p")
    record = get(store, pid)
    assert (record.description, record.context_tags) == ("second", ["a", "b"])
    assert record.content_hash == content_hash("validation_failure", "p", "second")
    store.record_pattern("validation_failure", "p", context_tags=[])
    assert get(store, pid).context_tags == []
    assert get(store, pid).occurrence_count == 4


def test_different_names_are_different_patterns(store: Store) -> None:
    a = store.record_pattern("validation_failure", "alpha", "first")
    b = store.record_pattern("validation_failure", "beta", "second")
    assert a != b
    assert get(store, a).content_hash != get(store, b).content_hash


def test_soft_delete(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    assert store.soft_delete_pattern(pid) is True
    assert store.soft_delete_pattern(pid) is False
    assert store.soft_delete_pattern("missing") is False
    assert store.get_patterns() == []
    assert ids(store.get_patterns(include_inactive=True)) == {pid}
    store.record_pattern_application(pid, "sheet_1", True)
    assert get(store, pid).led_to_success_count == 1
    assert store.record_pattern("validation_failure", "p") == pid
    record = get(store, pid)
    assert (record.active, record.occurrence_count) == (True, 2)
    assert ids(store.get_patterns()) == {pid}


def test_instrument_scoping(store: Store) -> None:
    a = store.record_pattern("validation_failure", "a", instrument_name="A")
    b = store.record_pattern("validation_failure", "b", instrument_name="B")
    universal = store.record_pattern("validation_failure", "u")
    assert ids(store.get_patterns(instrument_name="A")) == {a, universal}
    assert ids(store.get_patterns(instrument_name="A", include_universal=False)) == {a}
    assert ids(store.get_patterns()) == {a, b, universal}


def test_tag_filter(store: Store) -> None:
    xy = store.record_pattern("validation_failure", "xy", context_tags=["x", "y"])
    z = store.record_pattern("retry_success", "z", context_tags=["z"])
    assert ids(store.get_patterns(context_tags=["y", "q"])) == {xy}
    assert store.get_patterns(context_tags=["q"]) == []
    assert ids(store.get_patterns(context_tags=[])) == {xy, z}
    assert ids(store.get_patterns(context_tags=None)) == {xy, z}
    assert store.get_patterns(pattern_type="validation_failure", context_tags=["z"]) == []
    assert ids(store.get_patterns(pattern_type="retry_success", context_tags=["z", "x"])) == {z}


def test_priority_threshold(store: Store) -> None:
    levels = {"p30": 0.3, "p29": 0.29, "p01": 0.01, "p005": 0.005, "p0": 0.0}
    pid = {name: store.record_pattern("validation_failure", name) for name in levels}
    for name, value in levels.items():
        set_priority(store, pid[name], value)
    assert ids(store.get_patterns(min_priority=0.3)) == {pid["p30"]}
    assert ids(store.get_patterns(min_priority=0.29)) == {pid["p30"], pid["p29"]}
    assert ids(store.get_patterns()) == {pid["p30"], pid["p29"], pid["p01"]}
    assert ids(store.get_patterns(min_priority=0)) == set(pid.values())
    assert [r.priority_score for r in store.get_patterns(min_priority=0)] == [0.3, 0.29, 0.01, 0.005, 0.0]


def test_quarantine_filters(store: Store) -> None:
    p1, p2, p3 = (store.record_pattern("validation_failure", n) for n in ("p1", "p2", "p3"))
    store.validate_pattern(p1)
    store.quarantine_pattern(p2)
    assert ids(store.get_patterns(quarantine_status="validated")) == {p1}
    assert ids(store.get_patterns(quarantine_status=QuarantineStatus.QUARANTINED)) == {p2}
    assert ids(store.get_patterns(exclude_quarantined=True)) == {p1, p3}
    assert ids(store.get_patterns()) == {p1, p2, p3}


def test_trust_filters(store: Store) -> None:
    high, mid, low = (store.record_pattern("validation_failure", n) for n in ("high", "mid", "low"))
    store.update_trust_score(high, 0.3)
    store.update_trust_score(mid, 0)
    store.update_trust_score(low, -0.3)
    assert ids(store.get_patterns(min_trust=0.7)) == {high}
    assert ids(store.get_patterns(max_trust=0.3)) == {low}
    assert ids(store.get_patterns(min_trust=0.4, max_trust=0.6)) == {mid}
    also_high = store.record_pattern("validation_failure", "also high")
    store.update_trust_score(also_high, 0.25)
    assert ids(store.get_high_trust_patterns()) == {high, also_high}
    also_low = store.record_pattern("validation_failure", "also low")
    store.update_trust_score(also_low, -0.25)
    assert ids(store.get_low_trust_patterns()) == {low, also_low}


# -- scenarios 16–24: effectiveness and priority ---------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "effectiveness"),
    [
        ("SSS", 0.9625),
        ("FFFFFS", 0.2042857),
        ("S" * 5 + "F" * 10, 0.103125),
        ("S" * 5 + "F" * 15, 0.0785714),
    ],
)
def test_effectiveness_sequences(store: Store, outcomes: str, effectiveness: float) -> None:
    pid = store.record_pattern("validation_failure", "p")
    apply(store, pid, outcomes)
    assert get(store, pid).effectiveness_score == pytest.approx(effectiveness, abs=TOL)


@pytest.mark.parametrize(
    ("outcomes", "grounding", "effectiveness"),
    [
        ("SSSSS", [0.95] * 5, 0.960375),
        ("SSSSS", [0.1] * 5, 0.71175),
        ("SSSSS", [0.9, 0.8, 0.7, 0.6, 0.5], 0.88725),
        ("SSSFFF", [0.9, 0.9, 0.9, 0.3, 0.3, 0.3], 0.3706600),
    ],
)
def test_grounding_weights_effectiveness(
    store: Store, outcomes: str, grounding: list[float | None], effectiveness: float
) -> None:
    pid = store.record_pattern("validation_failure", "p")
    apply(store, pid, outcomes, grounding)
    assert get(store, pid).effectiveness_score == pytest.approx(effectiveness, abs=TOL)


def test_effectiveness_formula_decay_grounding_and_alpha() -> None:
    recent = [True, True, True, True, False]  # 0.8
    # historical 0.8 needs fractional counts: (3.5 + 0.5) / (4 + 1)
    aged = formulas.effectiveness(3.5, 0.5, recent, [1.0], 90)  # type: ignore[arg-type]
    assert aged == pytest.approx(0.5832, abs=TOL)
    ungrounded = formulas.effectiveness(3.5, 0.5, recent, [0.0], 90)  # type: ignore[arg-type]
    assert ungrounded == pytest.approx(0.7 * 0.5832, abs=TOL)
    mixed = formulas.effectiveness(3.5, 0.5, [True, True, True, False, False], [], 0, alpha=0.5)  # type: ignore[arg-type]
    assert mixed == pytest.approx(0.7, abs=TOL)


def test_priority_formula() -> None:
    assert formulas.priority(1.0, 0) == pytest.approx(0.6, abs=TOL)
    assert formulas.priority(0.5, 1) == pytest.approx(0.3, abs=TOL)
    assert formulas.priority(0.8, 50, 0.9) == pytest.approx(0.0683028, abs=TOL)
    assert formulas.priority(0.975, 10) == pytest.approx(0.585, abs=TOL)
    assert formulas.priority(0.975, 20) == pytest.approx(0.6445819, abs=TOL)
    assert formulas.frequency_factor(99) == 1.0
    assert formulas.priority(0.42, 99) == pytest.approx(0.42, abs=1e-12)


def test_low_priority_is_hidden_at_threshold(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    set_priority(store, pid, formulas.priority(0.8, 50, 0.9))
    assert store.get_patterns(min_priority=0.3) == []
    assert ids(store.get_patterns(min_priority=0.06)) == {pid}


def test_frequency_floor_holds_at_ten_sightings(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    for _ in range(9):
        store.record_pattern("validation_failure", "p")
    apply(store, pid, "SSSSS")
    record = get(store, pid)
    assert record.occurrence_count == 10
    assert record.priority_score == pytest.approx(0.585, abs=TOL)


def test_manual_recompute(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    assert store.update_pattern_effectiveness(pid) == pytest.approx(0.55, abs=TOL)
    record = get(store, pid)
    assert record.effectiveness_score == pytest.approx(0.55, abs=TOL)
    assert record.priority_score == pytest.approx(0.33, abs=TOL)
    assert ids(store.get_patterns(min_priority=0.3)) == {pid}
    assert store.update_pattern_effectiveness("missing") is None


def test_application_to_unknown_pattern_writes_nothing(store: Store) -> None:
    returned = store.record_pattern_application("unknown", "sheet_1", True)
    assert len(returned) == 36
    with store.batch() as conn:
        assert conn.execute(select(func.count()).select_from(pattern_applications)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(patterns)).scalar() == 0


def test_recalculating_every_priority_works_past_sqlites_compound_select_limit(store: Store) -> None:
    """Rescoring reads each pattern's recent applications in statements of bounded size: SQLite refuses a
    compound SELECT of more than 500 parts, and the beat recalculates every pattern at once."""
    with store.batch():
        pids = [store.record_pattern("validation_failure", f"p{n}") for n in range(520)]
        store.record_pattern_application(pids[-1], "sheet_1", True)
    assert store.recalculate_all_pattern_priorities() == 520
    for pid in (pids[0], pids[-1]):
        stored = get(store, pid).effectiveness_score
        assert stored == pytest.approx(0.55, abs=TOL)
        assert store.update_pattern_effectiveness(pid) == pytest.approx(stored, abs=1e-12)


@pytest.mark.parametrize(
    "change",
    [
        {"description": "new words", "suggested_action": "do this", "context_tags": ["a", "b"], "count": 3},
        {"description": None, "suggested_action": None, "context_tags": None, "count": 1},
        {"description": "older", "context_tags": [], "seen_at": START - timedelta(days=2)},
    ],
)
def test_add_sightings_does_what_upsert_does_for_an_existing_pattern(
    store: Store, change: dict[str, object]
) -> None:
    """One statement for a batch of known patterns, with the effect of one upsert each."""
    first = {"description": "old words", "suggested_action": "old", "context_tags": ["x"], "seen_at": START}
    upserted = store.record_pattern("semantic_failure", "by upsert", **first)  # type: ignore[arg-type]
    batched = store.record_pattern("semantic_failure", "in a batch", **first)  # type: ignore[arg-type]
    sighting = {"seen_at": START + timedelta(hours=1), **change}

    def by_upsert() -> None:
        store.upsert_pattern(PatternSighting("semantic_failure", "by upsert", **sighting))  # type: ignore[arg-type]

    def in_a_batch() -> None:
        store.lock_patterns([batched])
        store.add_sightings([PatternSighting("semantic_failure", "in a batch", **sighting)])  # type: ignore[arg-type]

    store.run(by_upsert)
    store.run(in_a_batch)
    one, many = store.get_pattern_by_id(upserted), store.get_pattern_by_id(batched)
    assert one is not None and many is not None
    differ = {"id", "pattern_name", "content_hash"}
    assert one.model_dump(exclude=differ) == many.model_dump(exclude=differ)
    assert one.occurrence_count == 1 + int(change.get("count", 1))  # type: ignore[call-overload]
    # The text is the latest-seen sighting's (SPEC-store §0.1): an older sighting's description loses.
    newer = change.get("description") is not None and "seen_at" not in change
    described = str(change["description"]) if newer else "old words"
    assert (many.description, one.description) == (described, described)
    assert many.content_hash == content_hash("semantic_failure", "in a batch", described)


def test_new_ids_are_canonical_random_uuids() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:1000]:
        parsed = UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, RFC_4122)
    assert {text[19] for text in ids} == set("89ab")
