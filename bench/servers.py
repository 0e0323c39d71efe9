"""Private Redis and PostgreSQL servers for the chaos benchmark, on free ports, killed only by their own PIDs.

The shared servers on 6379 and 5432 are never touched: every fault the benchmark injects (a stop, a crash, a
restart) hits an instance it started itself in a temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(ready: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(ready) and ready():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


class RedisInstance:
    """``redis-server`` in a directory of its own; ``aof`` keeps the queue across a restart."""

    def __init__(self, *, aof: bool) -> None:
        self.port = free_port()
        self.aof = aof
        self.dir = Path(tempfile.mkdtemp(prefix="ostinato-chaos-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        command = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: self.client().ping(), 15, "redis-server")

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): with AOF, everything acknowledged is on disk."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresInstance:
    """A PostgreSQL cluster of its own (``initdb`` in a temporary directory), run as the postgres user."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ostinato-chaos-pg-"))
        self.data = self.dir / "data"
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ostinato"

    def _as_postgres(self, command: list[str]) -> None:
        runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(runuser + command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers(self) -> bool:
        engine = create_engine(self.url.rsplit("/", 1)[0] + "/postgres", connect_args={"connect_timeout": 1})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
        finally:
            engine.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.dir / "postgres.log"
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(log), "start"]
        )
        _wait(self.answers, 30, "PostgreSQL")

    def stop(self) -> None:
        """A fast shutdown: connections are cut, as when an operator stops the server."""
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def cleanup(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            time.sleep(1)
        shutil.rmtree(self.dir, ignore_errors=True)
