"""Single values from an upstream row, turned into what ostinato stores, or refused with a reason.

Upstream writes SQLite's loose types: booleans as 0/1, JSON as text, times as ISO strings that are naive
local time except where they carry an offset. Each function here accepts exactly what upstream writes, and
anything else becomes a ``RefusedError`` naming the column, so no value is guessed at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any

from ostinato.upstream.errors import RefusedError

MAX_COUNT = 1_000_000_000
MAX_SECONDS = 30 * 24 * 3600
"""The wire contract's bounds for counts and durations (ostinato.schema.messages)."""


class Undecodable(bytes):
    """A TEXT value that is not valid UTF-8: SQLite stores whatever bytes it was given."""


def decode_text(raw: bytes) -> str | Undecodable:
    """The sqlite3 text factory: a bad value is marked for its row to be refused, not fatal to the read."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return Undecodable(raw)


def text(value: Any, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Undecodable):
        raise RefusedError(f"{column} is not valid UTF-8")
    raise RefusedError(f"{column} is not text", repr(value)[:60])


def number(value: Any, column: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RefusedError(f"{column} is not a number", repr(value)[:60])
    if not math.isfinite(value):
        raise RefusedError(f"{column} is not a finite number", repr(value))
    return float(value)


def integer(value: Any, column: str) -> int | None:
    result = number(value, column)
    if result is None:
        return None
    if not result.is_integer():
        raise RefusedError(f"{column} is not a whole number", repr(value))
    return int(result)


def flag(value: Any, column: str) -> bool | None:
    """Upstream's BOOLEAN and INTEGER flags: 0 or 1."""
    result = number(value, column)
    if result is None:
        return None
    if result not in (0.0, 1.0):
        raise RefusedError(f"{column} is not 0 or 1", repr(value))
    return result == 1.0


def bounded(value: Any, column: str, low: float, high: float) -> float | None:
    result = number(value, column)
    if result is not None and not low <= result <= high:
        raise RefusedError(f"{column} outside {low:g}..{high:g}", repr(value))
    return result


def fraction(value: Any, column: str) -> float | None:
    """A rate or score: ostinato keeps them in 0..1 (SPEC-store §0.2)."""
    return bounded(value, column, 0.0, 1.0)


def non_negative(value: Any, column: str) -> float | None:
    return bounded(value, column, 0.0, math.inf)


def seconds(value: Any, column: str) -> float | None:
    return bounded(value, column, 0.0, MAX_SECONDS)


def count(value: Any, column: str) -> int | None:
    result = integer(value, column)
    if result is not None and not 0 <= result <= MAX_COUNT:
        raise RefusedError(f"{column} outside 0..{MAX_COUNT}", repr(value))
    return result


def percentage(value: Any, column: str) -> float | None:
    """A percentage 0..100 (how upstream's runner passes escalation pass rates), as a fraction."""
    result = bounded(value, column, 0.0, 100.0)
    return None if result is None else result / 100.0


def fraction_or_percentage(value: Any, column: str) -> tuple[float | None, bool]:
    """Upstream's executions mix scales (SPEC-store §6.2.1): above 1 is a percentage, 1 and below a
    fraction. Returns the fraction and whether it was converted."""
    result = bounded(value, column, 0.0, 100.0)
    if result is None or result <= 1.0:
        return result, False
    return result / 100.0, True


Localize = Callable[[datetime], datetime]
"""Makes a naive upstream time aware: upstream wrote them in the local zone of the machine it ran on."""


def localizer(zone: tzinfo | None) -> Localize:
    """Naive times in ``zone``; None is this machine's local time (with its past DST rules, via the C
    library, where a fixed offset would be wrong for half the year)."""
    if zone is None:
        return lambda naive: naive.astimezone()
    return lambda naive: naive.replace(tzinfo=zone)


def instant(value: Any, column: str, localize: Localize) -> datetime | None:
    """An ISO time as an aware UTC datetime; one with an offset keeps it, a naive one is local time."""
    raw = text(value, column)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise RefusedError(f"{column} is not an ISO time", repr(raw)[:60]) from None
    if parsed.tzinfo is None:
        parsed = localize(parsed)
    return parsed.astimezone(UTC)


def json_value(value: Any, column: str) -> Any:
    raw = text(value, column)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise RefusedError(f"{column} is not valid JSON", repr(raw)[:60]) from None


def string_list(value: Any, column: str) -> list[str] | None:
    """A JSON list of strings, kept as JSON (jsonb on PostgreSQL) rather than text."""
    result = json_value(value, column)
    if result is None:
        return None
    if not isinstance(result, list) or not all(isinstance(item, str) for item in result):
        raise RefusedError(f"{column} is not a JSON list of strings", repr(value)[:60])
    return result


def json_object(value: Any, column: str) -> dict[str, Any] | None:
    result = json_value(value, column)
    if result is None:
        return None
    if not isinstance(result, dict):
        raise RefusedError(f"{column} is not a JSON object", repr(value)[:60])
    return result


def one_of(value: Any, column: str, allowed: frozenset[str]) -> str | None:
    result = text(value, column)
    if result is not None and result not in allowed:
        raise RefusedError(f"{column} is not one of {', '.join(sorted(allowed))}", repr(result)[:60])
    return result
