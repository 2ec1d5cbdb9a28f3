"""Testing closed windows: in a worker thread, with keep-alive, one failure isolated.

* A consumer that does not poll within ``max.poll.interval.ms`` is thrown out of its group.
  So while a slow evaluation (big MMD tests, GPU work) runs, every partition is paused and
  the loop keeps polling, which returns no records (any that do come back are held and
  processed first next time).
* An unexpected error while testing one window never stops the daemon and never blocks the
  other models: that window becomes a report with ``error`` set and no results, which is
  stored like any other, so its offsets are committed past it and a restart does not replay
  it into the same failure. The Prometheus sink counts it in
  ``driftline_window_errors_total`` once stored; it is logged with its traceback the first
  time per model, in one line after that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Protocol

from monitor.health import Health
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.sources import Message, Source
from monitor.windows import ClosedWindow, TopicPartition

log = logging.getLogger("driftline.evaluation")

#: Longest error text stored with a failed window.
MAX_ERROR_CHARS = 1000


class Evaluator(Protocol):
    @property
    def detector_names(self) -> list[str]: ...

    def evaluate(self, window: ClosedWindow) -> WindowReport: ...

    def load_state(self, saved: Mapping[str, str]) -> None: ...


Job = tuple[str, ClosedWindow, Evaluator]  # (stream, window, evaluator)


def error_report(stream: str, window: ClosedWindow, exc: BaseException) -> WindowReport:
    return WindowReport(
        model=window.model, window_index=window.index, window_start=window.start,
        window_end=window.end, n_records=window.n, results=(),
        offsets=window.offsets, evaluated_at=time.time(), stream=stream,
        error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])


class WindowEvaluation:
    def __init__(self, source: Source, health: Health, metrics: Metrics,
                 keepalive_s: float = 1.0) -> None:
        self.source = source
        self.health = health
        self.metrics = metrics
        self.keepalive_s = keepalive_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-eval")
        self.inflight: list[ClosedWindow] = []  # open for commits until stored
        self.held: list[Message] = []  # records a keep-alive poll returned
        self._failed_models: set[tuple[str, str]] = set()

    def evaluate(self, jobs: list[Job]) -> list[WindowReport]:
        self.inflight = [w for _stream, w, _ev in jobs]
        future = self._executor.submit(lambda: [self._one(*job) for job in jobs])
        paused = False
        try:
            while True:
                try:
                    return future.result(timeout=self.keepalive_s)
                except FutureTimeout:
                    if not paused:
                        log.info("window evaluation is slow: pausing partitions meanwhile")
                        self.source.pause()
                        paused = True
                    self.held.extend(self.source.poll(0))  # paused: normally nothing
                    self.health.beat()
        finally:
            if paused:
                self.source.resume()
            self.inflight = []

    def _one(self, stream: str, window: ClosedWindow, evaluator: Evaluator) -> WindowReport:
        try:
            return evaluator.evaluate(window)
        except Exception as exc:  # one bad window must not stop every other model
            key = (window.model, stream)
            if key not in self._failed_models:
                self._failed_models.add(key)
                log.exception("model %s: evaluating %s window %d failed; it is stored with "
                              "the error and skipped (further failures of this model are "
                              "logged in one line)", window.model, stream, window.index)
            else:
                log.error("model %s: evaluating %s window %d failed: %s: %s", window.model,
                          stream, window.index, type(exc).__name__, exc)
            return replace(error_report(stream, window, exc),
                           model_version=getattr(evaluator, "model_version", None))

    def held_offsets(self) -> Iterator[tuple[TopicPartition, int]]:
        for w in self.inflight:
            for tp, (lo, _hi) in w.offsets.items():
                yield tp, lo
        for msg in self.held:
            yield (msg.topic, msg.partition), msg.offset

    def take_held(self) -> list[Message]:
        held, self.held = self.held, []
        return held

    def close(self) -> None:
        self._executor.shutdown(wait=True)
