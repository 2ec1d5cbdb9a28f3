"""The schema of driftline 0.1.0, as its Base.metadata.create_all made it: five tables.

Databases created by 0.1.0 (these tables, no version table) are stamped at this revision
by monitor.storage.migrate instead of running it. The definitions are frozen here: never
import the current models in a revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "driftline_detector_state",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("detector", sa.String(100), nullable=False),
        sa.Column("window_index", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model", "stream", "detector"),
    )
    op.create_table(
        "driftline_offsets",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("max_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "stream", "topic", "partition"),
    )
    op.create_table(
        "driftline_predictions",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("timestamp", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model", "request_id"),
    )
    op.create_index("ix_driftline_predictions_timestamp", "driftline_predictions",
                    ["timestamp"])
    op.create_table(
        "driftline_results",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("window_index", sa.BigInteger(), nullable=False),
        sa.Column("detector", sa.String(100), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("insufficient_data", sa.Boolean(), nullable=False),
        sa.Column("correction", sa.String(50), nullable=False),
        sa.Column("n_reference", sa.Integer(), nullable=False),
        sa.Column("n_current", sa.Integer(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("model", "stream", "window_index", "detector"),
    )
    op.create_table(
        "driftline_windows",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(20), nullable=False),
        sa.Column("window_index", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("n_records", sa.Integer(), nullable=False),
        sa.Column("offsets", sa.JSON(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "stream", "window_index"),
    )


def downgrade() -> None:
    op.drop_table("driftline_windows")
    op.drop_table("driftline_results")
    op.drop_index("ix_driftline_predictions_timestamp", table_name="driftline_predictions")
    op.drop_table("driftline_predictions")
    op.drop_table("driftline_offsets")
    op.drop_table("driftline_detector_state")
