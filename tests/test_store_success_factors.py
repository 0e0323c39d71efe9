"""SPEC-store §5 scenarios 54–56: success factors ("why it works"), and their merge under concurrency."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Clock

from ostinato.schema.records import SuccessFactors
from ostinato.workers.store import Store
from ostinato.workers.store.success_factors import FactorObservation, observation, time_of_day_bucket


def test_first_update_creates_and_second_merges(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    first = store.update_success_factors(
        pid,
        validation_types=["file", "regex"],
        error_categories=["rate_limit"],
        prior_sheet_status="completed",
        grounding_confidence=0.9,
        at=datetime(2026, 6, 1, 9, 30, tzinfo=UTC),
    )
    assert first == SuccessFactors(
        validation_types=["file", "regex"],
        error_categories=["rate_limit"],
        prior_sheet_status="completed",
        time_of_day_bucket="morning",
        grounding_confidence=0.9,
        occurrence_count=1,
        success_rate=1.0,
    )
    second = store.update_success_factors(
        pid,
        validation_types=["regex"],
        prior_sheet_status="failed",
        retry_iteration=2,
        escalation_was_pending=True,
        grounding_confidence=0.8,
        at=datetime(2026, 6, 1, 18, 0, tzinfo=UTC),
    )
    expected = SuccessFactors(
        validation_types=["file", "regex"],
        error_categories=["rate_limit"],
        prior_sheet_status="failed",
        time_of_day_bucket="evening",
        retry_iteration=2,
        escalation_was_pending=True,
        grounding_confidence=0.8,
        occurrence_count=2,
        success_rate=1.0,
    )
    assert second == expected
    assert store.get_success_factors(pid) == expected
    record = store.get_pattern_by_id(pid)
    assert record is not None
    assert record.success_factors_updated_at == datetime(2026, 6, 1, 18, 0, tzinfo=UTC)


def test_missing_pattern_has_no_factors(store: Store) -> None:
    assert store.update_success_factors("missing", validation_types=["file"]) is None
    assert store.get_success_factors("missing") is None
    pid = store.record_pattern("validation_failure", "p")
    assert store.get_success_factors(pid) is None


def test_success_rate_comes_from_the_applications_before_the_update(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    store.update_success_factors(pid)
    for outcome in (True, False, False, True):
        store.record_pattern_application(pid, "sheet_1", outcome)
    factors = store.update_success_factors(pid)
    assert factors is not None
    assert factors.success_rate == 0.5
    assert factors.occurrence_count == 2


def test_late_observation_counts_but_keeps_newer_context(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    evening = datetime(2026, 6, 1, 19, 0, tzinfo=UTC)
    store.update_success_factors(pid, ["file"], prior_sheet_status="completed", at=evening)
    late = store.update_success_factors(
        pid, ["regex"], prior_sheet_status="failed", retry_iteration=3, at=evening - timedelta(hours=10)
    )
    assert late is not None
    assert late.occurrence_count == 2
    assert late.validation_types == ["file", "regex"]
    assert (late.prior_sheet_status, late.time_of_day_bucket, late.retry_iteration) == (
        "completed",
        "evening",
        0,
    )
    record = store.get_pattern_by_id(pid)
    assert record is not None
    assert record.success_factors_updated_at == evening


def test_bucket_defaults_to_the_store_clock(store: Store, clock: Clock) -> None:
    pid = store.record_pattern("validation_failure", "p")
    clock.advance(hours=10)  # 22:00 UTC
    factors = store.update_success_factors(pid)
    assert factors is not None
    assert factors.time_of_day_bucket == "night"


def test_why_after_five_successful_rounds(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    for _ in range(5):
        store.update_success_factors(
            pid,
            validation_types=["file", "regex"],
            grounding_confidence=0.9,
            at=datetime(2026, 6, 1, 13, 0, tzinfo=UTC),
        )
        store.record_pattern_application(pid, "sheet_1", True)
    analysis = store.analyze_pattern_why(pid)
    assert analysis == {
        "pattern_name": "p",
        "pattern_type": "validation_failure",
        "has_factors": True,
        "trust_score": 0.5,
        "effectiveness_score": pytest.approx(0.975, abs=1e-6),
        "factors_summary": "validation types: file, regex; typically succeeds in: afternoon",
        "key_conditions": [
            "High grounding confidence (0.90)",
            "Succeeds on first attempt",
            "Works with 2 validation types",
            "Succeeds without escalation",
        ],
        "confidence": 0.5,
        "recommendations": [
            "High confidence pattern - consider for auto-apply",
            "Best applied during afternoon",
        ],
        "observation_count": 5,
        "success_rate": 1.0,
    }


def test_why_of_a_struggling_pattern(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    store.update_success_factors(pid, error_categories=["timeout"], prior_sheet_status="failed")
    for outcome in (True, False, False):
        store.record_pattern_application(pid, "sheet_1", outcome)
    store.update_success_factors(
        pid, retry_iteration=2, escalation_was_pending=True, grounding_confidence=0.7
    )
    analysis = store.analyze_pattern_why(pid)
    assert analysis["factors_summary"] == (
        "error categories: timeout; typically succeeds in: afternoon; prior sheet was: failed"
    )
    assert analysis["key_conditions"] == ["Often succeeds after 2 retries"]
    assert analysis["confidence"] == pytest.approx(0.2 * (1 / 3), abs=1e-9)
    assert analysis["recommendations"] == [
        "Need more observations for reliable analysis",
        "Low success rate - review pattern relevance",
        "Best applied during afternoon",
    ]


def test_why_without_factors_and_for_missing_pattern(store: Store) -> None:
    pid = store.record_pattern("validation_failure", "p")
    analysis = store.analyze_pattern_why(pid)
    assert analysis["has_factors"] is False
    assert analysis["confidence"] == 0.0
    assert analysis["key_conditions"] == []
    assert analysis["factors_summary"] == "No success factors captured yet"
    assert analysis["recommendations"] == ["Apply this pattern more times to capture success factors"]
    assert store.analyze_pattern_why("nope") == {"error": "Pattern nope not found"}


def test_patterns_with_why_filters_observations_after_the_limit(store: Store) -> None:
    """Ordered by priority then trust; LIMIT first, then min_observations (upstream's order)."""
    ids = []
    for count in (1, 2, 3):
        pid = store.record_pattern("validation_failure", f"p{count}")
        for _ in range(count):
            store.update_success_factors(pid)
        store.update_trust_score(pid, (4 - count) / 10)
        ids.append(pid)
    store.record_pattern("validation_failure", "no factors")
    one, two, three = ids
    listed = store.get_patterns_with_why(min_observations=2)
    assert [(r.id, a["observation_count"]) for r, a in listed] == [(two, 2), (three, 3)]
    assert [r.id for r, _ in store.get_patterns_with_why()] == [one, two, three]
    assert [r.id for r, _ in store.get_patterns_with_why(min_observations=2, limit=2)] == [two]
    assert store.get_patterns_with_why(min_observations=3, limit=1) == []


@pytest.mark.parametrize(
    ("hours", "bucket"),
    [
        ((5, 9, 11), "morning"),
        ((12, 16), "afternoon"),
        ((17, 20), "evening"),
        ((21, 0, 4), "night"),
    ],
)
def test_time_of_day_buckets(hours: tuple[int, ...], bucket: str) -> None:
    assert {time_of_day_bucket(h) for h in hours} == {bucket}


def test_concurrent_updates_keep_every_observation(pg_store: Store) -> None:
    pid = pg_store.record_pattern("validation_failure", "hot")
    barrier = threading.Barrier(8)

    def observe(n: int) -> None:
        barrier.wait()
        for _ in range(5):
            pg_store.update_success_factors(pid, validation_types=[f"type-{n}"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(observe, range(8)))
    factors = pg_store.get_success_factors(pid)
    assert factors is not None
    assert factors.occurrence_count == 40
    assert factors.validation_types == [f"type-{n}" for n in range(8)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_folds_as_its_observations_would_one_at_a_time(store: Store, seed: int) -> None:
    """One batch of observations, some older than the stored factors, against the same ones in time order."""
    rng = random.Random(seed)
    middle = datetime(2026, 6, 1, 12, tzinfo=UTC)
    one_by_one = store.record_pattern("semantic_insight", f"one by one {seed}")
    batched = store.record_pattern("semantic_insight", f"batched {seed}")
    for pid in (one_by_one, batched):
        for led_to_success in (True, True, True, False):
            store.record_pattern_application(pid, "sheet_1", led_to_success)
        store.record_success_factors([observation(pid, middle, ["file"], prior_sheet_status="completed")])

    def observed(pid: str, at: datetime) -> FactorObservation:
        return observation(
            pid,
            at,
            validation_types=rng.sample(["file", "regex", "command"], rng.randint(0, 2)),
            error_categories=rng.sample(["timeout", "auth"], rng.randint(0, 1)),
            prior_sheet_status=rng.choice([None, "completed", "failed"]),
            retry_iteration=rng.randint(0, 3),
            escalation_was_pending=rng.random() < 0.5,
            grounding_confidence=rng.choice([None, 0.3, 0.9]),
        )

    times = sorted(middle + timedelta(minutes=rng.randint(-600, 600)) for _ in range(12))
    seen = [observed(batched, at) for at in times]
    for item in seen:
        store.record_success_factors([FactorObservation(one_by_one, item.observed, item.at)])
    store.record_success_factors(list(reversed(seen)))  # the store sorts a batch by time itself
    assert store.get_success_factors(batched) == store.get_success_factors(one_by_one)
    factors = store.get_success_factors(batched)
    assert factors is not None and factors.occurrence_count == 13
    assert factors.success_rate == pytest.approx(0.75)


def test_a_batch_keeps_the_newer_stored_context_against_its_older_observations(store: Store) -> None:
    middle = datetime(2026, 6, 1, 12, tzinfo=UTC)
    pid = store.record_pattern("semantic_insight", "older in a batch")
    store.record_success_factors([observation(pid, middle, ["file"], prior_sheet_status="completed")])
    hour = timedelta(hours=1)
    late = observation(pid, middle - hour, prior_sheet_status="failed", grounding_confidence=0.3)
    newer = observation(pid, middle + hour, ["regex"], retry_iteration=2)
    store.record_success_factors([newer, late])
    factors = store.get_success_factors(pid)
    assert factors is not None
    context = (factors.prior_sheet_status, factors.grounding_confidence, factors.retry_iteration)
    assert context == ("completed", None, 2)
    assert (factors.occurrence_count, factors.validation_types) == (3, ["file", "regex"])
