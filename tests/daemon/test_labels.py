"""Delayed labels: durable join by request id, outcomes, label windows, restarts."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import Metrics
from monitor.settings import LabelSettings, parse_settings
from monitor.sources import Message, RebalanceHook
from monitor.synthetic import SyntheticStream

STREAM = SyntheticStream(seed=4)
N = 4000
HORIZON = 100.0  # seconds of event time; records are 0.01 s apart


class ListSource:
    """Messages in a fixed order over several topics; remembers commits."""

    def __init__(self, messages: list[Message], batch: int = 500) -> None:
        self.messages, self.batch, self.i = messages, batch, 0
        self.committed: dict[tuple[str, int], int] = {}

    def poll(self, timeout_s: float) -> list[Message]:
        out = self.messages[self.i:self.i + self.batch]
        self.i += len(out)
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    exhausted = property(lambda self: self.i >= len(self.messages))
    connected = True

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        raise AssertionError("no rebalance here")

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None: ...

    def close(self) -> None: ...


def labelled(records: list[dict], drift_from: int) -> list[tuple[str, int, float]]:
    """(request_id, label, label timestamp): correct for 90 %, then 60 %, of requests."""
    rng = np.random.default_rng(0)
    out = []
    for i, r in enumerate(records):
        right = rng.random() < (0.9 if i < drift_from else 0.6)
        out.append((r["request_id"], r["prediction"] if right else 1 - r["prediction"],
                    r["timestamp"] + 5.0))
    return out


def messages(records: list[dict], labels: list[tuple[str, int, float]],
             extra_labels: list[bytes] = (), lag: int = 300) -> list[Message]:
    """Predictions on 'logs'; each label `lag` positions after its prediction on 'labels'."""
    out: list[Message] = []
    lab_off = 0
    for i, r in enumerate(records):
        out.append(Message("logs", 0, i, json.dumps(r).encode()))
        if i >= lag:
            rid, y, ts = labels[i - lag]
            out.append(Message("labels", 0, lab_off, json.dumps(
                {"request_id": rid, "label": y, "timestamp": ts}).encode()))
            lab_off += 1
    for rid, y, ts in labels[len(records) - lag:]:
        out.append(Message("labels", 0, lab_off, json.dumps(
            {"request_id": rid, "label": y, "timestamp": ts}).encode()))
        lab_off += 1
    for value in extra_labels:
        out.append(Message("labels", 0, lab_off, value))
        lab_off += 1
    return out


def settings(tmp_path: Path, db: Path):  # type: ignore[no-untyped-def]
    ref = STREAM.write_reference_csv(tmp_path / "ref.csv", 2000)
    lab_ref = tmp_path / "labels.csv"
    rng = np.random.default_rng(1)
    with lab_ref.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "prediction"])
        for _ in range(2000):
            p = int(rng.random() < 0.5)
            w.writerow([p if rng.random() < 0.9 else 1 - p, p])
    model = STREAM.settings_doc(ref, 1000)
    model["labels"] = {"reference": {"path": str(lab_ref)}, "window_size": 500,
                       "horizon_seconds": HORIZON}
    model["alpha"] = 0.001
    return parse_settings({"source": {"kafka": {"labels_topic": "labels", "topics": ["logs"]}},
                           "storage": {"url": f"sqlite:///{db}"},
                           "models": [model]}, env={})


def run(tmp_path: Path, msgs: list[Message], db: Path):  # type: ignore[no-untyped-def]
    source = ListSource(msgs)
    daemon = build_daemon(settings(tmp_path, db), source=source, dead_letter=MemoryDeadLetter(),
                          serve_metrics=False, metrics=Metrics(CollectorRegistry()))
    return daemon, source


def test_labels_join_to_predictions_and_concept_drift_is_detected(tmp_path: Path) -> None:
    records = list(STREAM.records(N))
    labels = labelled(records, drift_from=2500)
    orphan = json.dumps({"request_id": "never-predicted", "label": 1,
                         "timestamp": records[-1]["timestamp"] + 500}).encode()
    late = json.dumps({"request_id": records[10]["request_id"], "label": 1,
                       "timestamp": records[10]["timestamp"] + HORIZON + 1}).encode()
    daemon, source = run(tmp_path, messages(records, labels, [late, orphan, b"{bad"]),
                         tmp_path / "r.db")
    daemon.run(until_exhausted=True)
    rows = daemon.store.results(stream="labels")
    perf = {r["window_index"]: r for r in rows if r["detector"] == "performance"}
    assert sorted(perf) == list(range(N // 500))
    assert [w for w, r in perf.items() if r["drifted"]] == list(range(5, 8))
    assert all(r["n_records"] == 500 for r in rows)
    reg = daemon.metrics.registry
    get = reg.get_sample_value
    assert get("driftline_labels_total", {"outcome": "joined"}) == N
    assert get("driftline_labels_total", {"outcome": "late"}) == 1
    # the orphan waits until event time passes its timestamp by the horizon; the stream
    # ends first, so it is still waiting (bounded) and holds back the labels commit
    assert get("driftline_labels_waiting") == 1
    assert source.committed[("labels", 0)] == N + 1
    assert get("driftline_records_rejected_total", {"reason": "malformed_json"}) == 1
    # feature windows are stored too, separately
    assert len({r["window_index"] for r in daemon.store.results()}) == N // 1000


def test_predictions_survive_a_restart_so_later_labels_still_join(tmp_path: Path) -> None:
    records = list(STREAM.records(2000))
    labels = labelled(records, drift_from=10**9)
    preds = [Message("logs", 0, i, json.dumps(r).encode()) for i, r in enumerate(records)]
    db = tmp_path / "r.db"
    first, _ = run(tmp_path, preds, db)
    first.pipeline.run(threading.Event(), until_exhausted=True)
    first.close()
    # a new process: nothing in memory, only what storage holds
    lab_msgs = [Message("labels", 0, i, json.dumps(
        {"request_id": rid, "label": y, "timestamp": ts}).encode())
        for i, (rid, y, ts) in enumerate(labels)]
    second, source = run(tmp_path, lab_msgs, db)
    second.run(until_exhausted=True)
    assert second.metrics.registry.get_sample_value(
        "driftline_labels_total", {"outcome": "joined"}) == 2000
    # (2 detectors + the model verdict) per label window
    assert len(second.store.results(stream="labels")) == 3 * (2000 // 500)
    assert source.committed[("labels", 0)] == 2000

    # replaying the same labels (say, after a crash before the commit) changes nothing
    third, _ = run(tmp_path, lab_msgs, db)
    third.run(until_exhausted=True)
    assert third.metrics.registry.get_sample_value(
        "driftline_labels_total", {"outcome": "replayed"}) == 2000
    assert len(third.store.results(stream="labels")) == 3 * (2000 // 500)


STREAMING = [{"kind": "ddm"}, {"kind": "adwin"},
             {"kind": "page_hinkley", "params": {"threshold": 25.0, "mode": "up"}}]


def streaming_run(tmp_path: Path, db: Path, msgs: list[Message], *, limit: int | None = None):  # type: ignore[no-untyped-def]
    s = settings(tmp_path, db)
    model = s.models[0]
    s = s.model_copy(update={"models": (model.model_copy(update={
        "labels": model.labels.model_copy(update={"streaming": tuple(
            LabelSettings.model_validate({"reference": {"path": "x"}, "streaming": STREAMING})
            .streaming)})}),)})
    source = ListSource(msgs if limit is None else msgs[:limit])
    daemon = build_daemon(s, source=source, dead_letter=MemoryDeadLetter(),
                          serve_metrics=False, metrics=Metrics(CollectorRegistry()))
    daemon.run(until_exhausted=True)
    return daemon


def test_streaming_detectors_flag_the_error_stream_and_survive_restarts(tmp_path: Path) -> None:
    records = list(STREAM.records(N))
    msgs = messages(records, labelled(records, drift_from=2500))
    whole = streaming_run(tmp_path, tmp_path / "whole.db", msgs)
    rows = whole.store.results(stream="labels")
    for name in ("ddm", "adwin", "page_hinkley"):
        flagged = [r["window_index"] for r in rows if r["detector"] == name and r["drifted"]]
        # the error rate is the reference's (10 %) until record 2500 (window 5), then 40 %;
        # DDM compares with its running minimum and needs a few hundred records more
        assert flagged and flagged[0] in (5, 6), (name, flagged)
    ddm = {r["window_index"]: r for r in rows if r["detector"] == "ddm"}
    assert ddm[0]["statistic"] < 0.2 and ddm[0]["features"][0]["feature"] == "error"
    assert whole.metrics.registry.get_sample_value(
        "driftline_drift_windows_total", {"model": STREAM.model, "detector": "ddm"}) >= 1

    # the same stream, stopped halfway and restarted (the restart re-reads everything,
    # as after a crash before any commit): the detectors end in exactly the same state
    db = tmp_path / "split.db"
    first = streaming_run(tmp_path, db, msgs, limit=len(msgs) // 2)
    assert 0 < len({r["window_index"] for r in first.store.results(stream="labels")}) < N // 500
    first.close()
    second = streaming_run(tmp_path, db, msgs)
    split = second.store.results(stream="labels")
    key = ("labels", STREAM.model)
    assert second.store.detector_states()[key] == whole.store.detector_states()[key]
    assert [(r["window_index"], r["detector"], r["drifted"], r["statistic"]) for r in split] \
        == [(r["window_index"], r["detector"], r["drifted"], r["statistic"]) for r in rows]
