"""The tables (SQLAlchemy 2.0 typed models) and the engine factory.

The schema itself is owned by the Alembic revisions in ``migrations/versions``; these
classes must describe the schema at the head revision exactly (tests/daemon/
test_migrations.py compares them with a migrated database on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from monitor.errors import ConfigError


class Base(DeclarativeBase):
    pass


class WindowRow(Base):
    __tablename__ = "driftline_windows"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream: Mapped[str] = mapped_column(String(20), primary_key=True)  # features | labels
    window_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # time: epoch/secs
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    n_records: Mapped[int] = mapped_column(Integer)
    offsets: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"topic/partition": [min, max]}
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Why evaluating the window failed (revision 0002); such a window has no results.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The registry version that evaluated the window (revision 0004; NULL: none yet).
    model_version: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ResultRow(Base):
    __tablename__ = "driftline_results"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream: Mapped[str] = mapped_column(String(20), primary_key=True)
    window_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # time: epoch/secs
    detector: Mapped[str] = mapped_column(String(100), primary_key=True)
    statistic: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float] = mapped_column(Float)
    drifted: Mapped[bool] = mapped_column(Boolean)
    insufficient_data: Mapped[bool] = mapped_column(Boolean)
    correction: Mapped[str] = mapped_column(String(50))
    n_reference: Mapped[int] = mapped_column(Integer)
    n_current: Mapped[int] = mapped_column(Integer)
    features: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class OffsetRow(Base):
    __tablename__ = "driftline_offsets"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream: Mapped[str] = mapped_column(String(20), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_offset: Mapped[int] = mapped_column(BigInteger)  # Kafka offsets are int64


class PredictionRow(Base):
    """Predictions of models with delayed labels, kept for the join until the horizon."""

    __tablename__ = "driftline_predictions"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    prediction: Mapped[Any] = mapped_column(JSON)
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    # For models with `retrain` (revision 0003): what the training capture needs at join time.
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    raw_input: Mapped[Any] = mapped_column(JSON, nullable=True)


class DetectorStateRow(Base):
    """State of a streaming detector after the last stored window of its stream."""

    __tablename__ = "driftline_detector_state"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    stream: Mapped[str] = mapped_column(String(20), primary_key=True)
    detector: Mapped[str] = mapped_column(String(100), primary_key=True)
    window_index: Mapped[int] = mapped_column(BigInteger)
    # JSON text rather than a JSON column: the state may hold Infinity, which
    # PostgreSQL's json type rejects.
    state: Mapped[str] = mapped_column(Text)


class DeadLetterMarkRow(Base):
    """Per source partition, the highest offset already sent to the dead-letter topic
    (revision 0002), so a replay after a restart does not dead-letter a record twice."""

    __tablename__ = "driftline_deadletter_marks"

    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_offset: Mapped[int] = mapped_column(BigInteger)


def make_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (dashboards, tests) don't block us
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    return engine


def open_engine(url: str) -> Engine:
    """:func:`make_engine`, with a bad URL or a missing driver as a :class:`ConfigError`.

    Connects lazily: this checks the URL and the driver only.
    """
    try:
        return make_engine(url)
    except ArgumentError as exc:  # its message leaves out the URL, which may hold a password
        raise ConfigError(f"storage.url: not a usable SQLAlchemy URL: {exc}") from None
    except ValueError:  # e.g. a non-numeric port; the message would quote the URL
        raise ConfigError("storage.url: not a usable SQLAlchemy URL (a malformed part, "
                          "such as the port)") from None
    except ImportError as exc:
        raise ConfigError(f"storage.url: the database driver is not installed: {exc}") from None


def safe_url(engine: Engine) -> str:
    """The engine's URL for messages, password hidden."""
    return engine.url.render_as_string(hide_password=True)


class RetrainRequestRow(Base):
    """One drift incident of a model and what is done about it (revision 0003).

    The natural key (model, action, first_stream, first_window) makes the decision an
    insert-if-absent: a replay or a second daemon deciding the same incident finds the row.
    """

    __tablename__ = "driftline_retrain_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the idempotency key
    model: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(20))  # retrain | recalibrate | collect
    kind: Mapped[str] = mapped_column(String(20))  # concept | label_shift | covariate
    first_stream: Mapped[str] = mapped_column(String(20))  # the incident's first window
    first_window: Mapped[int] = mapped_column(BigInteger)
    first_event_time: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(20), index=True)
    decided_stream: Mapped[str | None] = mapped_column(String(20), nullable=True)
    decided_window: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    decided_event_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    labelled: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # wall clock
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)  # wall clock
    backend: Mapped[str | None] = mapped_column(String(20), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(500), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("model", "action", "first_stream", "first_window",
                                       name="uq_driftline_retrain_incident"),)


class RetrainEventRow(Base):
    """Every state transition of a request, with its time and reason (the audit trail)."""

    __tablename__ = "driftline_retrain_events"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class CaptureRow(Base):
    """A joined (features, prediction, label) record kept for retraining (revision 0003)."""

    __tablename__ = "driftline_training_capture"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_time: Mapped[float] = mapped_column(Float, index=True)  # the label's event time
    window_index: Mapped[int] = mapped_column(BigInteger, index=True)  # its label window
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    prediction: Mapped[Any] = mapped_column(JSON)
    label: Mapped[Any] = mapped_column(JSON)
    raw_input: Mapped[Any] = mapped_column(JSON, nullable=True)


class ModelVersionRow(Base):
    """A registry version, mirrored by the daemon (revision 0004)."""

    __tablename__ = "driftline_model_versions"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    parent: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # baseline | promoted | rejected ...
    created: Mapped[str] = mapped_column(String(40))  # ISO-8601, as the registry writes it
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)  # gate verdict, training summary
    promoted_at: Mapped[str | None] = mapped_column(String(40), nullable=True)


class ChampionSwitchRow(Base):
    """The daemon switched a model's serving version (revision 0004)."""

    __tablename__ = "driftline_champion_switches"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    previous: Mapped[str | None] = mapped_column(String(32), nullable=True)
    event: Mapped[str] = mapped_column(String(20))  # promote | rollback | start
    # the first window of each stream the new version evaluated
    features_window: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    labels_window: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    event_time: Mapped[float | None] = mapped_column(Float, nullable=True)  # newest record seen
    switched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
