"""Detection at ingest: exact, and the same however outcomes are batched or ordered.

A pattern's occurrence count is the number of jobs that detect it (``workers/detection/jobs.py``); its text
is the latest-seen job's, its instrument the first job's, whatever the batching and apply order.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import uuid4

from conftest import wipe
from messages import REPORTED, T0, one_of_each, outcome
from sqlalchemy import select

from ostinato.schema.identity import pattern_id
from ostinato.schema.messages import PatternReportMessage, SheetOutcomeMessage
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
    """An independent computation: the batch detector over each job's whole history, 1 per job detecting."""
    by_job: dict[str, list[SheetOutcomeMessage]] = {}
    for message in outcomes:
        by_job.setdefault(message.job_hash, []).append(message)
    expected: Counter[str] = Counter()
    for messages in by_job.values():
        for pattern in detect_all([m.payload for m in messages], T0):
            expected[pattern.global_name] += 1
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
    assert rows["validation_failure:error_code:E777"] == (1, "validation_failure")  # one job
    pattern = store.get_pattern_by_id(pattern_id("validation_failure", "validation_failure:error_code:E777"))
    assert pattern is not None and pattern.description == "Error code 'E777' occurs frequently (3x)"


E777 = pattern_id("validation_failure", "validation_failure:error_code:E777")
FIRST_TRY = pattern_id("first_attempt_success", "first_attempt_success:success:first_attempt")


def errors(sheet: int, job: str, n: int = 1, **fields: Any) -> SheetOutcomeMessage:
    """An outcome with ``n`` E777 errors, seen ``sheet`` minutes after T0 (plus 30 s)."""
    return outcome(sheet, job, error_history=[{"error_code": "E777"}] * n, **fields)


def stored(store: Store, pid: str) -> tuple[int, str | None, str | None, str | None]:
    record = store.get_pattern_by_id(pid)
    assert record is not None
    return record.occurrence_count, record.description, record.suggested_action, record.instrument_name


def test_a_pattern_counts_the_jobs_that_detect_it_not_their_evidence(store: Store) -> None:
    """One job's evidence over three batches: the batch that crosses the minimum adds 1, the others 0."""
    apply_messages(store, [errors(1, "job-A")])  # 1 piece of evidence: not detected yet
    assert store.get_pattern_by_id(E777) is None
    apply_messages(store, [errors(2, "job-A", 2)])
    apply_messages(store, [errors(3, "job-A", 4)])
    assert stored(store, E777)[:2] == (1, "Error code 'E777' occurs frequently (7x)")
    apply_messages(store, [errors(4, "job-B", 2)])
    assert stored(store, E777)[0] == 2
    apply_messages(store, [errors(5, "job-C")])  # below the minimum in job C
    assert stored(store, E777)[0] == 2


def test_text_is_the_latest_seen_jobs_whatever_the_apply_order(store: Store) -> None:
    """Issue 11: two jobs applied in reverse used to leave the earlier job's "(2x)" instead of "(3x)"."""
    early, late = [errors(1, "job-A", 2)], [errors(9, "job-B", 3)]
    apply_messages(store, late)
    apply_messages(store, early)
    count, description, guidance, _ = stored(store, E777)
    assert (count, description) == (2, "Error code 'E777' occurs frequently (3x)")
    assert guidance == "⚠️ Common issue: Error code 'E777' occurs frequently (3x) (seen 3x)"


def test_instrument_is_the_first_jobs_whatever_the_batching(store: Store) -> None:
    """Upstream sets it when the first job creates the pattern; one batch used to take the last job's."""
    first = [errors(1, "job-A", 2, instrument_name="claude_cli")]
    second = [errors(9, "job-B", 2, instrument_name="anthropic_api")]
    results = []
    for batches in ([first + second], [first, second], [second, first], [second + first]):
        wipe(store.engine)
        for batch in batches:
            apply_messages(store, batch)
        results.append(stored(store, E777))
    assert results == [(2, "Error code 'E777' occurs frequently (2x)", results[0][2], "claude_cli")] * 4


def test_a_jobs_partial_batches_in_any_order_leave_its_complete_text(store: Store) -> None:
    """The later-seen outcome applied first must not keep the text of partial totals."""
    late_two, early_one = errors(9, "job-A", 2), errors(1, "job-A", 1)
    for order in ([late_two, early_one], [early_one, late_two]):
        wipe(store.engine)
        for message in order:
            apply_messages(store, [message])
        assert stored(store, E777)[:2] == (1, "Error code 'E777' occurs frequently (3x)")


def test_the_first_attempt_rate_follows_outcomes_that_bring_no_success(store: Store) -> None:
    successes = [outcome(n, "job-A") for n in range(3)]
    failures = [outcome(n, "job-A", success_without_retry=False) for n in range(3, 6)]
    for order in ([successes, failures], [failures, successes], [successes + failures]):
        wipe(store.engine)
        for batch in order:
            apply_messages(store, batch)
        assert stored(store, FIRST_TRY)[:3] == (
            1,
            "First-attempt success rate: 50%",
            "✓ Best practice: First-attempt success rate: 50%",
        )


def test_an_older_report_applied_late_does_not_overwrite_the_newer_text(store: Store) -> None:
    newer, older = (next(m for m in one_of_each() if m.kind == "pattern_report") for _ in range(2))
    assert isinstance(newer, PatternReportMessage) and isinstance(older, PatternReportMessage)
    older = older.model_copy(
        update={
            "message_id": uuid4(),
            "payload": older.payload.model_copy(
                update={
                    "description": "an older wording",
                    "instrument_name": "claude_cli",
                    "reported_at": older.payload.reported_at - timedelta(days=1),
                }
            ),
        }
    )
    apply_messages(store, [newer])
    apply_messages(store, [older])
    record = store.get_pattern_by_id(REPORTED)
    assert record is not None
    assert (record.occurrence_count, record.description) == (2, "module not installed")
    assert (record.instrument_name, record.first_seen) == ("claude_cli", older.payload.reported_at)
