"""Discovery latency: worker commit → subscriber callback, next to a raw Redis PUBLISH → receive.

    python bench/broadcast.py [--discoveries 1000] [--rate 200] [--concurrency 2]

Three figures from one run, each p50/p99/max over the same number of messages sent at the same pace:

- raw: ``time.time()`` just before a redis-py ``PUBLISH`` → a plain redis-py subscriber in another process
  reads the message. The floor: what Redis pub/sub itself costs on this machine.
- discovery: ``time.time()`` just before the worker's ``publish_discoveries`` call, which is the moment the
  ingest transaction that created the pattern has committed → the subscriber's callback runs in another
  process (``ostinato.producers.subscribe``: decode, filter, de-duplicate, hand over). The worker is this
  module run as the Celery app (``celery -A broadcast``): the real ostinato worker, whose publish call is
  wrapped to note each event's commit time in a Redis hash after it has published.
- end to end: ``report_pattern()`` on a runner → that callback: adds the producer's batching window, the
  Celery queue and the ingest transaction.

All clocks are this host's wall clock, so times from different processes compare directly.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from typing import Any

import redis
from common import isolated_environment, wait_until, worker_process
from rich.console import Console
from rich.table import Table

WARMUP = 20
"""Discoveries sent first and left out: the first ingest of each pool process opens its connections."""
SOURCE_JOB = "bench-broadcast-source"
LISTENER_JOB = "bench-broadcast-listener"


def commit_key(key_prefix: str) -> str:
    return f"{key_prefix}bench:committed"


def __getattr__(name: str) -> Any:
    """``celery -A broadcast`` asks this module for ``app``: the ostinato app, its commit times noted."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ostinato.schema.records import PatternDiscoveryEvent
    from ostinato.settings import get_settings
    from ostinato.workers import app, tasks
    from ostinato.workers.broadcast import publish_discoveries as publish

    key = commit_key(get_settings().key_prefix)

    def publish_noting_commit(
        client: redis.Redis, channel: str, events: Sequence[PatternDiscoveryEvent]
    ) -> int:
        committed = time.time()
        sent = publish(client, channel, events)
        if events:
            client.hset(key, mapping={event.id: committed for event in events})
        return sent

    vars(tasks)["publish_discoveries"] = publish_noting_commit
    globals()["app"] = app
    return app


def listen_discoveries(ready: Any, stop: Any, results: Any) -> None:
    """A runner process: the callback notes when each event reached it."""
    from ostinato.producers.subscriber import subscribe
    from ostinato.schema.identity import hash_job

    arrivals: dict[str, tuple[float, str]] = {}

    def on_discovery(event: Any) -> None:
        arrivals[event.id] = (time.time(), event.pattern_id)

    with subscribe(hash_job(LISTENER_JOB), callback=on_discovery) as handle:
        if not handle.wait_ready(60):
            raise RuntimeError("the subscriber did not connect")
        ready.set()
        stop.wait()
    results.put(arrivals)


def listen_raw(url: str, channel: str, ready: Any, stop: Any, results: Any) -> None:
    """A plain redis-py subscriber: each message carries its send time."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    while (message := pubsub.get_message(timeout=1.0)) is None or message["type"] != "subscribe":
        pass
    ready.set()
    latencies = []
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            latencies.append(time.time() - float(message["data"]))
    pubsub.close()
    client.close()
    results.put(latencies)


def paced(count: int, rate: float) -> Any:
    """Yield 0..count-1, each at its slot of a steady ``rate`` per second."""
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield index


def bench_raw(url: str, count: int, rate: float) -> list[float]:
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    channel = f"bench-raw-{time.time_ns()}"
    process = context.Process(target=listen_raw, args=(url, channel, ready, stop, results))
    process.start()
    if not ready.wait(60):
        raise RuntimeError("the raw subscriber did not connect")
    client = redis.Redis.from_url(url)
    for _ in paced(count, rate):
        client.publish(channel, repr(time.time()))
    time.sleep(1.0)
    stop.set()
    latencies: list[float] = results.get(timeout=60)
    process.join(30)
    client.close()
    return latencies


def bench_discoveries(
    env: dict[str, str], count: int, rate: float, concurrency: int
) -> tuple[list[float], list[float], int]:
    """Discovery and end-to-end latencies of ``count`` new patterns, and how many never arrived."""
    from ostinato.producers import Client
    from ostinato.schema.identity import pattern_id

    prefix = env["OSTINATO_KEY_PREFIX"]
    broker = redis.Redis.from_url(env["OSTINATO_BROKER_URL"], decode_responses=True)
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    listener = context.Process(target=listen_discoveries, args=(ready, stop, results))
    with worker_process(env, "broadcast", "ostinato.ingest", concurrency):
        listener.start()
        if not ready.wait(60):
            raise RuntimeError("the subscriber did not connect")
        reported: dict[str, float] = {}
        with Client(SOURCE_JOB, "/srv/bench/broadcast") as client:
            for index in range(WARMUP):
                client.report_pattern("semantic_insight", f"warm-up {index}", "a runner's hint")
            client.flush(60)
            wait_until(lambda: broker.hlen(commit_key(prefix)) >= WARMUP, timeout=120)
            warm = {str(key) for key in broker.hkeys(commit_key(prefix))}
            for index in paced(count, rate):
                name = f"discovery {index}"
                reported[pattern_id("semantic_insight", name)] = time.time()
                client.report_pattern("semantic_insight", name, "a runner's hint")
            client.flush(60)
        wait_until(lambda: broker.hlen(commit_key(prefix)) >= WARMUP + count, timeout=300)
        time.sleep(1.0)
        stop.set()
        arrivals: dict[str, tuple[float, str]] = results.get(timeout=60)
        listener.join(30)
    stamps: dict[str, str] = broker.hgetall(commit_key(prefix))  # type: ignore[assignment]
    committed = {key: float(value) for key, value in stamps.items() if key not in warm}
    broker.close()
    discovery = [arrivals[event_id][0] - at for event_id, at in committed.items() if event_id in arrivals]
    end_to_end = [
        arrived - reported[pid] for event_id, (arrived, pid) in arrivals.items() if event_id in committed
    ]
    return discovery, end_to_end, len(committed) - len(discovery)


def row(name: str, samples: list[float]) -> list[str]:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = statistics.quantiles(ms, n=100)[98] if len(ms) > 1 else ms[0]
    return [name, str(len(ms)), f"{p50:.2f}", f"{p99:.2f}", f"{ms[-1]:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--discoveries", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second, for both runs")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    args = parser.parse_args()

    console = Console()
    with isolated_environment("broadcast") as env:
        raw = bench_raw(env["OSTINATO_BROKER_URL"], args.discoveries, args.rate)
        discovery, end_to_end, missing = bench_discoveries(env, args.discoveries, args.rate, args.concurrency)
    table = Table(
        "measured", "samples", "p50 ms", "p99 ms", "max ms", title=f"broadcast latency at {args.rate:g}/s"
    )
    table.add_row(*row("raw Redis PUBLISH → receive", raw))
    table.add_row(*row("discovery: worker commit → callback", discovery))
    table.add_row(*row("end to end: report_pattern() → callback", end_to_end))
    console.print(table)
    if missing:
        console.print(f"[red]{missing} discoveries never reached the subscriber[/red]")
    overhead = statistics.median(discovery) - statistics.median(raw)
    console.print(f"the subscriber path adds {overhead * 1000:.2f} ms at p50 over raw pub/sub")


if __name__ == "__main__":
    main()
