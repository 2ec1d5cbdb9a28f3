"""The processing loop: source -> decode -> per-model windows -> evaluation -> delivery -> commit.

Delivery is at-least-once input with exactly-once results. The loop wires four parts, each in
its own module:

* :mod:`monitor.checkpoint` - per-partition offsets: replay marks, dead-letter marks, commits;
* :mod:`monitor.window_eval` - testing closed windows in a worker, keep-alive, and isolating a
  window whose evaluation fails;
* :mod:`monitor.delivery` - the ordered, retried flush of dead letters, predictions and window
  reports that must succeed before a commit;
* :mod:`monitor.label_join` - delayed labels joined to stored predictions.

A record that fails decoding goes to the dead-letter sink (one policy hook,
:meth:`Pipeline.on_record_error`). Offsets are committed only after the delivery succeeded,
and only up to the earliest record still held in an open window. Storage is read (schema
migration, replay marks) with the same retries as a flush, so a database outage at start-up
or during a rebalance waits for the database instead of stopping the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from monitor.checkpoint import Checkpoint
from monitor.deadletter import DeadLetter, RecoverableDeadLetter
from monitor.delivery import Delivery, RetryPolicy
from monitor.errors import RecordError, SourceError
from monitor.health import Health
from monitor.label_join import Joined, LabelJoin
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.schema import Decoder
from monitor.sinks import Sink
from monitor.sources import Message, Source
from monitor.window_eval import Evaluator, Job, WindowEvaluation
from monitor.windows import ClosedWindow, CountWindows, TimeWindows, TopicPartition

log = logging.getLogger("driftline.pipeline")

#: Poll time of a keep-alive poll while stored state is reloaded after an outage.
KEEP_ALIVE_POLL_S = 0.1

_coordinates = attrgetter("topic", "partition")
_offset = attrgetter("offset")

__all__ = ["Evaluator", "ModelState", "Pipeline", "RetryPolicy", "StoredState", "StreamState",
           "Windows"]

Windows = CountWindows | TimeWindows


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
    # (topic, partition) -> highest offset already on the dead-letter topic
    dead_letter_marks: Mapping[TopicPartition, int] = field(default_factory=dict)


class DeadLetterMarks(Protocol):
    """Where dead-letter marks are stored (the SQL store), in the reports' transaction."""

    def write_dead_letter_marks(self, marks: Mapping[TopicPartition, int]) -> None: ...

    def flush(self) -> None: ...


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
        prepare: Callable[[], object] | None = None,
        marks_store: DeadLetterMarks | None = None,
        labels_topic: str | None = None,
        join: LabelJoin | None = None,
        on_report: Callable[[WindowReport], None] | None = None,
        poll_timeout_s: float = 0.5,
        retry: RetryPolicy | None = None,
        keepalive_s: float = 1.0,
    ) -> None:
        """Wires the parts; does no I/O (storage is first read by :meth:`run`/:meth:`process`)."""
        self.source = source
        self.decoder = decoder
        self.models = dict(models)
        self.dead_letter = dead_letter
        self.metrics = metrics
        self._restore = restore
        self._prepare = prepare
        self._marks_store = marks_store
        self.labels_topic = labels_topic
        self.join = join
        self.poll_timeout_s = poll_timeout_s
        self.health = Health(source_probe=lambda: source.connected)
        self.checkpoint = Checkpoint()
        self.evaluation = WindowEvaluation(source, self.health, metrics, keepalive_s)
        self.delivery = Delivery(sinks, self.health, metrics, retry or RetryPolicy())
        self.delivery.add_step("dead_letter", dead_letter.flush)
        if join is not None:  # predictions awaiting labels: stored before their commit
            self.delivery.add_step("predictions", join.flush)
        self._marks_pending: dict[TopicPartition, int] = {}
        if marks_store is not None:
            self.delivery.before_sinks(self._buffer_dead_letter_marks)
            self.delivery.after_sinks(self._dead_letter_marks_stored)
        if on_report is not None:
            self.delivery.on_delivered.append(on_report)
        self.delivery.on_delivered.append(self.checkpoint.mark_stored)
        self._closing = False
        self._rewind: dict[TopicPartition, int] = {}  # set on revoke, used on assignment
        self._prepared = prepare is None
        self._restore_pending = restore is not None
        self._paused_for_restore = False
        # Partitions the group gave this process (None: a source without a group, which
        # owns everything). Metrics export only the models read from these.
        self.assignment: set[TopicPartition] | None = None
        # Also run on every restore (start, rebalance): components with stored state.
        self.restore_hooks: list[Callable[[], None]] = []
        # Run after a restore rebuilt windows and detector state, and before each batch
        # (monitor.champion: a model switched to a newly promoted version).
        self.restored_hooks: list[Callable[[], None]] = []
        self.batch_hooks: list[Callable[[], None]] = []
        self.on_joined: Callable[[Joined, int], None] | None = None
        # False: the pair's prediction came from a model version no longer evaluated
        # (monitor.champion), so it is counted as "superseded" and kept out of the windows.
        self.admit_label: Callable[[Joined], bool] | None = None
        self.rejected: Counter[str] = Counter()
        self._consumed: Counter[str] = Counter()  # this batch's records, per model
        self.skipped_replayed = 0
        self._stop = threading.Event()  # the running loop's stop event
        self._was_connected = True
        self._lag_exported: set[tuple[str, int]] = set()  # consumer_lag series set here
        # Read at scrape time: an outage shows on /metrics even while the loop is blocked.
        metrics.source_connected.set_function(lambda: 1.0 if source.connected else 0.0)
        source.on_rebalance(self._on_revoked, self._on_assigned)

    @property
    def sinks(self) -> list[Sink]:
        return self.delivery.sinks

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, until_exhausted: bool = False) -> None:
        """Poll and process until ``stop`` is set (or a finite source runs dry)."""
        self._stop = stop
        if not self._ready(stop):
            return
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

    def _ready(self, stop: threading.Event) -> bool:
        """Schema migrated and stored state loaded, retried while storage is down."""
        if not self._prepared:
            assert self._prepare is not None
            if not self.delivery.retrying(self._prepare, stop, "sql"):
                return False
            self._prepared = True
        if self._restore_pending:
            try:
                if not self.delivery.retrying(self.restore_state, stop, "sql",
                                              between=self._keep_alive):
                    return False
            finally:
                if self._paused_for_restore:
                    self.source.resume()
                    self._paused_for_restore = False
            self._restore_pending = False
        return True

    def _keep_alive(self) -> None:
        """While stored state cannot be read, poll with every partition paused.

        The group's rebalance then completes (a revoke and its assignment can arrive in
        separate polls) instead of waiting on this member until storage is back. A record
        the poll still returns (from a partition it just assigned) is sought back, never
        processed before its state is loaded."""
        self.source.pause()
        self._paused_for_restore = True
        first: dict[TopicPartition, int] = {}
        for msg in self.source.poll(KEEP_ALIVE_POLL_S):
            first.setdefault((msg.topic, msg.partition), msg.offset)
        self.source.pause()  # partitions that poll assigned
        for tp, offset in first.items():
            self.source.seek(tp, offset)

    def process(self, batch: Sequence[Message]) -> None:
        if not self._ready(self._stop):  # first call, or after a rebalance
            self.evaluation.held.extend(batch)  # stopping: committed offsets stay below
            return
        for hook in self.batch_hooks:  # nothing is being evaluated between batches
            hook()
        held = self.evaluation.take_held()
        if held:  # records a keep-alive poll returned: they come first
            batch = [*held, *batch]
        closed: list[Job] = []
        with self._timed("decode"), self.metrics.consumed_per_batch() as self._consumed:
            tps: list[TopicPartition] = list(map(_coordinates, batch))
            self.checkpoint.read_batch(tps, list(map(_offset, batch)))  # nothing below reads it
            for msg, tp in zip(batch, tps, strict=True):
                if msg.topic == self.labels_topic:
                    self._handle_label(msg)
                else:
                    closed.extend(self._jobs("features", self._handle(msg, tp)))
            if self.join is not None:
                closed.extend(self._jobs("labels", self._join_labels()))
            for state in self.models.values():  # the batch's records into the columns
                state.features.windows.seal()
        if closed:
            with self._timed("detect"):
                self.delivery.add(self.evaluation.evaluate(closed))

    def _jobs(self, stream: str, windows: list[ClosedWindow]) -> list[Job]:
        return [(stream, w, self._stream(w.model, stream).evaluator) for w in windows]

    def _stream(self, model: str, stream: str) -> StreamState:
        state = self.models[model]
        out = state.features if stream == "features" else state.labels
        assert out is not None
        return out

    def _handle(self, msg: Message, tp: TopicPartition) -> list[ClosedWindow]:
        try:
            record = self.decoder.decode(msg.value, msg.timestamp)
            state = self.models[record.model]
            if state.labels is not None and self.join is not None:
                self.join.add_prediction(record.model, record.request_id, record.prediction,
                                         record.timestamp, record.features, record.raw_input)
            if self.checkpoint.is_stored("features", record.model, tp, msg.offset):
                self.skipped_replayed += 1  # already inside a stored window: replay after crash
                return []
            closed = state.features.windows.add(record, tp, msg.offset)
        except RecordError as err:
            self.on_record_error(msg, err)
            return []
        if self.checkpoint.count_once(tp, msg.offset):  # re-read after a rewind: count once
            self._consumed[record.model] += 1  # added to the counter once per batch
        return closed

    def _handle_label(self, msg: Message) -> None:
        try:
            label = self.decoder.decode_label(msg.value, msg.timestamp)
        except RecordError as err:
            self.on_record_error(msg, err)
            return
        if self.join is None:
            return
        self.join.add_label(label, msg)

    def _join_labels(self) -> list[ClosedWindow]:
        assert self.join is not None
        before = Counter(self.join.outcomes)
        closed: list[ClosedWindow] = []
        joined, rejected = self.join.resolve()
        for msg, err in rejected:
            self.on_record_error(msg, err)
        for pair, msg in joined:
            tp = (msg.topic, msg.partition)
            if self.checkpoint.is_stored("labels", pair.model, tp, msg.offset):
                self.join.outcomes["replayed"] += 1  # already in a stored label window
                continue
            windows = self._stream(pair.model, "labels").windows
            if self.on_joined is not None and isinstance(windows, CountWindows):
                self.on_joined(pair, windows.open_index)  # the training capture
            if self.admit_label is not None and not self.admit_label(pair):
                self.join.outcomes["superseded"] += 1  # predicted by a replaced version
                continue
            self.join.outcomes["joined"] += 1
            closed.extend(windows.add(pair, tp, msg.offset))
        for outcome, n in (self.join.outcomes - before).items():
            self.metrics.labels.labels(outcome=outcome).inc(n)
        self.metrics.labels_waiting.set(self.join.waiting)
        return closed

    def on_record_error(self, msg: Message, err: RecordError) -> None:
        """The one policy for bad records: count, log with coordinates, dead-letter."""
        if not self.checkpoint.dead_letter_once((msg.topic, msg.partition), msg.offset):
            return  # re-read after a rewind or restart: already on the dead-letter topic
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
            self._lag_exported.add((topic, partition))
        if self.assignment is not None:
            # A partition that moved to another member: its lag is the new owner's to
            # export (a stale value here would add up wrong across instances or workers).
            for topic, partition in [k for k in self._lag_exported if k not in self.assignment]:
                self.metrics.consumer_lag.remove(topic, str(partition))
                self._lag_exported.discard((topic, partition))

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
        self._rewind = {tp: o for tp, o in self.committable().items()
                        if self.checkpoint.reading(tp)}
        gone = set(revoked)
        for tp in [tp for tp in self._rewind if tp not in gone]:
            # cooperative rebalancing: kept and never re-assigned, so rewind it now
            self.source.seek(tp, self._rewind.pop(tp))
        self.checkpoint.forget_session()
        # Reloading stored state reads SQL: not on kafka-python's network thread (it would
        # stall heartbeats), so process() does it, with retries, before it touches windows.
        self._restore_pending = self._restore is not None

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", assigned)
        # The source's own view when it has one: the eager protocol revokes everything
        # before it assigns, and an empty set meanwhile would blank every drift gauge (and
        # reset a firing alert) for models this process keeps.
        current = getattr(self.source, "assignment", None)
        self.assignment = (set(current()) if callable(current)
                           else (self.assignment or set()) | set(assigned))
        for tp in assigned:
            if tp in self._rewind:
                self.source.seek(tp, self._rewind[tp])  # local state only: no network call
        self._rewind = {}
        # the previous owner may have stored windows meanwhile
        self._restore_pending = self._restore is not None

    def restore_state(self) -> None:
        """Reload replay marks and restart every model's windows after the stored ones.

        Raises SinkError while storage is unreachable (callers retry)."""
        if self._restore is None:
            return
        state = self._restore()
        marks = dict(state.dead_letter_marks)
        if isinstance(self.dead_letter, RecoverableDeadLetter) and self._marks_store is not None:
            # Dead letters flushed after the last stored marks (a crash in between) are on
            # the topic already: read them back rather than send them twice.
            dl_topic = self.dead_letter.topic
            covered = {p: o for (t, p), o in marks.items() if t == dl_topic}
            found, baselines = self.dead_letter.recover(covered)
            for tp, o in found.items():
                marks[tp] = max(marks.get(tp, -1), o)
            # Stored now: the recovered marks count as stored from here on, and a later
            # position stored past them would keep the next restart from reading them back.
            # A dead-letter partition seen for the first time starts at its baseline.
            recovered = {**found, **{(dl_topic, p): o for p, o in baselines.items()}}
            if recovered:
                self._marks_store.write_dead_letter_marks(recovered)
                self._marks_store.flush()
            if found:
                log.info("dead letters written before the last stop but not yet recorded: "
                         "%d source partition(s) recovered from '%s'", len(found), dl_topic)
        self.checkpoint.restore(state.offsets, marks)
        for hook in self.restore_hooks:
            hook()
        for name, model in self.models.items():
            for stream, s in model.streams():
                s.windows = s.new_windows(state.last_window.get((stream, name)))
                # detectors with state across windows resume after the last stored one
                s.evaluator.load_state(state.detector_state.get((stream, name), {}))
        for hook in self.restored_hooks:
            hook()

    # -- flush, then commit --------------------------------------------------------------
    def flush_and_commit(self, stop: threading.Event) -> bool:
        """Deliver (dead letters, predictions, reports), then commit. False if stopped first."""
        if not self.delivery.deliver(stop):
            return False
        self.commit()
        return True

    def _buffer_dead_letter_marks(self) -> bool:
        # Runs after the dead-letter flush succeeded: every mark's record is on the topic.
        assert self._marks_store is not None
        self._marks_pending = self.checkpoint.dead_letter_marks_to_store()
        if isinstance(self.dead_letter, RecoverableDeadLetter):
            # how far the dead-letter topic is covered by these marks (see recover())
            topic = self.dead_letter.topic
            self._marks_pending.update(
                self.checkpoint.position_marks_to_store(topic, self.dead_letter.positions()))
        if self._marks_pending:
            self._marks_store.write_dead_letter_marks(self._marks_pending)
        return bool(self._marks_pending)

    def _dead_letter_marks_stored(self) -> None:
        self.checkpoint.dead_letter_marks_stored(self._marks_pending)
        self._marks_pending = {}

    def commit(self) -> None:
        if not self.source.connected:
            return  # would only time out; the next batch after the outage commits
        changed = self.checkpoint.to_commit(self.committable())
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
        self.checkpoint.committed(changed)
        self.metrics.last_commit.set(time.time())

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition: the earliest offset still held by an open window, else the next."""
        return self.checkpoint.committable(self._held_offsets())

    def _held_offsets(self) -> Iterator[tuple[TopicPartition, int]]:
        for m in self.models.values():
            for _name, s in m.streams():
                for w in s.windows.open_windows():
                    for tp, (lo, _hi) in w.offsets.items():
                        yield tp, lo
        yield from self.evaluation.held_offsets()
        if self.join is not None:  # labels still waiting for their prediction
            yield from self.join.held_offsets().items()

    @property
    def pending_reports(self) -> int:
        return self.delivery.pending

    def close(self) -> None:
        """Call before closing the source: everything complete is already committed."""
        self._closing = True
        self.evaluation.close()

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_duration.labels(stage=stage).observe(time.perf_counter() - t0)
