"""What the daemon tells its operator (window lines, drift start/end, JSON logs, kafka-python
collapsed, start-up progress) and the small traps: a taken metrics port, the demo's
/metrics on a terminal, option help, environment-override errors, unknown keys."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from detectors import DriftResult, FeatureResult
from monitor.app import MetricsPortError, build_daemon
from monitor.cli import build_parser, main
from monitor.deadletter import JsonlDeadLetter
from monitor.errors import ConfigError
from monitor.report import WindowReport
from monitor.settings import load_settings, parse_settings
from monitor.sources import MemorySource
from monitor.story import JsonFormatter, KafkaLogFilter, WindowLog, setup_logging
from monitor.synthetic import SyntheticStream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    kafka_level = logging.getLogger("kafka").level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)


def _report(index: int, drifted: dict[str, bool], *, error: str | None = None) -> WindowReport:
    results = []
    for det, d in drifted.items():
        feats = (FeatureResult("income", 0.3, 1e-9 if d else 0.4, 1e-8 if d else 0.8, d,
                               100, 100),
                 FeatureResult("age", 0.1, 0.3, 0.6, False, 100, 100))
        results.append(DriftResult(det, 0.3, 1e-8 if d else 0.6, 0.05, d, 100, 100,
                                   "bonferroni", feats))
    return WindowReport("fraud", index, 1_700_000_000 + 60 * index, 1_700_000_060 + 60 * index,
                        100, () if error else tuple(results), {}, time.time(), error=error)


def _capture(fmt: str) -> io.StringIO:
    buf = io.StringIO()
    setup_logging("INFO", fmt, stream=buf)
    return buf


def test_a_line_per_window_and_when_drift_starts_and_ends() -> None:
    buf = _capture("text")
    story = WindowLog()
    story(_report(0, {"ks": False, "chi2": False}))
    story(_report(1, {"ks": True, "chi2": False}))
    story(_report(2, {"ks": True, "chi2": False}))
    story(_report(3, {"ks": False, "chi2": False}))
    story(_report(4, {}, error="boom"))
    lines = buf.getvalue().splitlines()
    windows = [ln for ln in lines if "INFO driftline.windows: model fraud features window" in ln]
    assert len(windows) == 4
    assert re.search(r"window 1 \[2023-11-14T22:14:20Z \.\. 2023-11-14T22:15:20Z\] 100 records: "
                     r"ks=drift\(p=1\.00e-08\) chi2=ok\(p=6\.00e-01\); drifted features: income$",
                     windows[1]), windows[1]
    started = [ln for ln in lines if "DRIFT STARTED" in ln]
    assert len(started) == 1 and "at window 1" in started[0] and "features income" in started[0]
    ended = [ln for ln in lines if "drift ended" in ln]
    assert len(ended) == 1 and "clean again at window 3" in ended[0]
    assert "from window 1" in ended[0]
    assert any("window 4 (100 records): evaluation failed: boom" in ln for ln in lines)


def test_json_log_format_has_the_same_fields() -> None:
    buf = _capture("json")
    story = WindowLog()
    story(_report(7, {"ks": True}))
    objs = [json.loads(line) for line in buf.getvalue().splitlines()]
    window = next(o for o in objs if o["event"] == "window")
    assert window["model"] == "fraud" and window["window"] == 7 and window["records"] == 100
    assert window["verdicts"] == {"ks": "drift"} and window["drifted_features"] == ["income"]
    assert window["window_start"] == "2023-11-14T22:20:20Z" and window["level"] == "INFO"
    assert "ks=drift" in window["message"]
    started = next(o for o in objs if o["event"] == "drift_started")
    assert started["drifted_detectors"] == ["ks"] and started["level"] == "WARNING"


def test_json_formatter_keeps_exceptions_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("a",),
                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["exception"].startswith("Traceback")


def test_kafka_python_outage_is_one_line_not_hundreds() -> None:
    buf = _capture("text")
    kafka = logging.getLogger("kafka.conn")
    for i in range(672):
        (kafka.error if i % 3 else kafka.warning)(
            "<BrokerConnection node_id=%s host=127.0.0.1:9092>: Connect attempt returned "
            "error 111. Disconnecting.", i % 2)
        logging.getLogger("kafka.client").info("Bootstrapping cluster metadata from %s", i)
    logging.getLogger("kafka.cluster").error("Topic %s not found in cluster metadata",
                                             "inference-logs")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "WARNING kafka.conn: kafka-python: <BrokerConnection" in lines[0]
    assert "(repeats are not logged)" in lines[0]


def test_kafka_filter_lets_a_new_episode_through_after_quiet() -> None:
    now = [0.0]
    f = KafkaLogFilter(quiet_s=300, clock=lambda: now[0])

    def rec() -> logging.LogRecord:
        return logging.LogRecord("kafka.conn", logging.ERROR, "", 0, "down", (), None)
    assert f.filter(rec()) and not f.filter(rec())
    now[0] = 200
    assert not f.filter(rec())  # still the same outage: 200 s since the last line
    now[0] = 600
    assert f.filter(rec())
    assert f.filter(logging.LogRecord("driftline", logging.INFO, "", 0, "x", (), None))


def test_kafka_python_is_heard_in_full_at_debug_but_never_its_own_debug() -> None:
    buf = io.StringIO()
    setup_logging("DEBUG", "text", stream=buf)
    for _ in range(3):
        logging.getLogger("kafka.conn").error("down")
    logging.getLogger("kafka.protocol.parser").debug("SaslAuthenticateRequest(secret)")
    assert buf.getvalue().count("down") == 3
    assert "secret" not in buf.getvalue()  # kafka-python's DEBUG prints SASL passwords


# --- the daemon end to end (in-process source), as `run` wires it --------------------------------

def _settings(tmp_path: Path, port: int = 0, **extra: object) -> Path:
    stream = SyntheticStream(seed=3, drift_at=3000, magnitude=1.0)
    ref = stream.write_reference_csv(tmp_path / "reference.csv", 2000)
    path = tmp_path / "driftline.yml"
    path.write_text(yaml.safe_dump({
        "metrics": {"address": "127.0.0.1", "port": port},
        "storage": {"url": f"sqlite:///{tmp_path / 'd.db'}", "reference_cache_dir": ""},
        "source": {"kafka": {"bootstrap_servers": "127.0.0.1:1"}},
        "models": [{**stream.settings_doc(ref.name, 1000), "alpha": 0.01}], **extra}))
    return path


def test_daemon_logs_each_window_and_the_drift_start_in_json(tmp_path: Path) -> None:
    buf = _capture("json")
    settings = load_settings(_settings(tmp_path), env={})
    stream = SyntheticStream(seed=3, drift_at=3000, magnitude=1.0)
    daemon = build_daemon(settings, source=MemorySource(stream.encoded(5000)),
                          dead_letter=JsonlDeadLetter(tmp_path / "dl.jsonl"),
                          serve_metrics=False)
    daemon.run(until_exhausted=True)
    objs = [json.loads(line) for line in buf.getvalue().splitlines()]
    windows = [o for o in objs if o.get("event") == "window"]
    assert [o["window"] for o in windows] == [0, 1, 2, 3, 4]
    assert all(o["model"] == "credit-risk" and o["records"] == 1000 for o in windows)
    assert not windows[2]["drifted"] and windows[3]["drifted"]
    assert "income" in windows[3]["drifted_features"]
    started = [o for o in objs if o.get("event") == "drift_started"]
    assert [o["window"] for o in started] == [3]
    steps = [o["step"] for o in objs if o.get("event") == "startup"]
    assert steps == ["reference", "reference_ready"]  # start-up progress


# --- a taken metrics port ------------------------------------------------------------------------

@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_port_in_use_is_a_config_error_naming_the_address(tmp_path: Path,
                                                          taken_port: int) -> None:
    settings = load_settings(_settings(tmp_path, taken_port), env={})
    dead = JsonlDeadLetter(tmp_path / "dl.jsonl")
    try:
        with pytest.raises(MetricsPortError) as err:
            build_daemon(settings, source=MemorySource([]), dead_letter=dead)
    finally:
        dead.close()
    text = str(err.value)
    assert f"127.0.0.1:{taken_port}" in text and "metrics.port" in text
    assert isinstance(err.value, ConfigError)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE__")}
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_run_with_the_port_taken_exits_2(tmp_path: Path, taken_port: int) -> None:
    proc = _cli("run", "--config", str(_settings(tmp_path, taken_port)))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cannot serve /metrics on 127.0.0.1:{taken_port}: Address already in use" \
        in proc.stderr
    assert "DRIFTLINE__METRICS__PORT" in proc.stderr


def test_demo_with_the_port_taken_exits_2(tmp_path: Path, taken_port: int) -> None:
    proc = _cli("demo", "--workdir", str(tmp_path / "demo"), "--records", "2000",
                "--metrics-port", str(taken_port))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"127.0.0.1:{taken_port}" in proc.stderr and "--metrics-port" in proc.stderr


def test_demo_on_a_terminal_keeps_metrics_up_until_ctrl_c(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE__")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "demo", "--workdir", str(tmp_path / "demo"),
         "--records", "4000", "--window", "1000", "--drift-at", "2000", "--metrics-port", "0"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"press Ctrl-C" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        text = out.decode(errors="replace")
        assert "press Ctrl-C to exit" in text, text
        url = re.search(r"(http://127\.0\.0\.1:\d+/metrics)", text.split("summary")[1])
        assert url is not None
        time.sleep(6.5)  # it used to go away 6 s after the URL was printed
        assert proc.poll() is None
        with urllib.request.urlopen(url.group(1), timeout=5) as resp:
            assert b"driftline_windows_evaluated_total" in resp.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_demo_not_on_a_terminal_exits_at_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = _cli("demo", "--workdir", str(tmp_path / "demo"), "--records", "2000",
                "--window", "1000", "--drift-at", "1000", "--metrics-port", "0")
    assert proc.returncode == 0, proc.stderr
    assert "press Ctrl-C" not in proc.stdout
    assert "driftline report --db sqlite:///" in proc.stdout
    assert time.monotonic() - t0 < 40


# --- help, settings errors ----------------------------------------------------------------------

def _subparsers() -> dict[str, object]:
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_with_its_default_and_every_command_an_example() -> None:
    import argparse

    for name, sub in _subparsers().items():
        assert isinstance(sub, argparse.ArgumentParser)
        text = sub.format_help()
        assert "example: driftline" in text, name
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False):
                assert "default" in sub._get_formatter()._format_action(action) \
                    .replace("\n", " "), f"{name} {action.option_strings}: default not shown"


def _doc() -> dict[str, object]:
    return {"models": [{"name": "m", "reference": {"path": "r.csv"},
                        "features": [{"name": "a", "type": "numeric"}],
                        "window": {"kind": "count", "size": 10}}]}


def test_an_environment_override_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(_doc(), source="d.yml", env={"DRIFTLINE__MODELS__0__ALPHA": "2"})
    assert ("models[0].alpha (set by environment variable DRIFTLINE__MODELS__0__ALPHA): "
            "Input should be less than 1") in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_settings(_doc(), source="d.yml",
                       env={"DRIFTLINE__SOURCE__KAFKA__TOPICS": "[a, [b]]"})
    assert "source.kafka.topics[1] (set by environment variable " \
        "DRIFTLINE__SOURCE__KAFKA__TOPICS)" in str(err.value)
    with pytest.raises(ConfigError) as err:  # a file error is still the file's
        parse_settings({**_doc(), "log_level": "LOUD"}, source="d.yml",
                       env={"DRIFTLINE__METRICS__PORT": "9"})
    assert "\n  log_level: Input should be" in str(err.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d.update(metrcs={}), "metrcs: Extra inputs are not permitted (unknown key); "
                                    "did you mean 'metrics'?"),
    (lambda d: d["models"][0].update(windw={}), "models[0].windw: "),
    (lambda d: d["models"][0]["window"].update(sise=3), "did you mean 'size'?"),
    (lambda d: d.update(storage={"uri": "x"}), "did you mean 'url'?"),
    (lambda d: d.update(alerts={"zzz": 1}),
     "alerts.zzz: Extra inputs are not permitted (unknown key) (valid keys: dashboard_url, "
     "runbook_url)"),
])
def test_unknown_keys_get_the_closest_valid_key(mutate: object, expected: str) -> None:
    doc = _doc()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, source="d.yml", env={})
    assert expected in str(err.value)
    if "windw" in expected:
        assert "did you mean 'window'?" in str(err.value)


def test_alert_links_are_exported_per_model(tmp_path: Path) -> None:
    settings = load_settings(_settings(tmp_path, 0, alerts={
        "dashboard_url": "https://grafana.example/d/x?var-model={model}",
        "runbook_url": "https://wiki.example/driftline"}), env={})
    daemon = build_daemon(settings, source=MemorySource([]),
                          dead_letter=JsonlDeadLetter(tmp_path / "dl.jsonl"),
                          serve_metrics=False)
    try:
        value = daemon.metrics.registry.get_sample_value("driftline_alert_links_info", {
            "model": "credit-risk",
            "dashboard_url": "https://grafana.example/d/x?var-model=credit-risk",
            "runbook_url": "https://wiki.example/driftline"})
    finally:
        daemon.close()
    assert value == 1.0
    assert main(["check-config", str(tmp_path / "driftline.yml")]) == 0
    assert not math.isnan(value)
