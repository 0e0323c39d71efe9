"""``ostinato export``: the store's learnings, anonymised, as a reviewable YAML file.

What goes out: patterns with their statistics, the error-recovery aggregates per error code and model, and
the defaults that interpret them. What never goes out: executions, applications, job and workspace hashes,
provenance, quarantine reasons, exact times (only whole days before the export). Every string passes the
producer's scrubber first (names, descriptions, guidance, tags, success-factor labels, error codes, models,
instruments), so rows that arrived unscrubbed (an imported upstream database) leave scrubbed too. Two rows
whose names become one when scrubbed leave as one pattern, merged by the import formulas.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import yaml
from sqlalchemy import case, func, null, select, text

from ostinato.federation.merge import PatternFigures, combine, days_ago
from ostinato.federation.models import (
    FORMAT,
    FORMAT_VERSION,
    Defaults,
    DriftDefaults,
    EffectivenessDefaults,
    ExplorationDefaults,
    LearnedWait,
    LearnedWaitDefaults,
    Learnings,
    LifecycleDefaults,
    PatternLearning,
    PriorityDefaults,
    TrustDefaults,
)
from ostinato.producers.scrub import Scrubber
from ostinato.schema.identity import pattern_id
from ostinato.schema.records import SuccessFactors
from ostinato.schema.tables import error_recoveries, patterns
from ostinato.settings import Settings
from ostinato.workers.store import Store, formulas, lifecycle
from ostinato.workers.store import recoveries as recovery_store
from ostinato.workers.store.diversity import DEFAULT_BUDGET

MIN_LEARNED_SAMPLES = 3
"""``get_learned_wait_time``'s default ``min_samples``."""
MIN_LEARNED_CONFIDENCE = 0.7
"""``get_learned_wait_time_with_fallback``'s default ``min_confidence``."""

HEADER = """\
# ostinato learnings: anonymised patterns, their statistics and learned waits of one deployment.
# Format: docs/learnings.schema.json in ostinato (JSON Schema). Merge with `ostinato import-learnings FILE`.
# No executions, job or workspace hashes; every text passed the scrubber;
# times are whole days before created_at.
"""


def defaults_from(settings: Settings) -> Defaults:
    """The constants and settings a reader needs to interpret the figures, as this deployment has them."""
    return Defaults(
        effectiveness=EffectivenessDefaults(
            cold_start=formulas.COLD_START_EFFECTIVENESS,
            min_applications=formulas.MIN_APPLICATIONS,
            recent_window=formulas.RECENT_WINDOW,
            recency_alpha=formulas.RECENCY_ALPHA,
            decay_base=formulas.DECAY_BASE,
            decay_period_days=formulas.DECAY_PERIOD_DAYS,
            grounding_base_weight=formulas.GROUNDING_BASE_WEIGHT,
            grounding_sensitivity=formulas.GROUNDING_SENSITIVITY,
        ),
        priority=PriorityDefaults(frequency_factor_floor=formulas.FREQUENCY_FACTOR_FLOOR),
        lifecycle=LifecycleDefaults(
            min_applications_for_promotion=lifecycle.MIN_APPLICATIONS_FOR_PROMOTION,
            promotion_effectiveness=lifecycle.PROMOTION_EFFECTIVENESS_THRESHOLD,
            quarantine_effectiveness=lifecycle.QUARANTINE_EFFECTIVENESS_THRESHOLD,
            degradation_effectiveness=lifecycle.DEGRADATION_THRESHOLD,
        ),
        trust=TrustDefaults(
            base=lifecycle.TRUST_BASE,
            success_weight=lifecycle.TRUST_SUCCESS_WEIGHT,
            failure_weight=lifecycle.TRUST_FAILURE_WEIGHT,
            age_weight=lifecycle.TRUST_AGE_WEIGHT,
            quarantine_penalty=lifecycle.TRUST_QUARANTINE_PENALTY,
            validation_bonus=lifecycle.TRUST_VALIDATION_BONUS,
        ),
        learned_wait=LearnedWaitDefaults(
            recent_successes=recovery_store.RECENT_SUCCESSES,
            min_samples=MIN_LEARNED_SAMPLES,
            full_confidence_samples=int(recovery_store.FULL_CONFIDENCE_SAMPLES),
            min_confidence=MIN_LEARNED_CONFIDENCE,
            static_floor_share=recovery_store.FLOOR_SHARE,
        ),
        drift=DriftDefaults(
            min_applications=settings.drift_min_applications,
            window=settings.drift_window,
            threshold=settings.drift_threshold,
            epistemic_threshold=settings.epistemic_drift_threshold,
        ),
        exploration=ExplorationDefaults(
            default_budget=DEFAULT_BUDGET, entropy_threshold=settings.entropy_threshold
        ),
    )


def _scrub_optional(scrub: Callable[[str], str], value: str | None) -> str | None:
    return None if value is None else scrub(value)


def _scrub_factors(scrub: Callable[[str], str], factors: SuccessFactors | None) -> SuccessFactors | None:
    if factors is None:
        return None
    return factors.model_copy(
        update={
            "validation_types": sorted({scrub(v) for v in factors.validation_types}),
            "error_categories": sorted({scrub(c) for c in factors.error_categories}),
            "prior_sheet_status": _scrub_optional(scrub, factors.prior_sheet_status),
            "time_of_day_bucket": _scrub_optional(scrub, factors.time_of_day_bucket),
        }
    )


def scrub_figures(scrub: Callable[[str], str], figures: PatternFigures) -> PatternFigures:
    """Every string of a pattern through the scrubber's free-text rules."""
    return replace(
        figures,
        pattern_type=scrub(figures.pattern_type),
        pattern_name=scrub(figures.pattern_name),
        description=_scrub_optional(scrub, figures.description),
        suggested_action=_scrub_optional(scrub, figures.suggested_action),
        context_tags=tuple(dict.fromkeys(scrub(tag) for tag in figures.context_tags)),
        instrument_name=_scrub_optional(scrub, figures.instrument_name),
        factors=_scrub_factors(scrub, figures.factors),
    )


def _pattern_learnings(
    store: Store,
    scrub: Callable[[str], str],
    created_at: datetime,
    *,
    min_occurrences: int,
    include_inactive: bool,
) -> list[PatternLearning]:
    query = select(patterns).where(patterns.c.occurrence_count >= min_occurrences).order_by(patterns.c.id)
    if not include_inactive:
        query = query.where(patterns.c.active.is_(True))
    merged: dict[str, PatternFigures] = {}
    for row in store.conn.execute(query):
        figures = scrub_figures(scrub, PatternFigures.from_row(row._mapping))
        key = pattern_id(figures.pattern_type, figures.pattern_name)
        merged[key] = combine(merged[key], figures) if key in merged else figures
    learnings = [figures.to_learning(created_at) for figures in merged.values()]
    return sorted(learnings, key=lambda p: (p.pattern_type, p.pattern_name, p.id))


@dataclass
class _WaitGroup:
    """Error-recovery aggregates of one (error code, model) once scrubbed."""

    recoveries: int = 0
    successes: int = 0
    success_sum: float = 0.0
    success_min: float | None = None
    failed_sum: float = 0.0
    suggested_sum: float = 0.0
    suggested_count: int = 0
    last_recorded: datetime | None = None
    recent: list[tuple[datetime, str, float]] = field(default_factory=list)
    """The latest successful waits as (recorded_at, id, wait)."""

    def add(self, row: Any, recent: list[tuple[datetime, str, float]]) -> None:
        self.recoveries += int(row.recoveries)
        self.successes += int(row.successes or 0)
        self.success_sum += max(0.0, float(row.success_sum or 0.0))
        if row.success_min is not None:
            low = max(0.0, float(row.success_min))
            self.success_min = low if self.success_min is None else min(self.success_min, low)
        self.failed_sum += max(0.0, float(row.failed_sum or 0.0))
        self.suggested_sum += max(0.0, float(row.suggested_sum or 0.0))
        self.suggested_count += int(row.suggested_count or 0)
        last: datetime = row.last_recorded
        self.last_recorded = last if self.last_recorded is None else max(self.last_recorded, last)
        self.recent = sorted([*self.recent, *recent], reverse=True)[: recovery_store.RECENT_SUCCESSES]

    def learning(self, error_code: str, model: str | None, created_at: datetime) -> LearnedWait:
        failures = self.recoveries - self.successes
        waits = [wait for _, _, wait in self.recent]
        learned = None
        if len(waits) >= MIN_LEARNED_SAMPLES:
            learned = (sum(waits) / len(waits) + min(waits)) / 2
        assert self.last_recorded is not None
        mean = self.success_sum / self.successes if self.successes else None
        return LearnedWait(
            error_code=error_code,
            model=model,
            recoveries=self.recoveries,
            successes=self.successes,
            mean_wait=None if mean is None else max(mean, self.success_min or 0.0),
            min_wait=self.success_min if self.successes else None,
            failed_mean_wait=self.failed_sum / failures if failures else None,
            mean_suggested_wait=self.suggested_sum / self.suggested_count if self.suggested_count else None,
            learned_wait=learned,
            last_recorded_days_ago=days_ago(created_at, self.last_recorded),
        )


def _learned_waits(store: Store, scrub: Callable[[str], str], created_at: datetime) -> list[LearnedWait]:
    r = error_recoveries.c
    succeeded = r.recovery_success.is_(True)
    query = (
        select(
            r.error_code,
            r.model,
            func.count().label("recoveries"),
            func.sum(case((succeeded, 1), else_=0)).label("successes"),
            func.sum(case((succeeded, r.actual_wait), else_=null())).label("success_sum"),
            func.min(case((succeeded, r.actual_wait), else_=null())).label("success_min"),
            func.sum(case((succeeded, null()), else_=r.actual_wait)).label("failed_sum"),
            func.sum(r.suggested_wait).label("suggested_sum"),
            func.count(r.suggested_wait).label("suggested_count"),
            func.max(r.recorded_at).label("last_recorded"),
        )
        .where(r.actual_wait.is_not(None))
        .group_by(r.error_code, r.model)
        .order_by(r.error_code, r.model)
    )
    groups: dict[tuple[str, str | None], _WaitGroup] = defaultdict(_WaitGroup)
    for row in store.conn.execute(query).all():
        latest = (
            select(r.recorded_at, r.id, r.actual_wait)
            .where(
                r.error_code == row.error_code,
                r.model.is_(None) if row.model is None else r.model == row.model,
                succeeded,
                r.actual_wait.is_not(None),
            )
            .order_by(r.recorded_at.desc(), r.id.desc())
            .limit(recovery_store.RECENT_SUCCESSES)
        )
        recent = [(at, rid, max(0.0, float(wait))) for at, rid, wait in store.conn.execute(latest)]
        key = (scrub(row.error_code), _scrub_optional(scrub, row.model))
        groups[key].add(row, recent)
    waits = [group.learning(code, model, created_at) for (code, model), group in groups.items()]
    return sorted(waits, key=lambda w: (w.error_code, w.model is not None, w.model or ""))


def export_learnings(
    store: Store,
    *,
    settings: Settings | None = None,
    scrubber: Scrubber | None = None,
    min_occurrences: int = 1,
    include_inactive: bool = False,
    export_id: UUID | None = None,
) -> Learnings:
    """The store's learnings as of now, read in one snapshot.

    ``scrubber`` defaults to the producer's (this machine's home, user, host names and environment);
    soft-deleted patterns stay out unless ``include_inactive``.
    """
    scrub = (scrubber or Scrubber()).text
    settings = settings or Settings()

    def read() -> Learnings:
        if store.dialect == "postgresql":
            store.conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        created_at = store.now()
        return Learnings(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            export_id=export_id or uuid.uuid4(),
            created_at=created_at,
            defaults=defaults_from(settings),
            patterns=_pattern_learnings(
                store, scrub, created_at, min_occurrences=min_occurrences, include_inactive=include_inactive
            ),
            learned_waits=_learned_waits(store, scrub, created_at),
        )

    with store.batch():
        return read()


def dump_learnings(learnings: Learnings) -> str:
    """The YAML text of a learnings file (stable key order, so a diff shows what changed)."""
    body = yaml.safe_dump(
        learnings.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110, indent=2
    )
    return HEADER + body


def load_learnings(document: str) -> Learnings:
    """A learnings file, read and validated; ``ValueError`` (pydantic's, or YAML's) when it is not one."""
    try:
        data = yaml.safe_load(document)
    except yaml.YAMLError as error:
        raise ValueError(f"not YAML: {error}") from error
    if not isinstance(data, dict):
        raise ValueError("not a learnings file: the document is not a mapping")
    if data.get("format") != FORMAT:
        raise ValueError(f"not a learnings file: format is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"learnings format_version {version!r} is not supported (this ostinato reads 1)")
    return Learnings.model_validate(data)
