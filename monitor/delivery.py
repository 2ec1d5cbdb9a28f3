"""The ordered, retried flush that must succeed before offsets are committed.

Order matters, and is fixed by registration:

1. the **steps** registered with :meth:`Delivery.add_step`, in order: dead letters first
   (once a window is stored, replay skips its records, so a rejected record in it must be
   on the dead-letter topic by then), then predictions awaiting labels (stored before
   their offsets are committed), then whatever later features register (an outbox);
2. the window **reports**, to every sink in order (SQL first, so metrics never show a
   window that is not stored). A sink that already flushed is not written again when a
   later one fails and the whole delivery is retried;
3. ``on_delivered`` per report: the reports are durable now.

A failing step or sink raises :class:`~monitor.errors.SinkError`; the delivery is retried
with capped back-off (short, so the daemon resumes within seconds of a database's return)
until it succeeds or the daemon is asked to stop. Readiness reports the failure meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.errors import SinkError
from monitor.health import Health
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.sinks import Sink

log = logging.getLogger("driftline.delivery")


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.25
    # Short on purpose: a retry is one cheap round trip, and a longer step would keep the
    # daemon idle for that long after the database or broker is back.
    max_s: float = 2.0


class Delivery:
    def __init__(self, sinks: Sequence[Sink], health: Health, metrics: Metrics,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.sinks = list(sinks)
        self.health = health
        self.metrics = metrics
        self.retry = retry
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._before_sinks: list[Callable[[], bool]] = []
        self._after_sinks: list[Callable[[], None]] = []
        self._pending: list[WindowReport] = []
        self._sink_i = 0  # sinks before this index already hold every pending report
        self.on_delivered: list[Callable[[WindowReport], None]] = []

    def add_step(self, name: str, flush: Callable[[], None]) -> None:
        """Run ``flush`` (raising SinkError on failure) before the reports, in this order."""
        self._steps.append((name, flush))

    def before_sinks(self, fn: Callable[[], bool]) -> None:
        """Called before the sinks flush, to buffer rows into their transaction; returns
        True if it buffered any (the sinks then flush even without a report)."""
        self._before_sinks.append(fn)

    def after_sinks(self, fn: Callable[[], None]) -> None:
        """Called once every sink flushed (what ``before_sinks`` buffered is durable)."""
        self._after_sinks.append(fn)

    def add(self, reports: Sequence[WindowReport]) -> None:
        self._pending.extend(reports)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def reports(self) -> list[WindowReport]:
        """The reports waiting for the sinks (read by ``before_sinks`` hooks)."""
        return list(self._pending)

    def deliver(self, stop: threading.Event) -> bool:
        """Every step, then the reports; False if asked to stop while something failed."""
        for name, flush in self._steps:
            if not self.retrying(flush, stop, name):
                return False
        return self.retrying(self._deliver_reports, stop)

    def _deliver_reports(self) -> None:
        if self._sink_i == 0:
            buffered = [fn() for fn in self._before_sinks]
            if not self._pending and not any(buffered):
                return
        while self._sink_i < len(self.sinks):
            sink = self.sinks[self._sink_i]
            t0 = time.perf_counter()
            for report in self._pending:
                sink.write(report)
            sink.flush()
            self.metrics.stage_duration.labels(stage="sink").observe(time.perf_counter() - t0)
            self._sink_i += 1
        for after in self._after_sinks:
            after()
        for report in self._pending:
            for delivered in self.on_delivered:
                delivered(report)
        self._pending.clear()
        self._sink_i = 0

    def retrying(self, fn: Callable[[], object], stop: threading.Event,
                 name: str | None = None, between: Callable[[], None] | None = None) -> bool:
        """Call ``fn`` until it does not raise SinkError; False if ``stop`` is set first.

        ``between`` runs after each failed attempt (a keep-alive poll of the source)."""
        delay = self.retry.initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                fn()
                self.health.storage_ok, self.health.storage_error = True, ""
                return True
            except SinkError as exc:
                label = name or self.sinks[self._sink_i].name
                self.metrics.sink_errors.labels(sink=label).inc()
                self.health.storage_ok, self.health.storage_error = False, f"{label}: {exc}"
                if attempt & (attempt - 1) == 0:  # 1st, 2nd, 4th, 8th...: a long outage
                    log.warning("%s failed (attempt %d), retrying every %.2fs at most, "
                                "without committing: %s", label, attempt, self.retry.max_s, exc)
            self.health.beat()  # retrying is progress: the loop is alive, just not ready
            if between is not None:
                between()
            if stop.wait(delay):
                return False
            delay = min(delay * 2, self.retry.max_s)
