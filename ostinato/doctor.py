"""``ostinato doctor``: the deployment checked for what would lose or delay data, each finding with its fix.

Every check reports OK, WARN (works, but a known fault costs something) or FAIL (data is lost or nothing
works); the command exits 1 on any FAIL, so it can gate a deployment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from ostinato.probes import database_engine, reason, redis_client
from ostinato.schema.migrate import current_revisions, newest_revisions
from ostinato.settings import LONGEST_COUNTDOWN_SECONDS, Settings, redact_url

DEFAULT_PREFIX = "ostinato:"
SLOW_RECOVERY_SECONDS = 60.0
"""A dead worker's messages coming back later than this is worth a warning."""
ENABLE_AOF = (
    "set `appendonly yes` (and `appendfsync everysec`) in redis.conf, or at once: "
    "`redis-cli CONFIG SET appendonly yes` then `redis-cli CONFIG REWRITE`"
)
NO_PERSISTENCE_LOSS = "measured here: a restart lost 3,264 of 18,000 messages"


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""


def diagnose(load: Callable[[], Settings] = Settings) -> list[Finding]:
    """Every check, in the order an operator fixes them; settings that do not load are the only finding."""
    try:
        settings = load()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        return [Finding("settings", Level.FAIL, problems, "correct the OSTINATO_* variables named here")]
    return [
        *redis_findings(settings),
        redelivery(settings),
        database(settings),
        key_prefix(settings),
        *spool(settings),
    ]


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.level is Level.FAIL for f in findings) else 0


# --- Redis ---------------------------------------------------------------------------------------------


def redis_findings(settings: Settings) -> list[Finding]:
    url = redact_url(settings.broker_url)
    client = redis_client(settings.broker_url)
    try:
        info: dict[str, Any] = client.info("persistence")
        config = _config(client, "appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy")
    except (redis.RedisError, OSError) as error:
        fix = "start Redis, or point OSTINATO_BROKER_URL at it"
        return [Finding("Redis", Level.FAIL, f"no answer at {url}: {reason(error)}", fix)]
    finally:
        client.close()
    return [persistence(info, config), eviction(config)]


def _config(client: redis.Redis, *names: str) -> dict[str, str] | None:
    """The named settings, or None where CONFIG is refused (managed services often rename it)."""
    try:
        values: dict[str, str] = {}
        for name in names:
            values.update((str(key), str(value)) for key, value in client.config_get(name).items())
        return values
    except redis.ResponseError:
        return None


def persistence(info: dict[str, Any], config: dict[str, str] | None) -> Finding:
    """Whether what Redis holds (the queues, the unacknowledged messages) survives its restart."""
    check = "Redis persistence"
    aof = str(info.get("aof_enabled", "0")) == "1" or (config or {}).get("appendonly") == "yes"
    if aof:
        if info.get("aof_last_write_status", "ok") != "ok":
            return Finding(check, Level.FAIL, "AOF is on but its last write failed", "check Redis's disk")
        fsync = (config or {}).get("appendfsync")
        if fsync == "no":
            detail = "AOF on, fsync left to the OS: a machine crash loses about 30 s of writes"
            return Finding(check, Level.WARN, detail, "set `appendfsync everysec`")
        loses = {"always": "nothing Redis acknowledged", "everysec": "at most the last second of writes"}
        lost = loses.get(fsync or "", "only what had not reached the AOF")
        return Finding(check, Level.OK, f"AOF on (appendfsync {fsync or '?'}): a restart loses {lost}")
    if config is None:
        detail = (
            "AOF off; the snapshot schedule is unreadable (CONFIG refused): a restart may lose the queues"
        )
        return Finding(check, Level.WARN, detail, ENABLE_AOF)
    save = config.get("save", "").strip()
    if save:
        detail = (
            f'AOF off, RDB snapshots only (save "{save}"): a restart loses every message sent since the last '
            "snapshot"
        )
        return Finding(check, Level.WARN, detail, ENABLE_AOF)
    detail = (
        'no persistence (appendonly no, save ""): a Redis restart loses every waiting and unacknowledged '
        f"message ({NO_PERSISTENCE_LOSS})"
    )
    return Finding(check, Level.FAIL, detail, ENABLE_AOF)


def eviction(config: dict[str, str] | None) -> Finding:
    """A memory limit with an ``allkeys-*`` policy lets Redis evict the queues themselves."""
    check = "Redis eviction"
    if config is None:
        return Finding(
            check, Level.WARN, "unreadable (CONFIG refused)", "make sure maxmemory-policy is noeviction"
        )
    limit, policy = int(config.get("maxmemory", "0") or 0), config.get("maxmemory-policy", "noeviction")
    if limit and policy.startswith("allkeys"):
        detail = f"maxmemory {limit} bytes with {policy}: when full, Redis deletes queued messages silently"
        fix = "`maxmemory-policy noeviction`: a full Redis then refuses writes and producers spool instead"
        return Finding(check, Level.FAIL, detail, fix)
    if limit:
        return Finding(check, Level.OK, f"maxmemory {limit} bytes, {policy}: queues are never evicted")
    return Finding(check, Level.OK, f"no memory limit ({policy}): queues are never evicted")


# --- redelivery, database, key prefix -----------------------------------------------------------------


def redelivery(settings: Settings) -> Finding:
    """How soon a dead worker's messages come back (the settings already refuse an unsafe combination)."""
    visibility, scan = settings.visibility_timeout, settings.unacked_restore_interval
    recovery = visibility + scan
    detail = (
        f"visibility timeout {visibility:g} s > task time limit {settings.task_time_limit:g} s and longest "
        f"countdown {LONGEST_COUNTDOWN_SECONDS:g} s; a dead worker's messages are delivered again after "
        f"about {recovery:g} s (visibility timeout + a restore scan every {scan:g} s)"
    )
    if recovery > SLOW_RECOVERY_SECONDS:
        fix = (
            "lower OSTINATO_VISIBILITY_TIMEOUT (it must stay above the task time limit and the longest "
            "countdown; lower OSTINATO_TASK_TIME_LIMIT first if need be)"
        )
        return Finding("redelivery", Level.WARN, detail, fix)
    return Finding("redelivery", Level.OK, detail)


def database(settings: Settings) -> Finding:
    check = "database"
    url = redact_url(settings.database_url)
    engine = database_engine(settings.database_url)
    try:
        current = current_revisions(engine)
    except Exception as error:
        fix = (
            "start PostgreSQL or correct OSTINATO_DATABASE_URL; `ostinato migrate` creates a missing database"
        )
        return Finding(check, Level.FAIL, f"no answer at {url}: {reason(error)}", fix)
    finally:
        engine.dispose()
    newest = newest_revisions()
    if current == newest:
        return Finding(check, Level.OK, f"{url} answers, migrated to the newest revision {_names(newest)}")
    if not current:
        detail = f"{url} answers but is not migrated: no store tables (newest revision {_names(newest)})"
    else:
        detail = (
            f"{url} is not migrated to the newest revision: at {_names(current)}, newest {_names(newest)}"
        )
    return Finding(check, Level.FAIL, detail, "run `ostinato migrate`")


def _names(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions))


def key_prefix(settings: Settings) -> Finding:
    check, prefix = "key prefix", settings.key_prefix
    if not prefix:
        detail = "empty: the queues and kombu's own keys are shared with anything else on this Redis"
        return Finding(check, Level.FAIL, detail, "set OSTINATO_KEY_PREFIX, e.g. `myteam:`")
    if not prefix.endswith(":"):
        detail = f"{prefix!r} does not end with ':': it runs into the key names and can start another prefix"
        return Finding(check, Level.WARN, detail, f"set OSTINATO_KEY_PREFIX={prefix}:")
    if prefix == DEFAULT_PREFIX:
        detail = (
            f"{prefix!r}, the default: fine for one deployment; on a shared Redis, each deployment and test "
            "run needs its own"
        )
        return Finding(check, Level.OK, detail)
    return Finding(check, Level.OK, repr(prefix))


# --- spool ---------------------------------------------------------------------------------------------


def spool(settings: Settings) -> list[Finding]:
    """Where a runner keeps batches while Redis is away; checked on this machine, as the runner would be."""
    directory = settings.spool_dir
    existing = _nearest_existing(directory)
    return [
        _spool_directory(directory, existing),
        _spool_policy(settings),
        _spool_bound(settings, existing),
    ]


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _spool_directory(directory: Path, existing: Path) -> Finding:
    check = "spool directory"
    fix = "make it writable by the runner's user, or set OSTINATO_SPOOL_DIR"
    if existing != directory:
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
            return Finding(check, Level.OK, f"{directory} will be created on first use (under {existing})")
        return Finding(check, Level.FAIL, f"{directory} cannot be created: {existing} is not writable", fix)
    if not directory.is_dir():
        return Finding(check, Level.FAIL, f"{directory} is not a directory", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as error:
        detail = f"{directory} is not writable ({reason(error)}): with Redis away, batches have nowhere to go"
        return Finding(check, Level.FAIL, detail, fix)
    return Finding(check, Level.OK, f"{directory} is writable")


def _spool_policy(settings: Settings) -> Finding:
    check, policy = "spool when full", settings.spool_full_policy
    durable = "; durable mode on" if settings.durable else ""
    if policy == "drop_oldest":
        detail = f"drop_oldest: a full spool drops its oldest batch (counted and logged){durable}"
        fix = "OSTINATO_SPOOL_FULL_POLICY=block (or raise), or a larger OSTINATO_SPOOL_MAX_BYTES"
        return Finding(check, Level.WARN, detail, fix)
    if policy == "block":
        detail = (
            f"block: the caller waits up to {settings.spool_block_seconds:g} s for room, then gets SpoolFull"
        )
    else:
        detail = "raise: the caller gets SpoolFull at once"
    return Finding(check, Level.OK, detail + durable)


def _spool_bound(settings: Settings, existing: Path) -> Finding:
    bound = settings.spool_max_bytes
    free = shutil.disk_usage(existing).free
    if free < bound:
        detail = (
            f"bound {size(bound)}, but only {size(free)} free there: the disk fills before the spool does"
        )
        return Finding("spool bound", Level.WARN, detail, "lower OSTINATO_SPOOL_MAX_BYTES or free disk space")
    return Finding("spool bound", Level.OK, f"{size(bound)} ({size(free)} free on its disk)")


def size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


# --- output --------------------------------------------------------------------------------------------

_COLOURS = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}


def render(findings: list[Finding], console: Console) -> None:
    table = Table("check", "result", "finding", "fix", title="ostinato doctor")
    for f in findings:
        table.add_row(f.check, f"[{_COLOURS[f.level]}]{f.level}[/]", f.detail, f.fix)
    console.print(table)
    counts = {level: sum(1 for f in findings if f.level is level) for level in Level}
    console.print(", ".join(f"{counts[level]} {level}" for level in Level))
