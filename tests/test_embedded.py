"""Embedded mode: the whole path in one process on a real SQLite file, with no Redis and no PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from messages import outcome
from sqlalchemy import ColumnElement, Table, func, select, text

from ostinato.embedded import Embedded, LocalSender
from ostinato.producers import Client
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.schema.tables import executions, maintenance_runs, rate_limit_events
from ostinato.settings import Settings
from ostinato.workers.maintenance import PASSES
from ostinato.workers.store import Store


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def count(store: Store, table: Table, *where: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(table).where(*where)
    return store.run(lambda: int(store.conn.execute(query).scalar_one()))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "runner" / "store.db"


@pytest.fixture
def runtime(path: Path) -> Iterator[Embedded]:
    with Embedded(path, Settings(), maintenance=False) as embedded:
        yield embedded


def test_outcomes_reach_the_store_and_preflight_reads_them(path: Path) -> None:
    with Client("job-A", "/srv/alpha", embedded=path) as client:
        assert client.settings.database_url == f"sqlite:///{path.resolve()}"
        for sheet in range(25):
            client.record_outcome(outcome(sheet).payload)
        assert client.flush(10)
        stats = client.stats()
        assert (stats["submitted"], stats["applied"], stats["in_memory"]) == (25, 25, 0)
        found = client.similar_executions(job_hash=client.job_hash, limit=100)
        assert len(found) == 25
    store = Store.from_url(f"sqlite:///{path}")
    assert count(store, executions) == 25
    store.engine.dispose()


def test_a_redelivered_envelope_is_applied_once(runtime: Embedded) -> None:
    envelope = outcome(1).model_dump_json()
    runtime.sender.submit(envelope)
    runtime.sender.submit(envelope)
    assert runtime.sender.flush(5)
    runtime.sender.submit(envelope)
    assert runtime.sender.flush(5)
    stats = runtime.sender.stats()
    assert (stats["applied"], stats["duplicates"]) == (1, 2)
    assert count(runtime.store, executions) == 1


def test_an_invalid_envelope_is_dead_lettered_with_its_reason(runtime: Embedded) -> None:
    runtime.sender.submit({"kind": "sheet_outcome", "schema_version": 1, "payload": {}})
    runtime.sender.submit(outcome(2).model_dump(mode="json"))
    assert runtime.sender.flush(5)
    assert runtime.sender.stats()["dead_lettered"] == 1
    [letter] = runtime.store.list_dead_letters()
    assert letter["reason"].startswith("invalid message:")
    assert "workspace_hash: Field required" in letter["reason"]
    assert letter["kind"] == "sheet_outcome"
    assert count(runtime.store, executions) == 1


def test_a_batch_the_store_refuses_for_now_is_kept_and_applied_later(runtime: Embedded) -> None:
    with runtime.store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE executions RENAME TO executions_away"))
    runtime.sender.submit(outcome(3).model_dump_json())
    wait_for(lambda: runtime.sender.stats()["apply_errors"] >= 1)
    assert not runtime.sender.flush(0.1)
    with runtime.store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE executions_away RENAME TO executions"))
    assert runtime.sender.flush(10)
    assert runtime.sender.stats()["applied"] == 1
    assert count(runtime.store, executions) == 1


def test_a_full_queue_makes_submit_wait_instead_of_dropping(runtime: Embedded) -> None:
    sender = LocalSender(runtime.store, runtime.settings, runtime.hub, batch_size=3, queue_size=4)
    try:
        for sheet in range(40):
            sender.submit(outcome(sheet).model_dump_json())
        assert sender.flush(10)
        stats = sender.stats()
        assert (stats["applied"], stats["dropped"]) == (40, 0)
    finally:
        sender.close()


def test_a_reported_pattern_reaches_other_jobs_live_and_by_catch_up(path: Path) -> None:
    with (
        Client("job-A", "/srv/alpha", embedded=path) as reporter,
        Client("job-B", "/srv/beta", embedded=path) as listener,
    ):
        live: list[PatternDiscoveryEvent] = []
        own: list[PatternDiscoveryEvent] = []
        failing = listener.subscribe(lambda event: 1 / 0)
        subscription = listener.subscribe(live.append)
        mine = reporter.subscribe(own.append)
        assert subscription.wait_ready(5) and mine.wait_ready(5)

        reporter.report_pattern("semantic_failure", "missing import", "module not installed")
        wait_for(lambda: live)
        wait_for(lambda: mine.stats()["own"] == 1)
        wait_for(lambda: failing.stats()["callback_errors"] == 1)
        [event] = live
        assert event.source_job_hash == reporter.job_hash
        assert event.pattern_name == "missing import"
        assert own == []
        assert subscription.stats()["live"] == 1
        assert failing.alive

        late: list[PatternDiscoveryEvent] = []
        later = listener.subscribe(late.append)
        wait_for(lambda: late)
        assert [e.id for e in late] == [event.id]
        assert later.stats()["caught_up"] == 1

        with reporter.subscribe(include_own=True) as iterated:
            assert iterated.get(timeout=5) == event
            assert iterated.get(timeout=0.05) is None
        for handle in (failing, subscription, mine, later):
            handle.stop()
        assert not subscription.alive


def test_rate_limits_are_shared_and_the_later_expiry_wins(path: Path) -> None:
    with (
        Client("job-A", "/srv/alpha", embedded=path) as first,
        Client("job-B", "/srv/beta", embedded=path) as second,
    ):
        assert not second.rate_limit_status("model-x").limited
        first.report_rate_limit("model-x", "E101", 30)
        status = second.rate_limit_status("model-x")
        assert status.limited and status.error_code == "E101"
        assert status.seconds_left is not None and 29 < status.seconds_left <= 30
        second.report_rate_limit("model-x", "E102", 5)
        status = first.rate_limit_status("model-x")
        assert status.error_code == "E101"
        assert status.seconds_left is not None and status.seconds_left > 25
        first.report_rate_limit("model-y", "E103", 0.05)
        time.sleep(0.1)
        assert not second.rate_limit_status("model-y").limited
        assert first.flush(5) and second.flush(5)
        store = Store.from_url(first.settings.database_url)
        assert count(store, rate_limit_events) == 3
        store.engine.dispose()


def test_clients_of_one_file_share_one_runtime_that_stops_with_the_last(path: Path) -> None:
    first = Client("job-A", "/srv/alpha", embedded=path)
    second = Client("job-B", "/srv/beta", embedded=str(path.parent / ".." / "runner" / "store.db"))
    runtime = Embedded.shared(path)
    runtime.release()
    assert runtime.sender.alive and runtime.maintenance_alive
    first.record_outcome(outcome(1).payload)
    first.close()
    assert not runtime.closed and runtime.sender.stats()["applied"] == 1
    second.record_outcome(outcome(2, job="job-B").payload)
    second.close()
    assert runtime.closed
    assert not runtime.sender.alive and not runtime.maintenance_alive
    assert runtime.sender.stats()["applied"] == 2

    third = Client("job-C", "/srv/gamma", embedded=path)
    with third:
        current = Embedded.shared(path)
        current.release()
        assert current is not runtime and not current.closed
        assert len(third.similar_executions(limit=10)) == 2
    assert current.closed


def test_a_client_given_a_runtime_leaves_it_running(path: Path) -> None:
    with Embedded(path, maintenance=False) as runtime:
        with Client("job-A", "/srv/alpha", embedded=runtime) as client:
            client.record_outcome(outcome(1).payload)
        assert not runtime.closed and runtime.sender.stats()["applied"] == 1
    assert runtime.closed
    with pytest.raises(RuntimeError):
        runtime.acquire()


def test_maintenance_passes_run_on_their_period(path: Path) -> None:
    settings = Settings(maintenance_trust_period=0.5)
    with Embedded(path, settings) as runtime:
        trust = maintenance_runs.c.task == "trust"
        wait_for(lambda: count(runtime.store, maintenance_runs, trust) >= 2, timeout=5)
        tasks = runtime.store.run(
            lambda: set(runtime.store.conn.execute(select(maintenance_runs.c.task)).scalars())
        )
        assert tasks == set(PASSES)


def test_submitting_from_many_threads_applies_everything(runtime: Embedded) -> None:
    def submit(job: str) -> None:
        for sheet in range(50):
            runtime.sender.submit(outcome(sheet, job=job).model_dump_json())

    threads = [threading.Thread(target=submit, args=(f"job-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runtime.sender.flush(10)
    assert count(runtime.store, executions) == 200
