"""The batch API: every kind applied once, duplicates (also concurrent ones) change nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import uuid4

from messages import REPORTED, one_of_each, outcome
from sqlalchemy import select

from ostinato.schema.tables import metadata
from ostinato.workers.ingest import apply_messages
from ostinato.workers.store import Store


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    with store.batch() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def test_every_kind_is_applied(store: Store) -> None:
    report = apply_messages(store, one_of_each())
    assert (report.applied, report.duplicates, report.dead_lettered) == (7, 0, 0)
    assert [d.pattern_id for d in report.discoveries] == [REPORTED]
    pattern = store.get_pattern_by_id(REPORTED)
    assert pattern is not None
    assert (pattern.occurrence_count, pattern.led_to_success_count, pattern.led_to_failure_count) == (1, 1, 1)
    assert store.get_execution_stats()["total_executions"] == 1
    assert store.is_rate_limited("E101")[0]
    assert store.get_error_recovery_sample_count("E101") == 1
    assert len(store.get_escalation_history()) == 1
    assert [entry.cycle for entry in store.get_trajectory()] == [7]
    factors = store.get_success_factors(REPORTED)
    assert factors is not None and factors.validation_types == ["file_exists"]


def test_same_messages_twice_change_nothing(store: Store) -> None:
    messages = one_of_each()
    apply_messages(store, messages)
    before = snapshot(store)
    report = apply_messages(store, messages)
    assert (report.applied, report.duplicates, report.discoveries) == (0, 7, [])
    assert snapshot(store) == before


def test_duplicates_within_one_batch_apply_once(store: Store) -> None:
    message = outcome(3)
    report = apply_messages(store, [message, message, message])
    assert (report.applied, report.duplicates) == (1, 2)
    assert store.get_execution_stats()["total_executions"] == 1


def test_same_batch_applied_concurrently_applies_once(pg_store: Store) -> None:
    messages = one_of_each()
    barrier = threading.Barrier(8)

    def deliver(_: int) -> int:
        barrier.wait()
        return apply_messages(pg_store, messages).applied

    with ThreadPoolExecutor(8) as pool:
        applied = list(pool.map(deliver, range(8)))
    assert sorted(applied) == [0] * 7 + [7]
    pattern = pg_store.get_pattern_by_id(REPORTED)
    assert pattern is not None
    assert (pattern.occurrence_count, pattern.led_to_success_count, pattern.led_to_failure_count) == (1, 1, 1)
    assert len(pg_store.get_active_pattern_discoveries()) == 1


def test_reports_of_one_pattern_in_a_batch_combine(store: Store) -> None:
    original = next(m for m in one_of_each() if m.kind == "pattern_report")
    copies = [original.model_copy(update={"message_id": uuid4()}) for _ in range(3)]
    report = apply_messages(store, [original, *copies])
    assert report.applied == 4
    pattern = store.get_pattern_by_id(REPORTED)
    assert pattern is not None and pattern.occurrence_count == 4
    assert len(report.discoveries) == 1


def test_duplicate_cycle_is_dead_lettered_not_fatal(store: Store) -> None:
    first = next(m for m in one_of_each() if m.kind == "evolution_entry")
    again = first.model_copy(update={"message_id": uuid4()})
    report = apply_messages(store, [first, again, outcome(9)])
    assert (report.applied, report.dead_lettered) == (3, 1)
    letters = store.list_dead_letters()
    assert len(letters) == 1 and "cycle" in letters[0]["reason"]
    assert store.get_execution_stats()["total_executions"] == 1
