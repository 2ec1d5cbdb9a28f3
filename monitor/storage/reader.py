"""Typed, read-only access to stored windows and results (for reports, retraining, tests).

Everything comes back as frozen dataclasses; database failures raise :class:`SinkError`.
The database must be at the head revision (``driftline db upgrade``, or a daemon start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import SinkError
from monitor.storage.models import ResultRow, WindowRow, open_engine


@dataclass(frozen=True, slots=True)
class StoredFeature:
    """One feature's test within a stored result (NaN/inf were stored as None)."""

    feature: str
    statistic: float | None
    p_value: float | None
    adjusted_p_value: float | None
    drifted: bool
    n_current: int | None
    # Bounded picture of the window against the reference, stored with the feature's
    # first result of the window (see monitor.components.FeatureSummaries); else None.
    summary: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One detector's result for one window."""

    model: str
    stream: str
    window_index: int
    detector: str
    statistic: float | None
    p_value: float | None
    threshold: float
    drifted: bool
    insufficient_data: bool
    correction: str
    n_reference: int
    n_current: int
    features: tuple[StoredFeature, ...]


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """One stored window; ``error`` is set (and it has no results) when evaluating failed."""

    model: str
    stream: str
    window_index: int
    window_start: float
    window_end: float
    n_records: int
    offsets: Mapping[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (min, max)
    evaluated_at: datetime  # UTC
    error: str | None


@dataclass(frozen=True, slots=True)
class WindowResults:
    """A window with its results, ordered by detector (none when ``window.error`` is set)."""

    window: StoredWindow
    results: tuple[StoredResult, ...]


def _feature(d: Mapping[str, Any]) -> StoredFeature:
    return StoredFeature(feature=str(d["feature"]), statistic=d.get("statistic"),
                         p_value=d.get("p_value"), adjusted_p_value=d.get("adjusted_p_value"),
                         drifted=bool(d.get("drifted")), n_current=d.get("n_current"),
                         summary=d.get("summary"))


def _result(r: ResultRow) -> StoredResult:
    return StoredResult(
        model=r.model, stream=r.stream, window_index=int(r.window_index), detector=r.detector,
        statistic=r.statistic, p_value=r.p_value, threshold=r.threshold, drifted=r.drifted,
        insufficient_data=r.insufficient_data, correction=r.correction,
        n_reference=r.n_reference, n_current=r.n_current,
        features=tuple(_feature(f) for f in r.features or ()))


def _offsets(raw: Mapping[str, Any] | None) -> dict[tuple[str, int], tuple[int, int]]:
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for key, (lo, hi) in (raw or {}).items():
        topic, _, partition = key.rpartition("/")  # Kafka topic names cannot hold "/"
        out[(topic, int(partition))] = (int(lo), int(hi))
    return out


def _window(w: WindowRow) -> StoredWindow:
    evaluated = w.evaluated_at
    if evaluated.tzinfo is None:  # SQLite keeps the UTC wall time without its offset
        evaluated = evaluated.replace(tzinfo=UTC)
    return StoredWindow(
        model=w.model, stream=w.stream, window_index=int(w.window_index),
        window_start=w.window_start, window_end=w.window_end, n_records=w.n_records,
        offsets=_offsets(w.offsets), evaluated_at=evaluated.astimezone(UTC), error=w.error)


class StorageReader:
    """Reads what :class:`~monitor.storage.SqlStore` wrote.

    Built from a URL (it then owns, and :meth:`close` disposes, its engine) or from an
    existing engine (left open). Index ranges are inclusive; None leaves that end open.
    """

    def __init__(self, source: str | Engine) -> None:
        self._owned = isinstance(source, str)
        self.engine: Engine = open_engine(source) if isinstance(source, str) else source
        self._sessions = sessionmaker(self.engine)

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()

    def __enter__(self) -> StorageReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, what: str, fn: Any) -> Any:
        try:
            with self._sessions() as session:
                return fn(session)
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read {what}: {exc.__class__.__name__}: {exc}") from exc

    # -- queries -----------------------------------------------------------------------
    def models(self, stream: str | None = None) -> list[str]:
        """Every model with a stored window (of ``stream``, or of any), sorted."""
        stmt = select(WindowRow.model).distinct().order_by(WindowRow.model)
        if stream is not None:
            stmt = stmt.where(WindowRow.stream == stream)
        return list(self._run("stored models", lambda s: s.execute(stmt).scalars().all()))

    def windows(self, model: str | None, stream: str = "features", *, first: int | None = None,
                last: int | None = None) -> list[StoredWindow]:
        """Windows of ``model`` (None: every model) with first <= index <= last, oldest
        first (by model, then index)."""
        stmt = self._range(select(WindowRow), WindowRow, model, stream, first, last) \
            .order_by(WindowRow.model, WindowRow.window_index)
        return self._run("stored windows",
                         lambda s: [_window(w) for w in s.execute(stmt).scalars()])

    def results(self, model: str | None, stream: str = "features", *,
                first: int | None = None, last: int | None = None) -> list[StoredResult]:
        """Results of ``model``'s windows in the range, by model, window index, detector."""
        stmt = self._range(select(ResultRow), ResultRow, model, stream, first, last) \
            .order_by(ResultRow.model, ResultRow.window_index, ResultRow.detector)
        return self._run("stored results",
                         lambda s: [_result(r) for r in s.execute(stmt).scalars()])

    def window_results(self, model: str | None, stream: str = "features", *,
                       first: int | None = None, last: int | None = None
                       ) -> list[WindowResults]:
        """Each window in the range with its results (a failed window: none, and its
        error), oldest first."""
        def query(s: Session) -> list[WindowResults]:
            wins = self._range(select(WindowRow), WindowRow, model, stream, first, last) \
                .order_by(WindowRow.model, WindowRow.window_index)
            res = self._range(select(ResultRow), ResultRow, model, stream, first, last) \
                .order_by(ResultRow.model, ResultRow.window_index, ResultRow.detector)
            by_window: dict[tuple[str, int], list[StoredResult]] = {}
            for r in s.execute(res).scalars():
                by_window.setdefault((r.model, int(r.window_index)), []).append(_result(r))
            return [WindowResults(w, tuple(by_window.get((w.model, w.window_index), ())))
                    for w in (_window(row) for row in s.execute(wins).scalars())]
        return list(self._run("stored windows and results", query))

    @staticmethod
    def _range(stmt: Select[Any], row: type[WindowRow] | type[ResultRow], model: str | None,
               stream: str, first: int | None, last: int | None) -> Select[Any]:
        stmt = stmt.where(row.stream == stream)
        if model is not None:
            stmt = stmt.where(row.model == model)
        if first is not None:
            stmt = stmt.where(row.window_index >= first)
        if last is not None:
            stmt = stmt.where(row.window_index <= last)
        return stmt
