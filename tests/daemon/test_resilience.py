"""Delivery rules under failure, with fake sources: commits, rebalances, health."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.delivery import RetryPolicy
from monitor.errors import SinkError, SourceError
from monitor.health import Health, serve
from monitor.metrics import Metrics
from monitor.sources import MemorySource, Message, RebalanceHook
from monitor.synthetic import SyntheticStream

from .helpers import synthetic_settings

STREAM = SyntheticStream(seed=11)


class ScriptedSource:
    """Two partitions; can fail commits and trigger a rebalance after a given poll."""

    def __init__(self, values: list[bytes], *, fail_commits: int = 0,
                 revoke_after_poll: int | None = None, eager: bool = False) -> None:
        self.eager = eager
        self.values = values
        self.pos = {("t", 0): 0, ("t", 1): 0}
        self.fail_commits = fail_commits
        self.revoke_after_poll = revoke_after_poll
        self.polls = 0
        self.committed: dict[tuple[str, int], int] = {}
        self.seeks: list[tuple[tuple[str, int], int]] = []
        self.revoked: RebalanceHook = lambda tps: None
        self.assigned: RebalanceHook = lambda tps: None
        self.connected = True

    def poll(self, timeout_s: float) -> list[Message]:
        self.polls += 1
        if self.polls == self.revoke_after_poll:
            # partition 1 moves away; partition 0 stays. The eager protocol revokes both
            # first, and (like kafka-python 3) the kept partition keeps its position.
            self.revoked([("t", 0), ("t", 1)] if self.eager else [("t", 1)])
            self.assigned([("t", 0)])
            del self.pos[("t", 1)]
        out = []
        for tp in list(self.pos):
            off = self.pos[tp]
            # partition p holds values p, p+2, p+4, ... (record i at offset i // 2)
            chunk = self.values[tp[1]::2][off:off + 300]
            out += [Message(tp[0], tp[1], off + i, v) for i, v in enumerate(chunk)]
            self.pos[tp] = off + len(chunk)
        return out

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise SourceError("coordinator not available")
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return all(off >= len(self.values[tp[1]::2]) for tp, off in self.pos.items())

    def lag(self) -> dict[tuple[str, int], int]:
        return {tp: len(self.values[tp[1]::2]) - off for tp, off in self.pos.items()}

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        self.seeks.append((tp, offset))
        self.pos[tp] = offset

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        self.revoked, self.assigned = revoked, assigned

    def close(self) -> None:
        pass


def daemon_for(tmp_path: Path, source, window: int = 500):  # type: ignore[no-untyped-def]
    settings = synthetic_settings(tmp_path, STREAM, window=window)
    return build_daemon(settings, source=source, dead_letter=MemoryDeadLetter(),
                        serve_metrics=False, metrics=Metrics(CollectorRegistry()))


def test_failed_commits_are_counted_and_retried_with_the_next_batch(tmp_path: Path) -> None:
    source = ScriptedSource(list(STREAM.encoded(2000)), fail_commits=2)
    daemon = daemon_for(tmp_path, source)
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    assert source.committed == {("t", 0): 1000, ("t", 1): 1000}
    assert daemon.metrics.registry.get_sample_value("driftline_commit_errors_total") == 2
    assert len({r["window_index"] for r in daemon.store.results()}) == 4


@pytest.mark.parametrize("eager", [False, True])
def test_revoke_flushes_complete_windows_drops_open_ones_and_rewinds_kept_partitions(
        tmp_path: Path, eager: bool) -> None:
    source = ScriptedSource(list(STREAM.encoded(2000)), revoke_after_poll=2, eager=eager)
    daemon = daemon_for(tmp_path, source)
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    # poll 1 reads 300 records per partition: window 0 = p0 0-299 + p1 0-199 is stored,
    # p1 200-299 sit in the open window, so the commit is p0: 300, p1: 200. The revoke
    # drops that open window and rewinds the kept partition 0 to its committed offset.
    assert daemon.metrics.registry.get_sample_value("driftline_rebalances_total") == 1
    assert source.seeks == [(("t", 0), 300)]
    assert source.committed[("t", 1)] == 200  # the next owner re-reads p1 from 200
    rows = daemon.store.results()
    assert sorted({r["window_index"] for r in rows}) == [0, 1]
    assert rows[0]["offsets"] == {"t/0": [0, 299], "t/1": [0, 199]}
    # then partition 0 alone: window 1 = p0 300-799; 800-999 stay open, uncommitted
    assert rows[-1]["offsets"] == {"t/0": [300, 799]}
    assert source.committed[("t", 0)] == 800
    assert daemon.metrics.registry.get_sample_value(
        "driftline_consumer_lag_records", {"topic": "t", "partition": "0"}) == 0
    # partition 1's lag is its new owner's to export (summed over workers and instances)
    assert daemon.metrics.registry.get_sample_value(
        "driftline_consumer_lag_records", {"topic": "t", "partition": "1"}) is None


def test_health_endpoints_follow_source_and_storage_state(tmp_path: Path) -> None:
    health = Health(stall_after_s=60)
    server, _ = serve(Metrics(CollectorRegistry()), health, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"

    def get(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            e.close()
            return e.code, body

    try:
        assert get("/healthz")[0] == 200 and get("/readyz")[0] == 200
        health.source_connected = False
        status, body = get("/readyz")
        assert status == 503 and body["source_connected"] is False
        health.source_connected, health.storage_ok = True, False
        assert get("/readyz")[0] == 503 and get("/healthz")[0] == 200
        health.stopped = True
        assert get("/healthz")[0] == 503
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert b"driftline_build_info" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_drops_while_a_sink_fails_and_returns_after(tmp_path: Path) -> None:
    daemon = daemon_for(tmp_path, MemorySource(list(STREAM.encoded(1000))))
    seen: list[bool] = []

    class Failing:
        name = "flaky"
        failures = 3

        def write(self, report) -> None:  # type: ignore[no-untyped-def]
            pass

        def flush(self) -> None:
            seen.append(daemon.pipeline.health.ready()[0])
            if self.failures:
                self.failures -= 1
                raise SinkError("connection refused")

        def close(self) -> None:
            pass

    daemon.pipeline.sinks.insert(0, Failing())
    daemon.pipeline.delivery.retry = RetryPolicy(initial_s=0.01, max_s=0.01)
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    assert seen == [True, False, False, False]
    assert daemon.pipeline.health.ready()[0] is True


def test_records_re_read_after_a_rewind_are_counted_and_dead_lettered_once(
        tmp_path: Path) -> None:
    values = list(STREAM.encoded(2000))
    values[100] = b"{broken"  # partition 0, offset 50: read before the rebalance
    source = ScriptedSource(values, revoke_after_poll=2, eager=True)
    dead = MemoryDeadLetter()
    # windows of 700: the first poll's 600 records all sit in the open window at the revoke
    settings = synthetic_settings(tmp_path, STREAM, window=700)
    daemon = build_daemon(settings, source=source, dead_letter=dead, serve_metrics=False,
                          metrics=Metrics(CollectorRegistry()))
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    assert source.seeks == [(("t", 0), 0)]  # partition 0 is re-read from its start
    assert [(m.partition, m.offset) for m, _ in dead.records] == [(0, 50)]
    consumed = daemon.metrics.registry.get_sample_value(
        "driftline_records_consumed_total", {"model": STREAM.model})
    # partition 0's 999 good records once each, partition 1's 300 read before it moved
    assert consumed == 999 + 300
    rows = daemon.store.results()
    assert rows[0]["offsets"] == {"t/0": [0, 700]}  # the first window: partition 0 alone
