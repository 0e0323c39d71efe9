"""Detection agrees with upstream on the same outcomes (issue 11, part 4).

The fixture's jobs go through ostinato's ingest as workers apply them, batched per job, all in one batch, in
reverse job order and in small shuffled batches; every time the store holds exactly the patterns upstream's
detector and aggregator stored from the same jobs (``tests/data/upstream_detection/README.md``): ids,
occurrence counts (one per job that detects a pattern), descriptions, guidance, tags and instruments. The only
difference is SPEC-store §0.11: each fix suggestion is its own pattern, compared on its own terms below.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import wipe
from sqlalchemy import select

from ostinato.schema.identity import (
    hash16,
    hash_job,
    hash_workspace,
    normalize_pattern_name,
    pattern_id,
    sheet_num_from_id,
)
from ostinato.schema.messages import SheetOutcomeMessage, ValidationResult
from ostinato.schema.tables import patterns
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.ingest import apply_messages
from ostinato.workers.store import Store

FIXTURES = Path(
    os.environ.get("OSTINATO_DETECTION_FIXTURES", Path(__file__).parent / "data" / "upstream_detection")
)
COMPARED = (
    "pattern_type",
    "pattern_name",
    "occurrence_count",
    "description",
    "context_tags",
    "instrument_name",
    "suggested_action",
)
FIX_NAME = "semantic_failure:fix_suggestion"
FIX_DESCRIPTION = re.compile(r"^Suggested fix: '(.*)' \(recommended \d+x\)$", re.DOTALL)
RESULT_FIELDS = set(ValidationResult.model_fields) | {"rule_type"}

Job = dict[str, Any]
Batching = Callable[[list[list[SheetOutcomeMessage]]], Iterator[list[SheetOutcomeMessage]]]


def load_jobs() -> list[Job]:
    plain = FIXTURES / "jobs.json"
    if plain.exists():
        return list(json.loads(plain.read_text()))
    return list(json.loads(gzip.decompress((FIXTURES / "jobs.json.gz").read_bytes())))


def load_upstream() -> list[dict[str, Any]]:
    return list(json.loads((FIXTURES / "upstream-detected.json").read_text()))


JOBS = load_jobs()
UPSTREAM = load_upstream()


def rate_scale(job: Job) -> float:
    """100 when the job's pass rates are percentages (upstream's runner), 1 when they are fractions already.

    The shared README says percentages; the ``aggregate_with_all_sources`` jobs of the fixture carry
    fractions (README beside the data). No percentage rate lies in (0, 1]: that takes over 100 validations.
    """
    return 100.0 if any(o["validation_pass_rate"] > 1 for o in job["outcomes"]) else 1.0


def envelope(job: Job, outcome: dict[str, Any]) -> SheetOutcomeMessage:
    """An upstream outcome as the job's runner would publish it to ostinato, at the job's clock.

    ``patterns_applied`` is left out: upstream lists guidance strings there, ostinato pattern ids, and the
    aggregator that made the fixture records no applications (SPEC-store §2.14 step 6).
    """
    clock = datetime.fromisoformat(job["clock"])
    payload = {
        "sheet_id": outcome["sheet_id"],
        "sheet_num": sheet_num_from_id(outcome["sheet_id"]),
        "model": job["model"],
        "instrument_name": job["instrument"],
        "started_at": datetime.fromisoformat(outcome["timestamp"]) if outcome.get("timestamp") else clock,
        "completed_at": clock,
        "execution_duration": outcome["execution_duration"],
        "retry_count": outcome["retry_count"],
        "completion_mode_used": outcome["completion_mode_used"],
        "final_status": outcome["final_status"],
        "validation_results": [
            {k: v for k, v in r.items() if k in RESULT_FIELDS and v is not None}
            for r in outcome["validation_results"]
        ],
        "validation_pass_rate": outcome["validation_pass_rate"] / rate_scale(job),
        "success_without_retry": outcome["success_without_retry"],
        "failure_category_counts": outcome["failure_category_counts"],
        "semantic_patterns": outcome["semantic_patterns"],
        "fix_suggestions": outcome["fix_suggestions"],
        "stdout_tail": outcome["stdout_tail"] or "",
        "stderr_tail": outcome["stderr_tail"] or "",
        "error_history": [
            {
                "error_code": e.get("error_code") or "",
                "category": (e.get("context") or {}).get("category"),
                "message": e.get("error_message"),
            }
            for e in outcome["error_history"]
        ],
        "grounding_passed": outcome.get("grounding_passed"),
        "grounding_confidence": outcome.get("grounding_confidence"),
        "grounding_guidance": outcome.get("grounding_guidance"),
    }
    return SheetOutcomeMessage(
        workspace_hash=hash_workspace(job["workspace"]),
        job_hash=hash_job(job["job_id"]),
        sent_at=clock,
        payload=payload,
    )


JOB_MESSAGES = [[envelope(job, o) for o in job["outcomes"]] for job in JOBS]


def per_job(jobs: list[list[SheetOutcomeMessage]]) -> Iterator[list[SheetOutcomeMessage]]:
    yield from jobs


def one_batch(jobs: list[list[SheetOutcomeMessage]]) -> Iterator[list[SheetOutcomeMessage]]:
    yield [m for messages in jobs for m in messages]


def reverse_jobs(jobs: list[list[SheetOutcomeMessage]]) -> Iterator[list[SheetOutcomeMessage]]:
    yield from reversed(jobs)


def shuffled_small_batches(jobs: list[list[SheetOutcomeMessage]]) -> Iterator[list[SheetOutcomeMessage]]:
    """Jobs split over many batches of a few outcomes each, mixed with other jobs, in a random order."""
    messages = [m for job in jobs for m in job]
    random.Random(11).shuffle(messages)
    for start in range(0, len(messages), 9):
        yield messages[start : start + 9]


BATCHINGS: dict[str, Batching] = {
    "per_job": per_job,
    "one_batch": one_batch,
    "reverse_jobs": reverse_jobs,
    "shuffled_small_batches": shuffled_small_batches,
}


def ingest(store: Store, batching: Batching) -> None:
    for batch in batching(JOB_MESSAGES):
        apply_messages(store, batch, detector=detect_sightings)


def stored_patterns(store: Store) -> dict[str, dict[str, Any]]:
    with store.batch() as conn:
        rows = conn.execute(select(patterns).order_by(patterns.c.id))
        return {row.id: dict(row._mapping) for row in rows}


def compared(pattern: dict[str, Any]) -> dict[str, Any]:
    return {name: pattern[name] for name in COMPARED}


def test_the_fixture_is_read_as_upstream_read_it() -> None:
    assert [len(job) for job in JOB_MESSAGES] == [len(job["outcomes"]) for job in JOBS]
    assert len({hash_job(job["job_id"]) for job in JOBS}) == len(JOBS)  # every job its own aggregation
    clocks = [job["clock"] for job in JOBS]
    assert clocks == sorted(clocks)  # upstream aggregated them in this order
    scales = {job["job_id"]: rate_scale(job) for job in JOBS}
    if FIXTURES.name == "upstream_detection":  # what the README beside the data says of this fixture
        assert {j["job_id"] for j in JOBS if j["method"] == "aggregate_outcomes"} == {
            job for job, scale in scales.items() if scale == 100.0
        }


@pytest.mark.parametrize("batching", BATCHINGS)
def test_ingest_stores_what_upstream_stored(store: Store, batching: str) -> None:
    ingest(store, BATCHINGS[batching])
    assert_upstream(stored_patterns(store))


def test_concurrent_workers_store_what_upstream_stored(pg_store: Store) -> None:
    """Four workers apply the small shuffled batches at once, as a worker pool does."""
    batches = list(shuffled_small_batches(JOB_MESSAGES))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda batch: apply_messages(pg_store, batch, detector=detect_sightings), batches))
    concurrent = stored_patterns(pg_store)
    assert_upstream(concurrent)
    wipe(pg_store.engine)
    ingest(pg_store, per_job)
    assert concurrent == stored_patterns(pg_store)


def assert_upstream(found: dict[str, dict[str, Any]]) -> None:
    """``found`` (stored pattern rows by id) holds exactly what upstream stored, fix suggestions aside."""
    upstream = {p["id"]: compared(p) for p in UPSTREAM if p["pattern_name"] != FIX_NAME}
    ours = {pid: compared(p) for pid, p in found.items() if not p["pattern_name"].startswith(f"{FIX_NAME}:")}
    assert ours == upstream

    # SPEC-store §0.11: upstream collapses every fix suggestion onto one pattern, which each aggregation's
    # detections add to and the last one describes; ostinato keeps one pattern per (normalised) suggestion.
    fixes = [p for p in found.values() if p["pattern_name"].startswith(f"{FIX_NAME}:")]
    upstream_fixes = [p for p in UPSTREAM if p["pattern_name"] == FIX_NAME]
    if not upstream_fixes:
        assert fixes == []
        return
    (upstream_fix,) = upstream_fixes
    assert sum(p["occurrence_count"] for p in fixes) == upstream_fix["occurrence_count"]
    for p in fixes:
        matched = FIX_DESCRIPTION.match(p["description"])
        assert matched, p["description"]
        tag = f"fix_suggestion:{hash16(normalize_pattern_name(matched.group(1)))}"
        assert (p["pattern_name"], p["context_tags"]) == (f"semantic_failure:{tag}", [tag])
        assert p["id"] == pattern_id("semantic_failure", p["pattern_name"])
        assert p["suggested_action"] == f"🔍 Semantic insight: {p['description']} (seen {matched_count(p)}x)"
    latest = max(p["last_seen"] for p in fixes)
    described = {(p["description"], p["suggested_action"]) for p in fixes if p["last_seen"] == latest}
    assert (upstream_fix["description"], upstream_fix["suggested_action"]) in described
    earliest = min(fixes, key=lambda p: p["first_seen"])
    assert earliest["instrument_name"] == upstream_fix["instrument_name"]


def matched_count(pattern: dict[str, Any]) -> int:
    found = re.search(r"\(recommended (\d+)x\)$", pattern["description"])
    assert found
    return int(found.group(1))


def test_the_whole_stored_state_is_the_same_whatever_the_batching_and_order(store: Store) -> None:
    """Every column, not only the compared ones: times, provenance and stamps too (SPEC-store §0.1)."""
    states = []
    for batching in BATCHINGS.values():
        wipe(store.engine)
        ingest(store, batching)
        states.append(stored_patterns(store))
    first = states[0]
    for other in states[1:]:
        assert other.keys() == first.keys()
        differing = sorted(
            (pid, name, str(value), str(other[pid][name]))
            for pid, row in first.items()
            for name, value in row.items()
            if other[pid][name] != value
        )
        assert differing == []
