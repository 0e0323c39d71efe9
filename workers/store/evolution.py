"""The evolution trajectory (meta-learning log): one entry per self-improvement cycle."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select

from ostinato.schema.records import EvolutionTrajectoryEntry
from ostinato.schema.tables import evolution_trajectory
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.patterns import PatternsMixin

CycleOutcome = Literal["SUCCESS", "PARTIAL", "DEFERRED"]
CYCLE_OUTCOMES: frozenset[str] = frozenset({"SUCCESS", "PARTIAL", "DEFERRED"})

_t = evolution_trajectory.c


class DuplicateCycleError(ValueError):
    """The cycle is already recorded; raised without aborting the surrounding transaction."""


class EvolutionMixin(PatternsMixin):
    """The evolution trajectory (meta-learning log)."""

    @transactional
    def record_evolution_entry(
        self,
        cycle: int,
        evolutions_completed: int,
        evolutions_deferred: int,
        issue_classes: Sequence[str],
        cv_avg: float,
        implementation_loc: int,
        test_loc: int,
        loc_accuracy: float,
        research_candidates_resolved: int = 0,
        research_candidates_created: int = 0,
        notes: str = "",
        *,
        recorded_at: datetime | None = None,
    ) -> str:
        """Record one cycle; a cycle already recorded raises ``DuplicateCycleError``.

        ``ON CONFLICT DO NOTHING`` detects the duplicate, so on PostgreSQL the rest of a batch still commits.
        """
        statement = (
            self.insert(evolution_trajectory)
            .values(
                id=new_id(),
                cycle=cycle,
                recorded_at=recorded_at or self.now(),
                evolutions_completed=evolutions_completed,
                evolutions_deferred=evolutions_deferred,
                issue_classes=list(issue_classes),
                cv_avg=cv_avg,
                implementation_loc=implementation_loc,
                test_loc=test_loc,
                loc_accuracy=loc_accuracy,
                research_candidates_resolved=research_candidates_resolved,
                research_candidates_created=research_candidates_created,
                notes=notes,
            )
            .on_conflict_do_nothing(index_elements=["cycle"])
            .returning(_t.id)
        )
        record_id = self.conn.execute(statement).scalar()
        if record_id is None:
            raise DuplicateCycleError(f"evolution cycle {cycle} is already recorded")
        return str(record_id)

    @transactional
    def record_evolution_cycle(
        self,
        cycle_number: int,
        candidates_generated: int,
        candidates_applied: int,
        changes_summary: str,
        outcome: CycleOutcome,
        learning_snapshot: Mapping[str, Any],
        *,
        recorded_at: datetime | None = None,
    ) -> str:
        """Upstream's summary form of an entry: the outcome is the issue class, the snapshot goes in notes."""
        if outcome not in CYCLE_OUTCOMES:
            raise ValueError(f"unknown cycle outcome {outcome!r}; expected one of {sorted(CYCLE_OUTCOMES)}")
        notes = (
            f"{changes_summary}\n\nOutcome: {outcome}\n"
            f"Learning snapshot: {json.dumps(dict(learning_snapshot), default=str)}"
        )
        return self.record_evolution_entry(
            cycle=cycle_number,
            evolutions_completed=candidates_applied,
            evolutions_deferred=candidates_generated - candidates_applied,
            issue_classes=[outcome.lower()],
            cv_avg=0.0,
            implementation_loc=0,
            test_loc=0,
            loc_accuracy=1.0,
            notes=notes,
            recorded_at=recorded_at,
        )

    @transactional
    def get_trajectory(
        self, start_cycle: int | None = None, end_cycle: int | None = None, limit: int = 50
    ) -> list[EvolutionTrajectoryEntry]:
        """Entries in the inclusive cycle range, newest cycle first."""
        query = select(evolution_trajectory)
        if start_cycle is not None:
            query = query.where(_t.cycle >= start_cycle)
        if end_cycle is not None:
            query = query.where(_t.cycle <= end_cycle)
        query = query.order_by(_t.cycle.desc()).limit(limit)
        return [EvolutionTrajectoryEntry.model_validate(row._mapping) for row in self.conn.execute(query)]

    @transactional
    def get_evolution_history(self, last_n: int = 10) -> list[EvolutionTrajectoryEntry]:
        return self.get_trajectory(limit=last_n)

    @transactional
    def get_recurring_issues(
        self, min_occurrences: int = 2, window_cycles: int | None = None
    ) -> dict[str, list[int]]:
        """Each issue class seen at least ``min_occurrences`` times → its cycles, newest first."""
        query = select(_t.cycle, _t.issue_classes).order_by(_t.cycle.desc())
        if window_cycles is not None:
            query = query.limit(window_cycles)
        cycles: dict[str, list[int]] = {}
        for cycle, issues in self.conn.execute(query):
            for issue in issues or []:
                cycles.setdefault(issue, []).append(cycle)
        return {issue: seen for issue, seen in cycles.items() if len(seen) >= min_occurrences}
