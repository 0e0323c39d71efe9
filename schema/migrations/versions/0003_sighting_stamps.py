"""sighting stamps on patterns, first and last evidence on detection totals

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00.000000

Patterns get the stamps that make their description, suggested action, tags, instrument and provenance
independent of the order workers apply sightings in; detection totals get the time, sheet, instrument and
origin stamp of their earliest evidence and the time of their latest. Existing rows keep NULL there: a pattern
without a stamp takes the next sighting's text and keeps its instrument and provenance; a detection total
without an origin takes the next evidence's label, sheet and instrument.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ostinato.schema.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STAMPS = ("description_stamp", "action_stamp", "tags_stamp", "origin_stamp")


def upgrade() -> None:
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        for name in STAMPS:
            batch_op.add_column(sa.Column(name, sa.Text(), nullable=True))
    with op.batch_alter_table("detection_evidence", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("first_seen", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("last_seen", ostinato.schema.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("sheet_num", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("instrument_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("origin", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("detection_evidence", schema=None) as batch_op:
        for name in ("origin", "instrument_name", "sheet_num", "last_seen", "first_seen"):
            batch_op.drop_column(name)
    with op.batch_alter_table("patterns", schema=None) as batch_op:
        for name in reversed(STAMPS):
            batch_op.drop_column(name)
