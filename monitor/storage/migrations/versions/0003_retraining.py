"""Retraining: requests (incidents) with their audit trail, and the training capture.

* ``driftline_retrain_requests``: one row per drift incident and action, unique on
  (model, action, first_stream, first_window) so the decision is an insert-if-absent;
* ``driftline_retrain_events``: every state transition with its time and reason;
* ``driftline_training_capture``: joined (features, prediction, label) records of models
  with ``retrain``, bounded per model;
* ``driftline_predictions.features`` / ``raw_input``: kept until the label joins.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "driftline_retrain_requests",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("first_stream", sa.String(20), nullable=False),
        sa.Column("first_window", sa.BigInteger(), nullable=False),
        sa.Column("first_event_time", sa.Float(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("decided_stream", sa.String(20), nullable=True),
        sa.Column("decided_window", sa.BigInteger(), nullable=True),
        sa.Column("decided_event_time", sa.Float(), nullable=True),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("backend", sa.String(20), nullable=True),
        sa.Column("external_id", sa.String(500), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "action", "first_stream", "first_window",
                            name="uq_driftline_retrain_incident"),
    )
    op.create_index("ix_driftline_retrain_requests_model", "driftline_retrain_requests",
                    ["model"])
    op.create_index("ix_driftline_retrain_requests_state", "driftline_retrain_requests",
                    ["state"])
    op.create_table(
        "driftline_retrain_events",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("request_id", "seq"),
    )
    op.create_table(
        "driftline_training_capture",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("event_time", sa.Float(), nullable=False),
        sa.Column("window_index", sa.BigInteger(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("label", sa.JSON(), nullable=False),
        sa.Column("raw_input", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("model", "request_id"),
    )
    op.create_index("ix_driftline_training_capture_event_time", "driftline_training_capture",
                    ["event_time"])
    op.create_index("ix_driftline_training_capture_window_index",
                    "driftline_training_capture", ["window_index"])
    op.add_column("driftline_predictions", sa.Column("features", sa.JSON(), nullable=True))
    op.add_column("driftline_predictions", sa.Column("raw_input", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("driftline_predictions") as batch:
        batch.drop_column("raw_input")
        batch.drop_column("features")
    op.drop_table("driftline_training_capture")
    op.drop_table("driftline_retrain_events")
    op.drop_table("driftline_retrain_requests")
