"""Domain records: what the store returns and what travels on the broadcast channel."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class QuarantineStatus(StrEnum):
    PENDING = "pending"
    QUARANTINED = "quarantined"
    VALIDATED = "validated"
    RETIRED = "retired"


class PatternType(StrEnum):
    VALIDATION_FAILURE = "validation_failure"
    RETRY_SUCCESS = "retry_success"
    COMPLETION_MODE = "completion_mode"
    SUCCESS_WITHOUT_RETRY = "first_attempt_success"
    HIGH_CONFIDENCE = "high_confidence"
    LOW_CONFIDENCE = "low_confidence"
    SEMANTIC_FAILURE = "semantic_failure"
    OUTPUT_PATTERN = "output_pattern"
    SEMANTIC_INSIGHT = "semantic_insight"
    RESOURCE_ANOMALY = "resource_anomaly"
    RESOURCE_CORRELATION = "resource_correlation"
    ERROR = "error"


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


class PatternRecord(Record):
    """A pattern row as read: trust and effectiveness clamped to [0, 1], priority and variance ≥ 0."""

    id: str
    pattern_type: str
    pattern_name: str
    description: str | None = None
    occurrence_count: int = 1
    first_seen: datetime
    last_seen: datetime
    last_confirmed: datetime
    led_to_success_count: int = 0
    led_to_failure_count: int = 0
    effectiveness_score: float = 0.5
    variance: float = 0.0
    suggested_action: str | None = None
    context_tags: list[str] = Field(default_factory=list)
    priority_score: float = 0.5
    quarantine_status: QuarantineStatus = QuarantineStatus.PENDING
    provenance_job_hash: str | None = None
    provenance_sheet_num: int | None = None
    quarantined_at: datetime | None = None
    validated_at: datetime | None = None
    quarantine_reason: str | None = None
    trust_score: float = 0.5
    trust_calculation_date: datetime | None = None
    success_factors: dict[str, Any] | None = None
    success_factors_updated_at: datetime | None = None
    active: bool = True
    content_hash: str | None = None
    instrument_name: str | None = None

    @field_validator("trust_score", "effectiveness_score", mode="before")
    @classmethod
    def _unit(cls, value: float | None) -> float:
        return 0.5 if value is None else _clamp01(value)

    @field_validator("variance", "priority_score", mode="before")
    @classmethod
    def _non_negative(cls, value: float | None) -> float:
        return max(0.0, value or 0.0)

    @field_validator("quarantine_status", mode="before")
    @classmethod
    def _status(cls, value: str | None) -> str:
        return value or QuarantineStatus.PENDING.value

    @field_validator("active", mode="before")
    @classmethod
    def _active(cls, value: bool | None) -> bool:
        return True if value is None else bool(value)

    @field_validator("context_tags", mode="before")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str]:
        return list(value or [])

    @property
    def applications(self) -> int:
        return self.led_to_success_count + self.led_to_failure_count


class SuccessFactors(Record):
    """Why a pattern works: the conditions seen when it led to success."""

    validation_types: list[str] = Field(default_factory=list)
    error_categories: list[str] = Field(default_factory=list)
    prior_sheet_status: str | None = None
    time_of_day_bucket: str | None = None
    retry_iteration: int = 0
    escalation_was_pending: bool = False
    grounding_confidence: float | None = None
    occurrence_count: int = 1
    success_rate: float = 1.0


class ExecutionRecord(Record):
    id: str
    workspace_hash: str
    job_hash: str
    sheet_num: int
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float = 0.0
    status: str | None = None
    retry_count: int = 0
    success_without_retry: bool = False
    validation_pass_rate: float = 0.0
    confidence_score: float = 0.0
    model: str | None = None
    error_codes: list[str] = Field(default_factory=list)


class ErrorRecoveryRecord(Record):
    id: str
    error_code: str
    suggested_wait: float
    actual_wait: float
    recovery_success: bool
    recorded_at: datetime
    model: str | None = None
    time_of_day: int | None = None


class RateLimitEvent(Record):
    id: str
    error_code: str
    model: str | None = None
    recorded_at: datetime
    expires_at: datetime
    source_job_hash: str
    duration_seconds: float


class EscalationDecisionRecord(Record):
    id: str
    job_hash: str
    sheet_num: int
    confidence: float
    action: str
    guidance: str | None = None
    validation_pass_rate: float
    retry_count: int
    outcome_after_action: str | None = None
    recorded_at: datetime
    model: str | None = None


class PatternDiscoveryEvent(Record):
    """A newly discovered pattern, broadcast to concurrently running jobs."""

    id: str
    pattern_id: str
    pattern_name: str
    pattern_type: str
    source_job_hash: str
    recorded_at: datetime
    expires_at: datetime
    effectiveness_score: float
    context_tags: list[str] = Field(default_factory=list)


class EvolutionTrajectoryEntry(Record):
    id: str
    cycle: int
    recorded_at: datetime
    evolutions_completed: int
    evolutions_deferred: int
    issue_classes: list[str]
    cv_avg: float
    implementation_loc: int
    test_loc: int
    loc_accuracy: float
    research_candidates_resolved: int = 0
    research_candidates_created: int = 0
    notes: str | None = None


class DriftMetrics(Record):
    pattern_id: str
    pattern_name: str
    window_size: int
    effectiveness_before: float
    effectiveness_after: float
    grounding_confidence_avg: float
    drift_magnitude: float
    drift_direction: str
    applications_analyzed: int
    threshold_exceeded: bool


class EpistemicDriftMetrics(Record):
    pattern_id: str
    pattern_name: str
    window_size: int
    confidence_before: float
    confidence_after: float
    belief_change: float
    belief_entropy: float
    applications_analyzed: int
    threshold_exceeded: bool
    drift_direction: str


class EntropyMetrics(Record):
    calculated_at: datetime
    shannon_entropy: float
    max_possible_entropy: float
    diversity_index: float
    unique_pattern_count: int
    effective_pattern_count: int
    total_applications: int
    dominant_pattern_share: float
    threshold_exceeded: bool = False


class ExplorationBudgetRecord(Record):
    id: str
    job_hash: str
    recorded_at: datetime
    budget_value: float
    entropy_at_time: float | None = None
    adjustment_type: str
    adjustment_reason: str | None = None


class EntropyResponseRecord(Record):
    id: str
    job_hash: str
    recorded_at: datetime
    entropy_at_trigger: float
    threshold_used: float
    actions_taken: list[str] = Field(default_factory=list)
    budget_boosted: bool = False
    quarantine_revisits: int = 0
    patterns_revisited: list[str] = Field(default_factory=list)
