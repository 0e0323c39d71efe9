"""Producer → Redis → Celery worker → PostgreSQL, checked against an independent computation."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from messages import T0
from sqlalchemy import func, select

from ostinato.producers import Client
from ostinato.schema.identity import hash_job, pattern_id
from ostinato.schema.messages import SheetOutcome
from ostinato.schema.tables import executions, patterns
from ostinato.workers.detection.detector import detect_all
from ostinato.workers.store import Store, formulas

pytestmark = pytest.mark.usefixtures("ingest_worker")

JOBS = [f"pipeline-job-{n}" for n in range(10)]
REPORTED = [("semantic_insight", f"insight {n}") for n in range(3)]
REPORTED_IDS = [pattern_id(t, n) for t, n in REPORTED]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(0.2)


@dataclass(frozen=True)
class Sent:
    job: str
    outcome: dict[str, Any]


def make_outcome(rng: random.Random, index: int) -> dict[str, Any]:
    failed = rng.random() < 0.35
    swr = not failed and rng.random() < 0.75
    return {
        "execution_id": str(uuid4()),
        "sheet_id": f"sheet{index}",
        "started_at": T0 + timedelta(seconds=index),
        "completed_at": T0 + timedelta(seconds=index, milliseconds=500),
        "validation_pass_rate": 0.5 if failed else 1.0,
        "success_without_retry": swr,
        "retry_count": 0 if swr else rng.choice([1, 2]),
        "grounding_confidence": rng.choice([0.6, 0.9]),
        "validation_results": [
            {
                "validation_type": rng.choice(["file_exists", "regex", "command"]),
                "passed": not failed,
                "failure_reason": rng.choice(["timeout after 30s", "file not created"]) if failed else None,
            }
        ],
        "error_history": [{"error_code": rng.choice(["E101", "E205"])}] if failed else [],
        "patterns_applied": rng.sample(REPORTED_IDS, rng.randint(0, 2)),
        "stdout_tail": f"step {index} done at /home/runner/work/out.txt",
    }


def test_four_threads_of_outcomes_land_exactly(pg_store: Store) -> None:
    clients = {job: Client(job, f"/srv/{job}") for job in JOBS}
    for pattern_type, name in REPORTED:
        clients[JOBS[0]].report_pattern(pattern_type, name, "reported by a runner")
    assert clients[JOBS[0]].flush(30)
    wait_for(lambda: all(pg_store.get_pattern_by_id(pid) for pid in REPORTED_IDS))

    sent: list[Sent] = []
    lock = threading.Lock()

    def produce(thread: int) -> None:
        rng = random.Random(thread)
        for n in range(500):
            job = JOBS[(thread * 500 + n) % len(JOBS)]
            outcome = make_outcome(rng, thread * 500 + n)
            clients[job].record_outcome(outcome)
            with lock:
                sent.append(Sent(job, outcome))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(client.flush(60) for client in clients.values())
    wait_for(lambda: pg_store.get_execution_stats()["total_executions"] == 2000)
    for client in clients.values():
        client.close()
    assert_store_matches(pg_store, sent)


def assert_store_matches(store: Store, sent: list[Sent]) -> None:
    with store.batch() as conn:
        stored_ids = set(conn.execute(select(executions.c.id)).scalars())
        query = select(executions.c.job_hash, func.count()).group_by(executions.c.job_hash)
        per_job = {str(job): int(n) for job, n in conn.execute(query)}
        occurrences = dict(conn.execute(select(patterns.c.pattern_name, patterns.c.occurrence_count)).all())
    assert stored_ids == {s.outcome["execution_id"] for s in sent}
    assert per_job == {hash_job(job): 200 for job in JOBS}

    expected: Counter[str] = Counter({name: 1 for _, name in REPORTED})
    by_job: dict[str, list[SheetOutcome]] = defaultdict(list)
    for s in sent:
        by_job[s.job].append(SheetOutcome.model_validate(s.outcome))
    for outcomes in by_job.values():
        for pattern in detect_all(outcomes, T0):
            expected[pattern.global_name] += 1  # one per job that detects it
    assert occurrences == dict(expected)

    for pid in REPORTED_IDS:
        applied = sorted(
            (s.outcome for s in sent if pid in s.outcome["patterns_applied"]), key=lambda o: o["completed_at"]
        )
        wins = [o["validation_pass_rate"] == 1.0 and o["success_without_retry"] for o in applied]
        record = store.get_pattern_by_id(pid)
        assert record is not None
        assert (record.led_to_success_count, record.led_to_failure_count) == (
            sum(wins),
            len(wins) - sum(wins),
        )
        recent = applied[-formulas.RECENT_WINDOW :]
        expected_effectiveness = formulas.effectiveness(
            sum(wins),
            len(wins) - sum(wins),
            [o["validation_pass_rate"] == 1.0 and o["success_without_retry"] for o in reversed(recent)],
            [o["grounding_confidence"] for o in reversed(recent)],
            0,
        )
        assert record.effectiveness_score == pytest.approx(expected_effectiveness, abs=1e-12)
    assert not store.list_dead_letters()
