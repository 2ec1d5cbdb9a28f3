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
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.deadletter import DeadLetter
from monitor.errors import RecordError, SinkError, SourceError
from monitor.health import Health
from monitor.label_join import LabelJoin
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.schema import Decoder
from monitor.sinks import Sink
from monitor.sources import Message, Source
from monitor.windows import ClosedWindow, CountWindows, TimeWindows, TopicPartition

log = logging.getLogger("driftline.pipeline")


Windows = CountWindows | TimeWindows


class Evaluator(Protocol):
    @property
    def detector_names(self) -> list[str]: ...

    def evaluate(self, window: ClosedWindow) -> WindowReport: ...

    def load_state(self, saved: Mapping[str, str]) -> None: ...


@dataclass
class StreamState:
    """One model's windows of one stream ("features", or "labels": joined pairs)."""

    evaluator: Evaluator
    windows: Windows
    # Builds fresh windows continuing after the last stored window index (None: none yet).
    new_windows: Callable[[int | None], Windows]


@dataclass
class ModelState:
    features: StreamState
    labels: StreamState | None = None

    def streams(self) -> Iterator[tuple[str, StreamState]]:
        yield "features", self.features
        if self.labels is not None:
            yield "labels", self.labels


@dataclass(frozen=True)
class StoredState:
    """What storage already holds: replay marks and the last window, per stream and model."""

    offsets: Mapping[tuple[str, str, str, int], int]  # (stream, model, topic, partition)
    last_window: Mapping[tuple[str, str], int]  # (stream, model)
    # (stream, model) -> {detector: JSON}: streaming detectors after the last stored window
    detector_state: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)


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
        restore: Callable[[], StoredState] | None = None,
        labels_topic: str | None = None,
        join: LabelJoin | None = None,
        on_report: Callable[[WindowReport], None] | None = None,
        poll_timeout_s: float = 0.5,
        retry: RetryPolicy = RetryPolicy(),
        keepalive_s: float = 1.0,
    ) -> None:
        self.source = source
        self.decoder = decoder
        self.models = dict(models)
        self.sinks = list(sinks)
        self.dead_letter = dead_letter
        self.metrics = metrics
        self._restore = restore
        self._stored: dict[tuple[str, str, str, int], int] = {}
        self.labels_topic = labels_topic
        self.join = join
        self.on_report = on_report
        self.poll_timeout_s = poll_timeout_s
        self.retry = retry
        self.keepalive_s = keepalive_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-eval")
        self._inflight: list[ClosedWindow] = []
        self._held: list[Message] = []
        self._closing = False
        self._rewind: dict[TopicPartition, int] = {}  # set on revoke, used on assignment
        self._restore_pending = False
        # Partitions the group gave this process (None: a source without a group, which
        # owns everything). Metrics export only the models read from these.
        self.assignment: set[TopicPartition] | None = None
        self._counted: dict[TopicPartition, int] = {}  # highest offset counted as consumed
        self._dead_lettered: dict[TopicPartition, int] = {}  # highest offset dead-lettered
        self._next: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._committed: dict[TopicPartition, int] = {}
        self._first: dict[TopicPartition, int] = {}  # first offset read this session
        self._pending: list[WindowReport] = []
        self._sink_i = 0  # sinks before this index already hold every pending report
        self.rejected: Counter[str] = Counter()
        self.skipped_replayed = 0
        self._stop = threading.Event()  # the running loop's stop event
        self._was_connected = True
        self.health = Health(source_probe=lambda: source.connected)
        # Read at scrape time: an outage shows on /metrics even while the loop is blocked.
        metrics.source_connected.set_function(lambda: 1.0 if source.connected else 0.0)
        source.on_rebalance(self._on_revoked, self._on_assigned)
        self.restore_state()

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, until_exhausted: bool = False) -> None:
        """Poll and process until ``stop`` is set (or a finite source runs dry)."""
        self._stop = stop
        while not stop.is_set():
            with self._timed("poll"):
                batch = self.source.poll(self.poll_timeout_s)
            self._observe_source()
            self.health.beat()
            self.process(batch)
            if not self.flush_and_commit(stop):
                break  # asked to stop while a sink was failing: commit nothing more
            if until_exhausted and not batch and self.source.exhausted:
                break

    def process(self, batch: Sequence[Message]) -> None:
        if self._restore_pending:  # after a rebalance: drop open windows, reload storage
            self._restore_pending = False
            self.restore_state()
        if self._held:  # records a keep-alive poll returned: they come first
            batch, self._held = [*self._held, *batch], []
        closed: list[tuple[str, ClosedWindow]] = []
        with self._timed("decode"):
            for msg in batch:
                tp = (msg.topic, msg.partition)
                self._first.setdefault(tp, msg.offset)
                self._next[tp] = max(self._next.get(tp, 0), msg.offset + 1)
                if msg.topic == self.labels_topic:
                    self._handle_label(msg, tp)
                else:
                    closed.extend(("features", w) for w in self._handle(msg, tp))
            if self.join is not None:
                closed.extend(("labels", w) for w in self._join_labels())
        if closed:
            with self._timed("detect"):
                self._pending.extend(self._evaluate(closed))

    def _evaluate(self, closed: list[tuple[str, ClosedWindow]]) -> list[WindowReport]:
        """Test closed windows in a worker thread; if that takes long, keep the group alive.

        A consumer that does not poll within max.poll.interval.ms is thrown out of its
        group. So while a slow evaluation (big MMD tests, GPU work) runs, every partition is
        paused and the loop keeps polling, which returns no records. The windows count as
        open for commits until their reports are stored.
        """
        self._inflight = [w for _stream, w in closed]
        future = self._executor.submit(
            lambda: [self._stream(w.model, stream).evaluator.evaluate(w)
                     for stream, w in closed])
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
                    self._held.extend(self.source.poll(0))  # paused: normally nothing
                    self.health.beat()
        finally:
            if paused:
                self.source.resume()
            self._inflight = []

    def _stream(self, model: str, stream: str) -> StreamState:
        state = self.models[model]
        out = state.features if stream == "features" else state.labels
        assert out is not None
        return out

    def _handle(self, msg: Message, tp: TopicPartition) -> list[ClosedWindow]:
        try:
            record = self.decoder.decode(msg.value)
            state = self.models[record.model]
            if state.labels is not None and self.join is not None:
                self.join.add_prediction(record.model, record.request_id, record.prediction,
                                         record.timestamp)
            if msg.offset <= self._stored.get(("features", record.model, *tp), -1):
                self.skipped_replayed += 1  # already inside a stored window: replay after crash
                return []
            closed = state.features.windows.add(record, tp, msg.offset)
        except RecordError as err:
            self.on_record_error(msg, err)
            return []
        if msg.offset > self._counted.get(tp, -1):  # records re-read after a rewind count once
            self._counted[tp] = msg.offset
            self.metrics.records_consumed.labels(model=record.model).inc()
        return closed

    def _handle_label(self, msg: Message, tp: TopicPartition) -> None:
        try:
            label = self.decoder.decode_label(msg.value)
        except RecordError as err:
            self.on_record_error(msg, err)
            return
        if self.join is None:
            return
        self.join.add_label(label, tp, msg.offset)

    def _join_labels(self) -> list[ClosedWindow]:
        assert self.join is not None
        before = Counter(self.join.outcomes)
        closed: list[ClosedWindow] = []
        for pair, tp, offset in self.join.resolve():
            if offset <= self._stored.get(("labels", pair.model, *tp), -1):
                self.join.outcomes["replayed"] += 1  # already in a stored label window
                continue
            self.join.outcomes["joined"] += 1
            closed.extend(self._stream(pair.model, "labels").windows.add(pair, tp, offset))
        for outcome, n in (self.join.outcomes - before).items():
            self.metrics.labels.labels(outcome=outcome).inc(n)
        self.metrics.labels_waiting.set(self.join.waiting)
        return closed

    def on_record_error(self, msg: Message, err: RecordError) -> None:
        """The one policy for bad records: count, log with coordinates, dead-letter."""
        tp = (msg.topic, msg.partition)
        if msg.offset <= self._dead_lettered.get(tp, -1):
            return  # re-read after a rewind: already on the dead-letter topic (flushed)
        self._dead_lettered[tp] = msg.offset
        self.rejected[err.reason] += 1
        self.metrics.records_rejected.labels(reason=err.reason).inc()
        n = self.rejected[err.reason]
        if n <= 10 or n % 1000 == 0:  # bounded logging under a flood of poison input
            log.warning("rejected record at %s (%s, #%d of this reason): %s",
                        msg.coordinates, err.reason, n, err.detail)
        self.dead_letter.send(msg, err)

    def _observe_source(self) -> None:
        connected = self.source.connected
        self.health.source_connected = connected
        if connected != self._was_connected:
            if connected:
                log.warning("source reachable again; resuming")
            else:
                log.error("source unreachable (Kafka down?): reconnecting with back-off; "
                          "/metrics stays up and nothing is committed meanwhile")
            self._was_connected = connected
        for (topic, partition), lag in self.source.lag().items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    # -- rebalancing ---------------------------------------------------------------------
    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Runs inside poll() before partitions move; drops the open windows.

        Nothing needs flushing here: poll() only runs after the previous batch's complete
        windows were stored and committed (and stored windows are skipped on replay even
        if that commit failed). kafka-python 3 also forbids blocking consumer calls in this
        callback. Open windows are not committed, so whoever owns their partitions next,
        this process included, must read them again: every partition this process read is
        rewound, when it is (still or again) assigned here, to the earliest offset an open
        window held. kafka-python keeps the position of a partition that stays assigned,
        even though the eager protocol "revokes" all of them first.
        """
        if not revoked or self._closing:
            return  # kafka-python also "revokes" nothing on the first join, and all on close
        self.metrics.rebalances.inc()
        log.info("partitions revoked: %s; open windows dropped, to be rebuilt by their "
                 "next owner", revoked)
        self._rewind = {tp: o for tp, o in self.committable().items() if tp in self._next}
        gone = set(revoked)
        if self.assignment is not None:
            self.assignment -= gone
        for tp in [tp for tp in self._rewind if tp not in gone]:
            # cooperative rebalancing: kept and never re-assigned, so rewind it now
            self.source.seek(tp, self._rewind.pop(tp))
        self._next.clear()
        self._first.clear()
        self._committed.clear()
        # Reloading stored state reads SQL: not on kafka-python's network thread (it would
        # stall heartbeats), so process() does it before it touches the windows again.
        self._restore_pending = True

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", assigned)
        self.assignment = (self.assignment or set()) | set(assigned)
        for tp in assigned:
            if tp in self._rewind:
                self.source.seek(tp, self._rewind[tp])  # local state only: no network call
        self._rewind = {}
        self._restore_pending = True  # the previous owner may have stored windows meanwhile

    def restore_state(self) -> None:
        """Reload replay marks and restart every model's windows after the stored ones."""
        if self._restore is None:
            return
        state = self._restore()
        self._stored = dict(state.offsets)
        for name, model in self.models.items():
            for stream, s in model.streams():
                s.windows = s.new_windows(state.last_window.get((stream, name)))
                # detectors with state across windows resume after the last stored one
                s.evaluator.load_state(state.detector_state.get((stream, name), {}))

    # -- flush, then commit --------------------------------------------------------------
    def flush_and_commit(self, stop: threading.Event) -> bool:
        """Dead letters, then window reports, then the commit. False if stopped first.

        Dead letters go first: once a window is stored, replay skips its records, so a
        late record in it must already be on the dead-letter topic by then.
        """
        if not self._retrying(self.dead_letter.flush, stop, sink_name="dead_letter"):
            return False
        # Predictions awaiting labels must be stored before their offsets are committed.
        if self.join is not None and not self._retrying(self.join.flush, stop,
                                                        sink_name="predictions"):
            return False
        if not self._retrying(self._deliver, stop):
            return False
        self.commit()
        return True

    def commit(self) -> None:
        if not self.source.connected:
            return  # would only time out; the next batch after the outage commits
        offsets = self.committable()
        # Committing the first offset we read would only repeat what the group already has.
        changed = {tp: o for tp, o in offsets.items()
                   if tp in self._next  # never commit for a partition we no longer read
                   and self._committed.get(tp, self._first.get(tp)) != o}
        if not changed:
            return
        try:
            with self._timed("commit"):
                self.source.commit(changed)
        except SourceError as exc:
            # Not fatal: the results are stored, and the next batch commits again. A crash
            # before then replays records that the stored offsets make us skip.
            self.metrics.commit_errors.inc()
            log.warning("offset commit failed, retrying with the next batch: %s", exc)
            return
        self._committed.update(changed)
        self.metrics.last_commit.set(time.time())

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
                key = (report.stream, report.model, topic, partition)
                self._stored[key] = max(self._stored.get(key, -1), hi)
        self._pending.clear()
        self._sink_i = 0

    def _retrying(self, fn: Callable[[], None], stop: threading.Event,
                  sink_name: str | None = None) -> bool:
        delay = self.retry.initial_s
        while True:
            try:
                fn()
                self.health.storage_ok, self.health.storage_error = True, ""
                return True
            except SinkError as exc:
                name = sink_name or self.sinks[self._sink_i].name
                self.metrics.sink_errors.labels(sink=name).inc()
                self.health.storage_ok, self.health.storage_error = False, f"{name}: {exc}"
                log.warning("sink %s failed, retrying in %.1fs without committing: %s",
                            name, delay, exc)
            self.health.beat()  # retrying is progress: the loop is alive, just not ready
            if stop.wait(delay):
                return False
            delay = min(delay * 2, self.retry.max_s)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition: the earliest offset still held by an open window, else the next."""
        out = dict(self._next)
        held: list[Any] = [w for m in self.models.values() for _name, s in m.streams()
                           for w in s.windows.open_windows()]
        for w in [*held, *self._inflight]:
            for tp, (lo, _hi) in w.offsets.items():
                out[tp] = min(out.get(tp, lo), lo)
        if self.join is not None:  # labels still waiting for their prediction
            for tp, lo in self.join.held_offsets().items():
                out[tp] = min(out.get(tp, lo), lo)
        for msg in self._held:
            tp = (msg.topic, msg.partition)
            out[tp] = min(out.get(tp, msg.offset), msg.offset)
        return out

    @property
    def pending_reports(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Call before closing the source: everything complete is already committed."""
        self._closing = True
        self._executor.shutdown(wait=True)

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_duration.labels(stage=stage).observe(time.perf_counter() - t0)
