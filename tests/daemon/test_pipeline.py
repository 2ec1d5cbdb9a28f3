from __future__ import annotations

import json
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.delivery import RetryPolicy
from monitor.errors import SinkError
from monitor.metrics import Metrics
from monitor.report import WindowReport
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream

from .helpers import synthetic_settings

STREAM = SyntheticStream(seed=3, drift_at=6000, magnitude=1.0)


def run(tmp_path: Path, values: list[bytes | None], *, db: Path | None = None,
        first_offset: int = 0, metrics: Metrics | None = None, **over):
    settings = synthetic_settings(tmp_path, STREAM, db=db, alpha=0.001, **over)
    source = MemorySource(values, batch_size=700, first_offset=first_offset)
    dead = MemoryDeadLetter()
    daemon = build_daemon(settings, source=source, dead_letter=dead, serve_metrics=False,
                          metrics=metrics or Metrics(CollectorRegistry()))
    return daemon, source, dead


def test_drift_detected_in_the_right_windows_and_stored(tmp_path: Path) -> None:
    values = list(STREAM.encoded(10_000))
    daemon, source, _dead = run(tmp_path, values)
    daemon.run(until_exhausted=True)
    rows = daemon.store.results()
    by_window: dict[int, bool] = {}
    for r in rows:
        by_window[r["window_index"]] = by_window.get(r["window_index"], False) or r["drifted"]
    assert sorted(by_window) == list(range(10))
    assert [w for w, d in by_window.items() if d] == [6, 7, 8, 9]
    assert {r["detector"] for r in rows} == {"ks", "chi2", "model"}
    assert all(r["n_records"] == 1000 for r in rows)
    assert source.committed == {("memory", 0): 10_000}
    reg = daemon.metrics.registry
    assert reg.get_sample_value("driftline_records_consumed_total",
                                {"model": "credit-risk"}) == 10_000
    assert reg.get_sample_value("driftline_windows_evaluated_total",
                                {"model": "credit-risk"}) == 10
    assert reg.get_sample_value("driftline_drift_detected",
                                {"model": "credit-risk", "detector": "ks"}) == 1


def test_commits_stop_at_the_earliest_open_window(tmp_path: Path) -> None:
    values = list(STREAM.encoded(2500))
    daemon, source, _ = run(tmp_path, values)
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    # windows 0 and 1 are stored; records 2000..2499 sit in the open window
    assert source.committed == {("memory", 0): 2000}
    assert len(daemon.store.results()) == 6  # 2 windows x (2 detectors + model verdict)


def test_bad_records_are_dead_lettered_with_coordinates_and_counted(tmp_path: Path) -> None:
    good = list(STREAM.encoded(1000))
    values: list[bytes | None] = [*good[:500], b"{oops", None, b'{"model": "zzz"}', *good[500:]]
    daemon, source, dead = run(tmp_path, values)
    daemon.run(until_exhausted=True)
    got = [(m.offset, e.reason) for m, e in dead.records]
    assert got == [(500, "malformed_json"), (501, "schema"), (502, "unknown_model")]
    # the 1000 good records still make one window: 2 detectors + the model verdict
    assert len(daemon.store.results()) == 3
    assert source.committed == {("memory", 0): 1003}
    reg = daemon.metrics.registry
    assert reg.get_sample_value("driftline_records_rejected_total",
                                {"reason": "malformed_json"}) == 1


class FlakySink:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[WindowReport] = []

    def write(self, report: WindowReport) -> None:
        self.written.append(report)

    def flush(self) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("database is down")

    def close(self) -> None:
        pass


def test_failed_flush_is_retried_and_nothing_committed_meanwhile(tmp_path: Path) -> None:
    daemon, source, _ = run(tmp_path, list(STREAM.encoded(1000)))
    flaky = FlakySink(failures=2)
    commits: list[dict] = []
    original_commit = source.commit

    def spy(offsets):
        commits.append((dict(offsets), flaky.failures))
        original_commit(offsets)

    source.commit = spy  # type: ignore[method-assign]
    daemon.pipeline.sinks.insert(0, flaky)
    daemon.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.02)
    daemon.run(until_exhausted=True)
    assert commits and all(failures_left == 0 for _, failures_left in commits)
    assert daemon.metrics.registry.get_sample_value(
        "driftline_sink_errors_total", {"sink": "flaky"}) == 2
    assert len(daemon.store.results()) == 3  # 2 detectors + the model verdict


def test_stop_during_failing_flush_commits_nothing(tmp_path: Path) -> None:
    daemon, source, _ = run(tmp_path, list(STREAM.encoded(1000)))
    daemon.pipeline.sinks.insert(0, FlakySink(failures=10**6))
    stop = threading.Event()
    daemon.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.01)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    daemon.pipeline.run(stop, until_exhausted=True)
    assert source.committed == {}


def test_restart_replays_open_windows_and_changes_no_result(tmp_path: Path) -> None:
    values = list(STREAM.encoded(5500))
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    # uninterrupted run
    full, _, _ = run(a_dir, values)
    full.run(until_exhausted=True)
    expected = full.store.results()

    # run 1 stops after 3,400 records without storing its open window ("crash")
    db = b_dir / "results.db"
    first, src1, _ = run(b_dir, values[:3400], db=db)
    first.pipeline.run(threading.Event(), until_exhausted=True)
    committed = src1.committed[("memory", 0)]
    assert committed == 3000
    # the crash happens after storing window 3 but before committing: replay from 2000
    second, _src2, _ = run(b_dir, values[2000:], db=db, first_offset=2000)
    second.run(until_exhausted=True)
    assert second.pipeline.skipped_replayed == 1000
    got = second.store.results()

    def key(rows):
        return [(r["window_index"], r["detector"], r["statistic"], r["p_value"],
                 r["n_records"], json.dumps(r["offsets"])) for r in rows]

    assert key(got) == key(expected)
