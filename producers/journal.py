"""The durable mode's journal segment: envelopes appended one line at a time, each on disk before its call
returns.

A segment is one append-only file of JSON lines in the process's spool slot. Appends happen under the
spool's lock (a write is microseconds); the fsync does not, and whoever fsyncs covers every line written
before it, so concurrent callers share fsyncs (group commit) instead of queueing for one each. A crash can
cut only the line being written, which has no newline yet and is skipped when the segment is read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class Segment:
    """One open journal file; ``write`` under the spool's lock, then ``sync`` the count it returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []
        self.size = 0
        self._synced = 0
        self._sync_lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sync_directory(path.parent)  # the file itself must survive a crash, not only its lines

    def write(self, data: bytes, line: str) -> int:
        """Append ``data`` (``line`` and a newline, encoded); the number of lines so far, for ``sync``."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            os.ftruncate(self._fd, self.size)  # no half line for the next one to be glued to
            raise
        self.size += len(data)
        self.items.append(line)
        return len(self.items)

    def sync(self, count: int) -> None:
        """Return once the first ``count`` lines are on disk; one fsync serves every line written so far."""
        with self._sync_lock:
            if self._synced >= count:
                return
            written = len(self.items)
            os.fsync(self._fd)
            self._synced = written

    def close(self) -> None:
        """fsync what is not yet on disk and close the file; later ``sync`` calls return at once."""
        with self._sync_lock:
            if self._fd < 0:
                return
            if self._synced < len(self.items):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._synced = len(self.items)


def parse_lines(data: bytes, source: Path) -> list[str]:
    """The envelopes of a journal file: whole lines only (a crash cuts at most the last one, unended)."""
    *lines, tail = data.split(b"\n")
    envelopes = [text for line in lines if (text := line.decode("utf-8", "replace")).startswith("{")]
    skipped = len(lines) - len(envelopes) + (1 if tail else 0)
    if skipped:
        log.warning("journal_lines_skipped", file=str(source), lines=skipped)
    return envelopes


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
