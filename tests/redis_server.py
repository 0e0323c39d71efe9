"""A private redis-server for tests that take Redis away; the shared server on 6379 is never touched."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kombu import compression

from ostinato.broker import INGEST_QUEUE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` on a fixed free port: stop, start, pause and resume it.

    Without persistence by default, so a restart empties it; ``persistent`` keeps an append-only file
    (fsync on every write) in a directory of its own, so what Redis acknowledged survives a restart.
    """

    def __init__(self, persistent: bool = False) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="ostinato-test-redis-")) if persistent else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]
        if self.dir is None:
            command += ["--appendonly", "no"]
        else:
            command += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        """Keep accepting connections but answer nothing: a hung server, not a refused connection."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass
class TaskMessage:
    task: str
    content_type: str
    args: list[Any]
    compression: str | None = None


def queue_key(key_prefix: str) -> str:
    """kombu's Redis list for the ingest queue: ``global_keyprefix`` + queue name."""
    return f"{key_prefix}{INGEST_QUEUE}"


def task_arguments(message: dict[str, Any]) -> list[Any]:
    """A kombu message's Celery arguments, its body decoded and decompressed as the message says."""
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    if "compression" in message["headers"]:
        body = compression.decompress(body, message["headers"]["compression"])  # type: ignore[no-untyped-call]
    args, _kwargs, _embed = json.loads(body)
    return list(args)


def queued_messages(client: redis.Redis, key_prefix: str) -> list[TaskMessage]:
    """The Celery messages waiting in the ingest queue, oldest first (kombu LPUSHes, workers BRPOP)."""
    raw: list[bytes] = client.lrange(queue_key(key_prefix), 0, -1)  # type: ignore[assignment]
    messages = []
    for item in reversed(raw):
        message = json.loads(item)
        args = task_arguments(message)
        headers = message["headers"]
        messages.append(
            TaskMessage(headers["task"], message["content-type"], args, headers.get("compression"))
        )
    return messages
