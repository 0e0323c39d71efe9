"""Exactness under concurrent writers (SPEC.md §5): real processes and threads against PostgreSQL."""

from __future__ import annotations

import multiprocessing
import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, insert, select

from ostinato.schema.identity import content_hash, pattern_id
from ostinato.schema.tables import pattern_applications, patterns
from ostinato.workers.store import ApplicationInput, Store, formulas, utcnow

PATTERNS = [("validation_failure", f"hot pattern {n}") for n in range(3)]
SUCCESS_ODDS = [0.9, 0.5, 0.1]


def apply_from_process(url: str, seed: int, count: int) -> list[tuple[str, bool]]:
    """One writer process: single applications and batches of ten, mixed; returns what it applied."""
    store = Store.from_url(url)
    rng = random.Random(seed)
    applied: list[tuple[str, bool]] = []
    pending: list[ApplicationInput] = []
    for n in range(count):
        index = rng.randrange(3)
        pid = pattern_id(*PATTERNS[index])
        success = rng.random() < SUCCESS_ODDS[index]
        applied.append((pid, success))
        if n % 2:
            store.record_pattern_application(pid, f"exec-{seed}-{n}", success, grounding_confidence=0.8)
        else:
            pending.append(
                ApplicationInput(pid, success, utcnow(), f"exec-{seed}-{n}", grounding_confidence=0.8)
            )
        if len(pending) == 10:
            store.record_pattern_applications(pending)
            pending = []
    store.record_pattern_applications(pending)
    store.engine.dispose()
    return applied


def expected_effectiveness(store: Store, pid: str) -> float:
    """The formula applied to the final stored counts and the final latest-five window."""
    record = store.get_pattern_by_id(pid)
    assert record is not None
    with store.batch():
        recent = store.recent_applications(pid, formulas.RECENT_WINDOW)
    as_of = max([record.last_confirmed, *(r.applied_at for r in recent)])
    return formulas.effectiveness(
        record.led_to_success_count,
        record.led_to_failure_count,
        [r.pattern_led_to_success for r in recent],
        [r.grounding_confidence for r in recent],
        formulas.whole_days(as_of, record.last_confirmed),
    )


def test_eight_processes_apply_4000_applications_exactly(pg_store: Store, database_url: str) -> None:
    ids = [pg_store.record_pattern(t, n) for t, n in PATTERNS]
    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        results = pool.starmap(apply_from_process, [(database_url, seed, 500) for seed in range(8)])
    applied = [item for result in results for item in result]
    assert len(applied) == 4000
    successes = Counter(pid for pid, ok in applied if ok)
    failures = Counter(pid for pid, ok in applied if not ok)
    for pid in ids:
        record = pg_store.get_pattern_by_id(pid)
        assert record is not None
        assert record.led_to_success_count == successes[pid]
        assert record.led_to_failure_count == failures[pid]
        assert record.effectiveness_score == pytest.approx(expected_effectiveness(pg_store, pid), abs=1e-12)
        assert record.priority_score == pytest.approx(
            formulas.priority(record.effectiveness_score, record.occurrence_count), abs=1e-12
        )
    with pg_store.batch() as conn:
        rows = conn.execute(select(func.count()).select_from(pattern_applications)).scalar()
    assert rows == 4000


def run_together(count: int, call: Callable[[int], str]) -> list[str]:
    """Start ``count`` threads at the same instant and collect what each returned."""
    barrier = threading.Barrier(count)

    def start(n: int) -> str:
        barrier.wait()
        return call(n)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


SPELLINGS = ["File Not Created", "file  not created", " FILE not CREATED ", "file\tnot\ncreated"]


def test_sixteen_concurrent_creators_make_one_pattern(pg_store: Store) -> None:
    returned = run_together(
        16, lambda n: pg_store.record_pattern("validation_failure", SPELLINGS[n % 4], "File was not created")
    )
    assert set(returned) == {"5d4dc4465839e7be"}
    with pg_store.batch() as conn:
        rows = conn.execute(select(patterns.c.id, patterns.c.occurrence_count)).all()
    assert [(r.id, r.occurrence_count) for r in rows] == [("5d4dc4465839e7be", 16)]


def test_content_hash_twin_receives_concurrent_merges(pg_store: Store) -> None:
    """An imported row whose id was derived differently is found by its content hash, under concurrency."""
    now = pg_store.now()
    digest = content_hash("validation_failure", "file not created", "File was not created")
    with pg_store.batch() as conn:
        conn.execute(
            insert(patterns).values(
                id="legacy-row-0001",
                pattern_type="validation_failure",
                pattern_name="file not created",
                description="File was not created",
                first_seen=now,
                last_seen=now,
                last_confirmed=now,
                content_hash=digest,
            )
        )
    returned = run_together(
        16, lambda n: pg_store.record_pattern("validation_failure", SPELLINGS[n % 4], "File was not created")
    )
    assert set(returned) == {"legacy-row-0001"}
    with pg_store.batch() as conn:
        rows = conn.execute(select(patterns.c.id, patterns.c.occurrence_count)).all()
    assert [(r.id, r.occurrence_count) for r in rows] == [("legacy-row-0001", 17)]
