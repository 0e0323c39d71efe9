"""initial store schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 12:13:29.324954
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ostinato.schema.tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "detection_evidence",
        sa.Column("job_hash", sa.String(length=64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("extra", sa.Float(), server_default="0", nullable=False),
        sa.Column("label", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("job_hash", "key", name=op.f("pk_detection_evidence")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=200), nullable=True),
        sa.Column("task_name", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.Column("received_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            "idx_dead_letters_received",
            [sa.literal_column("received_at DESC"), sa.literal_column("id DESC")],
            unique=False,
        )

    op.create_table(
        "entropy_responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_hash", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("entropy_at_trigger", sa.Float(), nullable=False),
        sa.Column("threshold_used", sa.Float(), nullable=False),
        sa.Column(
            "actions_taken",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            nullable=False,
        ),
        sa.Column("budget_boosted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("quarantine_revisits", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "patterns_revisited",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entropy_responses")),
    )
    with op.batch_alter_table("entropy_responses", schema=None) as batch_op:
        batch_op.create_index("idx_entropy_response_job", ["job_hash"], unique=False)
        batch_op.create_index("idx_entropy_response_recorded", ["recorded_at"], unique=False)

    op.create_table(
        "error_recoveries",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("error_code", sa.String(length=200), nullable=False),
        sa.Column("suggested_wait", sa.Float(), nullable=True),
        sa.Column("actual_wait", sa.Float(), nullable=True),
        sa.Column("recovery_success", sa.Boolean(), nullable=True),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("time_of_day", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_error_recoveries")),
    )
    with op.batch_alter_table("error_recoveries", schema=None) as batch_op:
        batch_op.create_index("idx_recovery_code", ["error_code"], unique=False)
        batch_op.create_index("idx_recovery_success", ["recovery_success"], unique=False)

    op.create_table(
        "escalation_decisions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_hash", sa.String(length=64), nullable=False),
        sa.Column("sheet_num", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=50), nullable=False),
        sa.Column("guidance", sa.Text(), nullable=True),
        sa.Column("validation_pass_rate", sa.Float(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("outcome_after_action", sa.String(length=50), nullable=True),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escalation_decisions")),
    )
    with op.batch_alter_table("escalation_decisions", schema=None) as batch_op:
        batch_op.create_index("idx_escalation_action", ["action"], unique=False)
        batch_op.create_index("idx_escalation_confidence", ["confidence"], unique=False)
        batch_op.create_index("idx_escalation_job", ["job_hash"], unique=False)

    op.create_table(
        "evolution_trajectory",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("evolutions_completed", sa.Integer(), nullable=False),
        sa.Column("evolutions_deferred", sa.Integer(), nullable=False),
        sa.Column(
            "issue_classes",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            nullable=False,
        ),
        sa.Column("cv_avg", sa.Float(), nullable=False),
        sa.Column("implementation_loc", sa.Integer(), nullable=False),
        sa.Column("test_loc", sa.Integer(), nullable=False),
        sa.Column("loc_accuracy", sa.Float(), nullable=False),
        sa.Column("research_candidates_resolved", sa.Integer(), server_default="0", nullable=False),
        sa.Column("research_candidates_created", sa.Integer(), server_default="0", nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evolution_trajectory")),
        sa.UniqueConstraint("cycle", name=op.f("uq_evolution_trajectory_cycle")),
    )
    with op.batch_alter_table("evolution_trajectory", schema=None) as batch_op:
        batch_op.create_index("idx_trajectory_recorded", ["recorded_at"], unique=False)

    op.create_table(
        "executions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workspace_hash", sa.String(length=64), nullable=False),
        sa.Column("job_hash", sa.String(length=64), nullable=False),
        sa.Column("sheet_num", sa.Integer(), nullable=False),
        sa.Column("started_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=50), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("success_without_retry", sa.Boolean(), nullable=True),
        sa.Column("validation_pass_rate", sa.Float(), nullable=True),
        sa.Column("confidence_score", sa.Float(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column(
            "error_codes",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index(
            "idx_exec_completed",
            [sa.literal_column("completed_at DESC"), sa.literal_column("id DESC")],
            unique=False,
        )
        batch_op.create_index("idx_exec_started", ["started_at"], unique=False)
        batch_op.create_index("idx_exec_status", ["status"], unique=False)
        batch_op.create_index("idx_exec_workspace_job", ["workspace_hash", "job_hash"], unique=False)

    op.create_table(
        "exploration_budget",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_hash", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("budget_value", sa.Float(), nullable=False),
        sa.Column("entropy_at_time", sa.Float(), nullable=True),
        sa.Column("adjustment_type", sa.String(length=50), nullable=False),
        sa.Column("adjustment_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exploration_budget")),
    )
    with op.batch_alter_table("exploration_budget", schema=None) as batch_op:
        batch_op.create_index(
            "idx_budget_job_latest",
            ["job_hash", sa.literal_column("recorded_at DESC"), sa.literal_column("seq DESC")],
            unique=False,
        )
        batch_op.create_index("idx_budget_recorded", ["recorded_at"], unique=False)

    op.create_table(
        "pattern_applications",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pattern_id", sa.String(length=64), nullable=False),
        sa.Column("execution_id", sa.String(length=200), nullable=True),
        sa.Column("applied_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("pattern_led_to_success", sa.Boolean(), nullable=False),
        sa.Column("retry_count_before", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_count_after", sa.Integer(), server_default="0", nullable=False),
        sa.Column("grounding_confidence", sa.Float(), nullable=True),
        sa.Column("application_mode", sa.String(length=20), nullable=True),
        sa.Column("validation_passed", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pattern_applications")),
    )
    with op.batch_alter_table("pattern_applications", schema=None) as batch_op:
        batch_op.create_index("idx_app_execution", ["execution_id"], unique=False)
        batch_op.create_index(
            "idx_app_pattern_latest",
            ["pattern_id", sa.literal_column("applied_at DESC"), sa.literal_column("id DESC")],
            unique=False,
        )

    op.create_table(
        "pattern_discovery_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pattern_id", sa.String(length=64), nullable=False),
        sa.Column("pattern_name", sa.Text(), nullable=False),
        sa.Column("pattern_type", sa.String(length=200), nullable=False),
        sa.Column("source_job_hash", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("effectiveness_score", sa.Float(), nullable=False),
        sa.Column(
            "context_tags",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pattern_discovery_events")),
    )
    with op.batch_alter_table("pattern_discovery_events", schema=None) as batch_op:
        batch_op.create_index("idx_pattern_discovery_expires", ["expires_at"], unique=False)
        batch_op.create_index("idx_pattern_discovery_source", ["source_job_hash"], unique=False)
        batch_op.create_index("idx_pattern_discovery_type", ["pattern_type"], unique=False)

    op.create_table(
        "pattern_entropy_history",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("calculated_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("shannon_entropy", sa.Float(), nullable=False),
        sa.Column("max_possible_entropy", sa.Float(), nullable=False),
        sa.Column("diversity_index", sa.Float(), nullable=False),
        sa.Column("unique_pattern_count", sa.Integer(), nullable=False),
        sa.Column("effective_pattern_count", sa.Integer(), nullable=False),
        sa.Column("total_applications", sa.Integer(), nullable=False),
        sa.Column("dominant_pattern_share", sa.Float(), nullable=False),
        sa.Column("threshold_exceeded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pattern_entropy_history")),
    )
    with op.batch_alter_table("pattern_entropy_history", schema=None) as batch_op:
        batch_op.create_index(
            "idx_entropy_history_calculated", [sa.literal_column("calculated_at DESC")], unique=False
        )

    op.create_table(
        "patterns",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("pattern_type", sa.String(length=200), nullable=False),
        sa.Column("pattern_name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("occurrence_count", sa.Integer(), server_default="1", nullable=False),
        sa.Column("first_seen", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_confirmed", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("led_to_success_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("led_to_failure_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("effectiveness_score", sa.Float(), server_default="0.5", nullable=False),
        sa.Column("variance", sa.Float(), server_default="0", nullable=False),
        sa.Column("suggested_action", sa.Text(), nullable=True),
        sa.Column(
            "context_tags",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            server_default=sa.text("'[]'"),
            nullable=False,
        ),
        sa.Column("priority_score", sa.Float(), server_default="0.5", nullable=False),
        sa.Column("quarantine_status", sa.String(length=20), server_default="pending", nullable=False),
        sa.Column("provenance_job_hash", sa.String(length=64), nullable=True),
        sa.Column("provenance_sheet_num", sa.Integer(), nullable=True),
        sa.Column("quarantined_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("validated_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("quarantine_reason", sa.Text(), nullable=True),
        sa.Column("trust_score", sa.Float(), server_default="0.5", nullable=False),
        sa.Column("trust_calculation_date", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "success_factors",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column(
            "success_factors_updated_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("instrument_name", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patterns")),
    )
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        batch_op.create_index("idx_patterns_confirmed", ["last_confirmed"], unique=False)
        batch_op.create_index("idx_patterns_content_hash", ["content_hash"], unique=False)
        batch_op.create_index("idx_patterns_instrument", ["instrument_name"], unique=False)
        batch_op.create_index(
            "idx_patterns_priority", [sa.literal_column("priority_score DESC")], unique=False
        )
        batch_op.create_index("idx_patterns_quarantine", ["quarantine_status"], unique=False)
        batch_op.create_index("idx_patterns_tags", ["context_tags"], unique=False, postgresql_using="gin")
        batch_op.create_index("idx_patterns_trust", ["trust_score"], unique=False)
        batch_op.create_index("idx_patterns_type", ["pattern_type"], unique=False)

    op.create_table(
        "processed_messages",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("processed_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_processed_messages")),
    )
    op.create_table(
        "rate_limit_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("error_code", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("recorded_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source_job_hash", sa.String(length=64), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_limit_events")),
    )
    with op.batch_alter_table("rate_limit_events", schema=None) as batch_op:
        batch_op.create_index("idx_rate_limit_code", ["error_code"], unique=False)
        batch_op.create_index("idx_rate_limit_expires", ["expires_at"], unique=False)
        batch_op.create_index("idx_rate_limit_model", ["model"], unique=False)

    op.create_table(
        "workspace_clusters",
        sa.Column("workspace_hash", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.String(length=200), nullable=True),
        sa.Column("assigned_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("workspace_hash", name=op.f("pk_workspace_clusters")),
    )


def downgrade() -> None:
    op.drop_table("workspace_clusters")
    with op.batch_alter_table("rate_limit_events", schema=None) as batch_op:
        batch_op.drop_index("idx_rate_limit_model")
        batch_op.drop_index("idx_rate_limit_expires")
        batch_op.drop_index("idx_rate_limit_code")

    op.drop_table("rate_limit_events")
    op.drop_table("processed_messages")
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        batch_op.drop_index("idx_patterns_type")
        batch_op.drop_index("idx_patterns_trust")
        batch_op.drop_index("idx_patterns_tags", postgresql_using="gin")
        batch_op.drop_index("idx_patterns_quarantine")
        batch_op.drop_index("idx_patterns_priority")
        batch_op.drop_index("idx_patterns_instrument")
        batch_op.drop_index("idx_patterns_content_hash")
        batch_op.drop_index("idx_patterns_confirmed")

    op.drop_table("patterns")
    with op.batch_alter_table("pattern_entropy_history", schema=None) as batch_op:
        batch_op.drop_index("idx_entropy_history_calculated")

    op.drop_table("pattern_entropy_history")
    with op.batch_alter_table("pattern_discovery_events", schema=None) as batch_op:
        batch_op.drop_index("idx_pattern_discovery_type")
        batch_op.drop_index("idx_pattern_discovery_source")
        batch_op.drop_index("idx_pattern_discovery_expires")

    op.drop_table("pattern_discovery_events")
    with op.batch_alter_table("pattern_applications", schema=None) as batch_op:
        batch_op.drop_index("idx_app_pattern_latest")
        batch_op.drop_index("idx_app_execution")

    op.drop_table("pattern_applications")
    with op.batch_alter_table("exploration_budget", schema=None) as batch_op:
        batch_op.drop_index("idx_budget_recorded")
        batch_op.drop_index("idx_budget_job_latest")

    op.drop_table("exploration_budget")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("idx_exec_workspace_job")
        batch_op.drop_index("idx_exec_status")
        batch_op.drop_index("idx_exec_started")
        batch_op.drop_index("idx_exec_completed")

    op.drop_table("executions")
    with op.batch_alter_table("evolution_trajectory", schema=None) as batch_op:
        batch_op.drop_index("idx_trajectory_recorded")

    op.drop_table("evolution_trajectory")
    with op.batch_alter_table("escalation_decisions", schema=None) as batch_op:
        batch_op.drop_index("idx_escalation_job")
        batch_op.drop_index("idx_escalation_confidence")
        batch_op.drop_index("idx_escalation_action")

    op.drop_table("escalation_decisions")
    with op.batch_alter_table("error_recoveries", schema=None) as batch_op:
        batch_op.drop_index("idx_recovery_success")
        batch_op.drop_index("idx_recovery_code")

    op.drop_table("error_recoveries")
    with op.batch_alter_table("entropy_responses", schema=None) as batch_op:
        batch_op.drop_index("idx_entropy_response_recorded")
        batch_op.drop_index("idx_entropy_response_job")

    op.drop_table("entropy_responses")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("idx_dead_letters_received")

    op.drop_table("dead_letters")
    op.drop_table("detection_evidence")
