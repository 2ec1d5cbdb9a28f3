"""Retraining requests and the training capture in SQL (tables of revision 0003).

* Decisions are written inside the window results' transaction (a
  :class:`~monitor.storage.writer.TransactionPart`): an incident row is inserted if absent on
  its natural key, and moved forward only from ``open``; every move adds an audit event.
  A replay, or a second daemon deciding the same incident, changes nothing.
* Operator and dispatcher transitions (:func:`transition`) are compare-and-set on the state,
  so an illegal move is refused with the state it found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import MonitorError, SinkError
from monitor.retrain.policy import Decision, Request
from monitor.storage.models import (
    CaptureRow,
    ResultRow,
    RetrainEventRow,
    RetrainRequestRow,
    WindowRow,
)

#: Legal transitions (from -> to). The request side owns the first steps; the dispatcher
#: and operators the rest; the training job adds promoted / rolled_back.
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"pending_approval", "queued", "collected", "cancelled"}),
    "pending_approval": frozenset({"queued", "rejected", "cancelled"}),
    "queued": frozenset({"dispatched", "failed", "cancelled"}),
    "dispatched": frozenset({"running", "succeeded", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset({"promoted", "rolled_back"}),
    "promoted": frozenset({"rolled_back"}),
}


class RequestError(MonitorError):
    """An unknown request id or an illegal transition (the CLI exits 2)."""


def request_id(model: str, action: str, first_stream: str, first_window: int) -> str:
    """Deterministic id from the natural key: every daemon names an incident alike, and the
    backends get it as their idempotency key."""
    raw = f"{model}\x00{action}\x00{first_stream}\x00{first_window}".encode()
    return "rr-" + hashlib.sha256(raw).hexdigest()[:29]


def _now() -> datetime:
    return datetime.now(UTC)


def _add_event(s: Session, rid: str, old: str | None, new: str, reason: str | None) -> None:
    seq = s.execute(select(func.coalesce(func.max(RetrainEventRow.seq), 0))
                    .where(RetrainEventRow.request_id == rid)).scalar_one()
    s.add(RetrainEventRow(request_id=rid, seq=int(seq) + 1, from_state=old, to_state=new,
                          at=_now(), reason=reason))
    s.flush()


def _insert_ignore(s: Session, values: dict[str, Any], row: type[Any],
                   keys: list[str]) -> bool:
    dialect = s.get_bind().dialect.name
    ins: Any = (postgresql.insert(row) if dialect == "postgresql" else sqlite.insert(row))
    result: Any = s.execute(ins.values(**values).on_conflict_do_nothing(index_elements=keys))
    return bool(result.rowcount)


@dataclass
class DecisionBuffer:
    """Decisions and capture rows waiting for the next results transaction."""

    decisions: list[tuple[str, Decision]]
    capture: list[dict[str, Any]]

    def __init__(self) -> None:
        self.decisions, self.capture = [], []
        self._writing = (0, 0)

    def pending(self) -> bool:
        return bool(self.decisions or self.capture)

    def write(self, s: Session) -> None:
        self._writing = (len(self.decisions), len(self.capture))
        for model, d in self.decisions:
            write_decision(s, model, d)
        for row in self.capture:
            _insert_ignore(s, row, CaptureRow, ["model", "request_id"])

    def written(self) -> None:
        nd, nc = self._writing
        del self.decisions[:nd]
        del self.capture[:nc]


def write_decision(s: Session, model: str, d: Decision) -> None:
    rid = request_id(model, d.action, d.first_stream, d.first_window)
    now = _now()
    decided = d.state != "open"
    values = {
        "id": rid, "model": model, "action": d.action, "kind": d.kind,
        "first_stream": d.first_stream, "first_window": d.first_window,
        "first_event_time": d.first_event_time, "state": d.state,
        "decided_stream": d.window.stream if decided else None,
        "decided_window": d.window.index if decided else None,
        "decided_event_time": d.window.end if decided else None,
        "labelled": d.labelled, "attempts": 0, "reason": d.reason,
        "created_at": now, "updated_at": now,
    }
    if _insert_ignore(s, values, RetrainRequestRow, ["id"]):
        _add_event(s, rid, None, d.state, d.reason)
        return
    if not decided:
        return  # the incident is known already
    # Move on only from "open": a replay, or another daemon, may have decided already.
    moved: Any = s.execute(update(RetrainRequestRow)
                           .where(RetrainRequestRow.id == rid, RetrainRequestRow.state == "open")
                           .values(state=d.state, decided_stream=d.window.stream,
                                   decided_window=d.window.index,
                                   decided_event_time=d.window.end, labelled=d.labelled,
                                   reason=d.reason, updated_at=now))
    if moved.rowcount:
        _add_event(s, rid, "open", d.state, d.reason)


@dataclass(frozen=True)
class RequestView:
    id: str
    model: str
    action: str
    kind: str
    state: str
    first_stream: str
    first_window: int
    first_event_time: float
    decided_window: int | None
    decided_event_time: float | None
    labelled: int
    attempts: int
    backend: str | None
    external_id: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


def _view(r: RetrainRequestRow) -> RequestView:
    return RequestView(r.id, r.model, r.action, r.kind, r.state, r.first_stream,
                       r.first_window, r.first_event_time, r.decided_window,
                       r.decided_event_time, r.labelled, r.attempts, r.backend, r.external_id,
                       r.reason, r.created_at, r.updated_at)


class RetrainStore:
    """Reads and operator/dispatcher transitions of retraining requests."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine)

    def requests(self, model: str | None = None) -> list[RequestView]:
        stmt = select(RetrainRequestRow).order_by(RetrainRequestRow.created_at,
                                                  RetrainRequestRow.id)
        if model is not None:
            stmt = stmt.where(RetrainRequestRow.model == model)
        with self._sessions() as s:
            return [_view(r) for r in s.execute(stmt).scalars()]

    def requests_in(self, states: Iterable[str]) -> list[RequestView]:
        """The requests in ``states`` (the dispatcher's rounds: the in-flight few, by the
        ``state`` index, never the whole history)."""
        stmt = (select(RetrainRequestRow).where(RetrainRequestRow.state.in_(list(states)))
                .order_by(RetrainRequestRow.created_at, RetrainRequestRow.id))
        with self._sessions() as s:
            return [_view(r) for r in s.execute(stmt).scalars()]

    def get(self, rid: str) -> RequestView:
        with self._sessions() as s:
            row = s.get(RetrainRequestRow, rid)
            if row is None:
                raise RequestError(f"no retraining request with id '{rid}'")
            return _view(row)

    def events(self, rid: str) -> list[tuple[int, str | None, str, datetime, str | None]]:
        with self._sessions() as s:
            rows = s.execute(select(RetrainEventRow).where(RetrainEventRow.request_id == rid)
                             .order_by(RetrainEventRow.seq)).scalars()
            return [(e.seq, e.from_state, e.to_state, e.at, e.reason) for e in rows]

    def transition(self, rid: str, to: str, reason: str, **fields: Any) -> RequestView:
        """Move request ``rid`` to ``to`` if that is legal from its current state."""
        with self._sessions.begin() as s:
            row = s.get(RetrainRequestRow, rid)
            if row is None:
                raise RequestError(f"no retraining request with id '{rid}'")
            old = row.state
            if to not in TRANSITIONS.get(old, frozenset()):
                allowed = ", ".join(sorted(TRANSITIONS.get(old, frozenset()))) or "none"
                raise RequestError(f"request '{rid}' is {old}: it cannot become {to} "
                                   f"(allowed from {old}: {allowed})")
            moved: Any = s.execute(update(RetrainRequestRow)
                                   .where(RetrainRequestRow.id == rid,
                                          RetrainRequestRow.state == old)
                                   .values(state=to, reason=reason, updated_at=_now(),
                                           **fields))
            if not moved.rowcount:  # raced with another writer
                raise RequestError(f"request '{rid}' changed meanwhile; try again")
            _add_event(s, rid, old, to, reason)
        return self.get(rid)

    # -- the policy's view, for a restart ------------------------------------------------
    def history(self, model: str, n: int) -> tuple[list[tuple[str, int, float, float, int,
                                                               list[tuple[str, bool]]]],
                                                   list[Request]]:
        """The last ``n`` stored windows per stream (with their detectors' verdicts), the
        label windows since the oldest live incident, and the model's requests."""
        try:
            with self._sessions() as s:
                reqs = [Request(r.id, r.action, r.kind, r.first_stream, r.first_window,
                                r.first_event_time, r.state, r.decided_stream,
                                r.decided_window, r.decided_event_time)
                        for r in s.execute(select(RetrainRequestRow)
                                           .where(RetrainRequestRow.model == model)
                                           .order_by(RetrainRequestRow.created_at,
                                                     RetrainRequestRow.id)).scalars()]
                live = [r.first_event_time for r in reqs if r.state == "open"]
                windows: dict[tuple[str, int], WindowRow] = {}
                for stream in ("features", "labels"):
                    rows = s.execute(select(WindowRow)
                                     .where(WindowRow.model == model, WindowRow.stream == stream)
                                     .order_by(WindowRow.window_index.desc()).limit(n)).scalars()
                    windows.update({(w.stream, w.window_index): w for w in rows})
                    # and every window since the stream's latest incident (its episode)
                    firsts = [r.first_window for r in reqs if r.first_stream == stream]
                    if firsts:
                        rows = s.execute(select(WindowRow).where(
                            WindowRow.model == model, WindowRow.stream == stream,
                            WindowRow.window_index >= max(firsts))).scalars()
                        windows.update({(w.stream, w.window_index): w for w in rows})
                if live:
                    rows = s.execute(select(WindowRow).where(
                        WindowRow.model == model, WindowRow.stream == "labels",
                        WindowRow.window_end >= min(live))).scalars()
                    windows.update({(w.stream, w.window_index): w for w in rows})
                verdicts: dict[tuple[str, int], list[tuple[str, bool]]] = {}
                if windows:
                    lo = min(i for _s, i in windows)
                    for r in s.execute(select(ResultRow).where(
                            ResultRow.model == model, ResultRow.window_index >= lo)).scalars():
                        verdicts.setdefault((r.stream, r.window_index), []).append(
                            (r.detector, r.drifted))
                out = [(w.stream, w.window_index, w.window_start, w.window_end, w.n_records,
                        verdicts.get(key, []))
                       for key, w in sorted(windows.items(), key=lambda kv: (kv[1].window_end,
                                                                             kv[0]))]
                return out, reqs
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read retraining history: {exc}") from exc

    # -- the training capture ------------------------------------------------------------
    def capture(self, model: str, *, since: float | None = None,
                first_window: int | None = None, last_window: int | None = None
                ) -> list[dict[str, Any]]:
        """Captured records of ``model`` (oldest first), by event time or window range."""
        stmt = select(CaptureRow).where(CaptureRow.model == model)
        if since is not None:
            stmt = stmt.where(CaptureRow.event_time >= since)
        if first_window is not None:
            stmt = stmt.where(CaptureRow.window_index >= first_window)
        if last_window is not None:
            stmt = stmt.where(CaptureRow.window_index <= last_window)
        with self._sessions() as s:
            return [{"request_id": r.request_id, "event_time": r.event_time,
                     "window_index": r.window_index, "features": r.features,
                     "prediction": r.prediction, "label": r.label, "input": r.raw_input}
                    for r in s.execute(stmt.order_by(CaptureRow.event_time,
                                                     CaptureRow.request_id)).scalars()]

    def newest_capture(self, model: str) -> float | None:
        with self._sessions() as s:
            newest = s.execute(select(func.max(CaptureRow.event_time))
                               .where(CaptureRow.model == model)).scalar_one()
            return None if newest is None else float(newest)

    def prune_capture(self, model: str, max_rows: int, before: float) -> int:
        """Drop the oldest captured rows beyond ``max_rows`` and those older than ``before``."""
        with self._sessions.begin() as s:
            n: Any = s.execute(delete(CaptureRow).where(CaptureRow.model == model,
                                                        CaptureRow.event_time < before))
            dropped = int(n.rowcount or 0)
            count = s.execute(select(func.count()).select_from(CaptureRow)
                              .where(CaptureRow.model == model)).scalar_one()
            if count > max_rows:
                cutoff = s.execute(select(CaptureRow.event_time)
                                   .where(CaptureRow.model == model)
                                   .order_by(CaptureRow.event_time.desc())
                                   .offset(max_rows).limit(1)).scalar_one()
                n = s.execute(delete(CaptureRow).where(CaptureRow.model == model,
                                                       CaptureRow.event_time <= cutoff))
                dropped += int(n.rowcount or 0)
            return dropped


def summarize(requests: Iterable[RequestView]) -> Sequence[str]:
    return [f"{r.id}  {r.model:<20} {r.action:<11} {r.state:<16} window "
            f"{r.first_stream}/{r.first_window}  labelled {r.labelled}" for r in requests]
