"""Slow window evaluation pauses the partitions and keeps the consumer in its group."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.kafka_io import produce
from monitor.metrics import Metrics
from monitor.settings import parse_settings
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

STREAM = SyntheticStream(seed=21)
SLOW_S = 9.0  # longer than max.poll.interval.ms below


def _run(tmp_path: Path, kafka_broker, topic: str, *, keepalive_s: float,  # type: ignore[no-untyped-def]
         client: str) -> float:
    ref = STREAM.write_reference_csv(tmp_path / "ref.csv", 2000)
    settings = parse_settings({
        "source": {"kafka": {
            "bootstrap_servers": kafka_broker.bootstrap, "topics": [topic],
            "group_id": f"bp-{uuid.uuid4().hex[:8]}", "poll_timeout_ms": 200, "client": client,
            # librdkafka wants max.poll.interval.ms >= session.timeout.ms
            "consumer": {"max_poll_interval_ms": 6000, "session_timeout_ms": 6000,
                         "heartbeat_interval_ms": 1000}}},
        "storage": {"url": f"sqlite:///{tmp_path}/r.db"},
        "models": [STREAM.settings_doc(ref, 1000)],
    }, env={})
    metrics = Metrics(CollectorRegistry())
    daemon = build_daemon(settings, metrics=metrics, serve_metrics=False)
    daemon.pipeline.evaluation.keepalive_s = keepalive_s
    evaluator = daemon.pipeline.models[STREAM.model].features.evaluator
    real, calls = evaluator.evaluate, []
    rebalances = metrics.registry.get_sample_value  # read before and after the stall

    def slow(window):  # type: ignore[no-untyped-def]
        calls.append(window.index)
        if len(calls) == 1:
            before.append(rebalances("driftline_rebalances_total"))
            time.sleep(SLOW_S)
        return real(window)

    before: list[float | None] = []

    evaluator.evaluate = slow  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len({r["window_index"] for r in daemon.store.results()}) < 3:
            assert time.monotonic() < deadline, "windows were not all stored in time"
            time.sleep(0.5)
        # A member that overran max.poll.interval learns it was dropped only at its next
        # poll (confluent-kafka's on_lost), which may come after the windows are stored:
        # keep polling a while before counting.
        settle = time.monotonic() + 10
        while time.monotonic() < settle and not _rebalanced(metrics, before):
            time.sleep(0.25)
    finally:
        daemon.stop.set()
        thread.join(timeout=30)
    # rebalances that happened from the stall on (a start-up re-join does not count)
    return metrics.registry.get_sample_value("driftline_rebalances_total") - before[0]


def _rebalanced(metrics: Metrics, before: list[float | None]) -> bool:
    now = metrics.registry.get_sample_value("driftline_rebalances_total")
    return bool(before) and now is not None and now > (before[0] or 0)


def test_slow_evaluation_does_not_cost_group_membership(tmp_path: Path, kafka_broker,  # type: ignore[no-untyped-def]
                                                         kafka_topic, kafka_client: str) -> None:
    topic = kafka_topic(partitions=1)
    produce(kafka_broker.bootstrap, topic, ((None, v) for v in STREAM.encoded(3000)))
    (tmp_path / "a").mkdir()
    assert _run(tmp_path / "a", kafka_broker, topic, keepalive_s=0.5, client=kafka_client) == 0

    # control: without the keep-alive polling the same stall loses the partitions
    (tmp_path / "b").mkdir()
    assert _run(tmp_path / "b", kafka_broker, topic, keepalive_s=3600, client=kafka_client) >= 1
