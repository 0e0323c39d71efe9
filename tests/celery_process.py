"""Real ``celery -A ostinato.workers worker`` subprocesses for crash, outage and restart tests.

Each worker runs in its own process group, so SIGKILL reaches the main process and its pool children at
once, as when a machine loses a worker; every worker is killed and reaped when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ostinato.broker import INGEST_QUEUE


def wait_for(condition: Callable[[], bool], timeout: float, what: str = "a condition") -> float:
    """Poll ``condition`` every 20 ms; returns the seconds it took, fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class CeleryWorker:
    """One worker subprocess: the test's environment plus ``overrides``, its output in ``log_path``."""

    def __init__(
        self, log_path: Path, overrides: Mapping[str, str], concurrency: int = 2, queues: str = INGEST_QUEUE
    ) -> None:
        self.log_path = log_path
        self.name = f"resilience-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, **overrides}
        self.concurrency = concurrency
        self.queues = queues
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ostinato.workers",
            "worker",
            "-Q",
            self.queues,
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "--loglevel=INFO",
            "-n",
            f"{self.name}@%h",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for Celery's ``ready.`` line: the consumer is connected and taking messages."""

        def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return f"{self.name}@" in self.log() and " ready." in self.log()

        return wait_for(ready, timeout, f"worker {self.name} to be ready")

    def signal_main(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the main process alone: SIGSTOP freezes the consumer, not the pool."""
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def rss_bytes(self) -> int:
        """Resident memory of the main process and its pool children (``VmRSS`` in ``/proc``)."""
        assert self.process is not None
        main = self.process.pid
        return sum(resident_bytes(pid) for pid in [main, *children(main)])

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children), reap it, wait until none runs."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        wait_for(lambda: not group_running(group), 10, f"process group {group} to die")


def children(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def group_running(group: int) -> bool:
    """Whether a process of ``group`` still runs; zombies (dead, not reaped yet by init) do not count."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == group:
            return True
    return False


@contextlib.contextmanager
def celery_worker(
    log_path: Path, overrides: Mapping[str, str], concurrency: int = 2, queues: str = INGEST_QUEUE
) -> Iterator[CeleryWorker]:
    """A started worker that is SIGKILLed and reaped on leaving the block, whatever happened in it."""
    worker = CeleryWorker(log_path, overrides, concurrency, queues)
    try:
        yield worker.start()
    finally:
        worker.kill()
