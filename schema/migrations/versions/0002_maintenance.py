"""maintenance runs and stored drift

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ostinato.schema.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("period_start", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ran_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "summary",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
            ),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("task", "period_start", name=op.f("pk_maintenance_runs")),
    )
    op.create_table(
        "pattern_drift",
        sa.Column("pattern_id", sa.String(length=64), nullable=False),
        sa.Column("measured_at", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("effectiveness_before", sa.Float(), nullable=True),
        sa.Column("effectiveness_after", sa.Float(), nullable=True),
        sa.Column("grounding_confidence_avg", sa.Float(), nullable=True),
        sa.Column("drift_magnitude", sa.Float(), nullable=True),
        sa.Column("drift_direction", sa.String(length=20), nullable=True),
        sa.Column("threshold_exceeded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("confidence_before", sa.Float(), nullable=True),
        sa.Column("confidence_after", sa.Float(), nullable=True),
        sa.Column("belief_change", sa.Float(), nullable=True),
        sa.Column("belief_entropy", sa.Float(), nullable=True),
        sa.Column("epistemic_direction", sa.String(length=20), nullable=True),
        sa.Column(
            "epistemic_threshold_exceeded", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("retired", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("pattern_id", "measured_at", name=op.f("pk_pattern_drift")),
    )
    with op.batch_alter_table("pattern_drift", schema=None) as batch_op:
        batch_op.create_index("idx_pattern_drift_measured", ["measured_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pattern_drift", schema=None) as batch_op:
        batch_op.drop_index("idx_pattern_drift_measured")

    op.drop_table("pattern_drift")
    op.drop_table("maintenance_runs")
