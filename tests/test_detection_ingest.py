"""Detection at ingest: exact, and the same however outcomes are batched or ordered."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from messages import T0, outcome
from sqlalchemy import select

from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.schema.tables import patterns
from ostinato.workers.detection.detector import detect_all
from ostinato.workers.ingest import apply_messages
from ostinato.workers.store import Store


def varied_outcome(n: int, job: str, rng: random.Random) -> SheetOutcomeMessage:
    failed = rng.random() < 0.4
    fields: dict[str, Any] = {
        "validation_pass_rate": 0.5 if failed else 1.0,
        "success_without_retry": not failed and rng.random() < 0.7,
        "retry_count": rng.choice([0, 0, 1, 2]),
        "completion_mode_used": rng.random() < 0.2,
        "validation_results": [
            {
                "validation_type": rng.choice(["file_exists", "regex"]),
                "passed": not failed,
                "failure_reason": "file not created during run" if failed else None,
                "failure_category": "missing_output" if failed else None,
                "suggested_fix": rng.choice(["write the file first", "check the path"]) if failed else None,
                "confidence": rng.choice([1.0, 0.5]),
            }
        ],
        "error_history": [{"error_code": rng.choice(["E101", "E102", "E301"])}] if failed else [],
        "stderr_tail": "Error: rate limit exceeded (429)\n" if rng.random() < 0.3 else "",
    }
    return outcome(n, job, **fields)


def corpus(seed: int = 7) -> list[SheetOutcomeMessage]:
    rng = random.Random(seed)
    return [varied_outcome(n, f"job-{n % 3}", rng) for n in range(60)]


def pattern_rows(store: Store) -> dict[str, tuple[int, str]]:
    with store.batch() as conn:
        rows = conn.execute(
            select(patterns.c.pattern_name, patterns.c.occurrence_count, patterns.c.pattern_type)
        )
        return {r.pattern_name: (r.occurrence_count, r.pattern_type) for r in rows}


def expected_occurrences(outcomes: list[SheetOutcomeMessage]) -> Counter[str]:
    """An independent computation: the batch detector over each job's whole history, summed over jobs."""
    by_job: dict[str, list[SheetOutcomeMessage]] = {}
    for message in outcomes:
        by_job.setdefault(message.job_hash, []).append(message)
    expected: Counter[str] = Counter()
    for messages in by_job.values():
        for pattern in detect_all([m.payload for m in messages], T0):
            expected[pattern.global_name] += pattern.frequency
    return expected


def test_one_batch_matches_the_batch_detector(store: Store) -> None:
    outcomes = corpus()
    apply_messages(store, outcomes)
    found = {name: count for name, (count, _) in pattern_rows(store).items()}
    assert found == dict(expected_occurrences(outcomes))
    assert len(found) >= 8


def test_batching_and_order_do_not_change_detection(store: Store) -> None:
    outcomes = corpus()
    shuffled = outcomes[:]
    random.Random(3).shuffle(shuffled)
    for start in range(0, len(shuffled), 7):
        apply_messages(store, shuffled[start : start + 7])
    found = {name: count for name, (count, _) in pattern_rows(store).items()}
    assert found == dict(expected_occurrences(outcomes))


def test_redelivered_outcomes_add_no_evidence(store: Store) -> None:
    outcomes = corpus()[:20]
    apply_messages(store, outcomes)
    before = pattern_rows(store)
    apply_messages(store, outcomes)
    assert pattern_rows(store) == before


def test_new_detected_patterns_are_discoveries(store: Store) -> None:
    first = [outcome(n, error_history=[{"error_code": "E777"}]) for n in range(2)]
    report = apply_messages(store, first)
    names = {d.pattern_name for d in report.discoveries}
    assert "validation_failure:error_code:E777" in names
    again = apply_messages(store, [outcome(5, error_history=[{"error_code": "E777"}])])
    assert "validation_failure:error_code:E777" not in {d.pattern_name for d in again.discoveries}
    rows = pattern_rows(store)
    assert rows["validation_failure:error_code:E777"] == (3, "validation_failure")
