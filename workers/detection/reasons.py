"""Failure-reason normalisation, so differently worded reasons aggregate into one recurring issue."""

from __future__ import annotations

FAILURE_REASON_KEYWORDS: tuple[str, ...] = (
    "file not created",
    "file not modified",
    "pattern not found",
    "content empty",
    "content missing",
    "command failed",
    "timeout",
    "permission denied",
    "rate limit",
    "connection refused",
    "connection failed",
    "connection",
    "not found",
    "syntax error",
    "import error",
    "type error",
    "authentication",
    "authorization",
    "access denied",
)
"""Checked in this order, most specific first: the first one contained in a reason names it."""

MAX_NORMALIZABLE_REASON_LENGTH = 50
"""A reason with no keyword that is longer than this is too specific to recur, so it is dropped."""


def normalize_failure_reason(reason: str | None) -> str:
    """The canonical form of a reason: its first keyword, else the short reason itself, else ""."""
    normalized = (reason or "").lower().strip()
    if not normalized:
        return ""
    for keyword in FAILURE_REASON_KEYWORDS:
        if keyword in normalized:
            return keyword
    return normalized if len(normalized) <= MAX_NORMALIZABLE_REASON_LENGTH else ""
