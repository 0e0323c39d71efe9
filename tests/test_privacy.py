"""Planted secrets of every kind, published through the real client: none reaches Redis or PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis
from conftest import KEY_PREFIX
from redis_server import queue_key, queued_messages
from sqlalchemy import select
from test_scrub import BLOB, SHORT_BLOB, assert_clean, make_outcome, make_scrubber

from ostinato.producers import Client
from ostinato.schema.messages import Message, SheetOutcomeMessage
from ostinato.schema.tables import metadata
from ostinato.settings import Settings
from ostinato.workers.intake import Intake
from ostinato.workers.store import Store


def test_planted_secrets_never_reach_redis_or_postgres(
    pg_store: Store, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = f"{KEY_PREFIX}privacy-{uuid.uuid4().hex[:8]}:"  # removed with the run's keys
    settings = Settings(key_prefix=prefix, spool_dir=tmp_path)
    client = Client(
        "alice's secret job", "/home/alice/projects/acme", settings=settings, scrubber=make_scrubber()
    )
    try:
        client.record_outcome(make_outcome().model_dump())
        client.report_pattern("semantic_insight", "retry when throttled", BLOB, context_tags=[SHORT_BLOB])
        client.record_escalation(3, 0.5, "retry", 0.5, 1, guidance=BLOB)
        client.record_error_recovery("E101", 30, 45, True, model="claude-sonnet")
        assert client.flush(10)
    finally:
        client.close()

    messages = queued_messages(redis_client, prefix)
    envelopes = [json.loads(e) if isinstance(e, str) else e for m in messages for e in m.args[0]]
    on_the_wire = json.dumps(envelopes)
    assert messages
    assert_clean(on_the_wire)

    report = Intake(pg_store, delivery_id="privacy", task_name="test")(envelopes)
    assert (report.applied, report.dead_lettered) == (4, 0)
    with pg_store.batch() as conn:
        stored = json.dumps(
            {
                table.name: [list(row) for row in conn.execute(select(table))]
                for table in metadata.sorted_tables
            },
            default=str,
        )
    assert_clean(stored)
    redis_client.delete(queue_key(prefix))


def test_before_send_can_rewrite_or_drop_a_message_and_a_failing_hook_never_reaches_the_runner(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The hook sees the scrubbed message: what it returns is sent, None drops it, an exception drops it."""
    prefix = f"{KEY_PREFIX}hook-{uuid.uuid4().hex[:8]}:"  # removed with the run's keys
    seen: list[str] = []

    def hook(message: Message) -> Message | None:
        assert isinstance(message, SheetOutcomeMessage)
        seen.append(message.payload.stdout_tail)
        if message.payload.sheet_id == "drop-me":
            return None
        if message.payload.sheet_id == "boom":
            raise RuntimeError("a bug in the runner's hook")
        tail = message.payload.stdout_tail.replace("ACME-1234", "<ticket>")
        return message.model_copy(
            update={"payload": message.payload.model_copy(update={"stdout_tail": tail})}
        )

    client = Client(
        "hooked job",
        "/srv/hooked",
        settings=Settings(key_prefix=prefix, spool_dir=tmp_path),
        before_send=hook,
    )
    started = "2026-06-01T00:00:00Z"
    try:
        kept = client.record_outcome(
            {
                "sheet_id": "keep",
                "started_at": started,
                "stdout_tail": "ticket ACME-1234 at /home/alice/x/y.py",
            }
        )
        client.record_outcome({"sheet_id": "drop-me", "started_at": started})
        client.record_outcome({"sheet_id": "boom", "started_at": started})
        assert client.flush(10)
        stats = client.stats()
    finally:
        client.close()

    assert seen[0] == "ticket ACME-1234 at <path>/y.py"  # the hook runs after scrubbing
    assert (stats["dropped_by_hook"], stats["failed_preparation"], stats["published"]) == (1, 1, 1)
    envelopes = [
        json.loads(e) if isinstance(e, str) else e
        for m in queued_messages(redis_client, prefix)
        for e in m.args[0]
    ]
    assert [e["message_id"] for e in envelopes] == [str(kept)]
    assert envelopes[0]["payload"]["stdout_tail"] == "ticket <ticket> at <path>/y.py"
    redis_client.delete(queue_key(prefix))


def test_undecodable_output_is_kept_with_its_bad_bytes_replaced(tmp_path: Path) -> None:
    """A tail decoded with surrogateescape (lone surrogates) still makes a valid, scrubbed envelope."""
    sent: list[str] = []

    class Capture:
        def submit(self, envelope: str, *, urgent: bool = False) -> None:
            sent.append(envelope)

    client = Client("raw bytes", "/srv/raw", sender=Capture())  # type: ignore[arg-type]
    client.record_outcome(
        {
            "sheet_id": "s1",
            "started_at": "2026-06-01T00:00:00Z",
            "stdout_tail": "bad \udcff byte in /a/b/c.py",
        }
    )
    assert client.failed_preparation == 0
    assert json.loads(sent[0])["payload"]["stdout_tail"] == "bad ? byte in <path>/c.py"
