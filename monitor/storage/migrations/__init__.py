"""Alembic environment and revisions of the driftline schema (run by monitor.storage.migrate)."""
