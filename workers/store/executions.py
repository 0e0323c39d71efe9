"""Executions, their statistics and the optimal execution window."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.records import ExecutionRecord, QuarantineStatus
from ostinato.schema.tables import (
    dead_letters,
    error_recoveries,
    executions,
    pattern_applications,
    pattern_discovery_events,
    patterns,
    processed_messages,
    rate_limit_events,
)
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.formulas import clamp01
from ostinato.workers.store.patterns import PatternsMixin

MIN_HOUR_SAMPLES = 3
OPTIMAL_RATE = 0.7
AVOID_RATE = 0.3
FULL_CONFIDENCE_SAMPLES = 50.0


@dataclass(slots=True)
class ExecutionInput:
    """One sheet outcome as the executions table keeps it; ``id`` is the message's execution id."""

    id: str
    workspace_hash: str
    job_hash: str
    sheet_num: int
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float = 0.0
    status: str = "completed"
    retry_count: int = 0
    success_without_retry: bool = False
    validation_pass_rate: float = 0.0
    model: str | None = None
    error_codes: Sequence[str] = ()


def execution_confidence(pass_rate: float, retry_count: int, success_without_retry: bool) -> float:
    """Upstream's confidence: pass rate, less 0.1 per retry (at most 5), plus 0.1 for a clean first try."""
    value = pass_rate - 0.1 * min(retry_count, 5)
    if success_without_retry:
        value = min(1.0, value + 0.1)
    return clamp01(value)


def _count(table: Any, *where: ColumnElement[bool]) -> Any:
    return select(func.count()).select_from(table).where(*where).scalar_subquery()


def _swr_count() -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((executions.c.success_without_retry.is_(True), 1), else_=0)), 0)


def _execution_record(row: Row[Any]) -> ExecutionRecord:
    """A row as read, clamped as upstream reads it: nothing negative, rates within [0, 1]."""
    m = row._mapping
    codes = m["error_codes"]
    return ExecutionRecord(
        id=m["id"],
        workspace_hash=m["workspace_hash"],
        job_hash=m["job_hash"],
        sheet_num=m["sheet_num"],
        started_at=m["started_at"],
        completed_at=m["completed_at"],
        duration_seconds=max(0.0, m["duration_seconds"] or 0.0),
        status=m["status"],
        retry_count=max(0, m["retry_count"] or 0),
        success_without_retry=bool(m["success_without_retry"]),
        validation_pass_rate=clamp01(m["validation_pass_rate"] or 0.0),
        confidence_score=clamp01(m["confidence_score"] or 0.0),
        model=m["model"],
        error_codes=list(json.loads(codes) if isinstance(codes, str) else codes or []),
    )


class ExecutionsMixin(PatternsMixin):
    """Executions, their statistics and the optimal execution window."""

    @transactional
    def record_executions(self, rows: Sequence[ExecutionInput]) -> int:
        """Insert outcomes not seen before; returns how many were new.

        The id is the runner's execution id, so a re-sent outcome changes nothing. Rows go in id order,
        so two batches sharing ids wait for each other instead of deadlocking.
        """
        unique = {row.id: row for row in reversed(rows)}
        if not unique:
            return 0
        now = self.now()
        values = [self._execution_values(unique[key], now) for key in sorted(unique)]
        return len(self.insert_rows(executions, values, returning="id", conflict=["id"]))

    @staticmethod
    def _execution_values(row: ExecutionInput, now: datetime) -> dict[str, Any]:
        return {
            "id": row.id,
            "workspace_hash": row.workspace_hash,
            "job_hash": row.job_hash,
            "sheet_num": row.sheet_num,
            "started_at": row.started_at,
            "completed_at": row.completed_at or now,
            "duration_seconds": row.duration_seconds,
            "status": row.status,
            "retry_count": row.retry_count,
            "success_without_retry": row.success_without_retry,
            "validation_pass_rate": row.validation_pass_rate,
            "confidence_score": execution_confidence(
                row.validation_pass_rate, row.retry_count, row.success_without_retry
            ),
            "model": row.model,
            "error_codes": list(row.error_codes),
        }

    @transactional
    def record_execution(
        self,
        workspace_hash: str,
        job_hash: str,
        sheet_num: int,
        *,
        execution_id: str | None = None,
        started_at: datetime | None = None,
        completed_at: datetime | None = None,
        duration_seconds: float = 0.0,
        status: str = "completed",
        retry_count: int = 0,
        success_without_retry: bool = False,
        validation_pass_rate: float = 0.0,
        model: str | None = None,
        error_codes: Sequence[str] = (),
    ) -> str:
        """Record one outcome; returns its id (also when that id was already recorded)."""
        row = ExecutionInput(
            id=execution_id or new_id(),
            workspace_hash=workspace_hash,
            job_hash=job_hash,
            sheet_num=sheet_num,
            started_at=started_at,
            completed_at=completed_at,
            duration_seconds=duration_seconds,
            status=status,
            retry_count=retry_count,
            success_without_retry=success_without_retry,
            validation_pass_rate=validation_pass_rate,
            model=model,
            error_codes=tuple(error_codes),
        )
        self.record_executions([row])
        return row.id

    execution_confidence = staticmethod(execution_confidence)

    # -- statistics -------------------------------------------------------------------------------------

    @transactional
    def get_execution_stats(self) -> dict[str, Any]:
        """Upstream's aggregate figures, read in one statement."""
        query = select(
            _count(executions).label("total_executions"),
            select(_swr_count()).scalar_subquery().label("successes"),
            _count(patterns).label("total_patterns"),
            select(func.avg(patterns.c.effectiveness_score)).scalar_subquery().label("avg_effectiveness"),
            _count(error_recoveries).label("total_error_recoveries"),
            select(func.count(executions.c.workspace_hash.distinct())).scalar_subquery().label("workspaces"),
        )
        row = self.conn.execute(query).one()
        total = int(row.total_executions)
        return {
            "total_executions": total,
            "success_without_retry_rate": int(row.successes) / total if total else 0.0,
            "total_patterns": int(row.total_patterns),
            "avg_pattern_effectiveness": float(row.avg_effectiveness or 0.0),
            "total_error_recoveries": int(row.total_error_recoveries),
            "unique_workspaces": int(row.workspaces),
        }

    @transactional
    def get_learning_statistics(self) -> dict[str, int | float]:
        """Everything ``ostinato stats`` shows: execution figures, pattern counts, events and queues."""
        now = self.now()
        stats: dict[str, int | float] = dict(self.get_execution_stats())
        by_status: dict[str, int] = dict(
            self.conn.execute(
                select(patterns.c.quarantine_status, func.count()).group_by(patterns.c.quarantine_status)
            ).all()
        )
        for status in QuarantineStatus:
            stats[f"patterns_{status.value}"] = int(by_status.get(status.value, 0))
        counts = self.conn.execute(
            select(
                _count(patterns, patterns.c.active.is_(True)).label("active_patterns"),
                _count(pattern_applications).label("pattern_applications"),
                _count(rate_limit_events, rate_limit_events.c.expires_at > now).label("active_rate_limits"),
                _count(pattern_discovery_events, pattern_discovery_events.c.expires_at > now).label(
                    "active_pattern_discoveries"
                ),
                _count(dead_letters, dead_letters.c.replayed_at.is_(None)).label("dead_letters_pending"),
                _count(dead_letters).label("dead_letters_total"),
                _count(processed_messages).label("processed_messages"),
            )
        ).one()
        stats.update({key: int(value) for key, value in counts._mapping.items()})
        return stats

    # -- queries ----------------------------------------------------------------------------------------

    @transactional
    def get_recent_executions(
        self, limit: int = 20, workspace_hash: str | None = None
    ) -> list[ExecutionRecord]:
        """Newest completed first."""
        return self.get_similar_executions(workspace_hash=workspace_hash, limit=limit)

    @transactional
    def get_similar_executions(
        self,
        job_hash: str | None = None,
        workspace_hash: str | None = None,
        sheet_num: int | None = None,
        limit: int = 10,
    ) -> list[ExecutionRecord]:
        """Executions matching every given field, newest completed first."""
        query = select(executions)
        if job_hash is not None:
            query = query.where(executions.c.job_hash == job_hash)
        if workspace_hash is not None:
            query = query.where(executions.c.workspace_hash == workspace_hash)
        if sheet_num is not None:
            query = query.where(executions.c.sheet_num == sheet_num)
        query = query.order_by(executions.c.completed_at.desc(), executions.c.id.desc()).limit(limit)
        return [_execution_record(row) for row in self.conn.execute(query)]

    @transactional
    def get_optimal_execution_window(
        self, error_code: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Hours of day when recoveries tend to succeed or fail; ``model`` is ignored, as upstream does."""
        del model
        successes = func.sum(case((error_recoveries.c.recovery_success.is_(True), 1), else_=0))
        query = select(error_recoveries.c.time_of_day, func.count(), successes).group_by(
            error_recoveries.c.time_of_day
        )
        if error_code:
            query = query.where(error_recoveries.c.error_code == error_code)
        hours = self.conn.execute(query).all()
        optimal: list[int] = []
        avoid: list[int] = []
        for hour, total, won in hours:
            if hour is None or total < MIN_HOUR_SAMPLES:
                continue
            rate = (won or 0) / total
            if rate >= OPTIMAL_RATE:
                optimal.append(hour)
            elif rate <= AVOID_RATE:
                avoid.append(hour)
        samples = sum(int(total) for _, total, _ in hours)
        return {
            "optimal_hours": sorted(optimal),
            "avoid_hours": sorted(avoid),
            "confidence": min(samples / FULL_CONFIDENCE_SAMPLES, 1.0),
            "sample_count": samples,
        }
