"""Schema migrations: Alembic, configured in code (no alembic.ini), run on start-up.

:func:`migrate` brings a database to the head revision in one transaction:

* an empty database is upgraded from the base (0001 creates release 0.1.0's tables);
* a database made by driftline 0.1.0 (its tables, created by ``create_all``, and no version
  table) is first stamped at 0001, which is exactly its schema, then upgraded;
* a database already at head is left as it is.

On PostgreSQL the transaction first takes an advisory lock, so replicas starting together
upgrade one after the other (the later ones find the head and do nothing); on SQLite it
begins with ``BEGIN IMMEDIATE``, which serialises writers the same way and makes SQLite's
DDL part of the transaction. The version is kept in ``driftline_alembic_version``, not
Alembic's default ``alembic_version``, so a database shared with another application that
uses Alembic does not mix the two histories.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.errors import SinkError
from monitor.storage.models import Base, safe_url

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
# Alembic logs at INFO each plugin it loads (on import) and its context on every run: noise
# in the daemon's log, which gets this module's own line per upgrade instead. Alembic is
# imported in the functions below, after this.
for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

VERSION_TABLE = "driftline_alembic_version"
LEGACY_REVISION = "0001"  # the schema of release 0.1.0
LEGACY_TABLES = frozenset({"driftline_windows", "driftline_results", "driftline_offsets",
                           "driftline_predictions", "driftline_detector_state"})
SCHEMA_LOCK = int.from_bytes(b"driftlin", "big") >> 1  # any constant bigint
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Alembic's `context` and `op` are module-level proxies: one migration per process at a time.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the packaged revisions; ``connection`` is what env.py
    runs them on."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package ships its revisions
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty or a 0.1.0 database."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def is_legacy(connection: Connection) -> bool:
    """Tables of driftline 0.1.0 and no version table: created by ``create_all``."""
    tables = set(inspect(connection).get_table_names())
    return VERSION_TABLE not in tables and bool(tables & LEGACY_TABLES)


def upgrade(connection: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Stamp a 0.1.0 database at 0001, then upgrade to ``revision``; on the caller's
    connection and transaction (which should hold the lock, see :func:`migrate`).

    Returns the revisions before and after (None: no version yet).
    """
    from alembic import command

    with _ALEMBIC_LOCK:
        before = current_revision(connection)
        cfg = alembic_config(connection)
        if before is None and is_legacy(connection):
            log.info("database made by driftline 0.1.0: stamping revision %s", LEGACY_REVISION)
            command.stamp(cfg, LEGACY_REVISION)
        command.upgrade(cfg, revision)
        return before, current_revision(connection)


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Transaction-scoped: released by the commit or rollback that ends the migration.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
    elif connection.dialect.name == "sqlite":
        # pysqlite would otherwise run DDL outside any transaction, statement by statement.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _restore_missing_tables(connection: Connection) -> None:
    # A table dropped by hand after the upgrade that made it: Alembic, at head, would not
    # recreate it; the models describe the head schema exactly (a test checks it).
    missing = [t for t in Base.metadata.sorted_tables
               if t.name not in set(inspect(connection).get_table_names())]
    if missing:
        log.warning("database at head revision lacks table(s) %s: creating them",
                    ", ".join(t.name for t in missing))
        Base.metadata.create_all(connection, tables=missing)


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` (see the module docstring); returns the revision
    reached. Raises :class:`SinkError` when the database fails (the daemon retries it)."""
    from alembic.util import CommandError

    try:
        with engine.begin() as conn:
            _lock(conn)
            before, after = upgrade(conn, revision)
            if revision == "head":
                _restore_missing_tables(conn)
    except SQLAlchemyError as exc:
        raise SinkError(f"cannot create tables: migrating the database at {safe_url(engine)} "
                        f"to revision {revision} failed: {exc.__class__.__name__}: "
                        f"{_without_password(exc, engine)}") from exc
    except CommandError as exc:  # e.g. a revision of a newer driftline, unknown here
        raise SinkError(f"cannot migrate the database at {safe_url(engine)} to revision "
                        f"{revision}: {exc} (written by a newer driftline?)") from exc
    if before != after:
        log.info("database at %s migrated from revision %s to %s", safe_url(engine),
                 before or "none", after)
    return after


def database_revision(engine: Engine) -> str | None:
    """The database's revision (None: empty, or made by 0.1.0); raises SinkError."""
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    except SQLAlchemyError as exc:
        raise SinkError(f"cannot read the schema revision of the database at "
                        f"{safe_url(engine)}: {exc.__class__.__name__}: "
                        f"{_without_password(exc, engine)}") from exc


def database_is_legacy(engine: Engine) -> bool:
    """Whether the database holds 0.1.0 tables without a version; raises SinkError."""
    try:
        with engine.connect() as conn:
            return is_legacy(conn)
    except SQLAlchemyError as exc:
        raise SinkError(f"cannot inspect the database at {safe_url(engine)}: "
                        f"{exc.__class__.__name__}: {_without_password(exc, engine)}") from exc


def _without_password(exc: Exception, engine: Engine) -> str:
    # Drivers quote their connection parameters in some messages; never the password.
    message = str(exc)
    password = engine.url.password
    if password:
        message = message.replace(str(password), "***")
    return message
