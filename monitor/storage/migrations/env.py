"""Alembic environment: runs on the connection monitor.storage.migrate passes in.

There is no alembic.ini and no offline (SQL script) mode: the daemon and `driftline db
upgrade` build the configuration in code and hand over a connection that is already in a
transaction (holding the schema lock on PostgreSQL), so every step of an upgrade commits or
rolls back together.
"""

from __future__ import annotations

from alembic import context

from monitor.storage.migrate import VERSION_TABLE
from monitor.storage.models import Base

config = context.config
connection = config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("driftline migrations run through monitor.storage.migrate, "
                       "on a connection it passes in config.attributes['connection']")

context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table=VERSION_TABLE)
with context.begin_transaction():  # a no-op inside the caller's transaction
    context.run_migrations()
