"""Live discoveries: real workers publish; subscribers elsewhere catch up, reconnect, never repeat."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import select

from ostinato.producers import Client
from ostinato.producers.subscriber import SubscribeOptions, subscribe, subscribe_async
from ostinato.schema.identity import hash_job
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.schema.tables import pattern_discovery_events
from ostinato.settings import Settings
from ostinato.workers.store import Store

pytestmark = pytest.mark.usefixtures("ingest_worker")

FAST: SubscribeOptions = {"poll_interval": 0.1, "max_backoff": 0.5}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stored_events(store: Store) -> dict[str, str]:
    """Every discovery event in the store: id → source job hash."""
    table = pattern_discovery_events
    with store.batch() as connection:
        return {str(i): str(s) for i, s in connection.execute(select(table.c.id, table.c.source_job_hash))}


def report_patterns(job: str, count: int, pause: float = 0.0) -> None:
    """``count`` patterns new to the store, reported by ``job``'s runner and flushed to the broker."""
    tag = uuid.uuid4().hex[:8]
    with Client(job, f"/srv/{job}") as client:
        for n in range(count):
            client.report_pattern("semantic_insight", f"broadcast {tag} {n}", "seen by a runner")
            if pause:
                time.sleep(pause)
        assert client.flush(30)


def event(source_job_hash: str, ttl: float = 300.0) -> PatternDiscoveryEvent:
    now = datetime.now(UTC)
    return PatternDiscoveryEvent(
        id=str(uuid.uuid4()),
        pattern_id=uuid.uuid4().hex,
        pattern_name="published by hand",
        pattern_type="semantic_insight",
        source_job_hash=source_job_hash,
        recorded_at=now,
        expires_at=now + timedelta(seconds=ttl),
        effectiveness_score=1.0,
    )


# -- three subscriber processes ---------------------------------------------------------------------------


def run_subscriber(form: str, job_hash: str, out: Any, ready: Any, stop: Any) -> None:
    """A runner process: subscribe in ``form``, stream every event id to ``out``, end with its stats."""

    def report(e: PatternDiscoveryEvent) -> None:
        out.put(("event", job_hash, e.id, e.source_job_hash))

    stats: dict[str, int]
    if form == "iterator":
        with subscribe(job_hash, **FAST) as subscription:
            assert subscription.wait_ready(30)
            ready.set()
            while not stop.is_set():
                if (e := subscription.get(timeout=0.1)) is not None:
                    report(e)
            stats = subscription.stats()
    elif form == "callback":
        with subscribe(job_hash, callback=report, **FAST) as handle:
            assert handle.wait_ready(30)
            ready.set()
            stop.wait()
            stats = handle.stats()
    else:

        async def consume() -> dict[str, int]:
            async with subscribe_async(job_hash, **FAST) as subscription:
                assert await subscription.wait_ready(30)
                ready.set()
                while not stop.is_set():
                    if (e := await subscription.get(timeout=0.1)) is not None:
                        report(e)
                return subscription.stats()

        stats = asyncio.run(consume())
    out.put(("stats", job_hash, stats, None))


def test_three_subscriber_processes_get_each_other_jobs_discovery_once(pg_store: Store) -> None:
    jobs = {name: hash_job(name) for name in ("fleet-a", "fleet-b", "fleet-c", "fleet-d")}
    listeners = dict(zip(("iterator", "callback", "async"), ("fleet-a", "fleet-b", "fleet-c"), strict=True))
    context = multiprocessing.get_context("spawn")
    out, stop = context.Queue(), context.Event()
    readies = {form: context.Event() for form in listeners}
    processes = [
        context.Process(target=run_subscriber, args=(form, jobs[job], out, readies[form], stop), daemon=True)
        for form, job in listeners.items()
    ]
    received: dict[str, list[tuple[str, str]]] = {jobs[job]: [] for job in listeners.values()}
    stats: dict[str, dict[str, int]] = {}

    def collect(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                kind, listener, first, second = out.get(timeout=0.2)
                if kind == "event":
                    received[listener].append((first, second))
                else:
                    stats[listener] = first

    for process in processes:
        process.start()
    try:
        for form, ready in readies.items():
            assert ready.wait(60), f"the {form} subscriber did not connect"
        publishers = [threading.Thread(target=report_patterns, args=(job, 50)) for job in jobs]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join()
        wait_for(lambda: len(stored_events(pg_store)) == 200, 30, "200 discoveries in the store")
        collect(lambda: all(len(got) >= 150 for got in received.values()), 30)
        collect(lambda: False, 0.5)
    finally:
        stop.set()
        collect(lambda: len(stats) == len(processes), 20)
        for process in processes:
            process.join(20)

    stored = stored_events(pg_store)
    for job in listeners.values():
        own = jobs[job]
        ids = [event_id for event_id, _ in received[own]]
        assert not [i for i, n in Counter(ids).items() if n > 1], "an event was delivered twice"
        assert own not in {source for _, source in received[own]}, "a job received its own discovery"
        assert set(ids) == {i for i, source in stored.items() if source != own}
        assert stats[own]["live"] + stats[own]["caught_up"] == 150
    assert [process.exitcode for process in processes] == [0, 0, 0]


# -- catch-up for a late subscriber ---------------------------------------------------------------------


def test_a_late_subscriber_receives_the_unexpired_discoveries_it_missed(pg_store: Store) -> None:
    early, late = "late-early-job", "late-listener-job"
    report_patterns(early, 30)
    report_patterns(late, 10)
    wait_for(lambda: len(stored_events(pg_store)) == 40, 30, "40 discoveries in the store")
    expired = pg_store.record_pattern_discovery(
        "p-expired", "long gone", "semantic_insight", hash_job(early), ttl_seconds=60,
        recorded_at=datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    missed = {i for i, source in stored_events(pg_store).items() if source == hash_job(early)}
    missed.discard(expired.id)
    assert len(missed) == 30

    with subscribe(hash_job(late), **FAST) as subscription:
        assert subscription.wait_ready(10)
        caught_up = [e.id for e in iter(lambda: subscription.get(timeout=0.3), None)]
        assert sorted(caught_up) == sorted(missed)

        report_patterns(early, 5)
        report_patterns(late, 5)
        wait_for(lambda: len(stored_events(pg_store)) == 51, 30, "the new discoveries in the store")
        fresh = {i for i, s in stored_events(pg_store).items() if s == hash_job(early)} - missed
        fresh.discard(expired.id)
        live: list[str] = []
        deadline = time.monotonic() + 10
        while len(live) < 5 and time.monotonic() < deadline:
            if (e := subscription.get(timeout=0.2)) is not None:
                live.append(e.id)
        assert subscription.get(timeout=0.3) is None
        assert sorted(live) == sorted(fresh)
        assert subscription.stats()["caught_up"] + subscription.stats()["live"] == 35


# -- a connection cut and restored --------------------------------------------------------------------------


class CuttableRelay:
    """A TCP relay to Redis whose connections can be cut (all closed, new ones refused) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.accepting = True
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return
            if not self.accepting:
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets |= {downstream, upstream}
            for source, target in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        self._shut(source)
        self._shut(target)

    def _shut(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with self.lock:
            self.sockets.discard(sock)

    def cut(self) -> None:
        self.accepting = False
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            self._shut(sock)

    def restore(self) -> None:
        self.accepting = True

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.fixture
def relay(redis_client: redis.Redis) -> Iterator[CuttableRelay]:
    target = urlsplit(Settings().broker_url)
    relay = CuttableRelay(target.hostname or "127.0.0.1", target.port or 6379)
    yield relay
    relay.close()


def kill_subscriber_connections(client: redis.Redis, name: str) -> int:
    """``CLIENT KILL`` the server side of the named subscriber's connections (no one else's)."""
    killed = 0
    for entry in client.client_list(_type="pubsub"):
        if entry.get("name") == name:
            killed += int(client.client_kill_filter(_id=entry["id"]))
    return killed


def test_a_subscriber_whose_connection_is_cut_misses_nothing_and_gets_nothing_twice(
    pg_store: Store, redis_client: redis.Redis, relay: CuttableRelay
) -> None:
    listener, source = hash_job("cut-listener"), "cut-source-job"
    received: list[PatternDiscoveryEvent] = []
    settings = Settings(broker_url=relay.url)
    handle = subscribe(listener, settings=settings, callback=received.append, **FAST)
    try:
        assert handle.wait_ready(10)
        publisher = threading.Thread(target=report_patterns, args=(source, 150, 0.012))
        publisher.start()
        time.sleep(0.4)
        relay.cut()
        time.sleep(0.8)
        relay.restore()
        wait_for(lambda: handle.ready, 10, "the subscriber to reconnect through the relay")
        time.sleep(0.2)
        assert kill_subscriber_connections(redis_client, handle.subscription.client_name) == 1
        publisher.join()
        wait_for(lambda: len(stored_events(pg_store)) == 150, 30, "150 discoveries in the store")
        wait_for(lambda: len(received) >= 150, 20, "every discovery at the subscriber")
        time.sleep(0.5)
    finally:
        handle.stop()

    ids = [e.id for e in received]
    assert len(ids) == len(set(ids)) == 150
    assert set(ids) == set(stored_events(pg_store))
    stats = handle.stats()
    assert stats["connects"] >= 3
    assert stats["caught_up"] > 0, "nothing was published while the connection was down"
    assert stats["live"] + stats["caught_up"] == 150


# -- failures that must not stop a runner ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_live_events_flow_while_the_store_is_unreachable_and_bad_input_is_survived(
    redis_client: redis.Redis,
) -> None:
    """No store: catch-up keeps failing (and retrying) while live events still arrive; junk is skipped."""
    settings = Settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/absent")
    delivered: list[PatternDiscoveryEvent] = []

    def fussy(e: PatternDiscoveryEvent) -> None:
        delivered.append(e)
        if len(delivered) == 1:
            raise RuntimeError("a callback bug must not end the subscription")

    handle = subscribe("a" * 16, settings=settings, callback=fussy, **FAST)
    try:
        wait_for(lambda: handle.stats()["catch_up_failures"] >= 1, 10, "a failed catch-up")
        assert not handle.ready
        channel = settings.patterns_channel
        first, own, second = event("b" * 16), event("a" * 16), event("c" * 16, ttl=0.2)
        for payload in (first.model_dump_json(), "{not json", own.model_dump_json(), first.model_dump_json()):
            redis_client.publish(channel, payload)
        redis_client.publish(channel, second.model_dump_json())
        wait_for(lambda: len(delivered) == 2, 10, "two live events")
        time.sleep(0.3)
        assert [e.id for e in delivered] == [first.id, second.id]
        assert handle.alive
        wait_for(lambda: handle.stats()["catch_up_failures"] >= 2, 10, "a retried catch-up")
        stats = handle.stats()
        assert (stats["own"], stats["invalid"], stats["duplicates"]) == (1, 1, 1)
    finally:
        handle.stop()
    assert not handle.alive


def test_remembered_ids_are_forgotten_once_their_events_expire(
    pg_store: Store, redis_client: redis.Redis
) -> None:
    """De-duplication memory is bounded by the unexpired events, not by everything ever seen."""
    forgetful: SubscribeOptions = {**FAST, "grace_seconds": 0.0}
    with subscribe(None, **forgetful) as subscription:
        assert subscription.wait_ready(10)
        short = [event("d" * 16, ttl=0.3) for _ in range(20)]
        for e in short:
            redis_client.publish(Settings().patterns_channel, e.model_dump_json())
        got = [subscription.get(timeout=5) for _ in short]
        assert [e.id for e in got if e is not None] == [e.id for e in short]
        assert subscription.stats()["remembered"] == 20
        time.sleep(0.4)
        lasting = event("d" * 16)
        redis_client.publish(Settings().patterns_channel, lasting.model_dump_json())
        after = subscription.get(timeout=5)
        assert after is not None
        assert after.id == lasting.id
        assert subscription.stats()["remembered"] == 1
