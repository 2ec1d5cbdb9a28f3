"""``driftline produce`` into a real topic: JSONL replayed byte for byte, synthetic streams."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor.schema import Decoder, ModelSchema
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

GOOD_A = (b'{"model": "credit-risk", "request_id": "r-1", "timestamp": 1763856000, '
          b'"features": {"income": 51.5}, "prediction": 1}')
GOOD_B = b'{"model":"fraud","request_id":"r-2","timestamp":"2025-11-23T00:00:00Z","prediction":0}'
LINES = [
    GOOD_A,
    b'{"model": "credit-risk", "request_id": "trunc',  # malformed JSON
    GOOD_B + b"  ",  # trailing spaces are part of the value
    b"\xff\xfe not utf-8 \x00",
    b"[1, 2, 3]",
    '{"model": "credit-risk", "note": "caf\u00e9 \u2713"}'.encode(),
    b'{"model": null, "request_id": "no-model"}',
    b'{"request_id": "no-model-field"}',
]


def driftline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=60)


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list:  # type: ignore[type-arg]
    """Every record in ``topic``, per partition in offset order, partitions in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        got: dict[int, list] = {tp.partition: [] for tp in tps}  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while any(len(got[tp.partition]) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"timed out reading {topic}: {end} vs {got}"
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend(records)
        return [r for tp in tps for r in got[tp.partition]]
    finally:
        consumer.close()


def test_produce_file_replays_every_line_byte_exact(
        kafka_broker, kafka_topic: Callable[..., str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = kafka_topic(partitions=1)
    path = tmp_path / "logs.jsonl"
    # CRLF line ends and blank lines are not part of any record.
    path.write_bytes(b"\n".join(LINES[:3]) + b"\r\n\n" + b"\n".join(LINES[3:]) + b"\n")
    proc = driftline("produce", "--bootstrap-servers", kafka_broker.bootstrap,
                     "--topic", topic, "--file", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"produced {len(LINES)} records to {topic}"

    records = read_topic(kafka_broker.bootstrap, topic)
    assert [r.value for r in records] == LINES
    assert [r.offset for r in records] == list(range(len(LINES)))
    assert all(r.key is None for r in records)


def test_produce_file_keyed_by_model(
        kafka_broker, kafka_topic: Callable[..., str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = kafka_topic(partitions=3)
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"\n".join(LINES) + b"\n")
    proc = driftline("produce", "--bootstrap-servers", kafka_broker.bootstrap,
                     "--topic", topic, "--file", str(path), "--key-by-model")
    assert proc.returncode == 0, proc.stderr
    records = read_topic(kafka_broker.bootstrap, topic)
    by_value = {r.value: r for r in records}
    assert sorted(by_value) == sorted(LINES)
    assert by_value[GOOD_A].key == b"credit-risk"
    assert by_value[GOOD_B + b"  "].key == b"fraud"
    assert by_value[LINES[5]].key == b"credit-risk"
    # lines that are not JSON objects, or name no model, are still sent, without a key
    for bad in (LINES[1], LINES[3], LINES[4], LINES[6], LINES[7]):
        assert by_value[bad].key is None
    # one model, one partition
    assert by_value[GOOD_A].partition == by_value[LINES[5]].partition


def test_produce_synthetic_with_drift_keyed_by_model(
        kafka_broker, kafka_topic: Callable[..., str]) -> None:  # type: ignore[no-untyped-def]
    topic = kafka_topic(partitions=3)
    proc = driftline("produce", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", topic,
                     "--synthetic", "500", "--drift-at", "250", "--key-by-model")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"produced 500 records to {topic}"

    records = read_topic(kafka_broker.bootstrap, topic)
    assert len(records) == 500
    assert {r.key for r in records} == {b"credit-risk"}
    assert len({r.partition for r in records}) == 1  # the whole stream on one partition

    stream = SyntheticStream()
    decoder = Decoder({"credit-risk": ModelSchema(stream.features())})
    decoded = [decoder.decode(r.value) for r in records]
    assert [d.request_id for d in decoded] == [f"credit-risk-0-{k}" for k in range(500)]
    assert {d.model for d in decoded} == {"credit-risk"}
    assert set(decoded[0].features) == set(stream.features())

    income = np.array([d.features["income"] for d in decoded])
    before, after = income[:250].mean(), income[250:].mean()
    # magnitude 0.5 sd of 10: +5 expected; a mean of 250 values has an sd of about 0.63
    assert abs(before - 50.0) < 2.5
    assert after - before > 2.5
    # an undrifted feature stays put
    credit = np.array([d.features["credit_score"] for d in decoded])
    assert abs(credit[250:].mean() - credit[:250].mean()) < 2.5
