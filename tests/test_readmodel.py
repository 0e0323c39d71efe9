"""The preflight read model (issue 12): workers publish the reads' rows to Redis, runners answer from a local
copy with the same results as the direct SQL reads, open no PostgreSQL connection, keep answering while
PostgreSQL is stopped, and see a committed change within the documented bound."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from postgres_server import PostgresServer
from sqlalchemy import update

from ostinato.producers import Client
from ostinato.producers.preflight import AutoApply, PatternContext, Preflight
from ostinato.producers.readmodel import ReadModel, ReadModelPreflight
from ostinato.schema import migrate
from ostinato.schema.identity import hash_job
from ostinato.schema.tables import patterns
from ostinato.settings import Settings, get_settings
from ostinato.workers.readmodel import ENV_SWITCH, Publisher, publish_read_model
from ostinato.workers.store import Store, create_store_engine

JOB = "readmodel-job"
STALENESS_BOUND_S = 2.0
"""Documented bound (README): a committed change is in every runner's copy within this."""
CONTEXTS = [
    PatternContext(validation_types=["file_exists"]),
    PatternContext(validation_types=["regex", "command"]),
    PatternContext(validation_types=["file_exists"], instrument_name="claude"),
    PatternContext(validation_types=["file_exists"], auto_apply=AutoApply(trust_threshold=0.8)),
    PatternContext(),
]
SEEDS = [0, 3, 14, 31]
WAITS = [("E101", None), ("E101", "m1"), ("E202", None), ("E999", None)]


def fill(store: Store, job_hash: str, n: int = 60, seed: int = 7) -> None:
    """Patterns of every status, priority, trust and scope; recoveries, budgets, discoveries, executions,
    escalations."""
    rng = random.Random(seed)
    tags = ["validation:file_exists", "validation:regex", "validation:command", "retry:effective"]
    for i in range(n):
        pid = store.record_pattern(
            rng.choice(["semantic_insight", "validation_failure", "retry_pattern"]),
            f"pattern {i} {rng.choice(['alpha', 'beta', 'gamma'])}",
            f"description {i}",
            rng.sample(tags, rng.randint(0, 2)),
            instrument_name=rng.choice([None, None, "claude", "codex"]),
        )
        with store.batch() as conn:
            conn.execute(
                update(patterns)
                .where(patterns.c.id == pid)
                .values(
                    priority_score=rng.choice([0.02, 0.05, 0.1, 0.29, 0.3, 0.5, 0.9, rng.random()]),
                    effectiveness_score=rng.random(),
                    trust_score=rng.random(),
                    quarantine_status=rng.choice(["pending", "validated", "quarantined", "retired"]),
                    active=rng.random() > 0.1,
                    occurrence_count=rng.randint(1, 9),
                )
            )
    for _ in range(40):
        store.record_error_recovery(
            rng.choice(["E101", "E202"]),
            30.0,
            rng.uniform(5, 60),
            rng.random() > 0.2,
            model=rng.choice(["m1", "m2", None]),
            time_of_day=rng.randint(0, 23),
        )
    store.update_exploration_budget(job_hash, 0.4, "boost")
    store.update_exploration_budget(hash_job("other"), 0.1, "decay")
    for i in range(3):
        store.record_pattern_discovery(
            f"p{i}", f"found {i}", "semantic_insight", hash_job("other"), ttl_seconds=1e9
        )
    for i in range(12):
        store.record_execution("ws", job_hash, i % 4, execution_id=f"exec-{i}", retry_count=i % 3)
    for i in range(12):
        store.record_escalation_decision(job_hash, i, rng.random(), "retry", rng.random(), i % 3)


def reads(preflight: Preflight, job_hash: str) -> dict[str, Any]:
    """Every preflight read, as comparable plain data."""
    out: dict[str, Any] = {}
    for c, context in enumerate(CONTEXTS):
        for seed in SEEDS:
            for flags in (
                {},
                {"include_quarantined": True, "include_retired": True, "include_inactive": True},
            ):
                chosen = preflight.relevant_patterns(
                    context, 5, job_hash=job_hash, rng=random.Random(seed), **flags
                )
                out[f"relevant {c} {seed} {sorted(flags)}"] = [
                    (p.pattern_id, p.guidance, p.application_mode, p.auto_applied) for p in chosen
                ]
    out["auto"] = [p.id for p in preflight.patterns_for_auto_apply(0.5, False, 10)]
    out["auto tagged"] = [
        p.id for p in preflight.patterns_for_auto_apply(0.5, True, 10, ["validation:regex"])
    ]
    for code, model in WAITS:
        out[f"wait {code} {model}"] = list(preflight.learned_wait(code, 30.0, model))
    budget = preflight.exploration_budget(job_hash)
    out["budget"] = None if budget is None else budget.budget_value
    latest = preflight.exploration_budget(None)
    out["latest budget"] = None if latest is None else latest.budget_value
    out["discoveries"] = [e.pattern_id for e in preflight.recent_discoveries(job_hash)]
    out["executions"] = [e.id for e in preflight.similar_executions(job_hash, "ws", 1)]
    out["all executions"] = [e.id for e in preflight.similar_executions(None, None, None, 50)]
    window = preflight.optimal_execution_window("E101")
    out["window"] = [list(window.optimal_hours), list(window.avoid_hours), window.confidence]
    out["escalations"] = [e.id for e in preflight.similar_escalations(0.5, 0.5, 0.3, 0.3, 5)]
    return out


def runner_settings(**changes: Any) -> Settings:
    return get_settings().model_copy(update=changes)


@pytest.fixture
def model(redis_client: redis.Redis) -> Iterator[ReadModel]:
    del redis_client  # this run's keys are removed at its end
    reader = ReadModel(get_settings(), poll_interval=0.5)
    yield reader
    reader.close()


def test_reads_equal_the_direct_sql_reads(
    pg_store: Store, redis_client: redis.Redis, model: ReadModel
) -> None:
    job_hash = hash_job(JOB)
    fill(pg_store, job_hash)
    version = publish_read_model(pg_store, redis_client, get_settings())
    assert version > 0
    direct = reads(Preflight(get_settings()), job_hash)
    local = ReadModelPreflight(get_settings(), model=model)
    assert model.current() is not None and model.version == version
    from_model = reads(local, job_hash)
    assert from_model == direct
    assert reads(local, job_hash) == direct  # again, from the copy's memo
    assert any(direct[key] for key in direct if key.startswith("relevant"))
    assert direct["wait E101 None"][2] != "static_fallback"


def test_a_runner_opens_no_database_connection(pg_store: Store, redis_client: redis.Redis) -> None:
    """A runner process with a database URL that points at a closed port, and reads from the read model:
    it answers exactly what the direct reads answer, and never loads a PostgreSQL driver."""
    job_hash = hash_job(JOB)
    fill(pg_store, job_hash, seed=11)
    publish_read_model(pg_store, redis_client, get_settings())
    with Client(JOB, "/srv/readmodel", publish=False, reads="sql") as sql_client:
        expected: dict[str, Any] = {
            "patterns": [
                p.pattern_id for p in sql_client.relevant_patterns(CONTEXTS[0], rng=random.Random(3))
            ],
            "wait": list(sql_client.learned_wait("E101", 30.0)),
            "budget": sql_client.exploration_budget().budget_value,  # type: ignore[union-attr]
        }
    code = (
        "import json, random, sys\n"
        "from ostinato.producers import Client, PatternContext\n"
        "with Client('readmodel-job', '/srv/readmodel', publish=False) as client:\n"
        "    assert client.reads == 'readmodel'\n"
        "    context = PatternContext(validation_types=['file_exists'])\n"
        "    found = client.relevant_patterns(context, rng=random.Random(3))\n"
        "    out = {\n"
        "        'patterns': [p.pattern_id for p in found],\n"
        "        'wait': list(client.learned_wait('E101', 30.0)),\n"
        "        'budget': client.exploration_budget().budget_value,\n"
        "    }\n"
        "    out['drivers'] = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg2'))\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ)
    env["OSTINATO_DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    env["OSTINATO_PREFLIGHT_READS"] = "readmodel"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60
    )
    answered = json.loads(out.stdout.strip().splitlines()[-1])
    assert answered.pop("drivers") == []
    assert answered == expected
    assert expected["patterns"] and expected["wait"][2] != "static_fallback"


def test_reads_answer_while_postgresql_is_stopped(redis_client: redis.Redis) -> None:
    server = PostgresServer()
    try:
        server.start()
        url = server.create_database("ostinato")
        migrate.upgrade(url)
        store = Store(create_store_engine(url))
        job_hash = hash_job(JOB)
        fill(store, job_hash, n=30, seed=5)
        settings = runner_settings(key_prefix=get_settings().key_prefix + "stopped:")
        publish_read_model(store, redis_client, settings)
        expected = reads(Preflight(settings.model_copy(update={"database_url": url})), job_hash)
        store.engine.dispose()
        server.stop()
        reader = ReadModel(settings, poll_interval=0.5)
        try:
            answered = reads(ReadModelPreflight(settings, model=reader), job_hash)
        finally:
            reader.close()
        assert answered == expected
        assert expected["relevant 0 3 []"]
    finally:
        server.cleanup()


def test_a_commit_reaches_the_runner_within_the_bound(
    pg_store: Store, redis_client: redis.Redis, model: ReadModel
) -> None:
    """Commits followed by the workers' hook (a debounced ``Publisher``): each is in the runner's copy within
    ``STALENESS_BOUND_S``, measured from the commit's return to the new pattern being read from the copy."""
    settings = get_settings()
    fill(pg_store, hash_job(JOB), n=200, seed=3)
    publish_read_model(pg_store, redis_client, settings)
    local = ReadModelPreflight(settings, model=model)
    assert model.current() is not None
    publisher = Publisher(pg_store, redis_client, settings)
    context = PatternContext(validation_types=["brand-new"])
    lags: list[float] = []
    try:
        for i in range(8):
            pid = pg_store.record_pattern("semantic_insight", f"fresh {i}", None, ["validation:brand-new"])
            with pg_store.batch() as conn:
                conn.execute(update(patterns).where(patterns.c.id == pid).values(priority_score=2.0 + i))
            committed = time.monotonic()
            publisher.request()
            while True:
                found = local.relevant_patterns(context, 1, rng=random.Random(0))
                if found and found[0].pattern_id == pid:
                    break
                assert time.monotonic() - committed < 10, "the change never reached the read model"
                time.sleep(0.005)
            lags.append(time.monotonic() - committed)
            time.sleep(random.Random(i).uniform(0, 0.6))  # commits at, and off, the debounce rhythm
    finally:
        publisher.stop()
    print(
        f"read-model staleness: median {statistics.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms"
    )
    assert max(lags) <= STALENESS_BOUND_S
    assert publisher.published <= len(lags)


def test_the_periodic_poll_catches_a_lost_notification(
    pg_store: Store, redis_client: redis.Redis, model: ReadModel
) -> None:
    settings = get_settings()
    publish_read_model(pg_store, redis_client, settings)
    assert model.current() is not None
    before = model.version
    # A version published without its notification (as when the runner's subscription was down).
    redis_client.incr(model.keys.version)
    deadline = time.monotonic() + 5
    while model.version == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.version == before + 1


def test_no_snapshot_gives_neutral_answers() -> None:
    settings = runner_settings(key_prefix=get_settings().key_prefix + "empty:")
    reader = ReadModel(settings)
    try:
        preflight = ReadModelPreflight(settings, model=reader)
        assert preflight.relevant_patterns(CONTEXTS[0]) == []
        assert preflight.learned_wait("E101", 12.0) == (12.0, 0.0, "static_fallback")
    finally:
        reader.close()


def test_read_latency_from_the_local_copy(
    pg_store: Store, redis_client: redis.Redis, model: ReadModel
) -> None:
    """Reads from the copy are in-process: well under the direct reads' network round trips."""
    fill(pg_store, hash_job(JOB), n=500, seed=9)
    publish_read_model(pg_store, redis_client, get_settings())
    local = ReadModelPreflight(get_settings(), model=model)
    assert model.current() is not None
    samples = []
    for i in range(300):
        started = time.perf_counter()
        local.relevant_patterns(CONTEXTS[i % 3], 5, job_hash=hash_job(JOB), rng=random.Random(i))
        samples.append(time.perf_counter() - started)
    samples.sort()
    p99 = samples[int(0.99 * len(samples)) - 1]
    print(
        f"read-model relevant_patterns at 500 patterns: p50 {statistics.median(samples) * 1000:.2f} ms, "
        f"p99 {p99 * 1000:.2f} ms"
    )
    assert p99 < 0.05


def test_reads_option_is_validated() -> None:
    with pytest.raises(ValueError, match="reads"):
        Client(JOB, "/srv/readmodel", publish=False, reads="nosql")  # type: ignore[arg-type]
    assert Client(JOB, "/srv/readmodel", publish=False).reads == "sql"


@pytest.mark.usefixtures("ingest_worker")
def test_a_worker_publishes_after_its_commit(
    pg_store: Store, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: a runner reports a pattern, the Celery worker commits it and (publishing switched on)
    publishes the read model, and another runner reading from the read model sees the pattern."""
    del pg_store, redis_client
    monkeypatch.setenv(ENV_SWITCH, "1")
    context = PatternContext(validation_types=["end-to-end"])
    with (
        Client("readmodel-e2e", "/srv/readmodel", preflight=False) as reporter,
        Client(JOB, "/srv/readmodel", publish=False, reads="readmodel") as reader,
    ):
        started = time.monotonic()
        reporter.report_pattern(
            "semantic_insight",
            "end to end",
            "seen through the worker",
            context_tags=["validation:end-to-end"],
        )
        assert reporter.flush()
        while not any(
            "seen through the worker" in p.guidance
            for p in reader.relevant_patterns(context, rng=random.Random(0))
        ):
            assert time.monotonic() - started < 20, "the worker's commit never reached the read model"
            time.sleep(0.02)
    print(f"read model, report to visible through a worker: {(time.monotonic() - started) * 1000:.0f} ms")


def test_old_copies_are_closed_two_versions_later(
    pg_store: Store, redis_client: redis.Redis, model: ReadModel
) -> None:
    pattern_id = pg_store.record_pattern("semantic_insight", "kept", None, ["validation:file_exists"])
    local = ReadModelPreflight(get_settings(), model=model)
    seen = []
    for _ in range(3):
        version = publish_read_model(pg_store, redis_client, get_settings())
        model.refresh()
        assert model.version == version
        seen.append(model.current())
        found = local.relevant_patterns(CONTEXTS[0], rng=random.Random(0))
        assert [p.pattern_id for p in found] == [pattern_id]
    first, second, third = seen
    assert first is not None and first.closed
    assert second is not None and not second.closed
    assert third is not None and not third.closed
