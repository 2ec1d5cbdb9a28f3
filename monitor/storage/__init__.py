"""SQL storage (SQLAlchemy 2.0; SQLite by default, PostgreSQL by URL).

* :mod:`~monitor.storage.models`: the tables and the engine factory;
* :mod:`~monitor.storage.writer`: :class:`SqlStore`, the writer (also a pipeline Sink);
* :mod:`~monitor.storage.reader`: :class:`StorageReader`, typed read-only access;
* :mod:`~monitor.storage.migrate`: Alembic migrations (``migrations/``), run at start-up
  and by ``driftline db upgrade``.
"""

# The module monitor.storage.migrate is not shadowed by its function of the same name:
# use SqlStore.migrate() or monitor.storage.migrate.migrate(engine).
from monitor.storage.migrate import VERSION_TABLE, database_revision, head_revision
from monitor.storage.models import (
    Base,
    DeadLetterMarkRow,
    DetectorStateRow,
    OffsetRow,
    PredictionRow,
    ResultRow,
    WindowRow,
    make_engine,
    open_engine,
)
from monitor.storage.reader import (
    StorageReader,
    StoredFeature,
    StoredResult,
    StoredWindow,
    WindowResults,
)
from monitor.storage.writer import SqlStore

__all__ = [
    "VERSION_TABLE",
    "Base",
    "DeadLetterMarkRow",
    "DetectorStateRow",
    "OffsetRow",
    "PredictionRow",
    "ResultRow",
    "SqlStore",
    "StorageReader",
    "StoredFeature",
    "StoredResult",
    "StoredWindow",
    "WindowResults",
    "WindowRow",
    "database_revision",
    "head_revision",
    "make_engine",
    "open_engine",
]
