"""Settings from the environment (prefix ``OSTINATO_``); secrets live only here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a runner or a worker needs to find Redis, PostgreSQL and its spool."""

    model_config = SettingsConfigDict(env_prefix="OSTINATO_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ostinato"
    key_prefix: str = "ostinato:"
    spool_dir: Path = Field(default_factory=lambda: Path.home() / ".ostinato" / "spool")
    spool_max_bytes: int = 256 * 1024 * 1024
    """Upper bound of the on-disk spool; batches beyond it are refused loudly."""
    visibility_timeout: float = 3600.0
    """Seconds before a message a dead worker held is delivered again; longer than the longest task."""
    unacked_restore_interval: float = 60.0
    """How often kombu looks for such messages (SPEC.md §6b: this, not the timeout, sets the delay)."""
    discovery_ttl_seconds: float = 300.0
    ingest_batch_prefetch: int = 4

    @property
    def patterns_channel(self) -> str:
        """The Redis pub/sub channel that carries pattern discoveries."""
        return f"{self.key_prefix}patterns"


def redact_url(url: str) -> str:
    """The URL with its password replaced, safe to log or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    return Settings()
