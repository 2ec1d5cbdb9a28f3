"""Model versions, champion switches, and which version evaluated each window.

* ``driftline_model_versions`` (model, version): the registry's versions mirrored by the
  daemon (parent, status, created, gate and training metrics, when it was promoted), so
  SQL readers and dashboards see the lineage without reading the registry folder;
* ``driftline_champion_switches`` (model, seq): every change of the serving version the
  daemon applied (promotion, rollback, or a start-up on a version it had not served), with
  the first window of each stream the new version evaluated;
* ``driftline_windows.model_version``: the registry version whose reference evaluated the
  window (NULL: no registry version yet, the settings' reference).

Revision ID: 0004_model_versions
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_model_versions"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "driftline_model_versions",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("parent", sa.String(32), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("promoted_at", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("model", "version"),
    )
    op.create_table(
        "driftline_champion_switches",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("previous", sa.String(32), nullable=True),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("features_window", sa.BigInteger(), nullable=True),
        sa.Column("labels_window", sa.BigInteger(), nullable=True),
        sa.Column("event_time", sa.Float(), nullable=True),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "seq"),
    )
    op.add_column("driftline_windows",
                  sa.Column("model_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("driftline_windows") as batch:
        batch.drop_column("model_version")
    op.drop_table("driftline_champion_switches")
    op.drop_table("driftline_model_versions")
