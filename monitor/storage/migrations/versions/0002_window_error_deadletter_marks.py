"""Failed windows keep their reason; dead-letter marks per source partition.

* ``driftline_windows.error``: why evaluating the window failed (NULL when it did not);
  such a window is stored with no results, so the stream moves past it.
* ``driftline_deadletter_marks`` (topic, partition): the highest offset already written to
  the dead-letter topic, so a replay after a restart does not dead-letter a record twice.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("driftline_windows", sa.Column("error", sa.Text(), nullable=True))
    op.create_table(
        "driftline_deadletter_marks",
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("max_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition"),
    )


def downgrade() -> None:
    op.drop_table("driftline_deadletter_marks")
    with op.batch_alter_table("driftline_windows") as batch:  # SQLite cannot drop a column
        batch.drop_column("error")
