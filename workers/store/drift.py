"""Effectiveness drift and epistemic drift: is a pattern getting worse, and are we less sure of it?

Both compare a pattern's newest ``W`` applications with the ``W`` before them. The maths is in module-level
functions over newest-first sequences; the mixin only fetches those windows (in one query for any number of
patterns) and retires patterns whose effectiveness drifted (§0.4: status 'retired' and priority 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.records import DriftMetrics, EpistemicDriftMetrics, QuarantineStatus, Record
from ostinato.schema.tables import pattern_applications, patterns
from ostinato.workers.store.base import transactional
from ostinato.workers.store.patterns import PatternsMixin

log = structlog.get_logger(__name__)

DIRECTION_BAND = 0.05
"""A change smaller than this either way is called stable."""
GROUNDING_FLOOR = 0.5
"""Low grounding amplifies effectiveness drift, but at most 2×."""
SUMMARY_MIN_APPLICATIONS = 10
"""The summaries' hard-coded minimum history, whatever the window (as upstream)."""
RETIRE_SCAN_LIMIT = 100


# -- pure maths ----------------------------------------------------------------------------------------------


def window_effectiveness(successes: int, size: int) -> float:
    """Laplace-smoothed success rate of one window."""
    return (successes + 0.5) / (size + 1)


def direction(change: float, up: str, down: str) -> str:
    if change > DIRECTION_BAND:
        return up
    if change < -DIRECTION_BAND:
        return down
    return "stable"


def weighted_drift(magnitude: float, grounding_avg: float) -> float:
    """Drift magnitude amplified by weak grounding (the value compared with the threshold)."""
    return magnitude / max(grounding_avg, GROUNDING_FLOOR)


def belief_entropy(confidences: Sequence[float]) -> float:
    """Coefficient of variation of the confidences (population std-dev / mean), capped at 1."""
    mean = sum(confidences) / len(confidences)
    if mean <= 0:
        return 0.0
    variance = sum((c - mean) ** 2 for c in confidences) / len(confidences)
    return min(1.0, math.sqrt(variance) / mean)


def weighted_belief_change(change: float, entropy: float) -> float:
    """Belief change amplified by unstable beliefs (the value compared with the threshold)."""
    return abs(change) * (1 + entropy)


def _check_window(window_size: int) -> None:
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, not {window_size}")


def effectiveness_drift(
    pattern_id: str,
    pattern_name: str,
    outcomes: Sequence[bool],
    groundings: Sequence[float | None],
    window_size: int = 5,
    drift_threshold: float = 0.2,
) -> DriftMetrics | None:
    """Drift between the newest window and the one before; ``outcomes`` and ``groundings`` newest first.

    None when there are fewer than two windows of history.
    """
    _check_window(window_size)
    analyzed = 2 * window_size
    if len(outcomes) < analyzed:
        return None
    after = window_effectiveness(sum(outcomes[:window_size]), window_size)
    before = window_effectiveness(sum(outcomes[window_size:analyzed]), window_size)
    grounded = [g for g in groundings[:analyzed] if g is not None]
    grounding_avg = sum(grounded) / len(grounded) if grounded else 1.0
    drift = after - before
    return DriftMetrics(
        pattern_id=pattern_id,
        pattern_name=pattern_name,
        window_size=window_size,
        effectiveness_before=before,
        effectiveness_after=after,
        grounding_confidence_avg=grounding_avg,
        drift_magnitude=abs(drift),
        drift_direction=direction(drift, "positive", "negative"),
        applications_analyzed=analyzed,
        threshold_exceeded=weighted_drift(abs(drift), grounding_avg) > drift_threshold,
    )


def epistemic_drift(
    pattern_id: str,
    pattern_name: str,
    confidences: Sequence[float],
    window_size: int = 5,
    drift_threshold: float = 0.15,
) -> EpistemicDriftMetrics | None:
    """Change of mean grounding confidence between the newest window and the one before (newest first)."""
    _check_window(window_size)
    analyzed = 2 * window_size
    if len(confidences) < analyzed:
        return None
    values = list(confidences[:analyzed])
    after = sum(values[:window_size]) / window_size
    before = sum(values[window_size:]) / window_size
    change = after - before
    entropy = belief_entropy(values)
    return EpistemicDriftMetrics(
        pattern_id=pattern_id,
        pattern_name=pattern_name,
        window_size=window_size,
        confidence_before=before,
        confidence_after=after,
        belief_change=change,
        belief_entropy=entropy,
        applications_analyzed=analyzed,
        threshold_exceeded=weighted_belief_change(change, entropy) > drift_threshold,
        drift_direction=direction(change, "strengthening", "weakening"),
    )


def retirement_note(metrics: DriftMetrics) -> str:
    """The suggested_action that documents an automatic retirement."""
    return (
        f"Auto-retired: drift {metrics.drift_direction} ({metrics.drift_magnitude:.2f}), "
        f"effectiveness {metrics.effectiveness_before:.2f} → {metrics.effectiveness_after:.2f}"
    )


class PatternDrift(Record):
    """Both drift measures of one pattern; a measure is None when its history is too short."""

    pattern_id: str
    pattern_name: str
    effectiveness: DriftMetrics | None = None
    epistemic: EpistemicDriftMetrics | None = None


@dataclass
class _Window:
    """One pattern's newest applications, newest first."""

    name: str
    outcomes: list[bool] = field(default_factory=list)
    groundings: list[float | None] = field(default_factory=list)


# -- the mixin -----------------------------------------------------------------------------------------------


class DriftMixin(PatternsMixin):
    """Effectiveness drift, epistemic drift and drift auto-retirement."""

    def _windows(
        self, size: int, *, grounded_only: bool = False, where: ColumnElement[bool] | None = None
    ) -> dict[str, _Window]:
        """Each existing pattern's newest ``size`` applications, in one query (orphan rows are skipped)."""
        pa = pattern_applications
        rank = func.row_number().over(
            partition_by=pa.c.pattern_id, order_by=(pa.c.applied_at.desc(), pa.c.id.desc())
        )
        inner = select(
            pa.c.pattern_id, pa.c.pattern_led_to_success, pa.c.grounding_confidence, rank.label("rank")
        )
        if grounded_only:
            inner = inner.where(pa.c.grounding_confidence.is_not(None))
        if where is not None:
            inner = inner.where(where)
        ranked = inner.subquery()
        query = (
            select(ranked, patterns.c.pattern_name)
            .join(patterns, patterns.c.id == ranked.c.pattern_id)
            .where(ranked.c.rank <= size)
            .order_by(ranked.c.pattern_id, ranked.c.rank)
        )
        windows: dict[str, _Window] = {}
        for row in self.conn.execute(query):
            window = windows.setdefault(row.pattern_id, _Window(row.pattern_name))
            window.outcomes.append(bool(row.pattern_led_to_success))
            window.groundings.append(row.grounding_confidence)
        return windows

    def _effectiveness_drifts(
        self, window_size: int, drift_threshold: float, where: ColumnElement[bool] | None = None
    ) -> list[DriftMetrics]:
        _check_window(window_size)
        windows = self._windows(2 * window_size, where=where)
        found = (
            effectiveness_drift(pid, w.name, w.outcomes, w.groundings, window_size, drift_threshold)
            for pid, w in windows.items()
        )
        return [m for m in found if m is not None]

    def _epistemic_drifts(
        self, window_size: int, drift_threshold: float, where: ColumnElement[bool] | None = None
    ) -> list[EpistemicDriftMetrics]:
        _check_window(window_size)
        windows = self._windows(2 * window_size, grounded_only=True, where=where)
        found = (
            epistemic_drift(
                pid, w.name, [g for g in w.groundings if g is not None], window_size, drift_threshold
            )
            for pid, w in windows.items()
        )
        return [m for m in found if m is not None]

    def _pattern_count(self) -> int:
        return int(self.conn.execute(select(func.count()).select_from(patterns)).scalar_one())

    # -- effectiveness drift ------------------------------------------------------------------------------

    @transactional
    def calculate_effectiveness_drift(
        self, pattern_id: str, window_size: int = 5, drift_threshold: float = 0.2
    ) -> DriftMetrics | None:
        """Effectiveness drift of one pattern; None if it is missing or has fewer than 2W applications."""
        found = self._effectiveness_drifts(
            window_size, drift_threshold, pattern_applications.c.pattern_id == pattern_id
        )
        return found[0] if found else None

    @transactional
    def get_drifting_patterns(
        self, drift_threshold: float = 0.2, window_size: int = 5, limit: int = 20
    ) -> list[DriftMetrics]:
        """Patterns whose weighted drift exceeds the threshold, largest drift first."""
        drifting = [
            m for m in self._effectiveness_drifts(window_size, drift_threshold) if m.threshold_exceeded
        ]
        drifting.sort(key=lambda m: (-m.drift_magnitude, m.pattern_id))
        return drifting[:limit]

    @transactional
    def get_pattern_drift_summary(self) -> dict[str, Any]:
        """Drift over every pattern with ≥ 10 applications, at the default window and threshold."""
        metrics = self._effectiveness_drifts(SUMMARY_MIN_APPLICATIONS // 2, 0.2)
        most = max(metrics, key=lambda m: (m.drift_magnitude, m.pattern_id), default=None)
        return {
            "total_patterns": self._pattern_count(),
            "patterns_analyzed": len(metrics),
            "patterns_drifting": sum(m.threshold_exceeded for m in metrics),
            "avg_drift_magnitude": sum(m.drift_magnitude for m in metrics) / len(metrics) if metrics else 0.0,
            "most_drifted": most.pattern_id if most else None,
        }

    @transactional
    def retire_drifting_patterns(
        self, drift_threshold: float = 0.2, window_size: int = 5, require_negative_drift: bool = True
    ) -> list[tuple[str, str, float]]:
        """Retire patterns that drifted past the threshold (negative drift only, unless told otherwise).

        Candidates are locked in id order and re-measured under the lock, so a concurrent application cannot
        slip between the measurement and the write. Returns (id, name, magnitude) of each retired pattern.
        """
        candidates = self.get_drifting_patterns(drift_threshold, window_size, limit=RETIRE_SCAN_LIMIT)
        wanted = [m.pattern_id for m in candidates if self._retirable(m, require_negative_drift)]
        locked = self.lock_patterns(wanted)
        if not locked:
            return []
        remeasured = self._effectiveness_drifts(
            window_size, drift_threshold, pattern_applications.c.pattern_id.in_(locked)
        )
        by_id = {m.pattern_id: m for m in remeasured if self._retirable(m, require_negative_drift)}
        retired = [by_id[pid] for pid in wanted if pid in by_id]
        for metrics in retired:
            self._retire(metrics)
        return [(m.pattern_id, m.pattern_name, m.drift_magnitude) for m in retired]

    @staticmethod
    def _retirable(metrics: DriftMetrics, require_negative_drift: bool) -> bool:
        negative = metrics.drift_direction == "negative"
        return metrics.threshold_exceeded and (negative or not require_negative_drift)

    def _retire(self, metrics: DriftMetrics) -> None:
        note = retirement_note(metrics)
        self.conn.execute(
            update(patterns)
            .where(patterns.c.id == metrics.pattern_id)
            .values(
                quarantine_status=QuarantineStatus.RETIRED.value, priority_score=0.0, suggested_action=note
            )
        )
        log.info("pattern_auto_retired", pattern_id=metrics.pattern_id, reason=note)

    # -- epistemic drift ----------------------------------------------------------------------------------

    @transactional
    def calculate_epistemic_drift(
        self, pattern_id: str, window_size: int = 5, drift_threshold: float = 0.15
    ) -> EpistemicDriftMetrics | None:
        """Epistemic drift of one pattern over its grounded applications; None without 2W of them."""
        found = self._epistemic_drifts(
            window_size, drift_threshold, pattern_applications.c.pattern_id == pattern_id
        )
        return found[0] if found else None

    @transactional
    def get_epistemic_drifting_patterns(
        self, drift_threshold: float = 0.15, window_size: int = 5, limit: int = 20
    ) -> list[EpistemicDriftMetrics]:
        """Patterns whose weighted belief change exceeds the threshold, largest |change| first."""
        drifting = [m for m in self._epistemic_drifts(window_size, drift_threshold) if m.threshold_exceeded]
        drifting.sort(key=lambda m: (-abs(m.belief_change), m.pattern_id))
        return drifting[:limit]

    @transactional
    def get_epistemic_drift_summary(self) -> dict[str, Any]:
        """Epistemic drift over every pattern with ≥ 10 grounded applications, at the defaults."""
        metrics = self._epistemic_drifts(SUMMARY_MIN_APPLICATIONS // 2, 0.15)
        count = len(metrics)
        most = max(metrics, key=lambda m: (abs(m.belief_change), m.pattern_id), default=None)
        return {
            "total_patterns": self._pattern_count(),
            "patterns_analyzed": count,
            "patterns_with_epistemic_drift": sum(m.threshold_exceeded for m in metrics),
            "avg_belief_change": sum(m.belief_change for m in metrics) / count if count else 0.0,
            "avg_belief_entropy": sum(m.belief_entropy for m in metrics) / count if count else 0.0,
            "most_unstable": most.pattern_id if most else None,
        }

    # -- both ---------------------------------------------------------------------------------------------

    @transactional
    def drift_report(self, min_applications: int = 10, window_size: int = 5) -> list[PatternDrift]:
        """Both drift measures for every pattern with at least ``min_applications`` applications, by id."""
        pa = pattern_applications
        enough = select(pa.c.pattern_id).group_by(pa.c.pattern_id).having(func.count() >= min_applications)
        where = pa.c.pattern_id.in_(enough.scalar_subquery())
        names = self.conn.execute(
            select(patterns.c.id, patterns.c.pattern_name)
            .where(patterns.c.id.in_(enough.scalar_subquery()))
            .order_by(patterns.c.id)
        )
        effectiveness = {m.pattern_id: m for m in self._effectiveness_drifts(window_size, 0.2, where)}
        epistemic = {m.pattern_id: m for m in self._epistemic_drifts(window_size, 0.15, where)}
        return [
            PatternDrift(
                pattern_id=row.id,
                pattern_name=row.pattern_name,
                effectiveness=effectiveness.get(row.id),
                epistemic=epistemic.get(row.id),
            )
            for row in names
        ]
