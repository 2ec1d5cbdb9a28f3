"""Revisions of the driftline schema, oldest first: 0001 is release 0.1.0's schema."""
