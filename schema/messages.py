"""The wire contract: one JSON envelope around each message kind, with its bounds.

Anything that fails these models is dead-lettered with the validation error as its reason, so the bounds
here are the whole of what a worker trusts about a message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, Self
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
TAIL_LIMIT = 4096
"""Output tails are cut to their last 4 KiB (after scrubbing) before they are sent."""


Instant = AwareDatetime
"""A point in time with its UTC offset, as sent (naive times are refused); the store keeps times in UTC and
every reading of a wall-clock field (an hour of day) converts first."""
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
Seconds = Annotated[float, Field(ge=0.0, le=30 * 24 * 3600)]
Hex16 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
NO_NUL = r"^[^\x00]*$"
"""PostgreSQL text cannot hold NUL, so it is refused here with a clear reason."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Status = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL, to_lower=True)]
"""A sheet's final status, in lower case however the runner spells it."""
ShortText = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]
Text = Annotated[str, StringConstraints(max_length=TAIL_LIMIT, pattern=NO_NUL)]


def _refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters cannot be stored (PostgreSQL text refuses them)")
    return value


Tail = Annotated[str, StringConstraints(max_length=TAIL_LIMIT), AfterValidator(_refuse_nul)]
"""Output tails are the long strings of every outcome: a substring test finds NUL several times faster
than the pattern, which has to match the whole text."""

ApplicationMode = Literal["exploration", "exploitation"]
EscalationAction = Literal["retry", "skip", "abort", "modify_prompt"]
EscalationOutcome = Literal["success", "failed", "aborted", "skipped"]


class WireModel(BaseModel):
    """Strict by default: unknown fields, NaN and infinities are refused, not guessed at."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ValidationResult(WireModel):
    validation_type: Name = Field("unknown", validation_alias=AliasChoices("validation_type", "rule_type"))
    passed: bool = True
    confidence: Fraction = 1.0
    failure_reason: Text | None = None
    failure_category: ShortText | None = None
    suggested_fix: Text | None = None
    error_code: ShortText | None = None


class ErrorEntry(WireModel):
    error_code: ShortText
    category: ShortText | None = None
    message: Text | None = None


class SuccessContext(WireModel):
    """What was true around a sheet, kept as the "why it works" factors of the patterns it applied."""

    prior_sheet_status: ShortText | None = None
    escalation_was_pending: bool = False


class Provenance(WireModel):
    job_hash: Hex16
    sheet_num: Count | None = None


class SheetOutcome(WireModel):
    execution_id: UUID = Field(default_factory=uuid4)
    sheet_id: Name
    sheet_num: Count | None = None
    model: ShortText | None = None
    instrument_name: ShortText | None = None
    started_at: Instant
    completed_at: Instant | None = None
    execution_duration: Seconds = 0.0
    retry_count: Count = 0
    completion_mode_used: bool = False
    final_status: Status = "completed"
    validation_results: list[ValidationResult] = Field(default_factory=list, max_length=256)
    validation_pass_rate: Fraction = 0.0
    success_without_retry: bool = False
    failure_category_counts: dict[Name, Count] = Field(default_factory=dict, max_length=256)
    semantic_patterns: list[Text] = Field(default_factory=list, max_length=256)
    fix_suggestions: list[Text] = Field(default_factory=list, max_length=256)
    patterns_applied: list[Name] = Field(default_factory=list, max_length=256)
    stdout_tail: Tail = ""
    stderr_tail: Tail = ""
    error_history: list[ErrorEntry] = Field(default_factory=list, max_length=256)
    grounding_passed: bool | None = None
    grounding_confidence: Fraction | None = None
    grounding_guidance: Text | None = None
    success_context: SuccessContext | None = None


class PatternApplication(WireModel):
    pattern_id: Name
    execution_id: Name
    pattern_led_to_success: bool
    applied_at: Instant
    retry_count_before: Count = 0
    retry_count_after: Count = 0
    application_mode: ApplicationMode = "exploitation"
    validation_passed: bool | None = None
    grounding_confidence: Fraction | None = None


class PatternReport(WireModel):
    pattern_type: Name
    pattern_name: Name
    reported_at: Instant
    description: Text | None = None
    context_tags: list[Name] | None = Field(None, max_length=64)
    suggested_action: Text | None = None
    provenance: Provenance | None = None
    instrument_name: ShortText | None = None


class RateLimit(WireModel):
    error_code: Name
    recorded_at: Instant
    model: ShortText | None = None
    retry_after_seconds: Seconds | None = None
    reset_at: Instant | None = None

    @model_validator(mode="after")
    def _has_duration(self) -> Self:
        if self.retry_after_seconds is None and self.reset_at is None:
            raise ValueError("rate_limit needs retry_after_seconds or reset_at")
        return self

    @property
    def duration_seconds(self) -> float:
        """The announced duration: retry-after, else the time until the expected reset."""
        if self.retry_after_seconds is not None:
            return self.retry_after_seconds
        assert self.reset_at is not None
        return max(0.0, (self.reset_at - self.recorded_at).total_seconds())


class ErrorRecovery(WireModel):
    error_code: Name
    suggested_wait: Seconds
    actual_wait: Seconds
    recovery_success: bool
    recorded_at: Instant
    model: ShortText | None = None
    time_of_day: Annotated[int, Field(ge=0, le=23)] | None = None


class EscalationDecision(WireModel):
    sheet_num: Count
    confidence: Fraction
    action: EscalationAction
    validation_pass_rate: Fraction
    retry_count: Count
    recorded_at: Instant
    guidance: Text | None = None
    outcome_after_action: EscalationOutcome | None = None
    model: ShortText | None = None


class EvolutionEntry(WireModel):
    cycle: Count
    evolutions_completed: Count
    evolutions_deferred: Count
    issue_classes: list[Name] = Field(max_length=256)
    cv_avg: float
    implementation_loc: Count
    test_loc: Count
    loc_accuracy: float
    recorded_at: Instant
    research_candidates_resolved: Count = 0
    research_candidates_created: Count = 0
    notes: Text = ""


class Envelope(WireModel):
    """Fields every message carries; ``message_id`` is the idempotency key."""

    message_id: UUID = Field(default_factory=uuid4)
    schema_version: int = SCHEMA_VERSION
    sent_at: Instant = Field(default_factory=lambda: datetime.now(UTC))
    workspace_hash: Hex16
    job_hash: Hex16

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {value} (this worker knows {SCHEMA_VERSION})")
        return value


class SheetOutcomeMessage(Envelope):
    kind: Literal["sheet_outcome"] = "sheet_outcome"
    payload: SheetOutcome


class PatternApplicationMessage(Envelope):
    kind: Literal["pattern_application"] = "pattern_application"
    payload: PatternApplication


class PatternReportMessage(Envelope):
    kind: Literal["pattern_report"] = "pattern_report"
    payload: PatternReport


class RateLimitMessage(Envelope):
    kind: Literal["rate_limit"] = "rate_limit"
    payload: RateLimit


class ErrorRecoveryMessage(Envelope):
    kind: Literal["error_recovery"] = "error_recovery"
    payload: ErrorRecovery


class EscalationDecisionMessage(Envelope):
    kind: Literal["escalation_decision"] = "escalation_decision"
    payload: EscalationDecision


class EvolutionEntryMessage(Envelope):
    kind: Literal["evolution_entry"] = "evolution_entry"
    payload: EvolutionEntry


Message = Annotated[
    SheetOutcomeMessage
    | PatternApplicationMessage
    | PatternReportMessage
    | RateLimitMessage
    | ErrorRecoveryMessage
    | EscalationDecisionMessage
    | EvolutionEntryMessage,
    Field(discriminator="kind"),
]
MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
KINDS: tuple[str, ...] = (
    "sheet_outcome",
    "pattern_application",
    "pattern_report",
    "rate_limit",
    "error_recovery",
    "escalation_decision",
    "evolution_entry",
)


def parse_message(raw: object) -> Message:
    """Validate one envelope (a dict or a JSON string/bytes); raises ``pydantic.ValidationError``."""
    if isinstance(raw, str | bytes):
        return MESSAGE_ADAPTER.validate_json(raw)
    return MESSAGE_ADAPTER.validate_python(raw)
