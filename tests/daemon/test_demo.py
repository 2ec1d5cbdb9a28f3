"""``driftline demo``: the real pipeline on a synthetic stream, as a process and in-process."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from services.ports import free_port

from monitor.demo import _BAD_RECORDS, DemoOptions, run_demo
from monitor.storage import SqlStore

ROOT = Path(__file__).resolve().parents[2]
REASONS = ["malformed_json", "unknown_model", "non_finite", "invalid_encoding"]


def test_demo_command(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--workdir", str(workdir),
         "--records", "12000", "--window", "1000", "--drift-at", "8000", "--metrics-port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr

    m = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", out)
    assert m and int(m.group(1)) > 0  # port 0 picked a real port and says which

    windows = [line for line in out.splitlines() if line.startswith("window ")]
    assert len(windows) == 12
    for i, line in enumerate(windows):
        lo = i * 1000
        assert re.match(rf"window +{i}  records +{lo}- +{lo + 999}  ks: p=\S+", line), line
        assert "chi2: p=" in line
        assert ("DRIFT" in line) == (i >= 8), line  # no false alarms, every drifted window
    assert windows[8].endswith("<-- drift injected from here")
    assert sum("<-- drift injected" in line for line in windows) == 1

    summary = out[out.index("\nsummary\n"):].splitlines()
    assert "  drift started at record 8000 (window 8)" in summary
    detected = [line for line in summary if line.startswith("  drift detected in window ")]
    assert len(detected) == 1
    assert re.fullmatch(r"  drift detected in window 8 by (ks|chi2|ks, chi2), "
                        r"1000 records after it started", detected[0])
    assert "  false alarms before the drift: 0 window(s) []" in summary
    rejected = next(line for line in summary if "rejected records (dead-lettered):" in line)
    assert json.loads(rejected.split(":", 1)[1]) == dict.fromkeys(REASONS, 3)
    assert any(re.fullmatch(rf"  12 windows stored in {re.escape(str(workdir))}/driftline.db "
                            r"in [\d.]+ s", line) for line in summary)

    # What it stored: 12 windows x (ks, chi2, model verdict), drift flagged from window 8 on.
    store = SqlStore(f"sqlite:///{workdir / 'driftline.db'}")
    try:
        rows = store.results("credit-risk")
        assert store.last_window_index() == {"credit-risk": 11}
    finally:
        store.close()
    assert [(r["window_index"], r["detector"]) for r in rows] == [
        (w, d) for w in range(12) for d in ("chi2", "ks", "model")]  # + the model verdict
    assert all(r["n_records"] == 1000 and r["n_current"] == 1000 for r in rows)
    assert {r["window_index"] for r in rows if r["drifted"]} == set(range(8, 12))

    # What it dead-lettered: every hostile record, with reason, offset and exact bytes.
    lines = (workdir / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for k, line in enumerate(lines):
        doc = json.loads(line)
        assert doc["reason"] == REASONS[k % 4]
        assert doc["detail"]
        assert doc["offset"] == 998 * k + 996  # a bad record after every 997 good ones
        assert doc["topic"] == "memory" and doc["partition"] == 0
        assert base64.b64decode(doc["value_base64"]) == _BAD_RECORDS[k % 4]

    for name in ("reference.csv", "driftline.yml"):
        assert (workdir / name).is_file()


def test_run_demo_in_process_serves_metrics_while_it_runs(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[str] = []
    done = threading.Event()

    def scrape() -> None:  # run_demo installs signal handlers, so it must run in this thread
        while not done.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    body = resp.read().decode()
            except OSError:
                time.sleep(0.01)
                continue
            if "driftline_records_consumed_total" in body:
                scraped.append(body)
                return
            time.sleep(0.01)

    poller = threading.Thread(target=scrape, daemon=True)
    poller.start()
    out = io.StringIO()
    try:
        summary = run_demo(DemoOptions(workdir=tmp_path, records=12_000, window=1000,
                                       drift_at=8000, metrics_port=port), out)
    finally:
        done.set()
        poller.join(timeout=10)
    assert not poller.is_alive()
    assert scraped, f"/metrics at {url} never answered while the demo ran"
    assert 'driftline_records_consumed_total{model="credit-risk"}' in scraped[0]

    assert summary["detected_window"] == 8
    assert summary["drift_started_record"] == 8000
    assert summary["drift_started_window"] == 8
    assert summary["detection_delay_records"] == 1000
    assert summary["false_alarm_windows"] == []
    assert summary["windows"] == 12
    assert summary["records"] == 12_000
    assert summary["rejected"] == dict.fromkeys(REASONS, 3)
    text = out.getvalue()
    assert f"metrics: {url}" in text
    assert "drift detected in window 8" in text

    with pytest.raises(OSError):  # the server is shut down with the daemon
        urllib.request.urlopen(url, timeout=1).close()


def test_demo_without_drift_reports_not_detected(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = run_demo(DemoOptions(workdir=tmp_path, records=4000, window=1000, drift_at=2000,
                                   magnitude=0.0, bad_every=0, metrics_port=0), out)
    assert summary["detected_window"] is None
    assert summary["detection_delay_records"] is None
    assert summary["rejected"] == {}
    assert summary["windows"] == 4
    assert "  drift was NOT detected" in out.getvalue().splitlines()
    assert (tmp_path / "dead-letter.jsonl").read_text() == ""


def test_run_demo_puts_the_callers_signal_handlers_back(tmp_path: Path) -> None:
    def mine(_signum: int, _frame: object) -> None: ...

    saved = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_demo(DemoOptions(workdir=tmp_path, records=2000, window=1000, drift_at=1000,
                             bad_every=0, metrics_port=0), io.StringIO())
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_demo_retrain_without_drift_requests_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`driftline demo --retrain`, reduced to a stream with no drift: the loop is wired
    (deployed model, references, daemon, summary) and requests nothing, so exit 1. The
    whole loop with a promotion is tests/daemon/test_champion_loop.py."""
    from monitor.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    workdir = tmp_path / "loop"
    assert main(["demo", "--retrain", "--workdir", str(workdir), "--records", "1500",
                 "--drift-at", "1500"]) == 1
    out = capsys.readouterr().out
    assert "retraining requested by record None; promoted model serving from record None" \
        in out
    before = float(re.search(r"accuracy before the drift ([\d.]+)%", out).group(1))
    assert 85 < before < 100  # the deployed model on its own concept (5% label noise)
    assert (workdir / "registry").exists() is False  # no job ran
    # a second run refuses the used folder instead of mixing two loops' registries
    assert main(["demo", "--retrain", "--workdir", str(workdir)]) == 2
    assert "is not empty" in capsys.readouterr().err
