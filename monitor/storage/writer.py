"""The writer: stores window reports (also a pipeline Sink), replay marks, predictions.

Writes are upserts keyed by (model, window_index[, detector]), so replaying a window after a
crash rewrites the same rows instead of adding new ones. The same transaction records, per
(model, topic, partition), the highest offset already stored in a window: on restart the
pipeline skips records at or below it, so a replay never counts a record twice. Dead-letter
marks (per source partition, the highest offset already dead-lettered) go in that same
transaction too.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import SinkError
from monitor.report import WindowReport
from monitor.storage.migrate import SCHEMA_LOCK, migrate
from monitor.storage.models import (
    Base,
    DeadLetterMarkRow,
    DetectorStateRow,
    OffsetRow,
    PredictionRow,
    ResultRow,
    WindowRow,
    open_engine,
)
from monitor.storage.reader import StorageReader

_SCHEMA_LOCK = SCHEMA_LOCK  # the old name

def _finite_or_none(x: float | None) -> float | None:
    # JSON and some databases cannot hold NaN/inf; a missing value is the honest encoding.
    return None if x is None or not math.isfinite(x) else float(x)


#: Largest summary stored with a feature (JSON characters); a larger one is left out.
MAX_SUMMARY_CHARS = 8192


def _feature_entry(f: Any, summary: Mapping[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "feature": f.feature, "statistic": _finite_or_none(f.statistic),
        "p_value": _finite_or_none(f.p_value),
        "adjusted_p_value": _finite_or_none(f.adjusted_p_value),
        "drifted": f.drifted, "n_current": f.n_current,
    }
    if summary is not None and len(json.dumps(summary)) <= MAX_SUMMARY_CHARS:
        entry["summary"] = dict(summary)
    return entry


def _upsert(session: Session, row_cls: type[Base], values: dict[str, Any],
            keys: list[str]) -> None:
    """Insert or update on ``keys``; a ``max_offset`` (replay and dead-letter marks) only
    ever grows."""
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
        current = row_cls.__table__.c.max_offset
        update["max_offset"] = func.greatest(current, ins.excluded.max_offset) \
            if dialect == "postgresql" else func.max(current, ins.excluded.max_offset)
    session.execute(ins.on_conflict_do_update(index_elements=keys, set_=update))


class TransactionPart(Protocol):
    """Rows another component buffers for the store's next transaction."""

    def pending(self) -> bool: ...

    def write(self, session: Session) -> None: ...

    def written(self) -> None:
        """The transaction committed: forget what was written."""
        ...


class SqlStore:
    """Stores window reports; also a :class:`~monitor.sinks.Sink` (buffer, then one txn)."""

    name = "sql"

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)  # connects lazily: this checks URL and driver only
        self._sessions = sessionmaker(self.engine)
        self._reader = StorageReader(self.engine)
        self._pending: list[WindowReport] = []
        self._predictions: list[tuple[Any, ...]] = []
        self._marks: dict[tuple[str, int], int] = {}
        self._joined: list[TransactionPart] = []

    def join_transaction(self, part: TransactionPart) -> None:
        """Have ``part`` write its buffered rows inside every :meth:`flush` transaction (the
        retraining decisions and capture are stored atomically with the window results)."""
        self._joined.append(part)

    def migrate(self) -> str | None:
        """Bring the schema to the head revision (a 0.1.0 database is adopted first); safe
        to run from several replicas at once. Returns the revision; raises SinkError."""
        return migrate(self.engine)

    def create_schema(self) -> None:
        """Old name of :meth:`migrate`."""
        self.migrate()

    # -- Sink --------------------------------------------------------------------------
    def write(self, report: WindowReport) -> None:
        self._pending.append(report)

    def write_dead_letter_marks(self, marks: Mapping[tuple[str, int], int]) -> None:
        """Buffer (topic, partition) -> highest offset sent to the dead-letter topic; the
        next :meth:`flush` stores them with the reports (a mark never moves backwards)."""
        for key, offset in marks.items():
            self._marks[key] = max(offset, self._marks.get(key, offset))

    def flush(self) -> None:
        parts = [p for p in self._joined if p.pending()]
        if not self._pending and not self._marks and not parts:
            return
        marks = dict(self._marks)
        try:
            with self._sessions.begin() as session:
                for report in self._pending:
                    self._store(session, report)
                for part in parts:
                    part.write(session)
                for (topic, partition), offset in sorted(marks.items()):
                    _upsert(session, DeadLetterMarkRow,
                            {"topic": topic, "partition": partition, "max_offset": offset},
                            ["topic", "partition"])
        except SQLAlchemyError as exc:
            raise SinkError(f"SQL write failed: {exc.__class__.__name__}: {exc}") from exc
        else:
            for part in parts:
                part.written()
            # Marks stay buffered until a flush stores them (only those it stored leave).
            for key, offset in marks.items():
                if self._marks.get(key) == offset:
                    del self._marks[key]
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
            "evaluated_at": datetime.fromtimestamp(r.evaluated_at, UTC),
            "error": r.error, "model_version": r.model_version,
        }, ["model", "stream", "window_index"])
        summaries = dict(r.summaries or {})  # each stored once, with its first result
        for res in r.results:
            _upsert(session, ResultRow, {
                "model": r.model, "stream": r.stream, "window_index": r.window_index,
                "detector": res.detector,
                "statistic": _finite_or_none(res.statistic),
                "p_value": _finite_or_none(res.p_value), "threshold": res.threshold,
                "drifted": res.drifted, "insufficient_data": res.insufficient_data,
                "correction": res.correction, "n_reference": res.n_reference,
                "n_current": res.n_current,
                "features": [_feature_entry(f, summaries.pop(f.feature, None))
                             for f in res.features],
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

    def dead_letter_marks(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> highest offset already written to the dead-letter topic."""
        try:
            with self._sessions() as s:
                rows = s.execute(select(DeadLetterMarkRow)).scalars()
                return {(r.topic, r.partition): r.max_offset for r in rows}
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read dead-letter marks: {exc.__class__.__name__}: {exc}") \
                from exc

    # -- predictions awaiting delayed labels ---------------------------------------------
    def write_predictions(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Buffer (model, request_id, prediction, timestamp[, features, raw_input]); stored
        with the next flush. Features and input are kept for models with a training capture."""
        self._predictions.extend(rows)

    def prediction_details(self, keys: Sequence[tuple[str, str]]
                           ) -> dict[tuple[str, str], tuple[Any, Any]]:
        """(model, request_id) -> (features, raw_input) stored with those predictions."""
        out: dict[tuple[str, str], tuple[Any, Any]] = {}
        by_model: dict[str, list[str]] = {}
        for model, rid in keys:
            by_model.setdefault(model, []).append(rid)
        try:
            with self._sessions() as s:
                for model, rids in by_model.items():
                    for i in range(0, len(rids), 1000):
                        stmt = select(PredictionRow).where(
                            PredictionRow.model == model,
                            PredictionRow.request_id.in_(rids[i:i + 1000]))
                        for r in s.execute(stmt).scalars():
                            out[(model, r.request_id)] = (r.features, r.raw_input)
        except SQLAlchemyError as exc:
            raise SinkError(f"prediction lookup failed: {exc.__class__.__name__}: {exc}") from exc
        return out

    def lookup_predictions(self, request_ids: list[str]
                           ) -> dict[str, list[tuple[str, Any, float]]]:
        """request_id -> every stored (model, prediction, timestamp) for it, by model, for
        the stored ones among ``request_ids`` (several models may score one request)."""
        ids = sorted(set(request_ids))
        out: dict[str, list[tuple[str, Any, float]]] = {}
        try:
            with self._sessions() as s:
                for i in range(0, len(ids), 1000):  # bounded IN lists
                    chunk = ids[i:i + 1000]
                    stmt = (select(PredictionRow).where(PredictionRow.request_id.in_(chunk))
                            .order_by(PredictionRow.request_id, PredictionRow.model))
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
        rows = [{"model": r[0], "request_id": r[1], "prediction": r[2], "timestamp": r[3],
                 "features": r[4] if len(r) > 4 else None,
                 "raw_input": r[5] if len(r) > 5 else None} for r in self._predictions]
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
    @property
    def reader(self) -> StorageReader:
        """A typed reader on this store's engine."""
        return self._reader

    def results(self, model: str | None = None,
                stream: str = "features") -> list[dict[str, Any]]:
        """Every stored result of ``stream`` joined with its window, oldest window first
        (windows without results, such as failed ones, are left out)."""
        return [{
            "model": res.model, "window_index": res.window_index, "detector": res.detector,
            "statistic": res.statistic, "p_value": res.p_value, "drifted": res.drifted,
            "insufficient_data": res.insufficient_data, "n_current": res.n_current,
            "window_start": wr.window.window_start, "window_end": wr.window.window_end,
            "n_records": wr.window.n_records,
            "offsets": {f"{t}/{p}": [lo, hi] for (t, p), (lo, hi) in wr.window.offsets.items()},
            "features": [dataclasses.asdict(f) for f in res.features],
        } for wr in self._reader.window_results(model, stream) for res in wr.results]
