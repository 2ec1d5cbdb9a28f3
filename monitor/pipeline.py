"""source -> decode -> per-model windows -> detectors -> sinks -> commit.

Delivery is at-least-once with idempotent results:

* a record that fails decoding goes to the dead-letter sink (one policy hook, below);
* a closed window's report is written to every sink in order (SQL first, so metrics never
  show a window that is not stored), and a failed flush is retried with back-off;
* offsets are committed only after the sinks and the dead-letter sink have flushed, and only
  up to the earliest record still held in an open window;
* on restart, records at or below the offsets already stored for their model are skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from monitor.deadletter import DeadLetter
from monitor.errors import RecordError, SinkError
from monitor.evaluate import ModelEvaluator, WindowReport
from monitor.metrics import Metrics
from monitor.schema import Decoder
from monitor.sinks import Sink
from monitor.sources import Message, Source
from monitor.windows import ClosedWindow, CountWindows, TimeWindows, TopicPartition

log = logging.getLogger("driftline.pipeline")


@dataclass
class ModelState:
    evaluator: ModelEvaluator
    windows: CountWindows | TimeWindows


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0


class Pipeline:
    def __init__(
        self,
        *,
        source: Source,
        decoder: Decoder,
        models: Mapping[str, ModelState],
        sinks: Sequence[Sink],
        dead_letter: DeadLetter,
        metrics: Metrics,
        stored_offsets: Mapping[tuple[str, str, int], int] | None = None,
        on_report: Callable[[WindowReport], None] | None = None,
        poll_timeout_s: float = 0.5,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.source = source
        self.decoder = decoder
        self.models = dict(models)
        self.sinks = list(sinks)
        self.dead_letter = dead_letter
        self.metrics = metrics
        self._stored = dict(stored_offsets or {})
        self.on_report = on_report
        self.poll_timeout_s = poll_timeout_s
        self.retry = retry
        self._next: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self._first: dict[TopicPartition, int] = {}  # first offset read this session
        self._pending: list[WindowReport] = []
        self._sink_i = 0  # sinks before this index already hold every pending report
        self.rejected: Counter[str] = Counter()
        self.skipped_replayed = 0

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, until_exhausted: bool = False) -> None:
        """Poll and process until ``stop`` is set (or a finite source runs dry)."""
        while not stop.is_set():
            with self._timed("poll"):
                batch = self.source.poll(self.poll_timeout_s)
            self.process(batch)
            if not self.flush_and_commit(stop):
                break  # asked to stop while a sink was failing: commit nothing more
            if until_exhausted and not batch and self.source.exhausted:
                break

    def process(self, batch: Sequence[Message]) -> None:
        closed: list[ClosedWindow] = []
        with self._timed("decode"):
            for msg in batch:
                tp = (msg.topic, msg.partition)
                self._first.setdefault(tp, msg.offset)
                self._next[tp] = max(self._next.get(tp, 0), msg.offset + 1)
                closed.extend(self._handle(msg, tp))
        for window in closed:
            with self._timed("detect"):
                self._pending.append(self.models[window.model].evaluator.evaluate(window))

    def _handle(self, msg: Message, tp: TopicPartition) -> list[ClosedWindow]:
        try:
            record = self.decoder.decode(msg.value)
            if msg.offset <= self._stored.get((record.model, msg.topic, msg.partition), -1):
                self.skipped_replayed += 1  # already inside a stored window: replay after crash
                return []
            closed = self.models[record.model].windows.add(record, tp, msg.offset)
        except RecordError as err:
            self.on_record_error(msg, err)
            return []
        self.metrics.records_consumed.labels(model=record.model).inc()
        return closed

    def on_record_error(self, msg: Message, err: RecordError) -> None:
        """The one policy for bad records: count, log with coordinates, dead-letter."""
        self.rejected[err.reason] += 1
        self.metrics.records_rejected.labels(reason=err.reason).inc()
        n = self.rejected[err.reason]
        if n <= 10 or n % 1000 == 0:  # bounded logging under a flood of poison input
            log.warning("rejected record at %s (%s, #%d of this reason): %s",
                        msg.coordinates, err.reason, n, err.detail)
        self.dead_letter.send(msg, err)

    # -- flush, then commit --------------------------------------------------------------
    def flush_and_commit(self, stop: threading.Event) -> bool:
        """Deliver pending reports and dead letters, then commit. False if stopped first."""
        if not self._retrying(self._deliver, stop):
            return False
        if not self._retrying(self.dead_letter.flush, stop, sink_name="dead_letter"):
            return False
        offsets = self.committable()
        # Committing the first offset we read would only repeat what the group already has.
        changed = {tp: o for tp, o in offsets.items()
                   if self._committed.get(tp, self._first.get(tp)) != o}
        if changed:
            with self._timed("commit"):
                self.source.commit(changed)
            self._committed.update(changed)
            self.metrics.last_commit.set(time.time())
        return True

    def _deliver(self) -> None:
        while self._pending and self._sink_i < len(self.sinks):
            sink = self.sinks[self._sink_i]
            with self._timed("sink"):
                for report in self._pending:
                    sink.write(report)
                sink.flush()
            self._sink_i += 1
        if self._pending and self.on_report is not None:
            for report in self._pending:
                self.on_report(report)
        for report in self._pending:  # these are durable: replays may skip them now
            for (topic, partition), (_lo, hi) in report.offsets.items():
                key = (report.model, topic, partition)
                self._stored[key] = max(self._stored.get(key, -1), hi)
        self._pending.clear()
        self._sink_i = 0

    def _retrying(self, fn: Callable[[], None], stop: threading.Event,
                  sink_name: str | None = None) -> bool:
        delay = self.retry.initial_s
        while True:
            try:
                fn()
                return True
            except SinkError as exc:
                name = sink_name or self.sinks[self._sink_i].name
                self.metrics.sink_errors.labels(sink=name).inc()
                log.warning("sink %s failed, retrying in %.1fs without committing: %s",
                            name, delay, exc)
            if stop.wait(delay):
                return False
            delay = min(delay * 2, self.retry.max_s)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition: the earliest offset still held by an open window, else the next."""
        out = dict(self._next)
        for state in self.models.values():
            for w in state.windows.open_windows():
                for tp, (lo, _hi) in w.offsets.items():
                    out[tp] = min(out.get(tp, lo), lo)
        return out

    @property
    def pending_reports(self) -> int:
        return len(self._pending)

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_duration.labels(stage=stage).observe(time.perf_counter() - t0)
