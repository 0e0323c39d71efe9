"""The store's tables (SQLAlchemy Core), portable between PostgreSQL and SQLite.

Timestamps are ``timestamptz`` in UTC, JSON is ``jsonb`` on PostgreSQL, and every "latest N" read has an index
that ends in ``id`` so its order is deterministic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect (SQLite stores it naive, so it is re-tagged on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json: Any = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Id = String(64)

patterns = Table(
    "patterns",
    metadata,
    Column("id", Id, primary_key=True),
    Column("pattern_type", String(200), nullable=False),
    Column("pattern_name", Text, nullable=False),
    Column("description", Text),
    Column("occurrence_count", Integer, nullable=False, server_default="1"),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("last_confirmed", UTCDateTime, nullable=False),
    Column("led_to_success_count", Integer, nullable=False, server_default="0"),
    Column("led_to_failure_count", Integer, nullable=False, server_default="0"),
    Column("effectiveness_score", Float, nullable=False, server_default="0.5"),
    Column("variance", Float, nullable=False, server_default="0"),
    Column("suggested_action", Text),
    Column("context_tags", Json, nullable=False, server_default=text("'[]'")),
    Column("priority_score", Float, nullable=False, server_default="0.5"),
    Column("quarantine_status", String(20), nullable=False, server_default="pending"),
    Column("provenance_job_hash", String(64)),
    Column("provenance_sheet_num", Integer),
    Column("quarantined_at", UTCDateTime),
    Column("validated_at", UTCDateTime),
    Column("quarantine_reason", Text),
    Column("trust_score", Float, nullable=False, server_default="0.5"),
    Column("trust_calculation_date", UTCDateTime),
    Column("success_factors", Json),
    Column("success_factors_updated_at", UTCDateTime),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("content_hash", String(64)),
    Column("instrument_name", String(200)),
    Column("description_stamp", Text),
    Column("action_stamp", Text),
    Column("tags_stamp", Text),
    Column("origin_stamp", Text),
    Index("idx_patterns_type", "pattern_type"),
    Index("idx_patterns_priority", text("priority_score DESC")),
    Index("idx_patterns_confirmed", "last_confirmed"),
    Index("idx_patterns_quarantine", "quarantine_status"),
    Index("idx_patterns_trust", "trust_score"),
    Index("idx_patterns_content_hash", "content_hash"),
    Index("idx_patterns_instrument", "instrument_name"),
    Index("idx_patterns_tags", "context_tags", postgresql_using="gin"),
)
"""The ``*_stamp`` columns record which sighting a field came from, so the outcome does not depend on the
order workers apply sightings in (SPEC-store §0.1): description (with its content hash), suggested action and
tags come from the latest sighting that carries them, instrument and provenance from the earliest
(``workers/store/patterns.py``). NULL on rows written before revision 0003 or imported.
"""

pattern_applications = Table(
    "pattern_applications",
    metadata,
    Column("id", Id, primary_key=True),
    Column("pattern_id", Id, nullable=False),
    Column("execution_id", String(200)),
    Column("applied_at", UTCDateTime, nullable=False),
    Column("pattern_led_to_success", Boolean, nullable=False),
    Column("retry_count_before", Integer, nullable=False, server_default="0"),
    Column("retry_count_after", Integer, nullable=False, server_default="0"),
    Column("grounding_confidence", Float),
    Column("application_mode", String(20)),
    Column("validation_passed", Boolean),
    Index("idx_app_pattern_latest", "pattern_id", text("applied_at DESC"), text("id DESC")),
    Index("idx_app_execution", "execution_id"),
    Index("idx_app_applied", "applied_at", "pattern_id"),
)

executions = Table(
    "executions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("workspace_hash", String(64), nullable=False),
    Column("job_hash", String(64), nullable=False),
    Column("sheet_num", Integer, nullable=False),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("duration_seconds", Float),
    Column("status", String(50)),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("success_without_retry", Boolean),
    Column("validation_pass_rate", Float),
    Column("confidence_score", Float),
    Column("model", String(200)),
    Column("error_codes", Json, nullable=False, server_default=text("'[]'")),
    Index("idx_exec_workspace_job", "workspace_hash", "job_hash"),
    Index("idx_exec_status", "status"),
    Index("idx_exec_started", "started_at"),
    Index("idx_exec_completed", text("completed_at DESC"), text("id DESC")),
    Index("idx_exec_job_latest", "job_hash", text("completed_at DESC"), text("id DESC")),
    Index("idx_exec_workspace_latest", "workspace_hash", text("completed_at DESC"), text("id DESC")),
    Index("idx_exec_sheet_latest", "sheet_num", text("completed_at DESC"), text("id DESC")),
)

error_recoveries = Table(
    "error_recoveries",
    metadata,
    Column("id", Id, primary_key=True),
    Column("error_code", String(200), nullable=False),
    Column("suggested_wait", Float),
    Column("actual_wait", Float),
    Column("recovery_success", Boolean),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("model", String(200)),
    Column("time_of_day", Integer),
    Index("idx_recovery_code_latest", "error_code", text("recorded_at DESC"), text("id DESC")),
    Index("idx_recovery_code_model_latest", "error_code", "model", text("recorded_at DESC"), text("id DESC")),
    Index("idx_recovery_code_hour", "error_code", "time_of_day", "recovery_success"),
    Index("idx_recovery_success", "recovery_success"),
)

workspace_clusters = Table(
    "workspace_clusters",
    metadata,
    Column("workspace_hash", String(64), primary_key=True),
    Column("cluster_id", String(200)),
    Column("assigned_at", UTCDateTime),
)

rate_limit_events = Table(
    "rate_limit_events",
    metadata,
    Column("id", Id, primary_key=True),
    Column("error_code", String(200), nullable=False),
    Column("model", String(200)),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("source_job_hash", String(64), nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Index("idx_rate_limit_code", "error_code"),
    Index("idx_rate_limit_expires", "expires_at"),
    Index("idx_rate_limit_model", "model"),
)

escalation_decisions = Table(
    "escalation_decisions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("job_hash", String(64), nullable=False),
    Column("sheet_num", Integer, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("action", String(50), nullable=False),
    Column("guidance", Text),
    Column("validation_pass_rate", Float, nullable=False),
    Column("retry_count", Integer, nullable=False),
    Column("outcome_after_action", String(50)),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("model", String(200)),
    Index("idx_escalation_job", "job_hash"),
    Index("idx_escalation_action", "action"),
    Index(
        "idx_escalation_similarity",
        "confidence",
        "validation_pass_rate",
        "outcome_after_action",
        "recorded_at",
        "id",
    ),
)

pattern_discovery_events = Table(
    "pattern_discovery_events",
    metadata,
    Column("id", Id, primary_key=True),
    Column("pattern_id", Id, nullable=False),
    Column("pattern_name", Text, nullable=False),
    Column("pattern_type", String(200), nullable=False),
    Column("source_job_hash", String(64), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("effectiveness_score", Float, nullable=False),
    Column("context_tags", Json, nullable=False, server_default=text("'[]'")),
    Index("idx_pattern_discovery_expires", "expires_at"),
    Index("idx_pattern_discovery_source", "source_job_hash"),
    Index("idx_pattern_discovery_type", "pattern_type"),
)

evolution_trajectory = Table(
    "evolution_trajectory",
    metadata,
    Column("id", Id, primary_key=True),
    Column("cycle", Integer, nullable=False, unique=True),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("evolutions_completed", Integer, nullable=False),
    Column("evolutions_deferred", Integer, nullable=False),
    Column("issue_classes", Json, nullable=False),
    Column("cv_avg", Float, nullable=False),
    Column("implementation_loc", Integer, nullable=False),
    Column("test_loc", Integer, nullable=False),
    Column("loc_accuracy", Float, nullable=False),
    Column("research_candidates_resolved", Integer, nullable=False, server_default="0"),
    Column("research_candidates_created", Integer, nullable=False, server_default="0"),
    Column("notes", Text),
    Index("idx_trajectory_recorded", "recorded_at"),
)

exploration_budget = Table(
    "exploration_budget",
    metadata,
    Column("id", Id, primary_key=True),
    Column("job_hash", String(200), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("budget_value", Float, nullable=False),
    Column("entropy_at_time", Float),
    Column("adjustment_type", String(50), nullable=False),
    Column("adjustment_reason", Text),
    Index("idx_budget_job_latest", "job_hash", text("recorded_at DESC"), text("seq DESC")),
    Index("idx_budget_recorded", "recorded_at"),
)

entropy_responses = Table(
    "entropy_responses",
    metadata,
    Column("id", Id, primary_key=True),
    Column("job_hash", String(200), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("entropy_at_trigger", Float, nullable=False),
    Column("threshold_used", Float, nullable=False),
    Column("actions_taken", Json, nullable=False),
    Column("budget_boosted", Boolean, nullable=False, server_default=text("false")),
    Column("quarantine_revisits", Integer, nullable=False, server_default="0"),
    Column("patterns_revisited", Json),
    Index("idx_entropy_response_job", "job_hash"),
    Index("idx_entropy_response_recorded", "recorded_at"),
)

pattern_entropy_history = Table(
    "pattern_entropy_history",
    metadata,
    Column("id", Id, primary_key=True),
    Column("calculated_at", UTCDateTime, nullable=False),
    Column("shannon_entropy", Float, nullable=False),
    Column("max_possible_entropy", Float, nullable=False),
    Column("diversity_index", Float, nullable=False),
    Column("unique_pattern_count", Integer, nullable=False),
    Column("effective_pattern_count", Integer, nullable=False),
    Column("total_applications", Integer, nullable=False),
    Column("dominant_pattern_share", Float, nullable=False),
    Column("threshold_exceeded", Boolean, nullable=False, server_default=text("false")),
    Index("idx_entropy_history_calculated", text("calculated_at DESC")),
)

detection_evidence = Table(
    "detection_evidence",
    metadata,
    Column("job_hash", String(64), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("extra", Float, nullable=False, server_default="0"),
    Column("label", Text, nullable=False, server_default=""),
    Column("first_seen", UTCDateTime),
    Column("last_seen", UTCDateTime),
    Column("sheet_num", Integer),
    Column("instrument_name", String(200)),
    Column("origin", Text),
)
"""Per-job totals of detection evidence, so pattern detection is exact however outcomes are batched.

``first_seen``, ``sheet_num``, ``instrument_name`` and ``label`` are those of the earliest evidence: the
lowest ``origin`` (its origin stamp: time, sheet, then the values; ``workers/store/patterns.py``), then the
lowest label. ``last_seen`` is the latest evidence's time. Rows written before revision 0003 have no times
until their next evidence.
"""

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("kind", String(50), nullable=False),
    Column("processed_at", UTCDateTime, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True),
    Column("message_id", String(64)),
    Column("kind", String(200)),
    Column("task_name", String(200)),
    Column("reason", Text, nullable=False),
    Column("raw_body", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("replayed_at", UTCDateTime),
    Index("idx_dead_letters_received", text("received_at DESC"), text("id DESC")),
)

maintenance_runs = Table(
    "maintenance_runs",
    metadata,
    Column("task", String(100), primary_key=True),
    Column("period_start", UTCDateTime, primary_key=True),
    Column("ran_at", UTCDateTime, nullable=False),
    Column("summary", Json, nullable=False, server_default=text("'{}'")),
)
"""One row per maintenance pass and period: the claim that makes a pass happen once, whoever sends it."""

pattern_drift = Table(
    "pattern_drift",
    metadata,
    Column("pattern_id", Id, primary_key=True),
    Column("measured_at", UTCDateTime, primary_key=True),
    Column("window_size", Integer, nullable=False),
    Column("effectiveness_before", Float),
    Column("effectiveness_after", Float),
    Column("grounding_confidence_avg", Float),
    Column("drift_magnitude", Float),
    Column("drift_direction", String(20)),
    Column("threshold_exceeded", Boolean, nullable=False, server_default=text("false")),
    Column("confidence_before", Float),
    Column("confidence_after", Float),
    Column("belief_change", Float),
    Column("belief_entropy", Float),
    Column("epistemic_direction", String(20)),
    Column("epistemic_threshold_exceeded", Boolean, nullable=False, server_default=text("false")),
    Column("retired", Boolean, nullable=False, server_default=text("false")),
    Index("idx_pattern_drift_measured", "measured_at"),
)
"""Drift measured by beat: both measures of a pattern at one time (NULL where its history is too short)."""

DATA_TABLES: tuple[Table, ...] = tuple(metadata.sorted_tables)
