"""Cross-job coordination: rate-limit events and pattern discovery events.

Both are short-lived notices with an ``expires_at``; "active" is judged against the store clock, while the
notice's own times come from the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Row, Select, delete, select
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.records import PatternDiscoveryEvent, RateLimitEvent
from ostinato.schema.tables import pattern_discovery_events, rate_limit_events
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.patterns import PatternsMixin

RATE_LIMIT_TTL_SHARE = 0.8
"""A limit is honoured for 80 % of its announced duration, so jobs probe again a little early."""


def _rate_limit_event(row: Row[Any]) -> RateLimitEvent:
    m = row._mapping
    return RateLimitEvent(
        id=m["id"],
        error_code=m["error_code"],
        model=m["model"],
        recorded_at=m["recorded_at"],
        expires_at=max(m["expires_at"], m["recorded_at"]),
        source_job_hash=m["source_job_hash"],
        duration_seconds=m["duration_seconds"],
    )


def _discovery_event(row: Row[Any]) -> PatternDiscoveryEvent:
    m = row._mapping
    return PatternDiscoveryEvent(
        id=m["id"],
        pattern_id=m["pattern_id"],
        pattern_name=m["pattern_name"],
        pattern_type=m["pattern_type"],
        source_job_hash=m["source_job_hash"],
        recorded_at=m["recorded_at"],
        expires_at=m["expires_at"],
        effectiveness_score=m["effectiveness_score"],
        context_tags=list(m["context_tags"] or []),
    )


class CoordinationMixin(PatternsMixin):
    """Cross-job coordination: rate-limit events and pattern discovery events."""

    # -- rate limits ------------------------------------------------------------------------------------

    @transactional
    def record_rate_limit_event(
        self,
        error_code: str,
        duration_seconds: float,
        source_job_hash: str,
        model: str | None = None,
        *,
        recorded_at: datetime | None = None,
    ) -> str:
        """Announce a rate limit to every job; it expires after 0.8 × the duration, the full one is kept."""
        at = recorded_at or self.now()
        record_id = new_id()
        self.conn.execute(
            rate_limit_events.insert().values(
                id=record_id,
                error_code=error_code,
                model=model,
                recorded_at=at,
                expires_at=at + timedelta(seconds=RATE_LIMIT_TTL_SHARE * duration_seconds),
                source_job_hash=source_job_hash,
                duration_seconds=duration_seconds,
            )
        )
        return record_id

    def _active_rate_limits(self, now: datetime, error_code: str | None, model: str | None) -> Select[Any]:
        query = select(rate_limit_events).where(rate_limit_events.c.expires_at > now)
        if error_code is not None:
            query = query.where(rate_limit_events.c.error_code == error_code)
        if model is not None:
            query = query.where(rate_limit_events.c.model == model)
        return query.order_by(rate_limit_events.c.expires_at.desc(), rate_limit_events.c.id.desc())

    @transactional
    def is_rate_limited(
        self, error_code: str | None = None, model: str | None = None
    ) -> tuple[bool, float | None]:
        """(limited, seconds left) from the latest-expiring active event; the caller's own events count."""
        now = self.now()
        query = self._active_rate_limits(now, error_code, model)
        latest = self.conn.execute(query.with_only_columns(rate_limit_events.c.expires_at).limit(1)).scalar()
        if latest is None:
            return False, None
        left = (latest - now).total_seconds()
        return (True, left) if left > 0 else (False, None)

    @transactional
    def get_active_rate_limits(self, model: str | None = None) -> list[RateLimitEvent]:
        """Unexpired events, latest expiry first; an empty model means every model."""
        query = self._active_rate_limits(self.now(), None, model or None)
        return [_rate_limit_event(row) for row in self.conn.execute(query)]

    @transactional
    def cleanup_expired_rate_limits(self) -> int:
        return self._delete_expired(rate_limit_events.c.expires_at)

    def _delete_expired(self, expires_at: Column[datetime]) -> int:
        result = self.conn.execute(delete(expires_at.table).where(expires_at <= self.now()))
        return result.rowcount

    # -- pattern discoveries ----------------------------------------------------------------------------

    @transactional
    def record_pattern_discovery(
        self,
        pattern_id: str,
        pattern_name: str,
        pattern_type: str,
        source_job_hash: str,
        effectiveness_score: float = 1.0,
        context_tags: Sequence[str] | None = None,
        ttl_seconds: float = 300.0,
        *,
        recorded_at: datetime | None = None,
    ) -> PatternDiscoveryEvent:
        """Keep a new pattern's notice for ``ttl_seconds``; the caller publishes the event after commit."""
        at = recorded_at or self.now()
        event = PatternDiscoveryEvent(
            id=new_id(),
            pattern_id=pattern_id,
            pattern_name=pattern_name,
            pattern_type=pattern_type,
            source_job_hash=source_job_hash,
            recorded_at=at,
            expires_at=at + timedelta(seconds=ttl_seconds),
            effectiveness_score=effectiveness_score,
            context_tags=list(context_tags or []),
        )
        self.conn.execute(pattern_discovery_events.insert().values(event.model_dump()))
        return event

    def _active_discoveries(self, pattern_type: str | None, *where: ColumnElement[bool]) -> Select[Any]:
        query = select(pattern_discovery_events).where(
            pattern_discovery_events.c.expires_at > self.now(), *where
        )
        if pattern_type is not None:
            query = query.where(pattern_discovery_events.c.pattern_type == pattern_type)
        return query.order_by(
            pattern_discovery_events.c.recorded_at.desc(), pattern_discovery_events.c.id.desc()
        )

    @transactional
    def check_recent_pattern_discoveries(
        self,
        exclude_job_hash: str | None = None,
        pattern_type: str | None = None,
        min_effectiveness: float = 0.0,
        limit: int = 20,
    ) -> list[PatternDiscoveryEvent]:
        """Unexpired discoveries at or above ``min_effectiveness``, newest first, minus one job's if asked."""
        where = [pattern_discovery_events.c.effectiveness_score >= min_effectiveness]
        if exclude_job_hash is not None:
            where.append(pattern_discovery_events.c.source_job_hash != exclude_job_hash)
        query = self._active_discoveries(pattern_type, *where).limit(limit)
        return [_discovery_event(row) for row in self.conn.execute(query)]

    @transactional
    def get_active_pattern_discoveries(self, pattern_type: str | None = None) -> list[PatternDiscoveryEvent]:
        """Every unexpired discovery, newest first."""
        return [_discovery_event(row) for row in self.conn.execute(self._active_discoveries(pattern_type))]

    @transactional
    def cleanup_expired_pattern_discoveries(self) -> int:
        return self._delete_expired(pattern_discovery_events.c.expires_at)
