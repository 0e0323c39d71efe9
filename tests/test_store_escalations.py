"""SPEC-store §5 scenario 53 (rates as fractions): escalation history and similarity."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from conftest import START
from sqlalchemy import update

from ostinato.schema.identity import hash_job
from ostinato.schema.tables import escalation_decisions
from ostinato.workers.store import Store

JOB_A = hash_job("job-A")
JOB_B = hash_job("job-B")


def decide(
    store: Store,
    confidence: float,
    rate: float,
    outcome: str | None,
    action: str = "retry",
    recorded_at: datetime | None = None,
) -> str:
    return store.record_escalation_decision(
        JOB_A, 1, confidence, action, rate, 2, outcome_after_action=outcome, recorded_at=recorded_at
    )


def test_similar_escalation_prefers_what_worked(store: Store) -> None:
    failed = decide(store, 0.50, 0.60, "failed")
    worked = decide(store, 0.55, 0.65, "success")
    decide(store, 0.90, 0.95, "success")
    similar = store.get_similar_escalation(0.52, 0.62)
    assert [d.id for d in similar] == [worked, failed]


def test_similar_escalation_ranks_outcomes_then_distance(store: Store) -> None:
    unknown = decide(store, 0.52, 0.62, None)
    skipped = decide(store, 0.60, 0.70, "skipped")
    far_success = decide(store, 0.64, 0.74, "success")
    near_success = decide(store, 0.53, 0.63, "success")
    aborted = decide(store, 0.52, 0.62, "aborted")
    similar = store.get_similar_escalation(0.52, 0.62)
    assert [d.id for d in similar] == [near_success, far_success, skipped, unknown, aborted]
    assert [d.id for d in store.get_similar_escalation(0.52, 0.62, limit=2)] == [near_success, far_success]
    narrow = store.get_similar_escalation(0.52, 0.62, confidence_tolerance=0.05, pass_rate_tolerance=0.05)
    assert [d.id for d in narrow] == [near_success, unknown, aborted]


def test_equal_candidates_are_newest_first(store: Store) -> None:
    older = decide(store, 0.5, 0.5, "success", recorded_at=START)
    newer = decide(store, 0.5, 0.5, "success", recorded_at=START + timedelta(seconds=1))
    assert [d.id for d in store.get_similar_escalation(0.5, 0.5)] == [newer, older]


def test_update_escalation_outcome(store: Store) -> None:
    decision = decide(store, 0.5, 0.5, None)
    assert store.update_escalation_outcome(decision, "success")
    [record] = store.get_escalation_history()
    assert record.outcome_after_action == "success"
    assert not store.update_escalation_outcome("no-such-id", "success")


def test_escalation_history(store: Store) -> None:
    first = decide(store, 0.5, 0.5, None, action="retry")
    second = decide(store, 0.6, 0.6, None, action="skip")
    other = store.record_escalation_decision(JOB_B, 3, 0.7, "retry", 0.7, 0, guidance="try again", model="m")
    assert [d.id for d in store.get_escalation_history()] == [other, second, first]
    assert [d.id for d in store.get_escalation_history(job_hash=JOB_A)] == [second, first]
    assert [d.id for d in store.get_escalation_history(action="retry")] == [other, first]
    assert [d.id for d in store.get_escalation_history(job_hash=JOB_B, action="skip")] == []
    assert [d.id for d in store.get_escalation_history(limit=1)] == [other]
    record = store.get_escalation_history(job_hash=JOB_B)[0]
    assert (record.sheet_num, record.guidance, record.model, record.retry_count) == (3, "try again", "m", 0)


def test_records_are_sanitised_on_read(store: Store) -> None:
    decision = decide(store, 0.5, 0.5, None, action="shrug")
    with store.batch() as connection:
        connection.execute(
            update(escalation_decisions).where(escalation_decisions.c.id == decision).values(confidence=1.7)
        )
    [record] = store.get_escalation_history()
    assert record.action == "abort"
    assert record.confidence == pytest.approx(1.0)


def test_similarity_bounds_are_those_of_the_distance(store: Store) -> None:
    """The index ranges only narrow the search: decisions exactly at (and just past) the tolerance are
    included (excluded) as the absolute distance decides, compared with the distance computed here."""
    confidence, rate, tolerance = 0.55, 0.4, 0.15
    candidates = [0.4, 0.7, 0.39999999, 0.70000001, 0.55 - 0.15, 0.55 + 0.15, 0.1, 0.9]
    for value in candidates:
        decide(store, value, rate, None)
        decide(store, confidence, value, None)
    found = store.get_similar_escalation(confidence, rate, tolerance, tolerance, limit=100)
    expected = sorted(
        [(c, rate) for c in candidates if abs(c - confidence) <= tolerance and abs(rate - rate) <= tolerance]
        + [
            (confidence, r)
            for r in candidates
            if abs(confidence - confidence) <= tolerance and abs(r - rate) <= tolerance
        ]
    )
    assert sorted((d.confidence, d.validation_pass_rate) for d in found) == expected
