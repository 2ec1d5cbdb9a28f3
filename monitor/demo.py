"""``driftline demo``: the real pipeline on an in-process synthetic stream, no services needed.

It writes a reference file, a settings file, an SQLite database and a dead-letter file into
its working folder, serves ``/metrics``, prints each window as it is evaluated, and ends with
when the drift started and when it was detected.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from monitor.app import Daemon, build_daemon, install_signal_handlers
from monitor.deadletter import JsonlDeadLetter
from monitor.health import serve
from monitor.report import WindowReport
from monitor.settings import load_settings
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream

#: Hostile records mixed into the demo stream, to show dead-lettering.
_BAD_RECORDS = [
    b'{"model": "credit-risk", "request_id": "trunc',
    b'{"model": "unknown-model", "request_id": "x", "timestamp": 0, "features": {}, '
    b'"prediction": 1}',
    b'{"model": "credit-risk", "request_id": "nan", "timestamp": 0, '
    b'"features": {"income": NaN}, "prediction": 1}',
    b"\xff\xfe not utf-8",
]


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("driftline-demo")
    records: int = 40_000
    window: int = 2_000
    drift_at: int = 24_000
    magnitude: float = 0.5
    seed: int = 7
    alpha: float = 0.01
    bad_every: int = 997
    metrics_port: int = 9108
    metrics_address: str = "127.0.0.1"
    # Keep /metrics up after the summary until Ctrl-C (``driftline demo`` on a terminal).
    linger: bool = False


def _stream(stream: SyntheticStream, opts: DemoOptions) -> Iterator[bytes]:
    for i, value in enumerate(stream.encoded(opts.records)):
        if opts.bad_every and i % opts.bad_every == opts.bad_every - 1:
            yield _BAD_RECORDS[(i // opts.bad_every) % len(_BAD_RECORDS)]
        yield value


def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> dict[str, object]:
    """Run the demo; returns the summary it prints (tests read it)."""
    t0 = time.perf_counter()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    stream = SyntheticStream(seed=opts.seed, drift_at=opts.drift_at, magnitude=opts.magnitude)
    reference = stream.write_reference_csv(opts.workdir / "reference.csv", 5_000)
    db = opts.workdir / "driftline.db"
    db.unlink(missing_ok=True)  # each demo run starts from an empty database
    config = opts.workdir / "driftline.yml"
    config.write_text(yaml.safe_dump({
        "metrics": {"address": opts.metrics_address, "port": opts.metrics_port},
        "storage": {"url": f"sqlite:///{db}"},
        "models": [{**stream.settings_doc(reference.relative_to(opts.workdir), opts.window),
                    "alpha": opts.alpha}],
    }, sort_keys=False), encoding="utf-8")
    settings = load_settings(config, env={})
    dead_path = opts.workdir / "dead-letter.jsonl"
    dead_path.unlink(missing_ok=True)
    dead = JsonlDeadLetter(dead_path)

    first_drift: list[WindowReport] = []
    drift_window = opts.drift_at // opts.window

    def show(report: WindowReport) -> None:
        flags = "  ".join(
            f"{r.detector}: p={r.p_value:.2e}{' DRIFT' if r.drifted else ''}"
            if r.p_value is not None else f"{r.detector}: insufficient data"
            for r in report.results)
        drifted = any(r.drifted for r in report.results)
        lo = report.window_index * opts.window
        marker = "  <-- drift injected from here" if report.window_index == drift_window else ""
        print(f"window {report.window_index:3d}  records {lo:6d}-{lo + report.n_records - 1:6d}"
              f"  {flags}{marker}", file=out, flush=True)
        if drifted and report.window_index >= drift_window and not first_drift:
            first_drift.append(report)

    daemon = build_daemon(settings, source=MemorySource(_stream(stream, opts)),
                          dead_letter=dead, on_report=show)
    restore_signals = install_signal_handlers(daemon.stop)
    print(f"driftline demo: {opts.records} records of model '{stream.model}', windows of "
          f"{opts.window}, drift of {opts.magnitude} sd injected at record {opts.drift_at}\n"
          f"  metrics: http://{opts.metrics_address}:{daemon.metrics_port}/metrics\n"
          f"  results: {db}\n  dead letters: {dead_path}\n", file=out, flush=True)
    try:
        daemon.run(until_exhausted=True)
    finally:
        restore_signals()

    rows = daemon.store.results()
    false_alarms = sorted({r["window_index"] for r in rows
                           if r["drifted"] and r["window_index"] < drift_window})
    summary: dict[str, object] = {
        "records": opts.records,
        "windows": len({r["window_index"] for r in rows}),
        "rejected": dict(daemon.pipeline.rejected),
        "drift_started_record": opts.drift_at,
        "drift_started_window": drift_window,
        "detected_window": first_drift[0].window_index if first_drift else None,
        "detection_delay_records": (
            (first_drift[0].window_index + 1) * opts.window - opts.drift_at
            if first_drift else None),
        "false_alarm_windows": false_alarms,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print("\nsummary", file=out)
    print(f"  drift started at record {opts.drift_at} (window {drift_window})", file=out)
    if first_drift:
        w = first_drift[0]
        print(f"  drift detected in window {w.window_index} by "
              f"{', '.join(r.detector for r in w.results if r.drifted and r.detector != 'model')}, "
              f"{summary['detection_delay_records']} records after it started", file=out)
    else:
        print("  drift was NOT detected", file=out)
    print(f"  false alarms before the drift: {len(false_alarms)} window(s) {false_alarms}",
          file=out)
    print(f"  rejected records (dead-lettered): {json.dumps(summary['rejected'])}", file=out)
    print(f"  {summary['windows']} windows stored in {db} in {summary['seconds']} s", file=out)
    print(f"\nsee which features moved, and how: driftline report --db sqlite:///{db} "
          f"--output {opts.workdir / 'report.html'}", file=out, flush=True)
    if opts.linger:
        _linger(daemon, opts, out)
    return summary


def _linger(daemon: Daemon, opts: DemoOptions, out: TextIO) -> None:
    """Serve the final /metrics (the daemon has stopped) until SIGINT or SIGTERM."""
    port = daemon.metrics_port or opts.metrics_port
    try:
        server, _thread = serve(daemon.metrics, daemon.pipeline.health, opts.metrics_address,
                                port)
    except OSError as exc:
        print(f"(cannot keep /metrics up on {opts.metrics_address}:{port}: {exc.strerror})",
              file=out, flush=True)
        return
    stop = threading.Event()
    restore = install_signal_handlers(stop)
    print(f"/metrics stays up at http://{opts.metrics_address}:{port}/metrics: "
          "press Ctrl-C to exit", file=out, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        restore()
        server.shutdown()
        server.server_close()
