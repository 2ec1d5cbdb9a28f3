"""SQL storage of window results (SQLAlchemy 2.0; SQLite by default, PostgreSQL by URL).

Writes are upserts keyed by (model, window_index[, detector]), so replaying a window after a
crash rewrites the same rows instead of adding new ones. The same transaction records, per
(model, topic, partition), the highest offset already stored in a window: on restart the
pipeline skips records at or below it, so a replay never counts a record twice.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
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
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from monitor.errors import ConfigError, SinkError
from monitor.report import WindowReport


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
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


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
    """Per source partition, the highest offset already sent to the dead-letter topic."""

    __tablename__ = "driftline_deadletter_marks"

    topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_offset: Mapped[int] = mapped_column(BigInteger)


_SCHEMA_LOCK = int.from_bytes(b"driftlin", "big") >> 1  # any constant bigint


def _finite_or_none(x: float | None) -> float | None:
    # JSON and some databases cannot hold NaN/inf; a missing value is the honest encoding.
    return None if x is None or not math.isfinite(x) else float(x)


def _upsert(session: Session, row_cls: type[Base], values: dict[str, Any],
            keys: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    ins: Any
    if dialect == "postgresql":
        ins = postgresql.insert(row_cls).values(**values)
    elif dialect == "sqlite":
        ins = sqlite.insert(row_cls).values(**values)
    else:  # pragma: no cover - other dialects: merge() is slower but portable
        session.merge(row_cls(**values))
        return
    update = {k: ins.excluded[k] for k in values if k not in keys}
    if row_cls is OffsetRow or row_cls is DeadLetterMarkRow:  # never move a mark backwards
        col: Any = row_cls.max_offset  # type: ignore[attr-defined]
        update["max_offset"] = func.greatest(col, ins.excluded.max_offset) \
            if dialect == "postgresql" else func.max(col, ins.excluded.max_offset)
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=update))


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


class SqlStore:
    """Stores window reports; also a :class:`~monitor.sinks.Sink` (buffer, then one txn)."""

    name = "sql"

    def __init__(self, url: str) -> None:
        try:
            self.engine = make_engine(url)  # connects lazily: this checks URL and driver only
        except ArgumentError as exc:  # its message leaves out the URL, which may hold a password
            raise ConfigError(f"storage.url: not a usable SQLAlchemy URL: {exc}") from None
        except ValueError:  # e.g. a non-numeric port; the message would quote the URL
            raise ConfigError("storage.url: not a usable SQLAlchemy URL (a malformed part, "
                              "such as the port)") from None
        except ImportError as exc:
            raise ConfigError(f"storage.url: the database driver is not installed: {exc}") from None
        self._sessions = sessionmaker(self.engine)
        self._pending: list[WindowReport] = []
        self._predictions: list[tuple[str, str, Any, float]] = []
        self._marks: dict[tuple[str, int], int] = {}

    def migrate(self) -> None:
        self.create_schema()

    def create_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Replicas starting together would race on CREATE TABLE (PostgreSQL's
                    # catalog rejects the second one); one transaction-scoped lock orders
                    # them, and create_all skips the tables that exist by then.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": _SCHEMA_LOCK})
                Base.metadata.create_all(conn)
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot create tables at {self.engine.url!r}: {exc}") from exc

    # -- Sink --------------------------------------------------------------------------
    def write(self, report: WindowReport) -> None:
        self._pending.append(report)

    def write_dead_letter_marks(self, marks: Any) -> None:
        for tp, o in marks.items():
            self._marks[tp] = max(self._marks.get(tp, -1), o)

    def dead_letter_marks(self) -> dict[tuple[str, int], int]:
        try:
            with self._sessions() as s:
                return {(r.topic, r.partition): r.max_offset
                        for r in s.execute(select(DeadLetterMarkRow)).scalars()}
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read dead-letter marks: {exc}") from exc

    def flush(self) -> None:
        if not self._pending and not self._marks:
            return
        try:
            with self._sessions.begin() as session:
                for report in self._pending:
                    self._store(session, report)
                for (topic, partition), o in self._marks.items():
                    _upsert(session, DeadLetterMarkRow, {"topic": topic, "partition": partition,
                                                         "max_offset": o}, ["topic", "partition"])
            self._marks.clear()
        except SQLAlchemyError as exc:
            raise SinkError(f"SQL write failed: {exc.__class__.__name__}: {exc}") from exc
        finally:
            # On failure the pipeline writes the same reports again before retrying.
            self._pending.clear()

    def close(self) -> None:
        self.engine.dispose()

    def _store(self, session: Session, r: WindowReport) -> None:
        _upsert(session, WindowRow, {
            "model": r.model, "stream": r.stream, "window_index": r.window_index,
            "window_start": r.window_start, "window_end": r.window_end, "n_records": r.n_records,
            "offsets": {f"{t}/{p}": list(v) for (t, p), v in sorted(r.offsets.items())},
            "evaluated_at": datetime.fromtimestamp(r.evaluated_at, UTC), "error": r.error,
        }, ["model", "stream", "window_index"])
        for res in r.results:
            _upsert(session, ResultRow, {
                "model": r.model, "stream": r.stream, "window_index": r.window_index,
                "detector": res.detector,
                "statistic": _finite_or_none(res.statistic),
                "p_value": _finite_or_none(res.p_value), "threshold": res.threshold,
                "drifted": res.drifted, "insufficient_data": res.insufficient_data,
                "correction": res.correction, "n_reference": res.n_reference,
                "n_current": res.n_current,
                "features": [{
                    "feature": f.feature, "statistic": _finite_or_none(f.statistic),
                    "p_value": _finite_or_none(f.p_value),
                    "adjusted_p_value": _finite_or_none(f.adjusted_p_value),
                    "drifted": f.drifted, "n_current": f.n_current,
                } for f in res.features],
            }, ["model", "stream", "window_index", "detector"])
        for detector, state in (r.state or {}).items():
            # Same transaction as the window: a restart resumes exactly after it.
            _upsert(session, DetectorStateRow, {
                "model": r.model, "stream": r.stream, "detector": detector,
                "window_index": r.window_index, "state": state,
            }, ["model", "stream", "detector"])
        for (topic, partition), (_lo, hi) in r.offsets.items():
            _upsert(session, OffsetRow, {"model": r.model, "stream": r.stream, "topic": topic,
                                         "partition": partition, "max_offset": hi},
                    ["model", "stream", "topic", "partition"])

    # -- restart state -----------------------------------------------------------------
    def stored_offsets(self, stream: str = "features") -> dict[tuple[str, str, int], int]:
        """(model, topic, partition) -> highest offset already stored in a window."""
        try:
            with self._sessions() as s:
                rows = s.execute(select(OffsetRow).where(OffsetRow.stream == stream)).scalars()
                return {(r.model, r.topic, r.partition): r.max_offset for r in rows}
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read stored offsets: {exc.__class__.__name__}: {exc}") from exc

    def last_window_index(self, stream: str = "features") -> dict[str, int]:
        """model -> highest stored window index."""
        try:
            with self._sessions() as s:
                rows = s.execute(select(WindowRow.model, func.max(WindowRow.window_index))
                                 .where(WindowRow.stream == stream).group_by(WindowRow.model))
                return {m: int(i) for m, i in rows}
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read stored windows: {exc.__class__.__name__}: {exc}") from exc

    def detector_states(self) -> dict[tuple[str, str], dict[str, str]]:
        """(stream, model) -> {detector: state JSON} as of the last stored window."""
        try:
            with self._sessions() as s:
                out: dict[tuple[str, str], dict[str, str]] = {}
                for r in s.execute(select(DetectorStateRow)).scalars():
                    out.setdefault((r.stream, r.model), {})[r.detector] = r.state
                return out
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read detector state: {exc.__class__.__name__}: {exc}") \
                from exc

    # -- predictions awaiting delayed labels ---------------------------------------------
    def write_predictions(self, rows: list[tuple[str, str, Any, float]]) -> None:
        """Buffer (model, request_id, prediction, timestamp); stored with the next flush."""
        self._predictions.extend(rows)

    def lookup_predictions(self, request_ids: list[str]
                           ) -> dict[str, list[tuple[str, Any, float]]]:
        """request_id -> every stored (model, prediction, timestamp) for it."""
        ids = sorted(set(request_ids))
        out: dict[str, list[tuple[str, Any, float]]] = {}
        try:
            with self._sessions() as s:
                for i in range(0, len(ids), 1000):  # bounded IN lists
                    chunk = ids[i:i + 1000]
                    stmt = select(PredictionRow).where(PredictionRow.request_id.in_(chunk))
                    for r in s.execute(stmt).scalars():
                        out.setdefault(r.request_id, []).append(
                            (r.model, r.prediction, r.timestamp))
        except SQLAlchemyError as exc:
            raise SinkError(f"prediction lookup failed: {exc.__class__.__name__}: {exc}") from exc
        return out

    def flush_predictions(self) -> None:
        """Store the buffered predictions in one transaction (idempotent: replays rewrite)."""
        if not self._predictions:
            return
        rows = [{"model": m, "request_id": rid, "prediction": p, "timestamp": ts}
                for m, rid, p, ts in self._predictions]
        dialect = self.engine.dialect.name
        ins: Any = (postgresql.insert(PredictionRow) if dialect == "postgresql"
                    else sqlite.insert(PredictionRow))
        try:
            with self._sessions.begin() as s:
                s.execute(ins.on_conflict_do_nothing(index_elements=["model", "request_id"]),
                          rows)
        except SQLAlchemyError as exc:
            raise SinkError(f"prediction write failed: {exc.__class__.__name__}: {exc}") from exc
        self._predictions.clear()  # kept on failure: the retry writes them again

    def prune_predictions(self, before: float) -> int:
        """Forget predictions older than ``before`` (event time): their horizon has passed."""
        try:
            with self._sessions.begin() as s:
                result: Any = s.execute(delete(PredictionRow)
                                        .where(PredictionRow.timestamp < before))
                return int(result.rowcount or 0)
        except SQLAlchemyError as exc:
            raise SinkError(f"prediction prune failed: {exc.__class__.__name__}: {exc}") from exc

    # -- reading (CLI, tests) ----------------------------------------------------------
    def results(self, model: str | None = None,
                stream: str = "features") -> list[dict[str, Any]]:
        """Every stored result of ``stream`` joined with its window, oldest window first."""
        stmt = (select(ResultRow, WindowRow)
                .join(WindowRow, (WindowRow.model == ResultRow.model)
                      & (WindowRow.stream == ResultRow.stream)
                      & (WindowRow.window_index == ResultRow.window_index))
                .where(ResultRow.stream == stream)
                .order_by(ResultRow.model, ResultRow.window_index, ResultRow.detector))
        if model is not None:
            stmt = stmt.where(ResultRow.model == model)
        with self._sessions() as s:
            return [{
                "model": res.model, "window_index": res.window_index, "detector": res.detector,
                "statistic": res.statistic, "p_value": res.p_value, "drifted": res.drifted,
                "insufficient_data": res.insufficient_data, "n_current": res.n_current,
                "window_start": win.window_start, "window_end": win.window_end,
                "n_records": win.n_records, "offsets": win.offsets, "features": res.features,
            } for res, win in s.execute(stmt)]
