"""A durable FIFO of envelope batches on disk: what the runner could not publish yet survives a restart.

Each batch is one JSON file named by a zero-padded sequence number, written to a temporary file, fsynced and
renamed into place, so a crash leaves either the whole batch or nothing. Several runner processes may share
one spool directory (the default is per user, not per runner): each ``Spool`` claims its own slot
subdirectory under an exclusive ``flock``, and a later process claims a free slot, finds what an earlier one
left there and resends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Batch = list[dict[str, Any] | str]
MAX_SLOTS = 64
_WIDTH = 20
_SUFFIX = ".json"
_SEQUENCE_FILE = ".sequence"


class SpoolFull(Exception):  # noqa: N818 - the name is the producer's public contract
    """Appending the batch would take the spool beyond its byte bound."""


class Spool:
    """Batches in append order, across restarts; safe to share between threads of one process."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path, self._lock_fd = _claim_slot(Path(directory).expanduser())
        self._entries: deque[tuple[int, int]] = deque()
        self._bytes = 0
        self._next = self._recover()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._lock_fd < 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, batch: Batch) -> None:
        """Store ``batch`` durably after every batch already here; ``SpoolFull`` if it does not fit."""
        data = json.dumps(batch, separators=(",", ":")).encode()
        with self._lock:
            if self.closed:
                raise RuntimeError(f"spool {self.path} is closed")
            if self._bytes + len(data) > self.max_bytes:
                log.error(
                    "spool_full",
                    spool=str(self.path),
                    envelopes=len(batch),
                    batch_bytes=len(data),
                    bytes_used=self._bytes,
                    max_bytes=self.max_bytes,
                )
                raise SpoolFull(f"spool {self.path} holds {self._bytes} of {self.max_bytes} bytes")
            seq = self._next
            self._next += 1
            _write_durably(self.path, _name(seq), data)
            self._entries.append((seq, len(data)))
            self._bytes += len(data)

    def peek(self) -> tuple[int, Batch] | None:
        """The oldest readable batch and its key; unreadable files are set aside on the way."""
        with self._lock:
            while self._entries:
                seq, size = self._entries[0]
                file = self.path / _name(seq)
                try:
                    batch = _parse(file.read_bytes())
                except FileNotFoundError:
                    self._forget_first(size)
                    continue
                except (OSError, ValueError) as error:
                    self._set_aside(file, error)
                    self._forget_first(size)
                    continue
                return seq, batch
            return None

    def remove(self, key: int) -> None:
        """Delete the batch ``key`` (normally the one ``peek`` returned) once it has been published."""
        with self._lock:
            for index, (seq, size) in enumerate(self._entries):
                if seq == key:
                    del self._entries[index]
                    self._bytes -= size
                    break
            (self.path / _name(key)).unlink(missing_ok=True)
            if not self._entries:
                _write_durably(self.path, _SEQUENCE_FILE, str(self._next).encode(), sync=False)

    def close(self) -> None:
        """Release the slot so another process (or a later ``Spool``) can take it over."""
        with self._lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def _recover(self) -> int:
        """Load the batches a previous owner left, drop half-written files, continue its numbering."""
        highest = 0
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for file in self.path.iterdir():
            stem = file.name.split(".", 1)[0]
            if not stem.isdigit():
                continue
            highest = max(highest, int(stem))
            if file.name == _name(int(stem)):
                self._entries.append((int(stem), file.stat().st_size))
        self._entries = deque(sorted(self._entries))
        self._bytes = sum(size for _, size in self._entries)
        with contextlib.suppress(OSError, ValueError):
            highest = max(highest, int((self.path / _SEQUENCE_FILE).read_text()) - 1)
        if self._entries:
            log.info("spool_recovered", spool=str(self.path), batches=len(self._entries), bytes=self._bytes)
        return highest + 1

    def _forget_first(self, size: int) -> None:
        self._entries.popleft()
        self._bytes -= size

    def _set_aside(self, file: Path, error: Exception) -> None:
        target = file.with_name(file.name + ".corrupt")
        try:
            file.rename(target)
        except OSError:
            target = file
        log.error("spool_file_corrupt", file=str(file), moved_to=str(target), error=str(error))


def _name(seq: int) -> str:
    return f"{seq:0{_WIDTH}d}{_SUFFIX}"


def _parse(data: bytes) -> Batch:
    batch = json.loads(data)
    if not isinstance(batch, list) or not all(isinstance(item, dict | str) for item in batch):
        raise ValueError("a spooled batch must be a JSON list of envelopes (objects or JSON text)")
    return batch


def _write_durably(directory: Path, name: str, data: bytes, *, sync: bool = True) -> None:
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
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
    if sync:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
