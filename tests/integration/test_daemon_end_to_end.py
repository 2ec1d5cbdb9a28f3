"""The whole path on real services: Kafka -> `driftline run` -> PostgreSQL + Prometheus.

One daemon process (the real CLI) consumes a 3-partition topic holding a synthetic stream
with drift injected at record 12,000 plus hostile records on every partition. The tests then
read what it stored in PostgreSQL, what a real Prometheus scraped from it, what it wrote to
the dead-letter topic, and what it committed after SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from services.ports import free_port
from services.prometheus import PrometheusServer

from monitor.kafka_io import produce
from monitor.storage import SqlStore
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 2_000
RECORDS = 20_000
DRIFT_AT = 12_000
BAD = [
    b"{truncated",
    b"\xff\xfe\xfa",
    b'{"model": "no-such-model", "request_id": "x", "timestamp": 1, "features": {}, '
    b'"prediction": 0}',
    b'{"model": "credit-risk", "request_id": "n", "timestamp": 1, "features": '
    b'{"income": NaN}, "prediction": 0}',
    b'{"model": "credit-risk", "request_id": "w", "timestamp": 1, "features": '
    b'{"income": "high"}, "prediction": 0}',
    b"[1, 2, 3]",
]
EXPECTED_REASONS = ["malformed_json", "invalid_encoding", "unknown_model", "non_finite",
                    "schema", "schema"]
# A second model, a 3-class classifier with label-shift estimation: its class priors move
# from P_REF to P_SHIFT after two windows.
INTENT_WINDOW, INTENT_WINDOWS = 1_000, 4
CONFUSION = np.array([[0.80, 0.15, 0.05], [0.10, 0.75, 0.15], [0.05, 0.20, 0.75]])
CLASSES = np.array(["billing", "cancel", "upgrade"])
P_REF, P_SHIFT = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]


def _classify(rng: np.random.Generator, priors: list[float], n: int) -> tuple[Any, Any]:
    y = rng.choice(3, size=n, p=priors)
    pred = (rng.random(n)[:, None] > np.cumsum(CONFUSION, axis=1)[y]).sum(axis=1).clip(0, 2)
    return CLASSES[y], CLASSES[pred]


def _intent_model(tmp: Path) -> tuple[dict[str, Any], list[bytes]]:
    rng = np.random.default_rng(9)
    y, pred = _classify(rng, P_REF, 6_000)
    ref = tmp / "intent-reference.csv"
    ref.write_text("length,label,prediction\n" + "".join(
        f"{rng.normal(20, 5):.3f},{a},{b}\n" for a, b in zip(y, pred, strict=True)))
    values = []
    for w in range(INTENT_WINDOWS):
        _, pred = _classify(rng, P_REF if w < 2 else P_SHIFT, INTENT_WINDOW)
        values += [json.dumps({"model": "intent", "request_id": f"i{w}-{i}",
                               "timestamp": 1_763_856_000 + w * INTENT_WINDOW + i,
                               "features": {"length": round(float(rng.normal(20, 5)), 3)},
                               "prediction": str(p)}).encode() for i, p in enumerate(pred)]
    model = {"name": "intent", "reference": {"path": str(ref)},
             "features": [{"name": "length", "type": "numeric"}],
             "window": {"kind": "count", "size": INTENT_WINDOW}, "alpha": 0.001,
             "prediction_drift": {"label_shift": True}}
    return model, values


@dataclass
class Stack:
    topic: str
    dead_letter_topic: str
    group: str
    bootstrap: str
    db_url: str
    proc: subprocess.Popen[bytes]
    log: Path
    prometheus: PrometheusServer
    metrics_port: int
    bad_coordinates: list[tuple[int, int]]  # (partition, offset) of each BAD record

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _load_dashboards() -> Any:
    spec = importlib.util.spec_from_file_location("dashboards_build",
                                                  ROOT / "dashboards" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait(predicate: Any, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if stack.proc.poll() is not None:
            pytest.fail(f"daemon exited ({stack.proc.returncode}) while waiting for {what}:\n"
                        f"{stack.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{stack.log_tail()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(kafka_broker, postgres_server, tmp_path_factory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("e2e")
    suffix = uuid.uuid4().hex[:8]
    topic, dlq, group = f"e2e-logs-{suffix}", f"e2e-dead-{suffix}", f"e2e-group-{suffix}"
    kafka_broker.create_topic(topic, 3)
    kafka_broker.create_topic(dlq, 1)
    labels_topic = f"e2e-labels-{suffix}"
    kafka_broker.create_topic(labels_topic, 1)  # no label arrives: the retraining row is primed
    db_url = postgres_server.create_database(f"e2e_{suffix}")

    stream = SyntheticStream(seed=5, drift_at=DRIFT_AT, magnitude=1.0)
    ref = stream.write_reference_csv(tmp / "reference.csv", 5_000)
    intent, intent_values = _intent_model(tmp)
    lab = tmp / "labels.csv"
    lab.write_text("label,prediction\n" + "".join(f"{i % 2},{(i // 3) % 2}\n"
                                                  for i in range(500)))
    retraining = {"labels": {"reference": {"path": str(lab)}},
                  "retrain": {"action": {"kind": "command", "command": ["true"]}}}
    port = free_port()
    config = tmp / "driftline.yml"
    config.write_text(yaml.safe_dump({
        "source": {"kafka": {"bootstrap_servers": kafka_broker.bootstrap, "topics": [topic],
                             "group_id": group, "dead_letter_topic": dlq,
                             "labels_topic": labels_topic, "poll_timeout_ms": 200}},
        "metrics": {"address": "127.0.0.1", "port": port},
        "storage": {"url": db_url},
        "models": [{**stream.settings_doc(ref, WINDOW), "alpha": 0.001, **retraining},
                   intent],
    }))

    # Good records keyed by model (one partition holds the model's whole stream, in order);
    # hostile records on every partition, their coordinates noted.
    produce(kafka_broker.bootstrap, topic,
            ((b"credit-risk", v) for v in stream.encoded(RECORDS)))
    produce(kafka_broker.bootstrap, topic, ((b"intent", v) for v in intent_values))
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    coords = []
    for i, value in enumerate(BAD):
        meta = producer.send(topic, value=value, partition=i % 3).get(timeout=30)
        coords.append((meta.partition, meta.offset))
    producer.close()

    log = tmp / "daemon.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config)],
            stdout=fh, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ})
    (tmp / "prometheus").mkdir()
    prometheus = PrometheusServer(tmp / "prometheus", [f"127.0.0.1:{port}"])
    s = Stack(topic, dlq, group, kafka_broker.bootstrap, db_url, proc, log, prometheus, port,
              coords)
    try:
        prometheus.start()
        store = SqlStore(db_url)
        store.create_schema()  # idempotent; the daemon may not have created it yet
        try:
            def windows(model: str) -> int:
                return len({r["window_index"] for r in store.results(model)})

            _wait(lambda: windows("credit-risk") == RECORDS // WINDOW
                  and windows("intent") == INTENT_WINDOWS, 180,
                  "every window to be stored", s)
        finally:
            store.close()
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        prometheus.stop()


def test_every_window_is_stored_in_postgres_with_drift_where_injected(stack: Stack) -> None:
    store = SqlStore(stack.db_url)
    rows = store.results("credit-risk")
    store.close()
    assert sorted({(r["window_index"], r["detector"]) for r in rows}) == [
        (w, d) for w in range(RECORDS // WINDOW) for d in ("chi2", "ks", "model")]
    assert all(r["n_records"] == WINDOW for r in rows)
    drifted = sorted({r["window_index"] for r in rows if r["drifted"]})
    assert drifted == list(range(DRIFT_AT // WINDOW, RECORDS // WINDOW))
    # each window's offsets are contiguous on the one partition the model's key maps to
    parts = {key for r in rows for key in r["offsets"]}
    assert len(parts) == 1


def test_the_log_tells_the_story(stack: Stack) -> None:
    text = stack.log.read_text(errors="replace")
    windows = re.findall(r"INFO driftline\.windows: model credit-risk features window (\d+) "
                         r"\[\S+ \.\. \S+\] 2000 records: (.*)", text)
    assert sorted(int(w) for w, _ in windows) == list(range(RECORDS // WINDOW))
    for w, rest in windows:
        drifted = int(w) >= DRIFT_AT // WINDOW
        assert ("ks=drift(" in rest) == drifted, rest
        assert ("drifted features: " in rest) == drifted, rest
    started = re.findall(r"DRIFT STARTED: model credit-risk \(features\) at window (\d+) .*; "
                         r"features (.*)", text)
    assert [int(w) for w, _ in started] == [DRIFT_AT // WINDOW]
    assert "income" in started[0][1]
    assert "not found in cluster metadata" not in text
    assert not re.search(r"ERROR kafka", text)
    assert re.search(r"model credit-risk: reference ready \(\d+ rows, 3 detectors\)", text)


def test_report_from_postgres_shows_where_drift_started(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "monitor.cli", "report", "--db",
                           stack.db_url, "--model", "credit-risk", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    start = DRIFT_AT // WINDOW
    assert f'Drift started in <a href="#w-credit-risk-features-{start}">window {start}</a>' \
        in page
    assert page.count('class="feature drifted"') >= 2


def test_label_shift_weights_are_stored_and_scraped(stack: Stack) -> None:
    store = SqlStore(stack.db_url)
    rows = [r for r in store.results("intent") if r["detector"] == "label_shift"]
    store.close()
    assert [r["drifted"] for r in rows] == [False, False, True, True]
    weights = {f["feature"]: f["statistic"] for f in rows[-1]["features"]}
    assert weights == {"billing": pytest.approx(0.4, abs=0.15),
                       "cancel": pytest.approx(1.0, abs=0.25),
                       "upgrade": pytest.approx(2.5, abs=0.5)}
    res = stack.prometheus.wait_for(
        'driftline_feature_drift_statistic{model="intent",detector="label_shift"}', timeout=30)
    assert {r["metric"]["feature"]: float(r["value"][1]) for r in res} == \
        pytest.approx(weights, rel=1e-9)


def test_bad_records_reach_the_dead_letter_topic_with_reason_and_coordinates(
        stack: Stack) -> None:
    consumer = KafkaConsumer(stack.dead_letter_topic, bootstrap_servers=stack.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             enable_auto_commit=False)
    got = []
    for msg in consumer:
        h = {k: v.decode() for k, v in msg.headers}
        got.append((int(h["driftline.source.partition"]), int(h["driftline.source.offset"]),
                    h["driftline.source.topic"], h["driftline.reason"], msg.value))
    consumer.close()
    assert len(got) == len(BAD)
    expected = {(p, o, stack.topic, reason, value)
                for (p, o), reason, value in zip(stack.bad_coordinates, EXPECTED_REASONS, BAD,
                                                 strict=True)}
    assert set(got) == expected


def test_prometheus_scrapes_the_drift_metrics(stack: Stack) -> None:
    prom = stack.prometheus
    prom.wait_for('driftline_records_consumed_total{model="credit-risk"}',
                  lambda r: bool(r) and float(r[0]["value"][1]) == RECORDS, timeout=30)
    for detector in ("ks", "chi2"):
        res = prom.wait_for(
            f'driftline_drift_detected{{model="credit-risk",detector="{detector}"}}',
            timeout=30)
        assert float(res[0]["value"][1]) == 1.0
    res = prom.wait_for("sum(driftline_records_rejected_total)",
                        lambda r: bool(r) and float(r[0]["value"][1]) == len(BAD), timeout=30)
    res = prom.query('driftline_windows_evaluated_total{model="credit-risk"}')
    assert float(res[0]["value"][1]) == RECORDS // WINDOW
    res = prom.query('driftline_drift_windows_total{model="credit-risk",detector="ks"}')
    assert float(res[0]["value"][1]) == (RECORDS - DRIFT_AT) // WINDOW


def test_every_dashboard_panel_query_returns_data_and_every_rule_evaluates(
        stack: Stack) -> None:
    build = _load_dashboards()
    prom = stack.prometheus
    # rate() needs two scrapes in its range: wait until the histogram has that much history
    prom.wait_for("rate(driftline_stage_duration_seconds_count[1m]) > 0", timeout=30)
    empty = []
    for where, query in build.all_queries():
        result = prom.query(query)  # raises on a parse or evaluation error
        if not where.startswith(("rule", "annotation")) and not result:
            empty.append((where, query))
    assert not empty, f"panel queries without data: {json.dumps(empty, indent=1)}"


def test_sigterm_flushes_commits_and_exits_cleanly(stack: Stack) -> None:
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=60) == 0, stack.log_tail()
    assert "stopped cleanly" in stack.log_tail()
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    committed = admin.list_group_offsets(stack.group)[stack.group]
    admin.close()
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap)
    ends = consumer.end_offsets(list(committed))
    consumer.close()
    # every window closed (20,000 = 10 x 2,000), so everything read is committed
    assert {tp.partition: om.offset for tp, om in committed.items()} == \
        {tp.partition: end for tp, end in ends.items()}
    assert len(committed) == 3
