"""Issue 9: one bad record or window never stops monitoring (regression tests).

Each test here failed on the code before the fix:

* a window whose evaluation raises is stored with its error and skipped; other models go on;
* payloads are checked against the model that embeds them at decode time;
* one far-future record no longer closes every time window, and pruning is bounded by the
  wall clock;
* a huge integer label is dead-lettered instead of crashing the join;
* a label joins every model's prediction of its request (or the one it names);
* dead letters are written once across restarts (marks stored with the results);
* a database outage at start-up or during a rebalance waits instead of exiting.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.delivery import RetryPolicy
from monitor.errors import SinkError
from monitor.label_join import LabelJoin
from monitor.metrics import Metrics
from monitor.schema import Decoder, ModelSchema, TimeBounds
from monitor.settings import LabelSettings, ReferenceSettings, parse_settings
from monitor.sources import Message, RebalanceHook
from monitor.storage import WindowRow
from monitor.synthetic import SyntheticStream

from . import test_labels as labels_tests

A = SyntheticStream(model="model-a", seed=21)
B = SyntheticStream(model="model-b", seed=22)


class ListSource(labels_tests.ListSource):
    """The labels tests' fixed-order source, with batches of 400 and rebalance hooks."""

    def __init__(self, messages: list[Message], batch: int = 400) -> None:
        super().__init__(messages, batch)
        self.revoked: RebalanceHook = lambda tps: None
        self.assigned: RebalanceHook = lambda tps: None

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        self.i = next(i for i, m in enumerate(self.messages)
                      if (m.topic, m.partition) == tp and m.offset >= offset)

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        self.revoked, self.assigned = revoked, assigned


def two_model_settings(tmp_path: Path, db: Path, *, window: dict | None = None,
                       limits: dict | None = None, labels: bool = False) -> Any:
    models = []
    for s in (A, B):
        ref = s.write_reference_csv(tmp_path / f"ref-{s.model}.csv", 2000)
        doc = s.settings_doc(ref, 500)
        if window is not None:
            doc["window"] = window
        if labels:
            doc["labels"] = {"reference": {"path": str(label_reference(tmp_path))},
                             "window_size": 200, "horizon_seconds": 1e6}
        models.append(doc)
    doc: dict[str, Any] = {"storage": {"url": f"sqlite:///{db}"}, "models": models}
    if labels:
        doc["source"] = {"kafka": {"topics": ["logs"], "labels_topic": "labels"}}
    if limits:
        doc["limits"] = limits
    return parse_settings(doc, env={})


def label_reference(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    if not path.exists():
        rows = ["label,prediction"] + [f"{i % 2},{(i // 3) % 2}" for i in range(1000)]
        path.write_text("\n".join(rows) + "\n")
    return path


def interleaved(n: int, topic: str = "logs") -> list[Message]:
    out = []
    for i, (ra, rb) in enumerate(zip(A.encoded(n), B.encoded(n), strict=True)):
        out.append(Message(topic, 0, 2 * i, ra))
        out.append(Message(topic, 0, 2 * i + 1, rb))
    return out


def daemon(settings: Any, source: ListSource, dead: MemoryDeadLetter | None = None) -> Any:
    return build_daemon(settings, source=source, dead_letter=dead or MemoryDeadLetter(),
                        serve_metrics=False, metrics=Metrics(CollectorRegistry()))


def windows(d: Any) -> dict[tuple[str, int], str | None]:
    with d.store._sessions() as s:
        return {(r.model, r.window_index): r.error
                for r in s.execute(select(WindowRow)).scalars()}


# -- 1. a failing window is isolated ------------------------------------------------------

def test_a_window_that_fails_is_stored_with_its_error_and_other_models_go_on(
        tmp_path: Path) -> None:
    settings = two_model_settings(tmp_path, tmp_path / "r.db")
    source = ListSource(interleaved(2000))
    d = daemon(settings, source)
    evaluator = d.pipeline.models["model-a"].features.evaluator
    real = evaluator.evaluate

    def failing(window: Any) -> Any:
        if window.index == 1:
            raise FloatingPointError("overflow in a detector")
        return real(window)

    evaluator.evaluate = failing
    d.pipeline.run(threading.Event(), until_exhausted=True)
    stored = windows(d)
    assert stored[("model-a", 1)] == "FloatingPointError: overflow in a detector"
    assert all(err is None for key, err in stored.items() if key != ("model-a", 1))
    assert sorted(i for m, i in stored if m == "model-b") == [0, 1, 2, 3]
    assert sorted(i for m, i in stored if m == "model-a") == [0, 1, 2, 3]
    assert d.metrics.registry.get_sample_value("driftline_window_errors_total",
                                               {"model": "model-a"}) == 1
    assert not [r for r in d.store.results("model-a") if r["window_index"] == 1]
    # committed past the failed window: a restart does not replay it into the same error
    assert source.committed[("logs", 0)] == 4000


# -- 1b. payloads checked at decode time ----------------------------------------------------

@pytest.mark.parametrize(("schema", "payload", "reason", "detail"), [
    (ModelSchema({}, needs_input=True, input_kind="text"), {"array": [1.0, 2.0]}, "schema",
     "a text model"),
    (ModelSchema({}, needs_input=True, input_kind="array", input_size=3), {"text": "hi"},
     "schema", "an array model"),
    (ModelSchema({}, needs_input=True, input_kind="array", input_size=3),
     {"array": [1.0, 2.0]}, "schema", "has 2 values, model 'm' takes 3"),
    (ModelSchema({}, needs_input=True, input_kind="array", input_size=2),
     {"array": [1.0, 1e39]}, "non_finite", "does not fit the model's input type float32"),
    (ModelSchema({}, needs_input=True, input_kind="array", input_size=2, input_dtype="int64"),
     {"array": [1.0, 1.5]}, "schema", "is not an integer"),
])
def test_embedding_payloads_are_checked_when_decoded(schema: ModelSchema, payload: dict,
                                                     reason: str, detail: str) -> None:
    from monitor.errors import RecordError

    doc = {"model": "m", "request_id": "r", "timestamp": 1.7e9, "features": {},
           "prediction": 1, "input": payload}
    with pytest.raises(RecordError) as info:
        Decoder({"m": schema}).decode(json.dumps(doc).encode())
    assert info.value.reason == reason and detail in info.value.detail


# -- 2. event time bounded -----------------------------------------------------------------

def test_one_far_future_record_is_dead_lettered_and_time_windows_go_on(tmp_path: Path) -> None:
    settings = two_model_settings(tmp_path, tmp_path / "r.db",
                                  window={"kind": "time", "seconds": 5})
    msgs = interleaved(2000)
    doc = json.loads(msgs[10].value or b"")
    doc["timestamp"] = "9999-12-31T23:59:59Z"
    msgs[10] = Message("logs", 0, msgs[10].offset, json.dumps(doc).encode())
    dead = MemoryDeadLetter()
    source = ListSource(msgs)
    d = daemon(settings, source, dead)
    d.pipeline.run(threading.Event(), until_exhausted=True)
    assert [(m.offset, e.reason) for m, e in dead.records] == [(10, "future_timestamp")]
    # 2,000 records 0.01 s apart per model: windows of 5 s, the last one still open
    stored = windows(d)
    assert len([k for k in stored if k[0] == "model-a"]) == 3
    assert source.committed[("logs", 0)] == 3000  # up to the open window: it keeps committing


def test_past_bound_uses_the_broker_timestamp() -> None:
    from monitor.errors import RecordError

    dec = Decoder({"m": ModelSchema({})}, time_bounds=TimeBounds(
        max_future_seconds=60, max_past_seconds=3600, clock=lambda: 2e9))
    doc = {"model": "m", "request_id": "r", "timestamp": 1.7e9, "features": {}, "prediction": 1}
    raw = json.dumps(doc).encode()
    assert dec.decode(raw, broker_timestamp=1.7e9 + 10).timestamp == 1.7e9  # a replay: fine
    with pytest.raises(RecordError) as info:
        dec.decode(raw)  # no broker time: against the clock, 300 M s in the past
    assert info.value.reason == "past_timestamp"
    with pytest.raises(RecordError) as info:
        dec.decode_label(json.dumps({"request_id": "r", "label": 1,
                                     "timestamp": 2e9 + 61}).encode())
    assert info.value.reason == "future_timestamp"


class FakePredictions:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[Any, float]] = {}
        self.pruned: list[float] = []

    def write_predictions(self, rows: list[tuple[str, str, Any, float]]) -> None:
        self.rows.update({(m, rid): (p, ts) for m, rid, p, ts in rows})

    def flush_predictions(self) -> None: ...

    def lookup_predictions(self, request_ids: list[str]
                           ) -> dict[str, list[tuple[str, Any, float]]]:
        out: dict[str, list[tuple[str, Any, float]]] = {}
        for (m, rid), (p, ts) in self.rows.items():
            if rid in request_ids:
                out.setdefault(rid, []).append((m, p, ts))
        return out

    def prune_predictions(self, before: float) -> int:
        self.pruned.append(before)
        return 0


def test_pruning_never_passes_the_wall_clock() -> None:
    cfg = LabelSettings(reference=ReferenceSettings(path=Path("x.csv")), horizon_seconds=100)
    store = FakePredictions()
    join = LabelJoin(store, {"m": cfg}, clock=lambda: 1_000_000.0)
    join.add_prediction("m", "r1", 1, 9e12)  # event time far ahead of the clock
    join.flush()
    assert store.pruned == [1_000_000.0 - 200]


# -- 3. huge numbers on the label path --------------------------------------------------------

def regression_settings(tmp_path: Path, db: Path) -> Any:
    ref = A.write_reference_csv(tmp_path / "ref.csv", 2000)
    lab = tmp_path / "reg-labels.csv"
    lab.write_text("label,prediction\n" + "".join(f"{i * 0.1},{i * 0.1 + 0.05}\n"
                                                  for i in range(500)))
    doc = A.settings_doc(ref, 500)
    doc["labels"] = {"reference": {"path": str(lab)}, "task": "regression",
                     "window_size": 100, "horizon_seconds": 1e6}
    return parse_settings({"storage": {"url": f"sqlite:///{db}"},
                           "source": {"kafka": {"topics": ["logs"], "labels_topic": "labels"}},
                           "models": [doc]}, env={})


def test_a_huge_integer_label_is_dead_lettered_and_the_join_goes_on(tmp_path: Path) -> None:
    records = list(A.records(400))
    msgs = [Message("logs", 0, i, json.dumps({**r, "prediction": 1.5}).encode())
            for i, r in enumerate(records)]
    for i, r in enumerate(records):
        label: Any = 10 ** 400 if i == 7 else 2.0
        raw = f'{{"request_id": "{r["request_id"]}", "label": {label}, ' \
              f'"timestamp": {r["timestamp"] + 1!r}}}'
        msgs.append(Message("labels", 0, i, raw.encode()))
    dead = MemoryDeadLetter()
    source = ListSource(msgs)
    d = daemon(regression_settings(tmp_path, tmp_path / "r.db"), source, dead)
    d.pipeline.run(threading.Event(), until_exhausted=True)
    assert [(m.topic, m.offset, e.reason) for m, e in dead.records] == [
        ("labels", 7, "non_finite")]
    # 399 joined pairs in label windows of 100: three stored, the open one starts at 301
    assert len(d.store.results(stream="labels")) == 3 * 2  # performance + model verdict
    assert source.committed[("labels", 0)] == 301


def test_an_unconvertible_label_is_rejected_by_the_join_too() -> None:
    cfg = LabelSettings(reference=ReferenceSettings(path=Path("x.csv")), task="regression")
    store = FakePredictions()
    join = LabelJoin(store, {"m": cfg})
    join.add_prediction("m", "r1", 1.0, 10.0)
    from monitor.schema import LabelRecord

    msg = Message("labels", 0, 3, b"{}")
    join.add_label(LabelRecord("r1", 10 ** 400, 11.0), msg)
    joined, rejected = join.resolve()
    assert joined == [] and [(m.offset, e.reason) for m, e in rejected] == [(3, "schema")]
    assert "too large" in rejected[0][1].detail


# -- 4. a label joins every model's prediction of its request ---------------------------------

def test_a_label_joins_every_model_that_scored_the_request(tmp_path: Path) -> None:
    n = 600
    ra, rb = list(A.records(n)), list(B.records(n))
    msgs = []
    for i in range(n):  # both models score the same requests
        rb[i] = {**rb[i], "request_id": ra[i]["request_id"]}
        msgs.append(Message("logs", 0, 2 * i, json.dumps(ra[i]).encode()))
        msgs.append(Message("logs", 0, 2 * i + 1, json.dumps(rb[i]).encode()))
    for i, r in enumerate(ra):  # one label per request; the last 100 name model-b only
        doc = {"request_id": r["request_id"], "label": i % 2, "timestamp": r["timestamp"] + 1}
        if i >= n - 100:
            doc["model"] = "model-b"
        msgs.append(Message("labels", 0, i, json.dumps(doc).encode()))
    source = ListSource(msgs)
    d = daemon(two_model_settings(tmp_path, tmp_path / "r.db", labels=True), source)
    d.pipeline.run(threading.Event(), until_exhausted=True)
    get = d.metrics.registry.get_sample_value
    assert get("driftline_labels_total", {"outcome": "joined"}) == 2 * n - 100
    label_windows = {(r["model"], r["window_index"]) for r in d.store.results(stream="labels")}
    # windows of 200 joined pairs: model-a has 500 labels, model-b all 600
    assert label_windows == {("model-a", 0), ("model-a", 1), ("model-b", 0), ("model-b", 1),
                             ("model-b", 2)}


# -- 7. dead letters once across restarts ------------------------------------------------------

def poisoned(n: int) -> tuple[list[Message], set[int]]:
    msgs = interleaved(n)
    bad = set(range(5, len(msgs), 37))
    for i in bad:
        msgs[i] = Message("logs", 0, msgs[i].offset, b"{not json")
    return msgs, bad


@pytest.mark.parametrize("stop_after", [3, 7, 11])
def test_dead_letters_are_written_once_across_restarts(tmp_path: Path, stop_after: int) -> None:
    """A daemon dies after some batches (no clean close); the next one starts from the group's
    committed offsets, like Kafka, and must not dead-letter again what the first one did."""
    msgs, bad = poisoned(1500)
    db = tmp_path / "r.db"
    dead = MemoryDeadLetter()
    first = ListSource(msgs, batch=97)
    d1 = daemon(two_model_settings(tmp_path, db), first, dead)
    stop = threading.Event()
    polls = 0
    real_poll = first.poll

    def poll(timeout_s: float) -> list[Message]:
        nonlocal polls
        polls += 1
        if polls > stop_after:
            stop.set()
            return []
        return real_poll(timeout_s)

    first.poll = poll  # type: ignore[method-assign]
    d1.pipeline.run(stop)
    resume = first.committed.get(("logs", 0), 0)
    assert resume < first.i  # open windows hold records: a restart re-reads some
    assert any(m.offset >= resume for m, _e in dead.records)  # ...dead-lettered ones too
    second = ListSource([m for m in msgs if m.offset >= resume], batch=97)
    d2 = daemon(two_model_settings(tmp_path, db), second, dead)
    d2.pipeline.run(threading.Event(), until_exhausted=True)
    offsets = [m.offset for m, _e in dead.records]
    assert sorted(offsets) == sorted(bad)  # each exactly once


# -- 8. database outages at start-up and during a rebalance -----------------------------------

class Outage:
    """Makes the store's storage reads and writes fail while ``down`` is set."""

    def __init__(self, store: Any) -> None:
        self.down = True
        self.calls: list[str] = []
        for name in ("migrate", "stored_offsets", "flush"):
            real = getattr(store, name)
            setattr(store, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.down:
                raise SinkError(f"{name}: connection refused")
            return real(*args, **kwargs)
        return call


def test_a_daemon_started_during_a_database_outage_waits_then_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.storage import SqlStore

    calls: list[str] = []
    down = threading.Event()
    down.set()
    real_migrate = SqlStore.migrate

    def migrate(self: Any) -> None:
        calls.append("migrate")
        if down.is_set():
            raise SinkError("migrate: connection refused")
        real_migrate(self)

    monkeypatch.setattr(SqlStore, "migrate", migrate)
    source = ListSource(interleaved(1000))
    d = daemon(two_model_settings(tmp_path, tmp_path / "r.db"), source)  # does not raise
    d.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.05)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (d.pipeline.run(threading.Event(),
                                                             until_exhausted=True), done.set()))
    thread.start()
    time.sleep(0.3)
    assert not done.is_set() and calls.count("migrate") > 3
    ready, detail = d.pipeline.health.ready()
    assert not ready and "migrate: connection refused" in str(detail["storage_error"])
    assert source.i == 0  # nothing read before the schema and stored state are there
    down.clear()
    thread.join(30)
    assert done.is_set()
    # 2 windows x 2 models x (2 detectors + the model verdict)
    assert len(d.store.results()) == 2 * 2 * 3


def test_a_rebalance_during_a_database_outage_waits_for_the_database(tmp_path: Path) -> None:
    msgs = interleaved(1000)
    source = ListSource(msgs, batch=300)
    d = daemon(two_model_settings(tmp_path, tmp_path / "r.db"), source)
    d.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.05)
    outage: Outage | None = None
    real_poll = source.poll

    def poll(timeout_s: float) -> list[Message]:
        nonlocal outage
        if source.i == 600 and outage is None:  # a member joins: partitions move
            outage = Outage(d.store)
            source.revoked([("logs", 0)])
            source.assigned([("logs", 0)])
            threading.Timer(0.3, lambda: setattr(outage, "down", False)).start()
        return real_poll(timeout_s)

    source.poll = poll  # type: ignore[method-assign]
    t0 = time.monotonic()
    d.pipeline.run(threading.Event(), until_exhausted=True)
    assert outage is not None and outage.calls.count("stored_offsets") > 3
    assert time.monotonic() - t0 < 30
    windows_ = {(r["model"], r["window_index"]) for r in d.store.results()}
    assert windows_ == {(m, i) for m in ("model-a", "model-b") for i in (0, 1)}


def test_a_revoke_alone_in_an_outage_lets_its_assignment_complete(tmp_path: Path) -> None:
    """A revoke and its assignment can come in separate polls; while stored state cannot be
    read the loop keeps polling (partitions paused, nothing processed), so the group's
    rebalance completes during the outage instead of waiting for the database."""

    class PausableSource(ListSource):
        paused = False

        def pause(self) -> None:
            self.paused = True

        def resume(self) -> None:
            self.paused = False

    source = PausableSource(interleaved(1000), batch=300)
    d = daemon(two_model_settings(tmp_path, tmp_path / "r.db"), source)
    d.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.05)
    outage: Outage | None = None
    assigned_in_outage: list[bool] = []
    read_while_paused: list[int] = []
    real_poll = source.poll

    def poll(timeout_s: float) -> list[Message]:
        nonlocal outage
        if source.i == 600 and outage is None:
            outage = Outage(d.store)
            source.revoked([("logs", 0)])  # the revoke alone: this poll returns nothing
            # storage comes back after 3 s at the latest (a loop that stops polling in the
            # outage sees the assignment only then)
            threading.Timer(3.0, lambda: setattr(outage, "down", False)).start()
            return []
        if outage is not None and not assigned_in_outage:
            assigned_in_outage.append(outage.down)
            source.assigned([("logs", 0)])
            threading.Timer(0.3, lambda: setattr(outage, "down", False)).start()
        if source.paused:
            read_while_paused.append(source.i)
            return []
        return real_poll(timeout_s)

    source.poll = poll  # type: ignore[method-assign]
    d.pipeline.run(threading.Event(), until_exhausted=True)
    assert assigned_in_outage == [True]
    assert read_while_paused  # the outage's polls were made with the partitions paused
    assert not source.paused
    windows_ = {(r["model"], r["window_index"]) for r in d.store.results()}
    assert windows_ == {(m, i) for m in ("model-a", "model-b") for i in (0, 1)}
