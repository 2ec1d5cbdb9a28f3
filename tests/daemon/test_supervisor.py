"""``driftline run --workers N``: worker count, restart policy, merged metrics, and the
supervisor driving real (fake-daemon) worker processes: restart, give up, one shutdown,
no orphans after a SIGKILL of the parent."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.cli import main
from monitor.errors import ConfigError
from monitor.metrics_merge import MergedMetrics, parse
from monitor.settings import parse_settings
from monitor.story import JsonFormatter
from monitor.supervised import INDEX_ENV, tag_logs
from monitor.supervisor import RestartPolicy, Supervisor, cores, quota_cpus, resolve_workers
from monitor.synthetic import SyntheticStream

ROOT = Path(__file__).resolve().parents[2]

# --- worker count ----------------------------------------------------------------------------


def test_auto_is_the_cores_and_the_flag_overrides_the_setting() -> None:
    assert resolve_workers("auto", None) == cores() <= len(os.sched_getaffinity(0))
    assert resolve_workers(3, None) == 3
    assert resolve_workers(3, "1") == 1
    assert resolve_workers(1, "auto") == cores()
    for bad in ("0", "-2", "two"):
        with pytest.raises(ValueError, match=f"--workers: 'auto' or a number >= 1, got '{bad}'"):
            resolve_workers("auto", bad)


def test_a_cgroup_cpu_quota_caps_the_cores() -> None:
    assert quota_cpus("200000 100000\n") == 2
    assert quota_cpus("150000 100000") == 2  # 1.5 CPUs: two workers, rounded up
    assert quota_cpus("50000 100000") == 1
    assert quota_cpus("max 100000") is None
    assert quota_cpus("garbage") is None


def test_daemon_workers_setting_is_validated() -> None:
    model = {"name": "m", "reference": {"path": "r.csv"},
             "features": [{"name": "x", "type": "numeric"}],
             "window": {"kind": "count", "size": 10}}
    assert parse_settings({"models": [model]}, env={}).daemon.workers == "auto"
    assert parse_settings({"models": [model], "daemon": {"workers": 4}}, env={}
                          ).daemon.workers == 4
    with pytest.raises(ConfigError, match=r"daemon\.workers"):
        parse_settings({"models": [model], "daemon": {"workers": 0}}, env={})
    with pytest.raises(ConfigError, match="DRIFTLINE__DAEMON__WORKERS"):
        parse_settings({"models": [model]}, env={"DRIFTLINE__DAEMON__WORKERS": "many"})


def test_run_refuses_a_bad_worker_count_and_restores_the_signal_handlers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = SyntheticStream(model="m", seed=1)
    ref = stream.write_reference_csv(tmp_path / "ref.csv", 500)
    config = tmp_path / "driftline.yml"
    config.write_text(yaml.safe_dump({"models": [stream.settings_doc(ref, 100)]}))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert main(["run", "--config", str(config), "--workers", "0"]) == 2
    assert "--workers: 'auto' or a number >= 1, got '0'" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert sorted(tmp_path.iterdir()) == sorted([ref, config])  # nothing started: no database


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_workers_log_lines_name_the_worker(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler._driftline = True  # type: ignore[attr-defined]  # as monitor.story makes it
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        monkeypatch.setenv(INDEX_ENV, "3")
        tag_logs()
        logging.getLogger("driftline").warning("partitions assigned: %s", [1])
    finally:
        root.removeHandler(handler)
    line = out.getvalue().strip()
    if fmt == "json":
        assert json.loads(line)["worker"] == 3
        assert json.loads(line)["message"] == "partitions assigned: [1]"
    else:
        assert line.endswith(" WARNING [worker 3] driftline: partitions assigned: [1]")


# --- restart policy --------------------------------------------------------------------------


def test_restart_backoff_doubles_and_gives_up_after_too_many_recent_deaths() -> None:
    policy = RestartPolicy(max_restarts=3, period_s=60, backoff_s=1, max_backoff_s=3)
    assert policy.delay([100.0], 100.0) == 1
    assert policy.delay([100.0, 101.0], 101.0) == 2
    assert policy.delay([100.0, 101.0, 103.0], 103.0) == 3  # capped
    assert policy.delay([100.0, 101.0, 103.0, 106.0], 106.0) is None
    # deaths older than the period are forgotten: an occasional crash is always restarted
    assert policy.delay([0.0, 10.0, 20.0, 106.0], 106.0) == 1


# --- merged metrics --------------------------------------------------------------------------


def _exposition(consumed: float, connected: float, lag: dict[str, float],
                observe: list[float]) -> str:
    r = CollectorRegistry()
    c = Counter("driftline_records_consumed_total", "c", ["model"], registry=r)
    c.labels(model="a").inc(consumed)
    Gauge("driftline_source_connected", "s", registry=r).set(connected)
    lag_g = Gauge("driftline_consumer_lag_records", "l", ["topic", "partition"], registry=r)
    for p, v in lag.items():
        lag_g.labels(topic="t", partition=p).set(v)
    Gauge("driftline_build_info", "b", ["version"], registry=r).labels(version="1").set(1)
    h = Histogram("driftline_stage_duration_seconds", "h", ["stage"], buckets=(1, 2), registry=r)
    for v in observe:
        h.labels(stage="poll").observe(v)
    return generate_latest(r).decode()


def _samples(families: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[type-arg]
    text = generate_latest(_Registry(families)).decode()  # rendered, then read back
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


class _Registry(CollectorRegistry):
    def __init__(self, families: list) -> None:  # type: ignore[type-arg]
        super().__init__()
        self._families = families

    def collect(self):  # type: ignore[no-untyped-def]
        yield from self._families


def test_merge_sums_counters_and_histograms_and_combines_gauges_by_rule() -> None:
    a = parse(_exposition(5, 1, {"0": 7}, [0.5, 1.5]))
    b = parse(_exposition(3, 0, {"1": 4}, [3.0]))
    got = _samples(MergedMetrics().merge([a, b]))
    assert got[("driftline_records_consumed_total", (("model", "a"),))] == 8
    assert got[("driftline_source_connected", ())] == 0  # one worker cannot reach Kafka
    assert got[("driftline_consumer_lag_records", (("partition", "0"), ("topic", "t")))] == 7
    assert got[("driftline_consumer_lag_records", (("partition", "1"), ("topic", "t")))] == 4
    assert got[("driftline_build_info", (("version", "1"),))] == 1  # not 2
    poll = (("stage", "poll"),)
    assert got[("driftline_stage_duration_seconds_count", poll)] == 3
    assert got[("driftline_stage_duration_seconds_sum", poll)] == 5.0
    assert got[("driftline_stage_duration_seconds_bucket", (("le", "1.0"), *poll))] == 1
    assert got[("driftline_stage_duration_seconds_bucket", (("le", "2.0"), *poll))] == 2
    assert not any(name.endswith("_created") for name, _ in got)


def test_a_restarted_workers_counters_keep_counting_from_its_last_scrape() -> None:
    merged = MergedMetrics()
    key = ("driftline_records_consumed_total", (("model", "a"),))
    old_a, b = parse(_exposition(50, 1, {}, [])), parse(_exposition(3, 1, {}, []))
    before = _samples(merged.merge([old_a, b]))[key]
    merged.retire(old_a)  # worker a died; its replacement starts from zero
    new_a = parse(_exposition(2, 1, {}, []))
    after = _samples(merged.merge([new_a, b]))
    assert before == 53 and after[key] == 55
    assert after[("driftline_source_connected", ())] == 1  # gauges of the dead are gone
    merged.retire(new_a)
    assert _samples(merged.merge([b]))[key] == 55


# --- the supervisor with real worker processes -----------------------------------------------

# A stand-in for `driftline run --workers 1`: the worker side of monitor.supervisor, a
# /metrics with one counter, /healthz and /readyz, a clean exit on SIGTERM (recorded in a file).
FAKE_WORKER = textwrap.dedent("""
    import http.server, os, signal, sys, threading
    sys.path.insert(0, {root!r})
    from monitor.supervised import announce, watch_parent
    out = {out!r}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    watch_parent(stop, interval_s=0.1)
    if os.path.exists(os.path.join(out, "fail-with")):
        sys.exit(int(open(os.path.join(out, "fail-with")).read()))
    body = b"# TYPE driftline_records_consumed_total counter\\n" \\
           b'driftline_records_consumed_total{{model="a"}} 10.0\\n'
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body if self.path == "/metrics" else b'{{"ok": true}}'
            status = 200
            if self.path == "/readyz" and os.path.exists(os.path.join(out, "not-ready")):
                data, status = b'{{"ok": false, "storage_ok": false}}', 503
            self.send_response(status); self.end_headers(); self.wfile.write(data)
        def log_message(self, *a): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    open(os.path.join(out, f"started-{{os.getpid()}}"), "w").close()
    announce(server.server_port)
    stop.wait()
    open(os.path.join(out, f"stopped-{{os.getpid()}}"), "w").close()
""")


@pytest.fixture
def worker_cmd(tmp_path: Path) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(FAKE_WORKER.format(root=str(ROOT), out=str(tmp_path)))
    return [sys.executable, str(script)]


def _pids(tmp_path: Path, state: str) -> set[int]:
    return {int(p.name.split("-")[1]) for p in tmp_path.glob(f"{state}-*")}


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _get(port: int | None, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def running(worker_cmd: list[str]) -> Iterator[Callable[..., tuple[Supervisor, list[int]]]]:
    """Factory: a Supervisor of ``n`` fake workers, run in a thread; stopped at the end."""
    made: list[tuple[Supervisor, threading.Thread]] = []
    codes: list[int] = []

    def start(n: int, policy: RestartPolicy | None = None) -> tuple[Supervisor, list[int]]:
        sup = Supervisor(worker_cmd, n, address="127.0.0.1", port=0, stop=threading.Event(),
                         policy=policy or RestartPolicy(backoff_s=0.05))
        thread = threading.Thread(target=lambda: codes.append(sup.run()))
        thread.start()
        made.append((sup, thread))
        return sup, codes

    yield start
    for sup, thread in made:
        sup.stop.set()
        thread.join(timeout=20)


def _value(port: int | None, name: str) -> float | None:
    _status, text = _get(port, "/metrics")
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name]
    return sum(found) if found else None


def test_one_endpoint_a_killed_worker_is_restarted_and_sigterm_stops_all(
        running: Callable[..., tuple[Supervisor, list[int]]], tmp_path: Path) -> None:
    sup, codes = running(2)
    _wait(lambda: sup.served_port is not None and all(s.port for s in sup.slots), 15,
          "two workers to announce their ports")
    consumed = "driftline_records_consumed_total"
    assert _value(sup.served_port, consumed) == 20
    assert _value(sup.served_port, "driftline_workers") == 2
    status, body = _get(sup.served_port, "/readyz")
    assert status == 200 and [w["worker"] for w in json.loads(body)["workers"]] == [0, 1]
    (tmp_path / "not-ready").touch()  # e.g. a database outage: every worker says 503
    status, body = _get(sup.served_port, "/readyz")
    assert status == 503
    assert [w["storage_ok"] for w in json.loads(body)["workers"]] == [False, False]
    assert _get(sup.served_port, "/healthz")[0] == 200  # alive: not a reason to restart
    (tmp_path / "not-ready").unlink()

    first = _pids(tmp_path, "started")
    victim = sup.slots[0].proc
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    _wait(lambda: len(_pids(tmp_path, "started")) == 3 and sup.slots[0].port is not None, 15,
          "worker 0 to be started again")
    assert _value(sup.served_port, "driftline_worker_restarts_total") == 1
    # the dead worker's 10 are kept: the merged counter does not go down
    assert _value(sup.served_port, consumed) == 30

    sup.stop.set()  # what SIGTERM to `driftline run` does
    _wait(lambda: codes == [0], 20, "the supervisor to exit 0")
    alive = _pids(tmp_path, "started") - {victim.pid}
    assert _pids(tmp_path, "stopped") == alive, "every live worker drained on SIGTERM"
    assert first - {victim.pid} <= alive


def test_a_worker_exiting_2_stops_every_worker_and_the_parent_exits_2(
        running: Callable[..., tuple[Supervisor, list[int]]], tmp_path: Path) -> None:
    (tmp_path / "fail-with").write_text("2")
    _sup, codes = running(2)
    _wait(lambda: codes != [], 20, "the supervisor to give up")
    assert codes == [2]
    assert not _pids(tmp_path, "started")


def test_a_worker_dying_too_often_makes_the_parent_exit_1(
        running: Callable[..., tuple[Supervisor, list[int]]], tmp_path: Path) -> None:
    (tmp_path / "fail-with").write_text("3")
    sup, codes = running(1, RestartPolicy(max_restarts=2, period_s=60, backoff_s=0.05))
    _wait(lambda: codes != [], 20, "the supervisor to give up")
    assert codes == [1]
    assert len(sup.slots[0].deaths) == 3  # started three times: the first and two restarts


def test_sigkill_of_the_parent_leaves_no_orphan_workers(worker_cmd: list[str],
                                                        tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from monitor.supervisor import Supervisor
        Supervisor({worker_cmd!r}, 2, address="127.0.0.1", port=0,
                   stop=threading.Event()).run()
    """)])
    try:
        _wait(lambda: len(_pids(tmp_path, "started")) == 2, 15, "two workers")
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        workers = _pids(tmp_path, "started")
        # PR_SET_PDEATHSIG sends SIGTERM: each worker drains and exits cleanly
        _wait(lambda: _pids(tmp_path, "stopped") == workers, 10, "the workers to stop")
        _wait(lambda: not any(_running(p) for p in workers), 10, "the workers to exit")
    finally:
        parent.kill()
        parent.wait()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (its new parent has not reaped it yet)
