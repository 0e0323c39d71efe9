"""What the runners report back, added up: sheets in order, rate-limit hits and waits, planted secrets."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sheet:
    at: float
    job: str
    success_without_retry: bool
    applied: int


@dataclass
class Tally:
    job_hashes: dict[str, str] = field(default_factory=dict)
    """Job hash → job name, so a broadcast can say which job it came from."""
    sheets: list[Sheet] = field(default_factory=list)
    rate_limited: int = 0
    waits: int = 0
    waited_seconds: float = 0.0
    secrets: list[tuple[str, str]] = field(default_factory=list)
    """(a secret a runner wrote into a tail, that line as it left the runner after scrubbing)."""
    finished: set[str] = field(default_factory=set)
    unflushed: set[str] = field(default_factory=set)

    def drain(self, events: queue.Queue[Any] | Any) -> None:
        """Take every event waiting in ``events`` (a thread or a process queue)."""
        while True:
            try:
                kind, job, at, data = events.get_nowait()
            except queue.Empty:
                return
            self.add(kind, job, at, data)

    def add(self, kind: str, job: str, at: float, data: dict[str, Any]) -> None:
        if kind == "started":
            self.job_hashes[data["job_hash"]] = job
        elif kind == "sheet":
            self.sheets.append(Sheet(at, job, data["success_without_retry"], data["applied"]))
            if data["secret"]:
                self.secrets.append((data["secret"], data["sent"]))
        elif kind == "rate_limited":
            self.rate_limited += 1
        elif kind == "waited":
            self.waits += 1
            self.waited_seconds += data["seconds"]
        elif kind == "finished":
            self.finished.add(job)
            if not data["flushed"]:
                self.unflushed.add(job)

    def quarter_rates(self) -> tuple[float, float]:
        """The share of sheets that succeeded without retry: the first quarter and the last, in time order."""
        ordered = sorted(self.sheets, key=lambda sheet: sheet.at)
        n = len(ordered) // 4
        if n == 0:
            return 0.0, 0.0
        first, last = ordered[:n], ordered[-n:]
        return _rate(first), _rate(last)


def _rate(sheets: list[Sheet]) -> float:
    return sum(sheet.success_without_retry for sheet in sheets) / len(sheets)
