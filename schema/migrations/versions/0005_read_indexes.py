"""read indexes: preflight reads and the trust pass that do not grow with history

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-08 01:10:00.000000

Composite indexes leading with each read's filter columns and then its ORDER BY, so a read stops after its
LIMIT instead of sorting the whole history (issue 12, part 2; figures in README "Scale"):

- error recoveries: latest successful waits of a code (with or without the model), and the per-hour window
  aggregated from the index alone; ``idx_recovery_code`` is a prefix of the first and goes;
- executions: latest of a job, of a workspace, of a sheet number (``get_similar_executions``);
- escalation decisions: confidence, pass rate and the ranking's columns, so the similarity search ranks
  from the index alone (replaces ``idx_escalation_confidence``);
- pattern applications: by time, with the pattern id, for the trust pass's "applied since".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def _desc(name: str) -> sa.ColumnElement[str]:
    return sa.literal_column(f"{name} DESC")


def upgrade() -> None:
    with op.batch_alter_table("error_recoveries", schema=None) as batch_op:
        batch_op.drop_index("idx_recovery_code")
        batch_op.create_index(
            "idx_recovery_code_latest", ["error_code", _desc("recorded_at"), _desc("id")], unique=False
        )
        batch_op.create_index(
            "idx_recovery_code_model_latest",
            ["error_code", "model", _desc("recorded_at"), _desc("id")],
            unique=False,
        )
        batch_op.create_index(
            "idx_recovery_code_hour", ["error_code", "time_of_day", "recovery_success"], unique=False
        )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        for column, name in (
            ("job_hash", "idx_exec_job_latest"),
            ("workspace_hash", "idx_exec_workspace_latest"),
            ("sheet_num", "idx_exec_sheet_latest"),
        ):
            batch_op.create_index(name, [column, _desc("completed_at"), _desc("id")], unique=False)
    with op.batch_alter_table("escalation_decisions", schema=None) as batch_op:
        batch_op.drop_index("idx_escalation_confidence")
        batch_op.create_index(
            "idx_escalation_similarity",
            ["confidence", "validation_pass_rate", "outcome_after_action", "recorded_at", "id"],
            unique=False,
        )
    with op.batch_alter_table("pattern_applications", schema=None) as batch_op:
        batch_op.create_index("idx_app_applied", ["applied_at", "pattern_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pattern_applications", schema=None) as batch_op:
        batch_op.drop_index("idx_app_applied")
    with op.batch_alter_table("escalation_decisions", schema=None) as batch_op:
        batch_op.drop_index("idx_escalation_similarity")
        batch_op.create_index("idx_escalation_confidence", ["confidence"], unique=False)
    with op.batch_alter_table("executions", schema=None) as batch_op:
        for name in ("idx_exec_sheet_latest", "idx_exec_workspace_latest", "idx_exec_job_latest"):
            batch_op.drop_index(name)
    with op.batch_alter_table("error_recoveries", schema=None) as batch_op:
        batch_op.drop_index("idx_recovery_code_hour")
        batch_op.drop_index("idx_recovery_code_model_latest")
        batch_op.drop_index("idx_recovery_code_latest")
        batch_op.create_index("idx_recovery_code", ["error_code"], unique=False)
