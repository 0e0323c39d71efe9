"""SPEC-store §5 scenarios 1–25: identity, upsert, soft delete, filters, effectiveness and priority."""

from __future__ import annotations

import pytest

from ostinato.schema.identity import content_hash, hash_job, pattern_id
from ostinato.workers.store import Store

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
