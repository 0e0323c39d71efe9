"""Settings from the environment (prefix ``OSTINATO_``); secrets live only here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SpoolFullPolicy = Literal["block", "drop_oldest", "raise"]
LONGEST_COUNTDOWN_SECONDS = 10.0
"""No worker task retries with a countdown longer than this. Celery keeps a countdown retry as an
unacknowledged message, so a countdown longer than the visibility timeout would be restored and run twice."""


class Settings(BaseSettings):
    """Everything a runner or a worker needs to find Redis, PostgreSQL and its spool."""

    model_config = SettingsConfigDict(env_prefix="OSTINATO_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ostinato"
    key_prefix: str = "ostinato:"
    spool_dir: Path = Field(default_factory=lambda: Path.home() / ".ostinato" / "spool")
    embedded_path: Path = Field(default_factory=lambda: Path.home() / ".ostinato" / "embedded.db")
    """The SQLite store of embedded mode (``ostinato demo`` without servers, ``Client(embedded=...)``)."""
    spool_max_bytes: int = 256 * 1024 * 1024
    """Upper bound of the on-disk spool (compressed bytes)."""
    spool_full_policy: SpoolFullPolicy = "block"
    """What a producer does when its spool is full: ``block`` (wait up to ``spool_block_seconds`` for room,
    then raise ``SpoolFull``), ``drop_oldest`` (drop the oldest spooled batch, counted and logged) or
    ``raise`` (``SpoolFull`` at once)."""
    spool_block_seconds: float = Field(default=30.0, ge=0)
    durable: bool = False
    """Producer durable mode: each envelope is fsync'd into the spool before the publishing call returns,
    so a SIGKILLed runner loses nothing it was told was accepted."""
    ingest_queue_bound: int = Field(default=2_000, ge=1)
    """Task messages waiting in ``ostinato.ingest`` above which producers keep new batches in their spool."""
    visibility_timeout: float = Field(default=20.0, gt=0)
    """Seconds before a message a dead worker held is delivered again: a whole-worker SIGKILL recovers in
    about this plus ``unacked_restore_interval``. Must exceed the task time limit and every countdown."""
    unacked_restore_interval: float = Field(default=2.0, gt=0)
    """How often kombu looks for such messages (SPEC.md §6b)."""
    task_time_limit: float = Field(default=15.0, gt=0)
    """Hard limit of one task (a batch takes about a second); shorter than the visibility timeout, so a
    message is never restored while its first delivery still runs."""
    discovery_ttl_seconds: float = 300.0
    ingest_batch_prefetch: int = 4

    # Beat maintenance (SPEC.md §6): each pass's period in seconds; it has its effect once per period.
    maintenance_entropy_period: float = Field(default=900.0, gt=0)
    """Short enough that a response follows soon after its cooldown ends."""
    maintenance_budget_period: float = Field(default=3600.0, gt=0)
    maintenance_drift_period: float = Field(default=3600.0, gt=0)
    maintenance_trust_period: float = Field(default=300.0, gt=0)
    """Upstream promoted after every finished job; every 5 minutes comes close."""
    maintenance_priority_period: float = Field(default=3600.0, gt=0)
    """Decay moves in whole days, so hourly is plenty."""
    maintenance_expiry_period: float = Field(default=300.0, gt=0)
    maintenance_retention_period: float = Field(default=86400.0, gt=0)
    entropy_threshold: float = Field(default=0.3, ge=0, le=1)
    """Diversity below this is low: the snapshot is flagged, the response fires and budgets are boosted.

    The store's default (SPEC-store §2.9), not the daemon's 0.1 (§4.1 H): the budget adjustment compares
    entropy with this same threshold, and 0.3 is the value it was designed around.
    """
    entropy_cooldown_seconds: float = Field(default=3600.0, ge=0)
    entropy_response_job: str = "daemon-entropy-check"
    """The job hash the automatic response is recorded (and cooled down) under, as upstream's daemon."""
    budget_job_window_seconds: float = Field(default=86400.0, gt=0)
    """Budgets are adjusted for the jobs with an execution completed this recently."""
    drift_min_applications: int = Field(default=10, ge=1)
    drift_window: int = Field(default=5, ge=1)
    drift_threshold: float = Field(default=0.2, ge=0)
    epistemic_drift_threshold: float = Field(default=0.15, ge=0)
    retention_days: float = Field(default=30.0, gt=0)
    """Budget, entropy, response, drift and maintenance-run history older than this is deleted."""

    @model_validator(mode="after")
    def _redelivery_is_safe(self) -> Self:
        """A message must not come back while a worker still runs it or holds it for a countdown retry."""
        longest = max(self.task_time_limit, LONGEST_COUNTDOWN_SECONDS)
        if self.visibility_timeout <= longest:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout:g} s) must be longer than the task time "
                f"limit ({self.task_time_limit:g} s) and the longest countdown retry "
                f"({LONGEST_COUNTDOWN_SECONDS:g} s): a message a worker still holds would be delivered twice"
            )
        return self

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
