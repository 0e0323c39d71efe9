"""A durable FIFO of envelope batches on disk: what the runner could not publish yet survives a restart.

Each batch is one file named by a zero-padded sequence number, zstd-compressed JSON (``.zst``: outcomes
with their tails take a fraction of their JSON size), written to a temporary file, fsynced and renamed into
place, so a crash leaves either the whole batch or nothing. Batches of the earlier uncompressed format
(``.json``) are still read, so a spool written by an older producer drains. In durable mode, envelopes are
appended one by one to a journal segment (``.jsonl``, see ``journal``) that holds the next number, so it
is resent in its place; ``seal`` makes it a batch like the others.

The byte bound counts bytes on disk. ``append`` stores as much of a batch as fits, so the only thing that
can never be stored is an envelope larger than the whole bound; what happens when the spool is full is the
sender's policy, which ``drop_oldest`` serves.

Several runner processes may share one spool directory (the default is per user, not per runner): each
``Spool`` claims its own slot subdirectory under an exclusive ``flock``, and a later process claims a free
slot, finds what an earlier one left there (a SIGKILLed one's journal too) and resends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ostinato.producers.journal import Segment, parse_lines, sync_directory

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

log = structlog.get_logger(__name__)

Batch = list[dict[str, Any] | str]
MAX_SLOTS = 64
COMPRESSION_LEVEL = 3
"""Spooling happens only while Redis is away or busy, where room matters more than the few milliseconds
per batch that level 3 costs over level 1."""
BATCH = ".zst"
LEGACY = ".json"
JOURNAL = ".jsonl"
_SUFFIXES = (BATCH, LEGACY, JOURNAL)
_WIDTH = 20
_SEQUENCE_FILE = ".sequence"


class SpoolFull(Exception):  # noqa: N818 - the name is the producer's public contract
    """The envelope could be neither queued nor spooled: the spool is at its byte bound (or cannot be
    written), and the full-spool policy says so to the publishing call."""


@dataclass
class _Entry:
    seq: int
    suffix: str
    size: int
    count: int | None = None
    """Envelopes in it, when this process wrote it (a recovered file is read to count it)."""
    fresh: bool = False
    """Sealed from this process's journal and not yet failed to publish: its first publish is no resend."""

    @property
    def name(self) -> str:
        return _name(self.seq, self.suffix)


class Spool:
    """Batches in append order, across restarts; safe to share between threads of one process.

    ``segment_limit`` is the number of envelopes after which a journal segment is sealed on its own.
    """

    def __init__(self, directory: Path, max_bytes: int, *, segment_limit: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.segment_limit = segment_limit
        self._lock = threading.Lock()
        self.path, self._lock_fd = _claim_slot(Path(directory).expanduser())
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._journal: tuple[int, Segment] | None = None
        self._lent: int | None = None
        """The batch ``peek`` handed out for publishing: ``drop_oldest`` leaves it alone."""
        self._cached: tuple[int, list[str]] | None = None
        """The last sealed segment's lines, so publishing it needs no read from disk."""
        self._next = self._recover()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0

    @property
    def journal_count(self) -> int:
        """Envelopes in the open journal segment (not yet sealed into a batch)."""
        journal = self._journal
        return len(journal[1].items) if journal is not None else 0

    @property
    def sealed(self) -> int:
        """Batches ``peek`` can hand out: everything but the open journal segment."""
        return len(self._entries)

    def __len__(self) -> int:
        return len(self._entries) + (1 if self.journal_count else 0)

    def append(self, batch: Batch) -> int:
        """Store the longest start of ``batch`` that fits, after every batch already here; its length.

        0 when not even the first envelope fits the room left (``fits_alone`` tells whether it ever could).
        """
        if not batch:
            return 0
        with self._lock:
            self._check_open()
            count, data = _fitting(batch, self.max_bytes - self._bytes)
            if count:
                seq = self._take_seq()
                _write_durably(self.path, _name(seq, BATCH), data)
                self._entries.append(_Entry(seq, BATCH, len(data), count))
                self._bytes += len(data)
            return count

    def fits_alone(self, envelope: dict[str, Any] | str) -> bool:
        """Whether ``envelope`` fits an empty spool (compressed): only one that does not can never be kept."""
        return len(_compress([envelope])) <= self.max_bytes

    def journal(self, line: str) -> bool:
        """Append one envelope (its JSON text) to the journal; True once it is on disk, False if no room.

        The open segment is sealed as a batch once it holds ``segment_limit`` envelopes.
        """
        data = f"{line}\n".encode()
        with self._lock:
            self._check_open()
            if self._bytes + len(data) > self.max_bytes:
                return False
            if self._journal is None:
                seq = self._take_seq()
                self._journal = (seq, Segment(self.path / _name(seq, JOURNAL)))
            segment = self._journal[1]
            count = segment.write(data, line)
            self._bytes += len(data)
            if count >= self.segment_limit:
                self._seal()
        segment.sync(count)
        return True

    def journal_fits(self, line: str) -> bool:
        """Whether one journal line fits an empty spool (the journal is not compressed)."""
        return len(line.encode()) + 1 <= self.max_bytes

    def seal(self) -> int | None:
        """Close the open journal segment as the newest batch; its key, or None if it holds nothing."""
        with self._lock:
            return self._seal()

    def peek(self) -> tuple[int, Batch] | None:
        """The oldest readable batch and its key, lent until ``remove`` or ``release``; unreadable files are
        set aside on the way."""
        with self._lock:
            while self._entries:
                entry = self._entries[0]
                file = self.path / entry.name
                try:
                    batch = self._read(entry)
                except FileNotFoundError:
                    self._forget(entry)
                    continue
                except (OSError, ValueError, zstd.ZstdError) as error:
                    self._set_aside(file, error)
                    self._forget(entry)
                    continue
                if not batch:
                    file.unlink(missing_ok=True)
                    self._forget(entry)
                    continue
                self._lent = entry.seq
                return entry.seq, batch
            return None

    def remove(self, key: int) -> bool:
        """Delete the batch ``key`` once it has been published; whether it was published on its first try
        (a sealed journal segment that never failed), not resent."""
        with self._lock:
            entry = self._find(key)
            if entry is None:
                return False
            (self.path / entry.name).unlink(missing_ok=True)
            self._forget(entry)
            if not self._entries:
                _write_durably(self.path, _SEQUENCE_FILE, str(self._next).encode(), sync=False)
            return entry.fresh

    def release(self, key: int) -> None:
        """The lent batch ``key`` could not be published: it stays, and may now be dropped."""
        with self._lock:
            if self._lent == key:
                self._lent = None
            for entry in self._entries:
                if entry.seq == key:
                    entry.fresh = False

    def drop_oldest(self) -> int | None:
        """Delete the oldest batch not lent for publishing; how many envelopes it held (None: none could)."""
        with self._lock:
            for entry in list(self._entries):
                if entry.seq == self._lent:
                    continue
                count = entry.count
                if count is None:
                    try:
                        count = len(self._read(entry))
                    except (OSError, ValueError, zstd.ZstdError):
                        count = 0
                (self.path / entry.name).unlink(missing_ok=True)
                self._forget(entry)
                return count
            return None

    def compact(self) -> int:
        """Rewrite sealed journal segments as compressed batches, so the ones that wait for Redis take the
        room a spooled batch would; how many were rewritten. Compression runs outside the lock."""
        with self._lock:
            waiting = [entry.seq for entry in self._entries if entry.suffix == JOURNAL]
        done = 0
        for seq in waiting:
            with self._lock:
                entry = self._find(seq)
                if entry is None or entry.suffix != JOURNAL or seq == self._lent:
                    continue
                try:
                    batch = self._read(entry)
                except (OSError, ValueError):
                    continue
            data = _compress(batch)
            try:
                _write_durably(self.path, _name(seq, BATCH), data)
            except OSError:
                log.exception("journal_compaction_failed", spool=str(self.path), seq=seq)
                continue
            with self._lock:
                entry = self._find(seq)
                if entry is None or entry.suffix != JOURNAL or seq == self._lent:
                    (self.path / _name(seq, BATCH)).unlink(missing_ok=True)
                    continue
                (self.path / entry.name).unlink(missing_ok=True)
                self._bytes += len(data) - entry.size
                entry.suffix, entry.size = BATCH, len(data)
                done += 1
        return done

    def close(self) -> None:
        """Seal the journal and release the slot so another process (or a later ``Spool``) can take it."""
        with self._lock:
            if self._lock_fd >= 0:
                self._seal()
                os.close(self._lock_fd)
                self._lock_fd = -1

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"spool {self.path} is closed")

    def _take_seq(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    def _seal(self) -> int | None:
        if self._journal is None:
            return None
        seq, segment = self._journal
        if not segment.items:
            return None
        self._journal = None
        segment.close()
        self._entries.append(_Entry(seq, JOURNAL, segment.size, len(segment.items), fresh=True))
        self._cached = (seq, segment.items)
        return seq

    def _read(self, entry: _Entry) -> Batch:
        if self._cached is not None and self._cached[0] == entry.seq and entry.suffix == JOURNAL:
            return list(self._cached[1])
        file = self.path / entry.name
        data = file.read_bytes()
        if entry.suffix == JOURNAL:
            return list(parse_lines(data, file))
        return _parse(zstd.decompress(data) if entry.suffix == BATCH else data)

    def _find(self, seq: int) -> _Entry | None:
        return next((entry for entry in self._entries if entry.seq == seq), None)

    def _forget(self, entry: _Entry) -> None:
        self._entries.remove(entry)
        self._bytes -= entry.size
        if self._lent == entry.seq:
            self._lent = None
        if self._cached is not None and self._cached[0] == entry.seq:
            self._cached = None

    def _recover(self) -> int:
        """Load the batches a previous owner left, drop half-written files, continue its numbering."""
        highest = 0
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        found: dict[int, list[str]] = {}
        for file in self.path.iterdir():
            stem, _, rest = file.name.partition(".")
            if stem.isdigit() and f".{rest}" in _SUFFIXES and file.name == _name(int(stem), f".{rest}"):
                found.setdefault(int(stem), []).append(f".{rest}")
        for seq, suffixes in sorted(found.items()):
            highest = max(highest, seq)
            keep = min(suffixes, key=_SUFFIXES.index)  # a compacted segment's batch beats its journal
            for other in suffixes:
                if other != keep:
                    (self.path / _name(seq, other)).unlink(missing_ok=True)
            self._entries.append(_Entry(seq, keep, (self.path / _name(seq, keep)).stat().st_size))
        self._bytes = sum(entry.size for entry in self._entries)
        with contextlib.suppress(OSError, ValueError):
            highest = max(highest, int((self.path / _SEQUENCE_FILE).read_text()) - 1)
        if self._entries:
            log.info("spool_recovered", spool=str(self.path), batches=len(self._entries), bytes=self._bytes)
        return highest + 1

    def _set_aside(self, file: Path, error: Exception) -> None:
        target = file.with_name(file.name + ".corrupt")
        try:
            file.rename(target)
        except OSError:
            target = file
        log.error("spool_file_corrupt", file=str(file), moved_to=str(target), error=str(error))


def _name(seq: int, suffix: str) -> str:
    return f"{seq:0{_WIDTH}d}{suffix}"


def _compress(batch: Batch) -> bytes:
    return zstd.compress(json.dumps(batch, separators=(",", ":")).encode(), COMPRESSION_LEVEL)


def _fitting(batch: Batch, room: int) -> tuple[int, bytes]:
    """The longest start of ``batch`` whose compressed JSON fits ``room`` bytes, found in a few
    compressions (each guess scales the last by how much it was too large), and that data."""
    count = len(batch) if room > 0 else 0
    while count:
        data = _compress(batch[:count])
        if len(data) <= room:
            return count, data
        count = min(count - 1, count * room // len(data))
    return 0, b""


def _parse(data: bytes) -> Batch:
    batch = json.loads(data)
    if not isinstance(batch, list) or not all(isinstance(item, dict | str) for item in batch):
        raise ValueError("a spooled batch must be a JSON list of envelopes (objects or JSON text)")
    return batch


def _write_durably(directory: Path, name: str, data: bytes, *, sync: bool = True) -> None:
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        sync_directory(directory)


def _claim_slot(root: Path) -> tuple[Path, int]:
    """The first slot directory under ``root`` that no live process holds, locked for this one."""
    for index in range(MAX_SLOTS):
        slot = root / f"slot-{index}"
        slot.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(slot / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    raise RuntimeError(f"all {MAX_SLOTS} spool slots under {root} are in use")
