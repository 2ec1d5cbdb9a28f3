"""Retraining requests through the real daemon (SQLite), with real backends on loopback.

A concept drift (accuracy 90% -> 60% from record 2,500 of 4,000, labels delayed) must give
no request before the drift and exactly one after it, with the incident's first window and
its labelled count; the webhook receives it once (HMAC checked), the command backend runs
once; a replay after a restart decides nothing new; covariate drift alone opens an incident
and captures labelled data but starts no training; `approval: manual` parks the request until
`driftline retrain approve`.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from services.webhook import Receiver

from monitor.app import build_daemon
from monitor.cli import main
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import Metrics
from monitor.retrain.store import RetrainStore
from monitor.settings import parse_settings
from monitor.synthetic import SyntheticStream

from .test_labels import ListSource, labelled, messages

STREAM = SyntheticStream(seed=4)
N = 4000
SECRET = b"s3cret-not-in-logs"


@pytest.fixture
def receiver() -> Any:
    r = Receiver(SECRET, fail_first=1)
    yield r
    r.close()


def settings_doc(tmp_path: Path, db: Path, action: dict[str, Any], **retrain: Any) -> Any:
    import numpy as np

    ref = STREAM.write_reference_csv(tmp_path / "ref.csv", 2000)
    lab_ref = tmp_path / "labels.csv"
    rng = np.random.default_rng(1)
    rows = ["label,prediction"]
    for _ in range(2000):
        p = int(rng.random() < 0.5)
        rows.append(f"{p if rng.random() < 0.9 else 1 - p},{p}")
    lab_ref.write_text("\n".join(rows) + "\n")
    model = STREAM.settings_doc(ref, 1000)
    model["labels"] = {"reference": {"path": str(lab_ref)}, "window_size": 250,
                       "horizon_seconds": 100.0}
    model["alpha"] = 0.001
    model["retrain"] = {"action": action, "min_labelled": 500, "cooldown_windows": 4,
                        **retrain}
    return {"source": {"kafka": {"labels_topic": "labels", "topics": ["logs"]}},
            "storage": {"url": f"sqlite:///{db}"}, "models": [model]}


def daemon_for(doc: dict[str, Any], msgs: list[Any]) -> tuple[Any, ListSource]:
    source = ListSource(msgs)
    d = build_daemon(parse_settings(doc, env={}), source=source, dead_letter=MemoryDeadLetter(),
                     serve_metrics=False, metrics=Metrics(CollectorRegistry()))
    return d, source


def drift_messages() -> list[Any]:
    records = list(STREAM.records(N))
    return messages(records, labelled(records, drift_from=2500))


def test_concept_drift_gives_exactly_one_request_delivered_once(
        tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET + b"\n")
    action = {"kind": "webhook", "url": receiver.url, "secret_file": str(secret),
              "backoff_seconds": 0.01, "max_attempts": 3}
    db = tmp_path / "r.db"
    d, _source = daemon_for(settings_doc(tmp_path, db, action), drift_messages())
    assert d.dispatcher is not None
    d.pipeline.run(threading.Event(), until_exhausted=True)
    store = RetrainStore(d.store.engine)
    requests = store.requests()
    assert len(requests) == 1
    r = requests[0]
    # label windows of 250: the drift starts at record 2,500 = label window 10
    perf = {x["window_index"]: x["drifted"] for x in d.store.results(stream="labels")
            if x["detector"] == "performance"}
    first_drifted = min(i for i, f in perf.items() if f)
    assert not any(f for i, f in perf.items() if i < 10)  # no request before the drift
    assert (r.model, r.action, r.kind, r.state) == (STREAM.model, "retrain", "concept",
                                                    "queued")
    assert r.first_stream == "labels" and r.first_window == first_drifted >= 10
    assert r.labelled >= 500
    # the dispatcher: one 500 (retried after back-off), then accepted
    d.dispatcher.run_once()
    import time
    time.sleep(0.05)
    d.dispatcher.run_once()
    r = store.get(r.id)
    assert r.state == "dispatched" and r.external_id == "run-1" and r.attempts == 2
    assert receiver.bad_signatures == 0
    assert [(x["key"], x["id"], x["model"], x["action"]) for x in receiver.deliveries] == [
        (r.id, r.id, STREAM.model, "retrain")]
    assert [e[2] for e in store.events(r.id)] == ["queued", "dispatched"]
    assert d.dispatcher.run_once() == 0  # nothing left to send
    # the capture holds the incident's labelled records with their features
    captured = store.capture(STREAM.model, first_window=r.first_window)
    assert len(captured) >= r.labelled and set(captured[0]["features"]) == set(
        STREAM.features())
    assert SECRET.decode() not in caplog.text
    get = d.metrics.registry.get_sample_value
    assert get("driftline_retrain_requests_total", {"model": STREAM.model, "action": "retrain",
                                                    "outcome": "queued"}) == 1
    assert get("driftline_retrain_dispatch_errors_total", {"model": STREAM.model,
                                                           "backend": "webhook"}) == 1
    d.close()

    # a second daemon over the same database replays the whole stream: nothing new
    d2, _ = daemon_for(settings_doc(tmp_path, db, action), drift_messages())
    d2.pipeline.run(threading.Event(), until_exhausted=True)
    assert [x.id for x in RetrainStore(d2.store.engine).requests()] == [r.id]
    assert d2.dispatcher is not None and d2.dispatcher.run_once() == 0
    assert len(receiver.deliveries) == 1
    d2.close()


def test_a_restart_midway_decides_the_same_request(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    script = tmp_path / "submit.py"
    script.write_text("import json, os, sys\n"
                      f"open({str(out)!r}, 'a').write(json.dumps({{'stdin': json.load("
                      "sys.stdin), 'env': os.environ['DRIFTLINE_REQUEST_ID']}) + '\\n')\n"
                      "print('job-' + os.environ['DRIFTLINE_REQUEST_ID'])\n")
    action = {"kind": "command", "command": [sys.executable, str(script)]}
    msgs = drift_messages()
    whole_db, cut_db = tmp_path / "whole.db", tmp_path / "cut.db"
    d, _ = daemon_for(settings_doc(tmp_path, whole_db, action), msgs)
    d.pipeline.run(threading.Event(), until_exhausted=True)
    want = [(r.id, r.first_window, r.decided_window, r.labelled)
            for r in RetrainStore(d.store.engine).requests()]
    d.close()
    assert len(want) == 1
    for cut in (len(msgs) // 2, int(len(msgs) * 0.75)):
        cut_db.unlink(missing_ok=True)
        first, _ = daemon_for(settings_doc(tmp_path, cut_db, action), msgs[:cut])
        first.pipeline.run(threading.Event(), until_exhausted=True)
        first.close()  # no commit matters: the next run replays everything
        second, _ = daemon_for(settings_doc(tmp_path, cut_db, action), msgs)
        second.pipeline.run(threading.Event(), until_exhausted=True)
        store = RetrainStore(second.store.engine)
        got = [(r.id, r.first_window, r.decided_window, r.labelled) for r in store.requests()]
        assert got == want, cut
        assert second.dispatcher is not None and second.dispatcher.run_once() == 1
        assert store.get(want[0][0]).external_id == f"job-{want[0][0]}"
        second.close()
    calls = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["env"] for c in calls] == [want[0][0]] * 2
    assert calls[0]["stdin"]["action"] == "retrain"


def test_covariate_drift_alone_collects_and_manual_approval_parks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drifting = SyntheticStream(seed=4, drift_at=1500, magnitude=1.0)
    records = list(drifting.records(N))
    msgs = messages(records, labelled(records, drift_from=10**9))  # accuracy never moves
    db = tmp_path / "r.db"
    doc = settings_doc(tmp_path, db, {"kind": "command", "command": ["true"]},
                       approval="manual", actions={"covariate": "collect"})
    d, _ = daemon_for(doc, msgs)
    d.pipeline.run(threading.Event(), until_exhausted=True)
    store = RetrainStore(d.store.engine)
    requests = store.requests()
    assert [(r.action, r.kind, r.state) for r in requests] == [
        ("collect", "covariate", "collected")]
    assert d.dispatcher is not None and d.dispatcher.run_once() == 0  # no training
    assert len(store.capture(drifting.model)) > 0  # labelled data captured
    d.close()

    # the same stream with covariate drift mapped to retrain and manual approval
    doc2 = settings_doc(tmp_path, tmp_path / "m.db", {"kind": "command", "command": ["true"]},
                        approval="manual", min_labelled=0,
                        actions={"covariate": "retrain"})
    d2, _ = daemon_for(doc2, msgs)
    d2.pipeline.run(threading.Event(), until_exhausted=True)
    store2 = RetrainStore(d2.store.engine)
    (r,) = store2.requests()
    assert r.state == "pending_approval"
    assert d2.dispatcher is not None and d2.dispatcher.run_once() == 0
    cfg = tmp_path / "m.yml"
    import yaml
    cfg.write_text(yaml.safe_dump(doc2))
    assert main(["retrain", "list", "--config", str(cfg)]) == 0
    assert r.id in capsys.readouterr().out
    assert main(["retrain", "approve", "--config", str(cfg), r.id]) == 0
    assert main(["retrain", "approve", "--config", str(cfg), r.id]) == 2  # not twice
    assert "cannot become queued" in capsys.readouterr().err
    assert main(["retrain", "show", "--config", str(cfg), "rr-nope"]) == 2
    assert "no retraining request with id 'rr-nope'" in capsys.readouterr().err
    assert d2.dispatcher.run_once() == 1
    assert store2.get(r.id).state == "dispatched"
    assert main(["retrain", "show", "--config", str(cfg), r.id]) == 0
    shown = capsys.readouterr().out
    assert "pending_approval -> queued: approved by an operator" in shown
    # a dispatched command request: cancelled here, the external system is not told
    assert main(["retrain", "cancel", "--config", str(cfg), r.id]) == 0
    assert "the command system was not told" in capsys.readouterr().out
    assert store2.get(r.id).state == "cancelled"
    assert main(["retrain", "cancel", "--config", str(cfg), r.id]) == 2
    assert "is cancelled: it cannot become cancelled" in capsys.readouterr().err
    d2.close()
