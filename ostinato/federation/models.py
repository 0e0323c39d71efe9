"""The learnings file: pydantic models, and the JSON Schema generated from them (docs/learnings.schema.json).

A learnings file carries what one deployment learned, in a form other deployments can merge and people can
review in a pull request: patterns with their statistics, learned waits per error code and model, and the
defaults needed to read both. It carries no executions, no job or workspace hashes, no exact event times
(only whole days before the export) and no text the scrubber has not passed.

Regenerate the committed schema with ``python -m ostinato.federation.models > docs/learnings.schema.json``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from ostinato.schema.identity import pattern_id
from ostinato.schema.records import QuarantineStatus

FORMAT = "ostinato-learnings"
FORMAT_VERSION = 1
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]
Count = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SuccessFactorsLearning(_Model):
    """Why a pattern works: the conditions seen when it led to success (SPEC-store §2.5)."""

    validation_types: list[str]
    """Validation types seen with its successes (sorted, no repeats)."""
    error_categories: list[str]
    """Error categories seen with its successes (sorted, no repeats)."""
    prior_sheet_status: str | None
    """Status of the sheet before, at the latest success."""
    time_of_day_bucket: str | None
    """morning, afternoon, evening or night (UTC) of the latest success."""
    retry_iteration: Count
    """Retry iteration of the latest success."""
    escalation_was_pending: bool
    """Whether an escalation was pending at the latest success."""
    grounding_confidence: UnitFloat | None
    """Grounding confidence of the latest success that had one."""
    occurrence_count: int = Field(ge=1)
    """Successes whose conditions were recorded."""
    success_rate: UnitFloat
    """The pattern's share of successful applications when the conditions were last recorded."""
    updated_days_ago: Count
    """Whole days between the latest recorded success and the export."""


class PatternLearning(_Model):
    """One pattern and its statistics."""

    pattern_type: str = Field(min_length=1)
    """Kind of pattern (validation_failure, retry_success, error, ...)."""
    pattern_name: str = Field(min_length=1)
    """Its name, scrubbed; with the type it gives the pattern's id in every deployment."""
    description: str | None
    """What it is, scrubbed."""
    suggested_action: str | None
    """The guidance injected into prompts, scrubbed."""
    context_tags: list[str]
    """Tags it is matched on, scrubbed."""
    instrument_name: str | None
    """The instrument it applies to; null for every instrument."""
    occurrences: int = Field(ge=1)
    """Times it was seen."""
    successes: Count
    """Applications that led to success."""
    failures: Count
    """Applications that did not."""
    effectiveness: UnitFloat
    """Effectiveness score (SPEC-store §2.2.1) as the exporting store holds it."""
    trust: UnitFloat
    """Trust score (SPEC-store §2.4) as the exporting store holds it."""
    status: QuarantineStatus
    """Lifecycle status: pending, validated, quarantined or retired."""
    first_seen_days_ago: Count
    """Whole days between its first sighting and the export."""
    last_seen_days_ago: Count
    """Whole days between its latest sighting and the export."""
    last_confirmed_days_ago: Count
    """Whole days between its latest success (or creation) and the export: what effectiveness decays with."""
    success_factors: SuccessFactorsLearning | None
    """Why it works; null when no success was recorded with its conditions."""

    @property
    def applications(self) -> int:
        return self.successes + self.failures

    @property
    def id(self) -> str:
        return pattern_id(self.pattern_type, self.pattern_name)

    @model_validator(mode="after")
    def _times_in_order(self) -> Self:
        if not self.first_seen_days_ago >= self.last_seen_days_ago:
            raise ValueError("first_seen_days_ago must not be smaller than last_seen_days_ago")
        return self


class LearnedWait(_Model):
    """How waits after an error code (and model) turned out: error-recovery aggregates (SPEC-store §2.7)."""

    error_code: str = Field(min_length=1)
    """The error code."""
    model: str | None
    """The model; null for recoveries recorded without one."""
    recoveries: int = Field(ge=1)
    """Recoveries recorded with a wait."""
    successes: Count
    """Of those, the ones that recovered."""
    mean_wait: Seconds | None
    """Mean wait in seconds of the successful recoveries; null without any."""
    min_wait: Seconds | None
    """Shortest wait in seconds that recovered; null without any."""
    failed_mean_wait: Seconds | None
    """Mean wait in seconds of the failed recoveries; null without any."""
    mean_suggested_wait: Seconds | None
    """Mean of the waits that were suggested, in seconds; null when none was."""
    learned_wait: Seconds | None
    """The store's learned wait for this code and model: (mean + min) / 2 of the 20 latest successful waits;
    null below 3 of them. For reading only: an import recomputes it from the merged recoveries."""
    last_recorded_days_ago: Count
    """Whole days between the latest of these recoveries and the export."""

    @property
    def failures(self) -> int:
        return self.recoveries - self.successes

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.successes > self.recoveries:
            raise ValueError("successes must not exceed recoveries")
        if (self.mean_wait is None) != (self.successes == 0) or (self.min_wait is None) != (
            self.successes == 0
        ):
            raise ValueError("mean_wait and min_wait are given exactly when there are successes")
        if (self.failed_mean_wait is None) != (self.failures == 0):
            raise ValueError("failed_mean_wait is given exactly when there are failed recoveries")
        if (
            self.mean_wait is not None
            and self.min_wait is not None
            and self.min_wait > self.mean_wait * (1 + 1e-9)
        ):
            raise ValueError("min_wait must not exceed mean_wait")
        return self


class EffectivenessDefaults(_Model):
    """Effectiveness: (alpha·recent + (1−alpha)·historical) · decay_base^(days/decay_period_days) · grounding
    weight (SPEC-store §2.2.1)."""

    cold_start: float
    """Effectiveness below min_applications applications."""
    min_applications: int
    recent_window: int
    """Latest applications that make the recent success rate."""
    recency_alpha: float
    decay_base: float
    decay_period_days: int
    grounding_base_weight: float
    grounding_sensitivity: float


class PriorityDefaults(_Model):
    """Priority: effectiveness · max(frequency_factor_floor, log10(occurrences + 1) / 2)."""

    frequency_factor_floor: float


class LifecycleDefaults(_Model):
    """Automatic status changes of patterns with at least min_applications_for_promotion applications."""

    min_applications_for_promotion: int
    promotion_effectiveness: float
    """A pending pattern at or above this becomes validated."""
    quarantine_effectiveness: float
    """A pending pattern below this becomes quarantined."""
    degradation_effectiveness: float
    """A validated pattern below this becomes quarantined."""


class TrustDefaults(_Model):
    """Trust: base + success_weight·success rate − failure_weight·failure rate + age_weight·age, ± status."""

    base: float
    success_weight: float
    failure_weight: float
    age_weight: float
    quarantine_penalty: float
    validation_bonus: float


class LearnedWaitDefaults(_Model):
    """How a runner uses a learned wait instead of its static delay."""

    recent_successes: int
    """Latest successful recoveries the learned wait is computed from."""
    min_samples: int
    """Successful recoveries needed before a wait is learned."""
    full_confidence_samples: int
    """Successful recoveries at which confidence reaches 1."""
    min_confidence: float
    """Below this confidence the learned wait is blended with the static delay."""
    static_floor_share: float
    """A learned wait is never below this share of the static delay."""


class DriftDefaults(_Model):
    """Effectiveness and epistemic drift, measured by beat."""

    min_applications: int
    window: int
    threshold: float
    epistemic_threshold: float


class ExplorationDefaults(_Model):
    """Exploration budget and pattern entropy."""

    default_budget: float
    entropy_threshold: float


class Defaults(_Model):
    """The exporting deployment's constants and settings that the figures above were computed with."""

    effectiveness: EffectivenessDefaults
    priority: PriorityDefaults
    lifecycle: LifecycleDefaults
    trust: TrustDefaults
    learned_wait: LearnedWaitDefaults
    drift: DriftDefaults
    exploration: ExplorationDefaults


class Learnings(_Model):
    """Anonymised learnings of one ostinato deployment (``ostinato export``), to merge into others
    (``ostinato import-learnings``)."""

    model_config = ConfigDict(title="ostinato learnings")

    format: Literal["ostinato-learnings"]
    """Always ostinato-learnings."""
    format_version: Literal[1]
    """Version of this format; an importer refuses versions it does not know."""
    export_id: UUID
    """Identifies this export: importing it again changes nothing."""
    created_at: AwareDatetime
    """When it was exported; the *_days_ago fields count back from here."""
    defaults: Defaults
    patterns: list[PatternLearning]
    """Sorted by pattern type, then name; at most one entry per pattern id."""
    learned_waits: list[LearnedWait]
    """Sorted by error code, then model; at most one entry per error code and model."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [p.id for p in self.patterns]
        if len(set(ids)) != len(ids):
            raise ValueError("two patterns share a type and a (normalised) name")
        keys = [(w.error_code, w.model) for w in self.learned_waits]
        if len(set(keys)) != len(keys):
            raise ValueError("two learned waits share an error code and a model")
        return self


def learnings_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a learnings file, as committed in docs/learnings.schema.json."""
    generated = Learnings.model_json_schema(mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **generated}


def learnings_json_schema_text() -> str:
    return json.dumps(learnings_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(learnings_json_schema_text(), end="")
