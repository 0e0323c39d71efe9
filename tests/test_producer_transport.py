"""The producer's transport against real Redis: batching, fail-fast publishing, the spool, resend in order."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import compression
from redis_server import RedisServer, TaskMessage, queue_key, queued_messages
from structlog.testing import capture_logs

from ostinato.broker import BATCH_COMPRESSION, BATCH_COMPRESSION_LEVEL, BATCH_TASK
from ostinato.producers.sender import Sender, producer_app
from ostinato.producers.spool import Spool
from ostinato.settings import Settings

SHARED_URL = os.environ.get("OSTINATO_BROKER_URL", "redis://127.0.0.1:6379/0")
SUBMIT_BOUND = 0.05

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

compress: Callable[[bytes, str], tuple[bytes, str]] = compression.compress


def envelope(seq: int, source: str = "t", pad: int = 0) -> dict[str, Any]:
    """A JSON-ready envelope as ``model_dump(mode="json")`` gives it; ``seq`` orders them in a test."""
    return {
        "message_id": str(uuid.uuid4()),
        "kind": "rate_limit",
        "schema_version": 1,
        "sent_at": "2026-06-01T12:00:00Z",
        "workspace_hash": "0123456789abcdef",
        "job_hash": "fedcba9876543210",
        "payload": {"model": "m", "error_code": "E101", "retry_after_seconds": 3, "note": "x" * pad},
        "seq": seq,
        "source": source,
    }


def seq(envelope: dict[str, Any] | str) -> int:
    """The test's sequence number of a spooled envelope (the tests spool JSON objects)."""
    assert isinstance(envelope, dict)
    return int(envelope["seq"])


def published(messages: list[TaskMessage]) -> list[dict[str, Any]]:
    """Every envelope in the queued batch messages, in publish order, after checking the wire format."""
    envelopes: list[dict[str, Any]] = []
    for message in messages:
        assert message.task == BATCH_TASK
        assert message.content_type == "application/json"
        assert message.compression == "application/zstd"
        assert len(message.args) == 1
        assert isinstance(message.args[0], list)
        envelopes.extend(message.args[0])
    return envelopes


def settings_for(url: str, prefix: str, spool_dir: Path, max_bytes: int = 64 * 1024 * 1024) -> Settings:
    return Settings(broker_url=url, key_prefix=prefix, spool_dir=spool_dir, spool_max_bytes=max_bytes)


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys on the shared Redis are deleted afterwards."""
    value = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    yield value
    client = redis.Redis.from_url(SHARED_URL)
    for key in client.scan_iter(match=f"{value}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def shared_redis(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(SHARED_URL)
    yield client
    client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def submit_timed(sender: Sender, envelopes: list[dict[str, Any]], durations: list[float]) -> None:
    for item in envelopes:
        started = time.perf_counter()
        sender.submit(item)
        durations.append(time.perf_counter() - started)


# --- the spool on its own -------------------------------------------------------------------------------


def test_spool_is_fifo_and_keeps_order_and_numbering_across_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        spool.append([envelope(n)])
    assert len(spool) == 3
    assert spool.bytes_used == sum(f.stat().st_size for f in spool.path.glob("*.zst"))
    first = spool.peek()
    assert first is not None and seq(first[1][0]) == 0
    spool.remove(first[0])
    spool.close()

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.path == spool.path
    reopened.append([envelope(3)])
    seen, keys = [], []
    while (head := reopened.peek()) is not None:
        keys.append(head[0])
        seen.append(seq(head[1][0]))
        reopened.remove(head[0])
    assert seen == [1, 2, 3]
    assert keys == sorted(keys) and keys[0] > first[0]
    assert len(reopened) == 0 and reopened.bytes_used == 0

    reopened.append([envelope(4)])
    head = reopened.peek()
    assert head is not None and head[0] > keys[-1], "numbering continues even after the spool emptied"
    reopened.close()


def test_spool_ignores_a_half_written_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([envelope(0)])
    (spool.path / ".00000000000000000002.json.999.1.tmp").write_text('[{"message_id": "cut sho')
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert len(reopened) == 1
    assert not list(reopened.path.glob("*.tmp"))
    reopened.close()


def test_spool_bound_is_never_exceeded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2_000)
    stored = [spool.append([envelope(n)]) for n in range(100)]
    assert 0 < spool.bytes_used <= 2_000
    assert stored[0] == 1 and stored[-1] == 0
    assert len(spool) == sum(stored)
    spool.close()


def test_spool_sets_a_corrupt_file_aside_and_goes_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([envelope(0)])
    spool.append([envelope(1)])
    spool.append([envelope(2)])
    spool.close()
    corrupt = sorted(spool.path.glob("*.zst"))[1]
    corrupt.write_bytes(b"\x00not json")

    reopened = Spool(tmp_path, max_bytes=1 << 20)
    with capture_logs() as logs:
        seen = []
        while (head := reopened.peek()) is not None:
            seen.append(seq(head[1][0]))
            reopened.remove(head[0])
    assert seen == [0, 2]
    assert (corrupt.parent / (corrupt.name + ".corrupt")).exists()
    assert any(entry["event"] == "spool_file_corrupt" and entry["log_level"] == "error" for entry in logs)
    assert reopened.bytes_used == 0
    reopened.close()


def test_two_spools_on_one_directory_never_share_files(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20)
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert first.path != second.path
    first.append([envelope(0)])
    first.close()
    third = Spool(tmp_path, max_bytes=1 << 20)
    assert third.path == first.path and len(third) == 1
    second.close()
    third.close()


# --- the sender against the shared Redis -----------------------------------------------------------------


def test_four_threads_thousand_envelopes_arrive_once_in_few_batches(
    tmp_path: Path, prefix: str, shared_redis: redis.Redis
) -> None:
    batch_size = 100
    sender = Sender(settings_for(SHARED_URL, prefix, tmp_path), batch_size=batch_size)
    items = [[envelope(n, source=f"thread-{t}") for n in range(250)] for t in range(4)]
    durations: list[float] = []
    threads = [threading.Thread(target=submit_timed, args=(sender, chunk, durations)) for chunk in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sender.flush(10)
    stats = sender.stats()
    sender.close()

    messages = queued_messages(shared_redis, prefix)
    assert len(messages) <= math.ceil(1000 / batch_size) + 5
    envelopes = published(messages)
    sent_ids = {e["message_id"] for chunk in items for e in chunk}
    assert len(envelopes) == 1000
    assert {e["message_id"] for e in envelopes} == sent_ids
    for t in range(4):
        assert [e["seq"] for e in envelopes if e["source"] == f"thread-{t}"] == list(range(250))
    assert stats["submitted"] == stats["published"] == 1000
    assert stats["task_messages"] == len(messages)
    assert stats["dropped"] == stats["spooled"] == stats["publish_errors"] == 0


def test_a_lone_envelope_leaves_after_the_quiet_period_and_a_stream_fills_longer_batches(
    tmp_path: Path, prefix: str, shared_redis: redis.Redis
) -> None:
    """A batch goes when the runner has been quiet for ``linger`` or, under a steady stream, after
    ``max_linger``: a stream of one envelope every 10 ms for 0.9 s makes a few large batches, not one per
    quiet period."""
    sender = Sender(settings_for(SHARED_URL, prefix, tmp_path), linger_seconds=0.1, max_linger_seconds=0.45)
    try:
        sender.submit(envelope(0))
        assert wait_until(lambda: sender.stats()["published"] == 1, 2.0)
        assert len(queued_messages(shared_redis, prefix)) == 1

        for n in range(1, 91):
            sender.submit(envelope(n))
            time.sleep(0.01)
        assert sender.flush(5)
    finally:
        sender.close()
    messages = queued_messages(shared_redis, prefix)
    assert [e["seq"] for e in published(messages)] == list(range(91))
    assert 2 <= len(messages) - 1 <= 4  # 0.9 s of stream in batches of up to 0.45 s (a 0.1 s linger: ~9)


def test_an_urgent_envelope_makes_its_batch_leave_within_the_quiet_period(
    tmp_path: Path, prefix: str, shared_redis: redis.Redis
) -> None:
    """A pattern report in a steady stream leaves within the quiet period, not at the stream's batch limit."""
    sender = Sender(settings_for(SHARED_URL, prefix, tmp_path), linger_seconds=0.2, max_linger_seconds=5.0)
    try:
        for n in range(10):
            sender.submit(envelope(n))
            time.sleep(0.05)
        started = time.monotonic()
        sender.submit(envelope(10), urgent=True)
        for n in range(11, 20):
            sender.submit(envelope(n))
            time.sleep(0.05)
        assert wait_until(lambda: sender.stats()["published"] >= 11, 1.0)
        assert time.monotonic() - started < 1.0  # the stream alone would have been held for 5 s
        assert sender.flush(5)
    finally:
        sender.close()
    messages = queued_messages(shared_redis, prefix)
    assert [e["seq"] for e in published(messages)] == list(range(20))
    assert 10 in [e["seq"] for e in messages[0].args[0]]


def test_envelope_json_cannot_encode_is_dropped_loudly_and_the_rest_published(
    tmp_path: Path, prefix: str, shared_redis: redis.Redis
) -> None:
    with capture_logs() as logs, Sender(settings_for(SHARED_URL, prefix, tmp_path)) as sender:
        sender.submit(envelope(0))
        sender.submit({**envelope(1), "payload": {"bad": object()}})
        sender.submit(envelope(2))
        assert sender.flush(5)
        stats = sender.stats()
    assert [e["seq"] for e in published(queued_messages(shared_redis, prefix))] == [0, 2]
    assert stats["dropped"] == 1 and stats["published"] == 2
    assert any(entry["event"] == "envelopes_dropped" and entry["reason"] == "not_json" for entry in logs)


def test_flush_async(tmp_path: Path, prefix: str, shared_redis: redis.Redis) -> None:
    sender = Sender(settings_for(SHARED_URL, prefix, tmp_path))
    for n in range(10):
        sender.submit(envelope(n))
    assert asyncio.run(sender.flush_async(5))
    sender.close()
    assert len(published(queued_messages(shared_redis, prefix))) == 10


def test_throughput_of_ten_thousand_small_envelopes(
    tmp_path: Path, prefix: str, shared_redis: redis.Redis
) -> None:
    sender = Sender(settings_for(SHARED_URL, prefix, tmp_path))
    items = [envelope(n) for n in range(10_000)]
    started = time.perf_counter()
    for item in items:
        sender.submit(item)
    submitted = time.perf_counter() - started
    assert sender.flush(30)
    elapsed = time.perf_counter() - started
    sender.close()
    rate = len(items) / elapsed
    print(f"\nsubmit {len(items) / submitted:,.0f}/s; submit→published {rate:,.0f} envelopes/s")
    assert len(published(queued_messages(shared_redis, prefix))) == 10_000
    assert rate > 5_000


# --- the sender when Redis goes away (a private server) ---------------------------------------------------


@pytest.mark.parametrize("queue_size", [20_000, 64], ids=["queue", "queue-overflows-to-spool"])
def test_redis_down_submit_stays_fast_and_nothing_is_lost(
    tmp_path: Path, private_redis: RedisServer, queue_size: int
) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    sender = Sender(
        settings_for(private_redis.url, prefix, tmp_path),
        batch_size=100,
        queue_size=queue_size,
        publish_timeout=0.5,
        retry_interval=0.1,
    )
    sender.submit(envelope(-1, source="before"))
    assert sender.flush(5)
    private_redis.stop()

    durations: list[float] = []
    chunks = [[envelope(n, source=f"thread-{t}") for n in range(1000)] for t in range(2)]
    threads = [threading.Thread(target=submit_timed, args=(sender, chunk, durations)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(durations) == 2000
    print(f"\nmax submit with Redis down (queue_size={queue_size}): {max(durations) * 1000:.2f} ms")
    assert max(durations) < SUBMIT_BOUND
    assert not sender.flush(0.3)
    assert wait_until(lambda: sender.stats()["spooled"] > 0, 5)

    private_redis.start()
    assert sender.flush(15)
    stats = sender.stats()
    sender.close()

    with private_redis.client() as client:
        envelopes = published(queued_messages(client, prefix))
    sent_ids = {e["message_id"] for chunk in chunks for e in chunk}
    assert len(envelopes) == 2000
    assert {e["message_id"] for e in envelopes} == sent_ids
    assert stats["dropped"] == 0
    assert stats["publish_errors"] > 0 and stats["resent"] > 0
    assert stats["published"] == 2001
    assert (stats["overflowed"] > 0) == (queue_size < 2000)


@pytest.mark.parametrize("outage", ["stopped", "hung"])
def test_publish_fails_fast(tmp_path: Path, private_redis: RedisServer, outage: str) -> None:
    """A refused connection costs about nothing, a server that never answers one ``publish_timeout``:
    neither runs into kombu's or redis-py's reconnect loops."""
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    publish_timeout, linger = 0.3, 0.05
    sender = Sender(
        settings_for(private_redis.url, prefix, tmp_path),
        linger_seconds=linger,
        publish_timeout=publish_timeout,
        retry_interval=0.1,
    )
    sender.submit(envelope(0))
    assert sender.flush(5)
    if outage == "stopped":
        private_redis.stop()
    else:
        private_redis.pause()
    durations: list[float] = []
    started = time.monotonic()
    submit_timed(sender, [envelope(n) for n in range(1, 6)], durations)
    assert wait_until(lambda: sender.stats()["spooled"] == 5, 5)
    to_spool = time.monotonic() - started
    submit_timed(sender, [envelope(n) for n in range(6, 200)], durations)
    assert max(durations) < SUBMIT_BOUND
    print(f"\n{outage} Redis: batch spooled {to_spool * 1000:.0f} ms after submit (linger {linger}s)")
    bound = linger + (0.2 if outage == "stopped" else publish_timeout + 0.4)
    assert to_spool < bound, f"the failed publish took {to_spool:.2f}s"

    if outage == "stopped":
        private_redis.start()
    else:
        private_redis.resume()
    assert sender.flush(10)
    sender.close()
    with private_redis.client() as client:
        seqs = [e["seq"] for e in published(queued_messages(client, prefix))]
    # A timed-out LPUSH may still have landed, so after a hang a resend can duplicate (at least once).
    assert set(seqs) == set(range(200)) if outage == "hung" else sorted(seqs) == list(range(1, 200))


def test_spool_survives_restart_and_a_new_sender_resends_in_order(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    settings = settings_for(private_redis.url, prefix, tmp_path)
    private_redis.stop()
    a = Sender(settings, batch_size=50, publish_timeout=0.5, retry_interval=0.1)
    for n in range(300):
        a.submit(envelope(n))
    a.close(timeout=0.5)
    stats_a = a.stats()
    assert stats_a["spooled"] == 300 and stats_a["published"] == stats_a["dropped"] == 0
    assert list(tmp_path.glob("slot-0/*.zst"))

    private_redis.start()
    b = Sender(settings, batch_size=50, publish_timeout=0.5, retry_interval=0.1)
    assert b.flush(10)
    stats_b = b.stats()
    b.close()
    assert stats_b["resent"] == 300
    assert not list(tmp_path.glob("slot-0/*.zst"))
    with private_redis.client() as client:
        assert [e["seq"] for e in published(queued_messages(client, prefix))] == list(range(300))


def test_spooled_batches_go_before_newer_ones(tmp_path: Path, private_redis: RedisServer) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    sender = Sender(
        settings_for(private_redis.url, prefix, tmp_path), publish_timeout=0.5, retry_interval=0.1
    )
    private_redis.stop()
    for n in range(50):
        sender.submit(envelope(n))
    assert wait_until(lambda: sender.stats()["spooled"] == 50, 5)
    private_redis.start()
    for n in range(50, 100):
        sender.submit(envelope(n))
    assert sender.flush(10)
    sender.close()
    with private_redis.client() as client:
        assert [e["seq"] for e in published(queued_messages(client, prefix))] == list(range(100))


def test_spool_full_drop_oldest_counts_and_logs_drops(tmp_path: Path, private_redis: RedisServer) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    private_redis.stop()
    settings = settings_for(private_redis.url, prefix, tmp_path, max_bytes=4_000)
    settings = settings.model_copy(update={"spool_full_policy": "drop_oldest"})
    with capture_logs() as logs:
        sender = Sender(settings, batch_size=10, queue_size=20, publish_timeout=0.5, retry_interval=0.1)
        for n in range(500):
            sender.submit(envelope(n, pad=200))
        sender.close(timeout=0.5)
    stats = sender.stats()
    kept = Spool(tmp_path, max_bytes=4_000)
    remaining = []
    while (head := kept.peek()) is not None:
        remaining += [seq(item) for item in head[1]]
        kept.remove(head[0])
    kept.close()
    assert stats["spooled"] == stats["submitted"] == 500
    assert stats["dropped"] == 500 - len(remaining) > 0
    assert stats["refused"] == stats["in_memory"] == 0
    assert remaining == list(range(500 - len(remaining), 500)), "the newest are kept, in order"
    assert any(e["event"] == "envelopes_dropped" and e["log_level"] == "error" for e in logs)
    assert any(e["event"] == "spool_full" and e["log_level"] == "error" for e in logs)


def test_sender_sets_a_corrupt_spool_file_aside_and_resends_the_rest(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for n in range(3):
        spool.append([envelope(n)])
    spool.close()
    sorted(spool.path.glob("*.zst"))[1].write_text('{"not": "a list"}')

    with capture_logs() as logs, Sender(settings_for(private_redis.url, prefix, tmp_path)) as sender:
        assert sender.flush(5)
        assert sender.stats()["resent"] == 2
    assert len(list(spool.path.glob("*.corrupt"))) == 1
    assert any(entry["event"] == "spool_file_corrupt" for entry in logs)
    with private_redis.client() as client:
        assert [e["seq"] for e in published(queued_messages(client, prefix))] == [0, 2]


def test_submit_after_close_is_spooled_or_dropped_loudly(tmp_path: Path, private_redis: RedisServer) -> None:
    prefix = f"ostinato-test-{uuid.uuid4().hex[:12]}:"
    settings = settings_for(private_redis.url, prefix, tmp_path)
    spool = Spool(tmp_path / "given", max_bytes=1 << 20)
    with Sender(settings, spool=spool) as sender:
        pass
    sender.submit(envelope(0))
    assert sender.stats()["spooled"] == 1 and len(spool) == 1
    spool.close()

    owned = Sender(settings)
    owned.close()
    with capture_logs() as logs:
        owned.submit(envelope(1))
    assert owned.stats()["dropped"] == 1
    assert any(entry["event"] == "envelopes_dropped" for entry in logs)
    with private_redis.client() as client:
        assert client.llen(queue_key(prefix)) == 0


def test_producers_compress_batches_at_the_batch_level(tmp_path: Path) -> None:
    """kombu's zstd compressor runs at level 1 once a sender exists: level 3 output differs."""
    producer_app(settings_for("redis://127.0.0.1:1/0", "unused:", tmp_path), 1.0)
    body = json.dumps([[json.dumps(envelope(n, pad=2000)) for n in range(200)], {}, {}]).encode()
    packed, content_type = compress(body, BATCH_COMPRESSION)
    assert content_type == "application/zstd"
    assert packed == zstd.compress(body, BATCH_COMPRESSION_LEVEL)
    assert packed != zstd.compress(body, 3)
    assert zstd.decompress(packed) == body
