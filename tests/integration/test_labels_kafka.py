"""Delayed labels on a real Kafka topic, joined across a daemon crash."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from monitor.kafka_io import produce
from monitor.storage import SqlStore
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

STREAM = SyntheticStream(seed=8)
N = 6000
DRIFT_FROM = 3000  # from here the model is right 60 % of the time instead of 90 %


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "--config",
                                 str(config)], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ})


def _wait(pred, timeout: float, what: str, proc, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"daemon exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_labels_join_predictions_across_a_crash(kafka_broker, postgres_server, tmp_path):  # type: ignore[no-untyped-def]
    suffix = uuid.uuid4().hex[:8]
    logs, labels = f"lab-logs-{suffix}", f"lab-labels-{suffix}"
    kafka_broker.create_topic(logs, 2)
    kafka_broker.create_topic(labels, 2)
    db = postgres_server.create_database(f"lab_{suffix}")
    ref = STREAM.write_reference_csv(tmp_path / "ref.csv", 2000)
    lab_ref = tmp_path / "labels.csv"
    rng = np.random.default_rng(2)
    with lab_ref.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "prediction"])
        for _ in range(3000):
            p = int(rng.random() < 0.5)
            w.writerow([p if rng.random() < 0.9 else 1 - p, p])
    model = {**STREAM.settings_doc(ref, 1000), "alpha": 0.001,
             "labels": {"reference": {"path": str(lab_ref)}, "window_size": 1000,
                        "horizon_seconds": 3600,
                        "streaming": [{"kind": "ddm"}, {"kind": "adwin"}]}}
    config = tmp_path / "driftline.yml"
    config.write_text(yaml.safe_dump({
        "source": {"kafka": {"bootstrap_servers": kafka_broker.bootstrap, "topics": [logs],
                             "labels_topic": labels, "group_id": f"lab-{suffix}",
                             "dead_letter_topic": f"lab-dead-{suffix}",
                             "poll_timeout_ms": 200}},
        "metrics": {"address": "127.0.0.1", "port": 0},
        "storage": {"url": db},
        "models": [model],
    }))
    records = list(STREAM.records(N))
    key = STREAM.model.encode()
    produce(kafka_broker.bootstrap, logs, ((key, json.dumps(r).encode()) for r in records))

    log = tmp_path / "daemon.log"
    proc = _start(config, log)
    store = SqlStore(db)
    store.create_schema()
    try:
        # all predictions consumed and stored (their feature windows too), then a crash
        _wait(lambda: len({r["window_index"] for r in store.results()}) == N // 1000, 120,
              "feature windows", proc, log)
        proc.kill()
        proc.wait()
        # labels arrive after the crash, keyed by model (as the README asks) so the label
        # windows follow the order of the labels
        out = []
        for i, r in enumerate(records):
            right = rng.random() < (0.9 if i < DRIFT_FROM else 0.6)
            y = r["prediction"] if right else 1 - r["prediction"]
            out.append((key, json.dumps(
                {"request_id": r["request_id"], "label": y,
                 "timestamp": r["timestamp"] + 30}).encode()))
        produce(kafka_broker.bootstrap, labels, out)
        proc = _start(config, log)
        _wait(lambda: len({r["window_index"] for r in store.results(stream="labels")})
              == N // 1000, 120, "label windows", proc, log)
        rows = store.results(stream="labels")
        perf = {r["window_index"]: r for r in rows if r["detector"] == "performance"}
        assert sorted(perf) == list(range(N // 1000))
        assert [w for w, r in perf.items() if r["drifted"]] == list(range(DRIFT_FROM // 1000,
                                                                          N // 1000))
        assert all(r["n_records"] == 1000 for r in rows)
        # the streaming detectors see the error rate rise, and their state is in PostgreSQL
        for name in ("ddm", "adwin"):
            flagged = [r["window_index"] for r in rows if r["detector"] == name and r["drifted"]]
            assert flagged and DRIFT_FROM // 1000 <= flagged[0] <= DRIFT_FROM // 1000 + 1, \
                (name, flagged)
        states = store.detector_states()[("labels", STREAM.model)]
        assert sorted(states) == ["adwin", "ddm", "model"]  # model: the verdict's k-of-n
        assert json.loads(states["ddm"])["detector"] == "ddm"
        assert len(json.loads(states["model"])["verdicts"]) >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        store.close()
