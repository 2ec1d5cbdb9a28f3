"""Retraining backends against real processes and servers: builtin job results, Kafka
CloudEvents shape, webhook faults (down, 500, slow), and the dispatcher following jobs."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from services.retrain import store_with_request

from monitor.errors import ConfigError, MonitorError
from monitor.metrics import Metrics
from monitor.retrain.backends import BackendError, BuiltinBackend, WebhookBackend, cloud_event
from monitor.retrain.dispatcher import Dispatcher
from monitor.retrain.policy import Decision, Window
from monitor.retrain.store import write_decision
from monitor.settings import BackendSettings, parse_settings

REQUEST = {"id": "rr-abc", "model": "m", "action": "retrain", "kind": "concept",
           "created_at": "2026-12-07T00:00:00+00:00"}


class FakeJob(BuiltinBackend):
    """The builtin backend running a stand-in for `driftline retrain run` (a real process)."""

    def __init__(self, tmp: Path, status: str, sleep: float = 0.0) -> None:
        cfg = BackendSettings(kind="builtin", jobs_dir=tmp / "jobs")
        super().__init__(cfg, tmp / "driftline.yml")
        self.script = (f"import json, sys, time; time.sleep({sleep}); "
                       f"json.dump({{'status': {status!r}, 'reason': 'gate said so'}}, "
                       "open(sys.argv[sys.argv.index('--result') + 1], 'w'))")

    def argv(self, request: Any) -> list[str]:
        real = super().argv(request)
        return [sys.executable, "-c", self.script, *real[real.index("--result"):]]


@pytest.mark.parametrize(("job_status", "final"), [("promoted", "promoted"),
                                                   ("rejected", "succeeded"),
                                                   ("failed", "failed")])
def test_builtin_job_result_moves_the_request(tmp_path: Path, job_status: str,
                                              final: str) -> None:
    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    backend = FakeJob(tmp_path, job_status, sleep=0.5)
    cfg = BackendSettings(kind="builtin")
    d = Dispatcher(retrain, {"m": backend}, {"m": cfg}, Metrics(CollectorRegistry()))
    assert d.run_once() == 1
    assert retrain.get(rid).state in ("dispatched", "running")
    assert retrain.get(rid).external_id.startswith("pid:")
    d.run_once()
    assert retrain.get(rid).state == "running"
    deadline = time.monotonic() + 30
    while retrain.get(rid).state == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        d.run_once()
    r = retrain.get(rid)
    assert r.state == final
    assert [e[2] for e in retrain.events(rid)][-1] == final
    assert (tmp_path / "jobs" / f"{rid}.json").exists()
    # a re-send after a crash finds the result and does not start the job again
    assert backend.submit({**REQUEST, "id": rid}) == f"done:{rid}"
    store.close()


def test_a_job_that_dies_without_a_result_fails_the_request(tmp_path: Path) -> None:
    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    backend = FakeJob(tmp_path, "x")
    backend.script = "import sys; sys.exit(3)"
    d = Dispatcher(retrain, {"m": backend}, {"m": BackendSettings(kind="builtin")},
                   Metrics(CollectorRegistry()))
    d.run_once()
    time.sleep(1.0)
    d.run_once()
    r = retrain.get(rid)
    assert r.state == "failed" and "exited 3 without writing" in (r.reason or "")
    store.close()


def test_cancel_stops_a_running_builtin_job(tmp_path: Path) -> None:
    from monitor.retrain.cli import cancel_request

    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    backend = FakeJob(tmp_path, "promoted", sleep=60)
    d = Dispatcher(retrain, {"m": backend}, {"m": BackendSettings(kind="builtin")},
                   Metrics(CollectorRegistry()))
    assert d.run_once() == 1
    pid = int(retrain.get(rid).external_id[4:])
    r, note = cancel_request(retrain, rid, "wrong incident", backend)
    assert r.state == "cancelled" and note == f"the job (pid {pid}) was sent SIGTERM"
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    d.run_once()
    assert retrain.get(rid).state == "cancelled"
    assert not (tmp_path / "jobs" / f"{rid}.json").exists()
    # a finished request cannot be cancelled: refused before anything is stopped
    with pytest.raises(MonitorError, match="is cancelled: it cannot become cancelled"):
        cancel_request(retrain, rid, "again", backend)
    store.close()


def test_a_resend_after_a_crash_finds_the_started_job(tmp_path: Path) -> None:
    """The daemon died after starting the job, before recording it: no second job."""
    backend = FakeJob(tmp_path, "promoted", sleep=2)
    first = backend.submit(REQUEST)
    again = FakeJob(tmp_path, "promoted")  # the restarted daemon's backend
    assert again.submit(REQUEST) == first
    assert again.status(first, REQUEST["id"]) == ("running", "the job is running")
    backend.cancel(first, REQUEST["id"])


class Flaky:
    """A webhook endpoint that is slow, then answers 500 (a backend that is sick)."""

    def __init__(self, delay: float, code: int) -> None:
        flaky = self
        self.calls = 0

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                flaky.calls += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_sick_webhook_is_retried_with_backoff_then_fails_the_request(tmp_path: Path) -> None:
    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    sick = Flaky(delay=0.0, code=500)
    cfg = BackendSettings(kind="webhook", url=sick.url, max_attempts=3, backoff_seconds=0.05,
                          timeout_seconds=2)
    metrics = Metrics(CollectorRegistry())
    d = Dispatcher(retrain, {"m": WebhookBackend(cfg)}, {"m": cfg}, metrics)
    try:
        for _ in range(30):
            d.run_once()
            if retrain.get(rid).state == "failed":
                break
            time.sleep(0.06)
    finally:
        sick.close()
    r = retrain.get(rid)
    assert r.state == "failed" and r.attempts == 3 and "HTTP 500" in (r.reason or "")
    assert sick.calls == 3
    assert metrics.registry.get_sample_value("driftline_retrain_dispatch_errors_total",
                                             {"model": "m", "backend": "webhook"}) == 3
    store.close()


def test_a_hanging_or_absent_webhook_is_a_clear_error() -> None:
    slow = Flaky(delay=3.0, code=200)
    try:
        cfg = BackendSettings(kind="webhook", url=slow.url, timeout_seconds=0.5)
        with pytest.raises(BackendError, match="unreachable"):
            WebhookBackend(cfg).submit(REQUEST)
    finally:
        slow.close()
    cfg = BackendSettings(kind="webhook", url="http://127.0.0.1:9/", timeout_seconds=1)
    with pytest.raises(BackendError, match="unreachable"):
        WebhookBackend(cfg).submit(REQUEST)


def test_cloud_event_shape() -> None:
    event = cloud_event(REQUEST)
    assert event["specversion"] == "1.0" and event["id"] == "rr-abc"
    assert event["type"] == "io.driftline.retrain.retrain" and event["subject"] == "m"
    assert event["data"]["model"] == "m"


@pytest.mark.parametrize(("action", "error"), [
    ({"kind": "webhook"}, "needs 'url'"),
    ({"kind": "webhook", "url": "ftp://x"}, "String should match pattern"),
    ({"kind": "webhook", "url": "http://x", "secret_file": "/nonexistent"}, "cannot read"),
    ({"kind": "carrier-pigeon"}, "Input should be"),
    ({"kind": "kafka"}, "needs 'topic'"),
    ({"kind": "ray"}, "needs 'address'"),
])
def test_invalid_policy_settings_name_the_key(action: dict, error: str) -> None:
    doc = {"models": [{"name": "m", "reference": {"path": "r.csv"},
                       "features": [{"name": "a", "type": "numeric"}],
                       "window": {"kind": "count", "size": 10},
                       "retrain": {"action": action}}]}
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, env={})
    assert "models[0].retrain.action" in str(info.value) and error in str(info.value)


def test_debounce_k_above_n_is_refused() -> None:
    doc = {"models": [{"name": "m", "reference": {"path": "r.csv"},
                       "features": [{"name": "a", "type": "numeric"}],
                       "window": {"kind": "count", "size": 10},
                       "retrain": {"debounce": {"k": 4, "n": 3},
                                   "action": {"kind": "command", "command": ["true"]}}}]}
    with pytest.raises(ConfigError, match=r"models\[0\]\.retrain\.debounce"):
        parse_settings(doc, env={})


@pytest.mark.parametrize("false_alarms", [{"every_windows": 100},
                                          {"every_days": 30, "max_n": 4}])
def test_debounce_defaults_to_the_false_alarm_rule(false_alarms: dict) -> None:
    """Issue 12: one k-of-n rule for the model verdict and the retraining policy."""
    from monitor.evaluate import verdict_policy

    def model(**retrain: object) -> Any:
        doc = {"models": [{"name": "m", "reference": {"path": "r.csv"}, "alpha": 0.05,
                           "features": [{"name": "a", "type": "numeric"}],
                           "window": {"kind": "time", "seconds": 3600},
                           "false_alarms": false_alarms,
                           "retrain": {"action": {"kind": "command", "command": ["true"]},
                                       **retrain}}]}
        return parse_settings(doc, env={}).models[0]

    m = model()
    rule = verdict_policy(m, 3600.0).rule()
    assert (m.retrain.debounce.k, m.retrain.debounce.n) == (rule.k, rule.n)
    assert (rule.k, rule.n) != (2, 3)  # not the plain default
    kept = model(debounce={"k": 2, "n": 3})  # an explicit rule wins
    assert (kept.retrain.debounce.k, kept.retrain.debounce.n) == (2, 3)


def test_transitions_are_checked(tmp_path: Path) -> None:
    store, retrain = store_with_request(tmp_path, state="pending_approval")
    (rid,) = [r.id for r in retrain.requests()]
    from monitor.retrain.store import RequestError

    with pytest.raises(RequestError, match="cannot become running"):
        retrain.transition(rid, "running", "no")
    assert retrain.transition(rid, "rejected", "not now").state == "rejected"
    with pytest.raises(RequestError, match="no retraining request"):
        retrain.get("rr-missing")
    store.close()


def test_the_dispatcher_reads_requests_by_state(tmp_path: Path) -> None:
    """Its rounds load the in-flight few (by the state index), never the finished history."""
    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    assert [r.id for r in retrain.requests_in(("queued",))] == [rid]
    retrain.transition(rid, "cancelled", "test")
    assert retrain.requests_in(("queued", "dispatched", "running")) == []
    assert [r.state for r in retrain.requests_in(("cancelled",))] == ["cancelled"]
    store.close()


def test_write_decision_is_insert_if_absent(tmp_path: Path) -> None:
    store, retrain = store_with_request(tmp_path)
    w = Window("labels", 6, 600.0, 699.0, 100, frozenset({"concept"}))
    with store._sessions.begin() as s:  # the same incident decided again (a replay)
        write_decision(s, "m", Decision("concept", "retrain", "labels", 4, 400.0, "queued",
                                        600, w, "again"))
    (r,) = retrain.requests()
    assert r.decided_window == 5 and r.labelled == 500
    assert [e[2] for e in retrain.events(r.id)] == ["queued"]
    json.dumps([r.id])
    store.close()
