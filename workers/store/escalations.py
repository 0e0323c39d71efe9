"""Escalation decisions and their similarity search."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, case, func, select, update

from ostinato.schema.records import EscalationDecisionRecord
from ostinato.schema.tables import escalation_decisions
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.formulas import clamp01
from ostinato.workers.store.patterns import PatternsMixin

ACTIONS = frozenset({"retry", "skip", "abort", "modify_prompt"})
FALLBACK_ACTION = "abort"

_e = escalation_decisions.c


def _escalation_record(row: Row[Any]) -> EscalationDecisionRecord:
    """A row as read: an unknown action is the safe ``abort``, confidence within [0, 1]."""
    m = row._mapping
    return EscalationDecisionRecord(
        id=m["id"],
        job_hash=m["job_hash"],
        sheet_num=m["sheet_num"],
        confidence=clamp01(m["confidence"]),
        action=m["action"] if m["action"] in ACTIONS else FALLBACK_ACTION,
        guidance=m["guidance"],
        validation_pass_rate=m["validation_pass_rate"],
        retry_count=m["retry_count"],
        outcome_after_action=m["outcome_after_action"],
        recorded_at=m["recorded_at"],
        model=m["model"],
    )


class EscalationsMixin(PatternsMixin):
    """Escalation decisions and their similarity search."""

    @transactional
    def record_escalation_decision(
        self,
        job_hash: str,
        sheet_num: int,
        confidence: float,
        action: str,
        validation_pass_rate: float,
        retry_count: int,
        guidance: str | None = None,
        outcome_after_action: str | None = None,
        model: str | None = None,
        *,
        recorded_at: datetime | None = None,
    ) -> str:
        """Keep what a handler decided for a sheet, so later escalations can learn from it."""
        record_id = new_id()
        self.conn.execute(
            escalation_decisions.insert().values(
                id=record_id,
                job_hash=job_hash,
                sheet_num=sheet_num,
                confidence=confidence,
                action=action,
                guidance=guidance,
                validation_pass_rate=validation_pass_rate,
                retry_count=retry_count,
                outcome_after_action=outcome_after_action,
                recorded_at=recorded_at or self.now(),
                model=model,
            )
        )
        return record_id

    @transactional
    def get_escalation_history(
        self, job_hash: str | None = None, action: str | None = None, limit: int = 20
    ) -> list[EscalationDecisionRecord]:
        """Newest first."""
        query = select(escalation_decisions)
        if job_hash is not None:
            query = query.where(_e.job_hash == job_hash)
        if action is not None:
            query = query.where(_e.action == action)
        query = query.order_by(_e.recorded_at.desc(), _e.id.desc()).limit(limit)
        return [_escalation_record(row) for row in self.conn.execute(query)]

    @transactional
    def get_similar_escalation(
        self,
        confidence: float,
        validation_pass_rate: float,
        confidence_tolerance: float = 0.15,
        pass_rate_tolerance: float = 0.15,
        limit: int = 5,
    ) -> list[EscalationDecisionRecord]:
        """Decisions made in a similar state: those that worked first, then the closest."""
        conf_diff = func.abs(_e.confidence - confidence)
        rate_diff = func.abs(_e.validation_pass_rate - validation_pass_rate)
        outcome_rank = case(
            (_e.outcome_after_action == "success", 0),
            (_e.outcome_after_action == "skipped", 1),
            (_e.outcome_after_action.is_(None), 2),
            else_=3,
        )
        # The widened ranges let idx_escalation_similarity find the candidates; the abs() conditions, exact
        # as before, decide. The slack covers the rounding of ``confidence ± tolerance``. The ranking reads
        # only indexed columns (an index-only scan); whole rows are fetched for the ``limit`` chosen ids.
        slack = 1e-9
        order = (outcome_rank, conf_diff + rate_diff, _e.recorded_at.desc(), _e.id.desc())
        chosen = (
            select(_e.id)
            .where(
                _e.confidence.between(
                    confidence - confidence_tolerance - slack, confidence + confidence_tolerance + slack
                ),
                _e.validation_pass_rate.between(
                    validation_pass_rate - pass_rate_tolerance - slack,
                    validation_pass_rate + pass_rate_tolerance + slack,
                ),
                conf_diff <= confidence_tolerance,
                rate_diff <= pass_rate_tolerance,
            )
            .order_by(*order)
            .limit(limit)
        )
        query = select(escalation_decisions).where(_e.id.in_(chosen.scalar_subquery())).order_by(*order)
        return [_escalation_record(row) for row in self.conn.execute(query)]

    @transactional
    def update_escalation_outcome(self, escalation_id: str, outcome: str) -> bool:
        """Close the loop once the action's result is known; False for an unknown id."""
        result = self.conn.execute(
            update(escalation_decisions).where(_e.id == escalation_id).values(outcome_after_action=outcome)
        )
        return result.rowcount > 0
