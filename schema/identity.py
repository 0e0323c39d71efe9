"""The upstream store's identifiers, so ids computed here match rows imported from upstream."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_TRAILING_DIGITS = re.compile(r"(\d+)$")


def hash16(text: str) -> str:
    """First 16 hex chars of SHA-256: upstream's short id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def hash32(text: str) -> str:
    """First 32 hex chars of SHA-256: upstream's content hash."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def normalize_pattern_name(name: str) -> str:
    """Lower-case, whitespace runs collapsed to one space, ends trimmed."""
    return " ".join(name.lower().split())


def pattern_id(pattern_type: str, pattern_name: str) -> str:
    """A pattern's id: the same for every spelling of its name."""
    return hash16(f"{pattern_type}:{normalize_pattern_name(pattern_name)}")


def content_hash(pattern_type: str, pattern_name: str, description: str | None) -> str:
    """What a pattern says, for merging rows whose ids were derived differently."""
    return hash32(f"{pattern_type}:{normalize_pattern_name(pattern_name)}:{description or ''}")


def hash_job(job_name: str, config_hash: str | None = None) -> str:
    """The job hash that travels instead of the job's name."""
    return hash16(f"{job_name}:{config_hash or ''}")


def hash_workspace(path: str | Path) -> str:
    """The workspace hash that travels instead of the workspace path."""
    return hash16(str(Path(path).resolve()))


def sheet_num_from_id(sheet_id: str) -> int:
    """Trailing digits of a sheet id ("job-sheet42" → 42), else 0."""
    match = _TRAILING_DIGITS.search(sheet_id)
    return int(match.group(1)) if match else 0
