"""The intake path without a worker: validation, dead letters, retried deliveries, poison isolation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from messages import outcome

from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.intake import Intake, raw_text
from ostinato.workers.store import Store
from ostinato.workers.store.patterns import PatternSighting


def as_json(message: SheetOutcomeMessage) -> dict[str, object]:
    return json.loads(message.model_dump_json())  # type: ignore[no-any-return]


def test_raw_text_keeps_binary_and_nul_storable() -> None:
    assert raw_text(b"\x80\x04binary") == "base64:gARiaW5hcnk="
    assert raw_text("a\x00b") == "a\\u0000b"
    assert raw_text({"k": 1}) == '{"k": 1}'


def test_nul_in_text_is_refused_with_a_reason(store: Store) -> None:
    raw = as_json(outcome(1))
    raw["payload"]["stdout_tail"] = "before\x00after"  # type: ignore[index]
    report = Intake(store, delivery_id="d-nul", task_name="t")([raw])
    assert report.dead_lettered == 1
    assert "stdout_tail" in store.list_dead_letters()[0]["reason"]


def test_a_retried_delivery_writes_its_dead_letters_once(store: Store) -> None:
    bad = as_json(outcome(1))
    bad["schema_version"] = 9
    good = as_json(outcome(2))
    for _ in range(3):
        Intake(store, delivery_id="delivery-1", task_name="t")([bad, good])
    assert len(store.list_dead_letters()) == 1
    assert store.get_execution_stats()["total_executions"] == 1


def test_a_message_the_store_refuses_is_isolated(store: Store) -> None:
    """The whole batch fails, so each message is applied alone and only the one at fault is dead-lettered."""
    poison = outcome(13, "job-poison")

    def refusing_detector(s: Store, outcomes: Sequence[SheetOutcomeMessage]) -> list[PatternSighting]:
        if any(o.message_id == poison.message_id for o in outcomes):
            raise ValueError("detector cannot handle sheet 13")
        return detect_sightings(s, outcomes)

    batch = [as_json(outcome(1)), as_json(poison), as_json(outcome(2))]
    report = Intake(store, delivery_id="d-poison", task_name="t", detector=refusing_detector)(batch)
    assert (report.applied, report.dead_lettered) == (2, 1)
    (letter,) = store.list_dead_letters()
    assert letter["message_id"] == str(poison.message_id)
    assert "detector cannot handle sheet 13" in letter["reason"]
    assert store.get_execution_stats()["total_executions"] == 2


@pytest.mark.parametrize("kind", ["sheet_outcome", "pattern_application"])
def test_kind_tasks_accept_only_their_kind(store: Store, kind: str) -> None:
    report = Intake(store, delivery_id=f"d-{kind}", task_name="t")(as_json(outcome(1)), kind)
    expected = (1, 0) if kind == "sheet_outcome" else (0, 1)
    assert (report.applied, report.dead_lettered) == expected


def test_times_with_an_offset_are_stored_and_read_as_the_same_instant_in_utc(store: Store) -> None:
    """A runner in UTC+9 reports 21:00 local: the store keeps 12:00 UTC and buckets the hour as UTC."""
    tokyo = timezone(timedelta(hours=9))
    pid = store.record_pattern("semantic_insight", "offset hint", "a runner's hint")
    started = datetime(2026, 6, 1, 21, 0, tzinfo=tokyo)
    message = outcome(
        1, started_at=started, completed_at=started + timedelta(seconds=30), patterns_applied=[pid]
    )
    raw = as_json(message)
    assert raw["payload"]["completed_at"] == "2026-06-01T21:00:30+09:00"  # type: ignore[index]
    Intake(store, delivery_id="d-offset", task_name="t")([raw])
    (execution,) = store.get_recent_executions(limit=1)
    assert execution.completed_at == datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
    assert execution.completed_at.utcoffset() == timedelta(0)
    factors = store.get_success_factors(pid)
    assert factors is not None and factors.time_of_day_bucket == "afternoon"


def test_final_status_is_kept_in_lower_case(store: Store) -> None:
    raw = as_json(outcome(1))
    raw["payload"]["final_status"] = "FAILED"  # type: ignore[index]
    Intake(store, delivery_id="d-status", task_name="t")([raw])
    (execution,) = store.get_recent_executions(limit=1)
    assert execution.status == "failed"


def test_a_delivery_given_up_is_dead_lettered_whole_and_once(store: Store) -> None:
    raw = [as_json(outcome(1)), as_json(outcome(2))]
    intake = Intake(store, delivery_id="d-given-up", task_name="ostinato.ingest.batch")
    for _ in range(2):  # a redelivery of the same delivery gives up again
        intake.give_up(raw, "gave up after 201 attempts that failed on the store: OperationalError()")
    letters = store.list_dead_letters()
    assert len(letters) == 1
    assert letters[0]["reason"].startswith("gave up after 201 attempts")
    assert letters[0]["task_name"] == "ostinato.ingest.batch"
    assert [e["message_id"] for e in json.loads(letters[0]["raw_body"])] == [e["message_id"] for e in raw]
