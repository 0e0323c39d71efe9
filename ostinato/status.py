"""``ostinato status``: what is waiting, how late ingest is, which workers answer, when maintenance last ran.

Each part is read on its own and a part that cannot be read says why, so the command answers (within about
two seconds) even when Redis or the database is down, which is when an operator needs it most.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kombu import compression
from kombu.connection import Connection
from kombu.pidbox import Mailbox
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError

from ostinato.broker import INGEST_QUEUE, MAINTENANCE_QUEUE, transport_options
from ostinato.probes import PROBE_TIMEOUT, database_engine, reason, redis_client
from ostinato.schema.tables import maintenance_runs
from ostinato.settings import Settings, redact_url

PING_TIMEOUT = 1.0
"""Seconds workers get to answer a ping; a live worker answers in milliseconds."""
UNREACHABLE = "unreachable"
CONTROL_EXCHANGE = "celery"
CONTROL_QUEUE_TTL = 300.0
CONTROL_QUEUE_EXPIRES = 10.0
"""Celery's defaults for its control mailbox (``control_exchange``, ``control_queue_ttl``/``_expires``)."""


@dataclass(frozen=True)
class Queues:
    ingest: int
    maintenance: int
    unacked: int
    """Messages delivered to a worker and not yet acknowledged (kombu's ``unacked`` hash)."""
    oldest_sent_at: datetime | None
    """When the oldest waiting ingest message was sent; None when none waits or it carries no time."""


@dataclass(frozen=True)
class MaintenanceRun:
    task: str
    period_start: datetime
    ran_at: datetime
    summary: dict[str, Any]


@dataclass
class Status:
    checked_at: datetime
    queues: Queues | None = None
    redis_error: str | None = None
    workers: list[str] | None = None
    workers_error: str | None = None
    runs: list[MaintenanceRun] | None = None
    database_error: str | None = None
    database_unreachable: bool = False

    @property
    def lag_seconds(self) -> float | None:
        """Age of the oldest waiting ingest message: 0 when none waits, None when unknown."""
        if self.queues is None:
            return None
        if self.queues.ingest == 0:
            return 0.0
        if self.queues.oldest_sent_at is None:
            return None
        return max(0.0, (self.checked_at - self.queues.oldest_sent_at).total_seconds())


def collect(settings: Settings, *, ping_timeout: float = PING_TIMEOUT) -> Status:
    """Read every part; workers are pinged on a thread while the database is read."""
    status = Status(checked_at=datetime.now(UTC))
    try:
        status.queues = read_queues(settings)
    except Exception as error:  # any failure to read Redis is reported, not raised
        status.redis_error = reason(error)
    pinger = None
    if status.queues is not None:
        pinger = threading.Thread(target=_ping_into, args=(status, settings, ping_timeout), daemon=True)
        pinger.start()
    else:
        status.workers_error = f"Redis {UNREACHABLE}"
    try:
        status.runs = last_maintenance_runs(settings.database_url)
    except (OperationalError, InterfaceError) as error:
        status.database_error, status.database_unreachable = reason(error), True
    except Exception as error:  # it answers, but not as a migrated store does (ostinato migrate)
        status.database_error = reason(error)
    if pinger is not None:
        pinger.join(ping_timeout + PROBE_TIMEOUT)
        if pinger.is_alive():
            status.workers_error = "no answer to the ping in time"
    return status


def read_queues(settings: Settings) -> Queues:
    prefix = settings.key_prefix
    client = redis_client(settings.broker_url)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(f"{prefix}{INGEST_QUEUE}")
            pipe.llen(f"{prefix}{MAINTENANCE_QUEUE}")
            pipe.hlen(f"{prefix}unacked")
            pipe.lindex(f"{prefix}{INGEST_QUEUE}", -1)  # kombu pushes on the left: the tail is the oldest
            ingest, maintenance, unacked, oldest = pipe.execute()
    finally:
        client.close()
    sent_at = message_sent_at(oldest) if oldest is not None else None
    return Queues(int(ingest), int(maintenance), int(unacked), sent_at)


def message_sent_at(raw: bytes | str) -> datetime | None:
    """The earliest ``sent_at`` of the envelopes in a kombu task message, or None if it has none.

    Neither kombu nor Celery records when a message was sent, but every envelope does. The body is
    base64 and may be compressed (batches are zstd), as the message's properties and headers say.
    """
    try:
        message = json.loads(raw)
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        method = message.get("headers", {}).get("compression")
        if method:
            body = compression.decompress(body, method)  # type: ignore[no-untyped-call]
        args = json.loads(body)[0]
    except Exception:  # not a message this code understands: the lag is unknown, not an error
        return None
    times = [sent for envelope in _envelopes(args) if (sent := _sent_at(envelope)) is not None]
    return min(times, default=None)


def _envelopes(args: object) -> Iterable[object]:
    """A batch task takes a list of envelopes, a kind task one envelope; either may arrive as JSON text."""
    for arg in args if isinstance(args, list) else ():
        for item in arg if isinstance(arg, list) else [arg]:
            if not isinstance(item, str | bytes):
                yield item
                continue
            try:
                yield json.loads(item)
            except ValueError:
                continue


def _sent_at(envelope: object) -> datetime | None:
    value = envelope.get("sent_at") if isinstance(envelope, dict) else None
    if isinstance(value, dict):  # kombu's JSON encodes a datetime as {"__type__": ..., "__value__": ...}
        value = value.get("__value__")
    if not isinstance(value, str):
        return None
    try:
        sent = datetime.fromisoformat(value)
    except ValueError:
        return None
    return sent if sent.tzinfo else sent.replace(tzinfo=UTC)


def _ping_into(status: Status, settings: Settings, timeout: float) -> None:
    try:
        status.workers = ping_workers(settings, timeout)
    except Exception as error:
        status.workers_error = reason(error)


def ping_workers(settings: Settings, timeout: float = PING_TIMEOUT) -> list[str]:
    """The names of the workers that answer a broadcast ping on this deployment's key prefix.

    This is ``app.control.inspect().ping()`` done with kombu's mailbox as Celery configures it, without
    loading Celery, which alone takes longer than the ping.
    """
    mailbox = Mailbox(  # type: ignore[no-untyped-call]
        CONTROL_EXCHANGE,
        type="fanout",
        accept=["json"],
        serializer="json",
        reply_queue_ttl=CONTROL_QUEUE_TTL,
        reply_queue_expires=CONTROL_QUEUE_EXPIRES,
    )
    options = transport_options(settings, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT)
    with Connection(settings.broker_url, transport_options=options) as connection:  # type: ignore[no-untyped-call]
        replies = mailbox(connection)._broadcast("ping", arguments={}, reply=True, timeout=timeout)
    return sorted(name for reply in replies or [] for name in reply)


def last_maintenance_runs(database_url: str) -> list[MaintenanceRun]:
    """The latest run of each maintenance task, newest period first."""
    runs = maintenance_runs
    latest = (
        select(runs.c.task, func.max(runs.c.period_start).label("period_start"))
        .group_by(runs.c.task)
        .subquery()
    )
    query = (
        select(runs.c.task, runs.c.period_start, runs.c.ran_at, runs.c.summary)
        .join(latest, (runs.c.task == latest.c.task) & (runs.c.period_start == latest.c.period_start))
        .order_by(runs.c.ran_at.desc(), runs.c.task)
    )
    engine = database_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
    finally:
        engine.dispose()
    return [MaintenanceRun(row.task, row.period_start, row.ran_at, dict(row.summary or {})) for row in rows]


# --- output ------------------------------------------------------------------------------------------------


def render(status: Status, settings: Settings, console: Console) -> None:
    table = Table("", "", title=f"ostinato status (key prefix {settings.key_prefix!r})", show_header=False)
    table.add_row("Redis", _redis_line(status, settings))
    if status.queues is not None:
        q = status.queues
        table.add_row(f"{INGEST_QUEUE} queue", f"{q.ingest} waiting")
        table.add_row(f"{MAINTENANCE_QUEUE} queue", f"{q.maintenance} waiting")
        table.add_row("unacknowledged", f"{q.unacked} held by workers")
    table.add_row("ingest lag", _lag_line(status))
    table.add_row("workers", _workers_line(status))
    table.add_row("database", _database_line(status, settings))
    console.print(table)
    if status.runs:
        runs = Table("task", "last ran", "ago", "summary", title="last maintenance runs")
        for run in status.runs:
            ago = (status.checked_at - run.ran_at).total_seconds()
            runs.add_row(run.task, run.ran_at.isoformat(timespec="seconds"), duration(ago), _summary(run))
        console.print(runs)


def _redis_line(status: Status, settings: Settings) -> str:
    url = redact_url(settings.broker_url)
    return f"[red]{UNREACHABLE}[/] at {url}: {status.redis_error}" if status.redis_error else f"ok, {url}"


def _lag_line(status: Status) -> str:
    if status.queues is None:
        return f"unknown (Redis {UNREACHABLE})"
    lag = status.lag_seconds
    if lag is None:
        return "unknown (the oldest message carries no send time)"
    if status.queues.ingest == 0:
        return "none: nothing waits"
    return (
        f"{duration(lag)} (oldest waiting message sent {status.queues.oldest_sent_at:%Y-%m-%d %H:%M:%S} UTC)"
    )


def _workers_line(status: Status) -> str:
    if status.workers is None:
        return f"unknown ({status.workers_error})"
    if not status.workers:
        return f"[red]none answered[/] a ping within {PING_TIMEOUT:g} s"
    return f"{len(status.workers)} alive: " + ", ".join(status.workers)


def _database_line(status: Status, settings: Settings) -> str:
    url = redact_url(settings.database_url)
    if status.database_unreachable:
        return f"[red]{UNREACHABLE}[/] at {url}: {status.database_error}"
    if status.database_error:
        return f"[red]cannot read maintenance runs[/] at {url} (ostinato migrate?): {status.database_error}"
    if not status.runs:
        return f"ok, {url}; no maintenance run recorded yet (ostinato beat sends them)"
    return f"ok, {url}"


def _summary(run: MaintenanceRun) -> str:
    text = json.dumps(run.summary, separators=(", ", ": "), default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def duration(seconds: float) -> str:
    """``42.0 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``: as precise as a person needs."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
