"""Delivers queued retraining requests to their backends (the outbox's reader).

A background thread, so dispatch never blocks window processing or offset commits. Each
round it claims up to a few ``queued`` requests that are due, with a lease (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so several daemons never claim the same row; SQLite has one
writer), hands each to its model's backend with the request id as idempotency key, and
records the outcome: ``dispatched`` with the backend's id, or another attempt after
exponential back-off, and ``failed`` with the reason after ``max_attempts``. A daemon killed
after the backend accepted but before the row says so re-sends after the lease: the backend
sees the same idempotency key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from monitor.errors import MonitorError
from monitor.metrics import Metrics
from monitor.retrain.backends import Backend, BackendError
from monitor.retrain.store import RetrainStore, _add_event
from monitor.settings import BackendSettings, CaptureSettings
from monitor.storage.models import RetrainRequestRow

log = logging.getLogger("driftline.retrain")

LEASE_S = 60.0  # without backend settings; else 3 timeouts (Kafka: position, find, send)
PENDING = "pending:"  # external_id of a request being sent: where to look after a crash
IN_FLIGHT = ("pending_approval", "queued", "dispatched", "running")


class Dispatcher:
    def __init__(self, store: RetrainStore, backends: Mapping[str, Backend],
                 settings: Mapping[str, BackendSettings], metrics: Metrics,
                 interval_s: float = 1.0, clock: Any = time.time,
                 capture: Mapping[str, CaptureSettings] | None = None) -> None:
        self.store = store
        self.backends = dict(backends)
        self.settings = dict(settings)
        self.metrics = metrics
        self.interval_s = interval_s
        self.clock = clock
        self._sessions = sessionmaker(store.engine)
        self.capture = dict(capture or {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0
        # Long enough for the slowest backend's calls (Kafka: position, find, send), so a
        # lease never expires while its daemon is still sending.
        self.lease_s = (max(3 * c.timeout_seconds for c in self.settings.values()) + 10
                        if self.settings else LEASE_S)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="driftline-dispatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as exc:  # storage down: try again next round
                log.warning("retraining dispatch: storage unavailable: %s",
                            type(exc).__name__)
            except Exception:  # never let the dispatcher thread die
                log.exception("retraining dispatch round failed")
            self._stop.wait(self.interval_s)

    def claim(self, limit: int = 5) -> list[RetrainRequestRow]:
        now = self.clock()
        with self._sessions.begin() as s:
            stmt = (select(RetrainRequestRow)
                    .where(RetrainRequestRow.state == "queued",
                           RetrainRequestRow.model.in_(list(self.backends)),
                           or_(RetrainRequestRow.lease_until.is_(None),
                               RetrainRequestRow.lease_until < now),
                           or_(RetrainRequestRow.next_attempt_at.is_(None),
                               RetrainRequestRow.next_attempt_at <= now))
                    .order_by(RetrainRequestRow.created_at).limit(limit)
                    .with_for_update(skip_locked=True))
            rows = list(s.execute(stmt).scalars())
            for r in rows:
                r.lease_until = now + self.lease_s
            s.flush()
            s.expunge_all()
            return rows

    def run_once(self) -> int:
        """One round; returns how many requests were handed over."""
        done = 0
        # One claim at a time: a daemon killed mid-round strands only the request it was
        # sending (until its lease ends), not the others it would have claimed with it.
        for _ in range(5):
            rows = self.claim(limit=1)
            if not rows:
                break
            if self._dispatch(rows[0]):
                done += 1
        self._follow_jobs()
        self._export_in_flight()
        if time.monotonic() - self._last_prune > 60:
            self._last_prune = time.monotonic()
            for model, cfg in self.capture.items():  # bounded: oldest first
                newest = self.store.newest_capture(model)
                if newest is not None:
                    self.store.prune_capture(model, cfg.max_rows, newest - cfg.retention_seconds)
        return done

    def _dispatch(self, row: RetrainRequestRow) -> bool:
        backend = self.backends[row.model]
        cfg = self.settings[row.model]
        request = {"id": row.id, "model": row.model, "action": row.action, "kind": row.kind,
                   "first_stream": row.first_stream, "first_window": row.first_window,
                   "first_event_time": row.first_event_time,
                   "decided_window": row.decided_window, "labelled": row.labelled,
                   "created_at": row.created_at.astimezone(UTC).isoformat()
                   if row.created_at else None}
        try:
            external = self._submit_once(backend, row, request)
        except BackendError as exc:
            self._failed_attempt(row, cfg, str(exc))
            return False
        with self._sessions.begin() as s:
            moved: Any = s.execute(update(RetrainRequestRow)
                                   .where(RetrainRequestRow.id == row.id,
                                          RetrainRequestRow.state == "queued")
                                   .values(state="dispatched", external_id=external,
                                           backend=backend.kind, lease_until=None,
                                           attempts=row.attempts + 1,
                                           updated_at=datetime.now(UTC),
                                           reason=f"accepted by {backend.kind}"))
            if moved.rowcount:
                _add_event(s, row.id, "queued", "dispatched",
                           f"accepted by {backend.kind}: {external}")
        self.metrics.retrain_requests.labels(model=row.model, action=row.action,
                                             outcome="dispatched").inc()
        if row.updated_at is not None:
            waited = time.time() - row.updated_at.timestamp()
            self.metrics.retrain_dispatch_delay.labels(model=row.model).observe(max(0, waited))
        log.info("model %s: retraining request %s dispatched to %s (%s)", row.model, row.id,
                 backend.kind, external)
        return True

    def _submit_once(self, backend: Backend, row: RetrainRequestRow,
                     request: dict[str, Any]) -> str:
        """Submit, unless a backend that can look (Kafka) already holds this request."""
        position = getattr(backend, "position", None)
        find = getattr(backend, "find", None)
        if position is None or find is None:
            return backend.submit(request)
        pending = row.external_id or ""
        if pending.startswith(PENDING):
            found = find(request, pending[len(PENDING):])
            if found is not None:
                log.info("model %s: request %s was already sent before a restart (%s)",
                         row.model, row.id, found)
                return str(found)
        else:  # record where the topic ended before sending, in its own transaction
            with self._sessions.begin() as s:
                s.execute(update(RetrainRequestRow).where(RetrainRequestRow.id == row.id)
                          .values(external_id=PENDING + position()))
        return backend.submit(request)

    def _failed_attempt(self, row: RetrainRequestRow, cfg: BackendSettings,
                        reason: str) -> None:
        attempts = row.attempts + 1
        self.metrics.retrain_dispatch_errors.labels(model=row.model, backend=cfg.kind).inc()
        with self._sessions.begin() as s:
            if attempts >= cfg.max_attempts:
                moved: Any = s.execute(update(RetrainRequestRow)
                                       .where(RetrainRequestRow.id == row.id,
                                              RetrainRequestRow.state == "queued")
                                       .values(state="failed", attempts=attempts,
                                               lease_until=None, reason=reason,
                                               updated_at=datetime.now(UTC)))
                if moved.rowcount:
                    _add_event(s, row.id, "queued", "failed",
                               f"{attempts} attempts; last: {reason}")
                    self.metrics.retrain_requests.labels(
                        model=row.model, action=row.action, outcome="failed").inc()
                log.error("model %s: retraining request %s failed after %d attempts: %s",
                          row.model, row.id, attempts, reason)
                return
            delay = cfg.backoff_seconds * 2 ** (attempts - 1)
            s.execute(update(RetrainRequestRow).where(RetrainRequestRow.id == row.id)
                      .values(attempts=attempts, lease_until=None, reason=reason,
                              next_attempt_at=self.clock() + delay,
                              updated_at=datetime.now(UTC)))
        log.warning("model %s: retraining request %s: attempt %d failed (%s); next in %.0fs",
                    row.model, row.id, attempts, reason, delay)

    def _follow_jobs(self) -> None:
        """dispatched -> running -> succeeded | failed, for backends that can tell."""
        for r in self.store.requests_in(("dispatched", "running")):
            if r.model not in self.backends:
                continue
            status = getattr(self.backends[r.model], "status", None)
            if status is None or r.external_id is None:
                continue
            seen = status(r.external_id, r.id)
            if seen is None or seen[0] == r.state:
                continue
            new, reason = seen
            order = ["dispatched", "running", "succeeded", "promoted"]
            steps = (["failed"] if new == "failed"
                     else order[order.index(r.state) + 1:order.index(new) + 1])
            for step in steps:
                try:
                    self.store.transition(r.id, step, reason)
                except MonitorError:
                    break  # moved meanwhile (another daemon, an operator)
                if step in ("succeeded", "failed", "promoted"):
                    self.metrics.retrain_requests.labels(model=r.model, action=r.action,
                                                         outcome=step).inc()
                    log.info("model %s: retraining request %s %s (%s)", r.model, r.id, step,
                             reason)

    def _export_in_flight(self) -> None:
        counts = {m: 0 for m in self.backends}
        waiting = {m: 0 for m in self.backends}
        for r in self.store.requests_in(IN_FLIGHT):
            if r.model in counts:
                counts[r.model] += 1
                waiting[r.model] += r.state == "pending_approval"
        for model, n in counts.items():
            self.metrics.retrain_in_flight.labels(model=model).set(n)
            self.metrics.retrain_pending_approval.labels(model=model).set(waiting[model])
