"""Planted secrets of every kind, published through the real client: none reaches Redis or PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import redis
from redis_server import queue_key, queued_messages
from sqlalchemy import select
from test_scrub import BLOB, SHORT_BLOB, assert_clean, make_outcome, make_scrubber

from ostinato.producers import Client
from ostinato.schema.tables import metadata
from ostinato.settings import Settings
from ostinato.workers.intake import Intake
from ostinato.workers.store import Store


def test_planted_secrets_never_reach_redis_or_postgres(
    pg_store: Store, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = f"ostinato-privacy-{uuid.uuid4().hex[:8]}:"
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
