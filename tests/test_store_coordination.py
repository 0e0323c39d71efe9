"""SPEC-store §5 scenarios 45–47: rate-limit coordination and pattern discovery broadcasts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import Clock

from ostinato.schema.identity import hash_job
from ostinato.workers.store import Store

JOB_1 = hash_job("job-1")
JOB_A = hash_job("job-A")
JOB_B = hash_job("job-B")


# -- rate limits ----------------------------------------------------------------------------------------


def test_rate_limit_is_honoured_for_eighty_percent_of_its_duration(store: Store) -> None:
    store.record_rate_limit_event("E101", 300.0, JOB_1)
    limited, seconds = store.is_rate_limited()
    assert limited
    assert seconds == pytest.approx(240.0, abs=0.1)
    assert store.is_rate_limited("E101")[0]
    assert store.is_rate_limited("E999") == (False, None)


def test_rate_limit_by_model(store: Store) -> None:
    store.record_rate_limit_event("E101", 300.0, JOB_1, model="gpt-4")
    assert store.is_rate_limited(model="gpt-4")[0]
    assert store.is_rate_limited(model="claude-3") == (False, None)
    assert store.is_rate_limited("E101", "gpt-4")[0]


def test_the_latest_expiry_wins(store: Store) -> None:
    store.record_rate_limit_event("E101", 100.0, JOB_1)
    store.record_rate_limit_event("E101", 500.0, JOB_1)
    store.record_rate_limit_event("E101", 200.0, JOB_1)
    assert store.is_rate_limited()[1] == pytest.approx(400.0, abs=0.1)


def test_short_limits_expire_and_are_cleaned_up(store: Store, clock: Clock) -> None:
    store.record_rate_limit_event("E101", 300.0, JOB_1)
    store.record_rate_limit_event("E102", 0.01, JOB_1)
    assert store.is_rate_limited("E102")[0]
    clock.advance(seconds=0.01)
    assert store.is_rate_limited("E102") == (False, None)
    assert store.cleanup_expired_rate_limits() == 1
    assert store.cleanup_expired_rate_limits() == 0
    assert [event.error_code for event in store.get_active_rate_limits()] == ["E101"]


def test_active_rate_limits(store: Store) -> None:
    store.record_rate_limit_event("E101", 120.0, JOB_1, model="gpt-4")
    store.record_rate_limit_event("E102", 300.0, JOB_1)
    active = store.get_active_rate_limits()
    assert [event.error_code for event in active] == ["E102", "E101"]
    assert [event.error_code for event in store.get_active_rate_limits(model="gpt-4")] == ["E101"]
    assert len(store.get_active_rate_limits(model="")) == 2
    event = active[1]
    assert event.duration_seconds == 120.0
    assert event.model == "gpt-4"
    assert event.source_job_hash == JOB_1
    assert event.expires_at - event.recorded_at == timedelta(seconds=96)


def test_the_callers_own_rate_limits_count(store: Store) -> None:
    store.record_rate_limit_event("E101", 60.0, JOB_1)
    assert store.is_rate_limited("E101")[0]


def test_an_old_event_is_judged_by_the_store_clock(store: Store, clock: Clock) -> None:
    store.record_rate_limit_event("E101", 60.0, JOB_1, recorded_at=clock.current - timedelta(minutes=5))
    assert store.is_rate_limited() == (False, None)
    assert store.get_active_rate_limits() == []


# -- pattern discoveries --------------------------------------------------------------------------------


def test_discoveries_from_other_jobs(store: Store) -> None:
    event = store.record_pattern_discovery("p1", "pattern one", "validation_failure", JOB_A)
    seen = store.check_recent_pattern_discoveries(exclude_job_hash=JOB_B)
    assert seen == [event]
    assert store.check_recent_pattern_discoveries(exclude_job_hash=JOB_A) == []
    assert store.check_recent_pattern_discoveries() == [event]


def test_discovery_filters(store: Store) -> None:
    store.record_pattern_discovery("p1", "weak", "validation_failure", JOB_A, effectiveness_score=0.3)
    store.record_pattern_discovery("p2", "strong", "retry_success", JOB_A, effectiveness_score=0.8)
    strong = store.check_recent_pattern_discoveries(min_effectiveness=0.5)
    assert [e.pattern_name for e in strong] == ["strong"]
    by_type = store.check_recent_pattern_discoveries(pattern_type="validation_failure")
    assert [e.pattern_name for e in by_type] == ["weak"]
    assert [e.pattern_name for e in store.check_recent_pattern_discoveries()] == ["strong", "weak"]
    assert [e.pattern_name for e in store.check_recent_pattern_discoveries(limit=1)] == ["strong"]
    assert [e.pattern_name for e in store.get_active_pattern_discoveries("retry_success")] == ["strong"]


def test_discovery_lifetime(store: Store, clock: Clock) -> None:
    default = store.record_pattern_discovery("p1", "lasting", "validation_failure", JOB_A)
    assert default.expires_at - default.recorded_at == timedelta(seconds=300)
    store.record_pattern_discovery("p2", "brief", "validation_failure", JOB_A, ttl_seconds=0.1)
    assert len(store.get_active_pattern_discoveries()) == 2
    clock.advance(seconds=0.2)
    assert [e.pattern_name for e in store.get_active_pattern_discoveries()] == ["lasting"]
    assert store.cleanup_expired_pattern_discoveries() == 1
    clock.advance(seconds=300)
    assert store.get_active_pattern_discoveries() == []
    assert store.cleanup_expired_pattern_discoveries() == 1


def test_discovery_tags_round_trip_in_order(store: Store) -> None:
    tags = ["zeta", "alpha", "mid"]
    event = store.record_pattern_discovery("p1", "tagged", "validation_failure", JOB_A, context_tags=tags)
    assert event.context_tags == tags
    [stored] = store.get_active_pattern_discoveries()
    assert stored.context_tags == tags
    assert stored == event
