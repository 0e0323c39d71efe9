"""No loss without a loud, documented reason: the spool's bound, compression and splitting, the full-spool
policies, backpressure from the ingest queue, and durable mode, against real Redis servers and processes.

Redis is taken away either as a closed port (it never comes back) or as a private ``redis-server`` that is
stopped and started again; the shared server is only used under each test's own key prefix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery_process import wait_for
from messages import envelope
from redis_server import RedisServer, queue_key, queued_messages
from runner_outcomes import runner_outcome
from structlog.testing import capture_logs

from ostinato.producers import SpoolFull
from ostinato.producers.client import Client
from ostinato.producers.sender import Sender
from ostinato.producers.spool import Spool
from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.settings import Settings, SpoolFullPolicy

RUN_PREFIX = os.environ["OSTINATO_KEY_PREFIX"]
CLOSED_URL = "redis://127.0.0.1:1/0"
CALL_BOUND = 0.5
"""Seconds a call may take that waits for nothing: it may write a batch to disk (a full queue spills on the
caller's thread), which a loaded two-core machine can stretch to a tenth of a second or more."""
TESTS = Path(__file__).parent


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone, under the run's; its keys on the shared Redis go afterwards."""
    value = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    yield value
    for key in redis_client.scan_iter(match=f"{value}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def wire(rng: random.Random, sheet: int) -> str:
    """A realistic outcome's envelope as the client sends it (JSON text)."""
    message = SheetOutcomeMessage(**envelope("job-real"), payload=runner_outcome(rng, sheet))
    return message.model_dump_json(exclude_none=True)


def plain(seq: int, note: str = "") -> dict[str, Any]:
    """A small envelope whose ``seq`` orders it in a test (these tests read the queue, not the store)."""
    return {"message_id": str(uuid.uuid4()), "kind": "rate_limit", "payload": {"note": note}, "seq": seq}


def policy_client(
    url: str,
    prefix: str,
    spool_dir: Path,
    policy: SpoolFullPolicy,
    *,
    max_bytes: int,
    block_seconds: float = 30.0,
    queue_size: int = 40,
    batch_size: int = 20,
    **settings: Any,
) -> Client:
    """A client whose sender has a small queue and batches, so the spool's bound is met within seconds."""
    configured = Settings(
        broker_url=url,
        key_prefix=prefix,
        spool_dir=spool_dir,
        spool_max_bytes=max_bytes,
        spool_full_policy=policy,
        spool_block_seconds=block_seconds,
        **settings,
    )
    sender = Sender(
        configured, batch_size=batch_size, queue_size=queue_size, publish_timeout=0.3, retry_interval=0.1
    )
    return Client("job-policy", "/srv/work/policy", settings=configured, sender=sender)


def arrived(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every envelope in the prefix's ingest queue, in publish order, as JSON objects."""
    return [
        json.loads(item) if isinstance(item, str) else item
        for message in queued_messages(client, prefix)
        for item in message.args[0]
    ]


def arrived_ids(client: redis.Redis, prefix: str) -> list[str]:
    return [item["message_id"] for item in arrived(client, prefix)]


def record_until_refused(client: Client, rng: random.Random, limit: int = 5_000) -> tuple[list[str], float]:
    """Record outcomes until one raises ``SpoolFull``: the accepted ids, and how long the refusal took."""
    ids: list[str] = []
    for sheet in range(limit):
        started = time.perf_counter()
        try:
            ids.append(str(client.record_outcome(runner_outcome(rng, sheet))))
        except SpoolFull:
            return ids, time.perf_counter() - started
    raise AssertionError(f"{limit} outcomes were accepted: the spool never filled")


# --- the spool: compressed, and a batch split to fit -----------------------------------------------------


def test_the_spool_keeps_outcomes_compressed(tmp_path: Path) -> None:
    rng = random.Random(1)
    batch: list[dict[str, Any] | str] = [wire(rng, sheet) for sheet in range(1_000)]
    as_json = len(json.dumps(batch, separators=(",", ":")))
    spool = Spool(tmp_path, max_bytes=1 << 30)
    for start in range(0, 1_000, 100):
        assert spool.append(batch[start : start + 100]) == 100
    assert spool.bytes_used == sum(file.stat().st_size for file in spool.path.glob("*.zst"))
    ratio = as_json / spool.bytes_used
    print(
        f"\n1,000 outcomes with 2-4 KiB tails: {as_json / 1_000:,.0f} B each as JSON,"
        f" {spool.bytes_used / 1_000:,.0f} B spooled ({ratio:.1f}x)"
    )
    assert ratio > 6
    read: list[dict[str, Any] | str] = []
    while (head := spool.peek()) is not None:
        read += head[1]
        spool.remove(head[0])
    assert read == batch
    spool.close()


def test_a_batch_larger_than_the_room_left_is_split_not_dropped(tmp_path: Path) -> None:
    rng = random.Random(2)
    batch: list[dict[str, Any] | str] = [wire(rng, sheet) for sheet in range(300)]
    probe = Spool(tmp_path / "probe", max_bytes=1 << 30)
    probe.append(batch)
    bound = probe.bytes_used // 3
    probe.close()

    spool = Spool(tmp_path / "spool", max_bytes=bound)
    first = spool.append(batch)
    assert 60 < first < 120, "about a third of the batch fits an empty spool a third of its size"
    assert 0.9 * bound < spool.bytes_used <= bound
    assert spool.append(batch[first:]) == 0

    read: list[dict[str, Any] | str] = []
    stored = first
    while (head := spool.peek()) is not None:
        read += head[1]
        spool.remove(head[0])
        if stored < len(batch):
            taken = spool.append(batch[stored:])
            assert taken > 0
            stored += taken
    assert read == batch
    spool.close()


def test_redis_down_a_batch_bigger_than_the_spool_is_kept_in_part_and_the_rest_waits(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """The measured problem: 300,000 bytes of spool, Redis down, one batch of 1,000 outcomes. The batch
    used to be dropped whole; now what fits is spooled and the rest waits in memory, and all arrive."""
    prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    private_redis.stop()
    settings = Settings(
        broker_url=private_redis.url, key_prefix=prefix, spool_dir=tmp_path, spool_max_bytes=300_000
    )
    sender = Sender(settings, publish_timeout=0.3, retry_interval=0.1)
    client = Client("job-split", "/srv/work/split", settings=settings, sender=sender)
    rng = random.Random(3)
    outcomes = [runner_outcome(rng, sheet) for sheet in range(1_000)]
    try:
        ids = {str(client.record_outcome(outcome)) for outcome in outcomes}
        wait_for(lambda: client.stats()["spooled"] > 400, 10, "the spool to fill")
        time.sleep(0.3)
        stats = client.stats()
        assert 400 < stats["spooled"] < 1_000, "about 300 KB of the 490 KB the outcomes take compressed"
        assert stats["in_memory"] == 1_000 - stats["spooled"]
        assert stats["dropped"] == stats["refused"] == 0
        assert stats["spool_bytes"] <= 300_000

        private_redis.start()
        assert client.flush(30)
        stats = client.stats()
    finally:
        client.close()
    with private_redis.client() as broker:
        assert sorted(arrived_ids(broker, prefix)) == sorted(ids)
    assert stats["published"] == 1_000 and stats["dropped"] == stats["refused"] == 0


def test_a_spool_of_the_uncompressed_format_still_drains_first(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    slot = tmp_path / "slot-0"
    slot.mkdir()
    for seq in range(3):
        (slot / f"{seq + 1:020d}.json").write_text(json.dumps([plain(seq)]))
    settings = Settings(broker_url=private_redis.url, key_prefix=prefix, spool_dir=tmp_path)
    with Sender(settings, publish_timeout=0.3, retry_interval=0.1) as sender:
        sender.submit(plain(3))
        assert sender.flush(10)
        assert sender.stats()["resent"] == 3
    assert not list(slot.glob("*.json"))
    with private_redis.client() as broker:
        assert [item["seq"] for item in arrived(broker, prefix)] == [0, 1, 2, 3]


def test_an_envelope_larger_than_the_whole_spool_is_refused_loudly(tmp_path: Path) -> None:
    """A 1,000-byte spool holds small messages but never an outcome with its tails: that one is refused,
    counted and logged, not held forever, and the client's flush says so."""
    client = policy_client(CLOSED_URL, "unused:", tmp_path, "block", max_bytes=1_000)
    with capture_logs() as logs:
        client.record_error_recovery("E101", 30.0, 45.0, True)
        client.record_outcome(runner_outcome(random.Random(4), 1))
        client.record_error_recovery("E102", 30.0, 45.0, True)
        wait_for(lambda: client.stats()["in_memory"] == 0, 10, "every envelope to leave memory")
        stats = client.stats()
        flushed = client.flush(0.2)
        client.close(timeout=0.1)
    assert (stats["spooled"], stats["refused"], stats["dropped"]) == (2, 1, 0)
    assert not flushed
    assert any(
        entry["event"] == "envelopes_refused"
        and entry["reason"] == "larger_than_spool"
        and entry["log_level"] == "error"
        for entry in logs
    )


def test_a_journal_cut_by_a_crash_and_a_half_compacted_segment_are_read_whole(tmp_path: Path) -> None:
    slot = tmp_path / "slot-0"
    slot.mkdir()
    lines = [json.dumps(plain(seq)) for seq in range(3)]
    (slot / f"{1:020d}.jsonl").write_text("\n".join(lines) + "\n" + lines[0][:25])
    (slot / f"{2:020d}.jsonl").write_text(json.dumps(plain(9)) + "\n")
    probe = Spool(tmp_path / "probe", max_bytes=1 << 20)
    probe.append([json.dumps(plain(3))])
    (probe.path / f"{1:020d}.zst").rename(slot / f"{2:020d}.zst")  # compacted, its journal not yet deleted
    probe.close()

    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.path == slot and len(spool) == 2
    read = []
    while (head := spool.peek()) is not None:
        read += [json.loads(item)["seq"] for item in head[1] if isinstance(item, str)]
        spool.remove(head[0])
    spool.close()
    assert read == [0, 1, 2, 3]
    assert not list(slot.glob("0*"))


# --- the policies when the spool is full -----------------------------------------------------------------


def test_block_loses_nothing_the_caller_waits_until_redis_is_back(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    private_redis.stop()
    client = policy_client(private_redis.url, prefix, tmp_path, "block", max_bytes=30_000)
    rng = random.Random(5)
    ids: list[str] = []
    durations: list[float] = []

    def record() -> None:
        for sheet in range(400):
            started = time.perf_counter()
            ids.append(str(client.record_outcome(runner_outcome(rng, sheet))))
            durations.append(time.perf_counter() - started)

    def stalled() -> bool:
        before = len(ids)
        time.sleep(0.5)
        return len(ids) == before

    caller = threading.Thread(target=record)
    try:
        caller.start()
        wait_for(stalled, 20, "the caller to wait for room")
        stalled_at = len(ids)
        assert 0 < stalled_at < 400
        stats = client.stats()
        assert stats["spool_bytes"] <= 30_000 and stats["dropped"] == stats["refused"] == 0

        private_redis.start()
        caller.join(30)
        assert not caller.is_alive()
        assert client.flush(30)
        stats = client.stats()
    finally:
        caller.join(30)
        client.close()
    assert len(ids) == 400 and max(durations) > 0.5
    assert stats["dropped"] == stats["refused"] == 0
    with private_redis.client() as broker:
        received = arrived_ids(broker, prefix)
    assert sorted(received) == sorted(ids)
    print(f"\nblock: the caller waited {max(durations):.1f} s at {stalled_at} of 400 outcomes; all arrived")


def test_block_raises_spool_full_after_the_timeout_when_redis_never_returns(tmp_path: Path) -> None:
    client = policy_client(CLOSED_URL, "unused:", tmp_path, "block", max_bytes=20_000, block_seconds=1.0)
    try:
        accepted, waited = record_until_refused(client, random.Random(6))
        stats = client.stats()
        flushed = client.flush(0.2)
    finally:
        client.close(timeout=0.1)
    assert 1.0 <= waited < 1.5
    assert (stats["refused"], stats["dropped"]) == (1, 0)
    assert stats["spooled"] + stats["in_memory"] == len(accepted), "everything accepted is kept"
    assert stats["spool_bytes"] <= 20_000
    assert not flushed


def test_raise_refuses_at_once_and_delivers_everything_it_accepted(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    private_redis.stop()
    client = policy_client(private_redis.url, prefix, tmp_path, "raise", max_bytes=20_000)
    try:
        accepted, took = record_until_refused(client, random.Random(7))
        stats = client.stats()
        assert took < CALL_BOUND
        assert (stats["refused"], stats["dropped"]) == (1, 0)
        assert stats["spooled"] + stats["in_memory"] == len(accepted)
        with pytest.raises(SpoolFull):
            client.record_outcome(runner_outcome(random.Random(8), 9_999))
        assert client.stats()["refused"] == 2

        private_redis.start()
        assert not client.flush(30), "everything accepted arrives, but two were refused"
        stats = client.stats()
    finally:
        client.close()
    assert stats["in_memory"] == stats["spool_batches"] == 0
    with private_redis.client() as broker:
        assert sorted(arrived_ids(broker, prefix)) == sorted(accepted)


def test_drop_oldest_never_blocks_and_counts_exactly_what_it_dropped(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:"
    private_redis.stop()
    client = policy_client(private_redis.url, prefix, tmp_path, "drop_oldest", max_bytes=20_000)
    rng = random.Random(9)
    ids: list[str] = []
    durations: list[float] = []
    with capture_logs() as logs:
        try:
            for sheet in range(400):
                started = time.perf_counter()
                ids.append(str(client.record_outcome(runner_outcome(rng, sheet))))
                durations.append(time.perf_counter() - started)
            wait_for(lambda: client.stats()["in_memory"] == 0, 10, "everything to reach the spool")
            private_redis.start()
            flushed = client.flush(30)
            stats = client.stats()
        finally:
            client.close()
    with private_redis.client() as broker:
        received = arrived_ids(broker, prefix)
    assert not flushed
    assert max(durations) < CALL_BOUND
    assert stats["dropped"] > 0 and stats["refused"] == 0
    assert len(received) == len(set(received)) == 400 - stats["dropped"]
    assert set(received) <= set(ids) and ids[-1] in received, "the newest are kept"
    dropped_logged = sum(
        e["count"] for e in logs if e["event"] == "envelopes_dropped" and e["log_level"] == "error"
    )
    assert dropped_logged == stats["dropped"]


def test_flush_counts_the_losses_since_its_own_client_started(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """Jobs of one process share a sender: a drop before a job's client started does not fail its flush."""
    settings = Settings(
        broker_url=private_redis.url,
        key_prefix=f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}:",
        spool_dir=tmp_path,
        spool_max_bytes=20_000,
        spool_full_policy="drop_oldest",
    )
    private_redis.stop()
    first = Client("job-first", "/srv/work/first", settings=settings)
    rng = random.Random(14)
    try:
        for sheet in range(200):
            first.record_outcome(runner_outcome(rng, sheet))
        wait_for(lambda: first.stats()["dropped"] > 0 and first.stats()["in_memory"] == 0, 10, "drops")
        private_redis.start()
        assert not first.flush(10)
        with Client("job-second", "/srv/work/second", settings=settings) as second:
            second.record_outcome(runner_outcome(rng, 200))
            assert second.flush(10)
            assert second.stats()["dropped"] == first.stats()["dropped"] > 0
    finally:
        first.close()


# --- backpressure from the ingest queue -------------------------------------------------------------------


def test_above_the_queue_bound_batches_stay_in_the_spool_until_it_drains(
    tmp_path: Path, prefix: str, redis_client: redis.Redis
) -> None:
    queue = queue_key(prefix)
    redis_client.rpush(queue, *[f"waiting-{n}" for n in range(12)])
    settings = Settings(
        broker_url=os.environ["OSTINATO_BROKER_URL"],
        key_prefix=prefix,
        spool_dir=tmp_path,
        ingest_queue_bound=10,
    )
    sender = Sender(settings, batch_size=10, publish_timeout=0.5, retry_interval=0.1)
    client = Client("job-busy", "/srv/work/busy", settings=settings, sender=sender)
    rng = random.Random(10)
    outcomes = [runner_outcome(rng, sheet) for sheet in range(30)]
    try:
        ids = [str(client.record_outcome(outcome)) for outcome in outcomes]
        wait_for(lambda: client.stats()["spooled"] == 30, 10, "the outcomes to be held back in the spool")
        stats = client.stats()
        assert stats["backpressure"] == 1 and stats["held_back"] == 3
        assert stats["published"] == stats["task_messages"] == 0
        assert redis_client.llen(queue) == 12
        assert not client.flush(0.5)

        redis_client.ltrim(queue, 0, 1)  # workers took ten: two wait, below the bound
        assert client.flush(10)
        stats = client.stats()
    finally:
        client.close()
    assert stats["backpressure"] == 0 and stats["resent"] == 30
    assert redis_client.lrange(queue, -2, -1) == [b"waiting-0", b"waiting-1"]
    redis_client.ltrim(queue, 0, -3)
    assert arrived_ids(redis_client, prefix) == ids, "resent oldest first"


# --- durable mode ----------------------------------------------------------------------------------------

DURABLE_CALLS = 300
DURABLE_CHILD = """
import os, random, signal, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from runner_outcomes import runner_outcome
from ostinato.producers.client import Client
from ostinato.settings import Settings

settings = Settings(broker_url={url!r}, spool_dir=Path({spool!r}))  # durable from OSTINATO_DURABLE
assert settings.durable
client = Client("job-durable", "/srv/work/durable", settings=settings)
rng = random.Random(11)
given = os.open({ids!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # the ids the runner was given
for sheet in range({calls}):
    message_id = client.record_outcome(runner_outcome(rng, sheet))
    os.write(given, f"{{message_id}}\\n".encode())
    if sheet % 100 == 99 and sheet < {calls} - 1:
        time.sleep(0.7)  # the sender seals the journal, fails to publish, compacts
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_durable_mode_publishes_from_the_spool_and_leaves_it_empty(
    tmp_path: Path, prefix: str, redis_client: redis.Redis
) -> None:
    settings = Settings(broker_url=os.environ["OSTINATO_BROKER_URL"], key_prefix=prefix, spool_dir=tmp_path)
    rng = random.Random(12)
    with Client("job-durable", "/srv/work/durable", settings=settings, durable=True) as client:
        assert client.settings.durable
        ids = [str(client.record_outcome(runner_outcome(rng, sheet))) for sheet in range(200)]
        assert client.flush(10)
        stats = client.stats()
    assert (stats["journaled"], stats["published"], stats["resent"], stats["spooled"]) == (200, 200, 0, 0)
    assert not [file.name for file in tmp_path.glob("slot-*/*") if not file.name.startswith(".")]
    assert arrived_ids(redis_client, prefix) == ids


def test_a_sigkilled_durable_producer_loses_nothing(
    tmp_path: Path, prefix: str, redis_client: redis.Redis
) -> None:
    """A runner with Redis unreachable is SIGKILLed right after its last call returns; the next process on
    the same spool directory sends every message it was given an id for."""
    spool_dir = tmp_path / "spool"
    given = tmp_path / "ids"
    code = DURABLE_CHILD.format(
        tests=str(TESTS), url=CLOSED_URL, spool=str(spool_dir), calls=DURABLE_CALLS, ids=str(given)
    )
    env = {**os.environ, "OSTINATO_DURABLE": "true"}
    child = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=120, check=False
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    ids = given.read_text().split()
    assert len(ids) == DURABLE_CALLS
    left = sorted(file.suffix for file in spool_dir.glob("slot-0/0*"))
    assert ".jsonl" in left and set(left) <= {".jsonl", ".zst"}

    settings = Settings(broker_url=os.environ["OSTINATO_BROKER_URL"], key_prefix=prefix, spool_dir=spool_dir)
    with Sender(settings) as sender:
        assert sender.flush(10)
        stats = sender.stats()
    assert stats["resent"] == stats["published"] == DURABLE_CALLS
    received = arrived_ids(redis_client, prefix)
    assert sorted(received) == sorted(ids)
    print(
        f"\ndurable: SIGKILL after {DURABLE_CALLS} calls left {left.count('.jsonl')} journal segments and"
        f" {left.count('.zst')} compressed batches; the next process sent all {len(received)}"
    )


def test_durable_raise_refuses_at_the_bound_and_keeps_everything_it_accepted(tmp_path: Path) -> None:
    client = policy_client(CLOSED_URL, "unused:", tmp_path, "raise", max_bytes=40_000, durable=True)
    try:
        accepted, took = record_until_refused(client, random.Random(13))
        stats = client.stats()
    finally:
        client.close(timeout=0.1)
    assert took < CALL_BOUND
    assert (stats["journaled"], stats["refused"], stats["dropped"]) == (len(accepted), 1, 0)
    kept = Spool(tmp_path, max_bytes=40_000)
    ids: list[str] = []
    while (head := kept.peek()) is not None:
        ids += [json.loads(item)["message_id"] for item in head[1] if isinstance(item, str)]
        kept.remove(head[0])
    kept.close()
    assert ids == accepted
