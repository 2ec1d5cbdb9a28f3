"""Smoke tests for the service harness: each real service starts and does its basic job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge, start_http_server

pytestmark = pytest.mark.integration


def _consume(consumer: KafkaConsumer, count: int, timeout: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i in range(count):
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def test_kafka_produce_consume_with_group_commit(kafka_broker, kafka_topic) -> None:
    topic = kafka_topic(partitions=3)
    _produce(kafka_broker.bootstrap, topic, 100)

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        records = _consume(consumer, 100)
        consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = sum(consumer.committed(tp) or 0 for tp in partitions)
    finally:
        consumer.close(autocommit=False)

    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(100))
    assert {r.partition for r in records} == {0, 1, 2}
    assert committed == 100


def test_kafka_restart_keeps_topic_and_messages(kafka_broker, kafka_topic) -> None:
    topic = kafka_topic(partitions=1)
    _produce(kafka_broker.bootstrap, topic, 10)
    bootstrap = kafka_broker.bootstrap

    kafka_broker.restart()

    assert kafka_broker.bootstrap == bootstrap
    with kafka_broker.admin() as admin:
        assert topic in admin.list_topics()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = _consume(consumer, 10)
    finally:
        consumer.close(autocommit=False)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)]


def test_postgres_round_trip(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE drift (id serial PRIMARY KEY, score float8)"))
            conn.execute(
                sa.text("INSERT INTO drift (score) VALUES (:s)"), [{"s": 0.25}, {"s": 0.5}]
            )
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT sum(score) FROM drift")).scalar_one()
    finally:
        engine.dispose()
    assert total == pytest.approx(0.75)


def test_postgres_databases_are_isolated(postgres_url: str, postgres_server) -> None:
    assert postgres_url != postgres_server.url
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert tables == 0


@pytest.fixture
def metrics_endpoint() -> Iterator[tuple[str, CollectorRegistry]]:
    """An in-process prometheus_client HTTP server on a kernel-chosen loopback port."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_prometheus_scrapes_metrics(metrics_endpoint, prometheus_factory) -> None:
    target, registry = metrics_endpoint
    Gauge("driftline_smoke_value", "smoke test gauge", registry=registry).set(42.5)

    prometheus = prometheus_factory([target])
    result = prometheus.wait_for("driftline_smoke_value", timeout=30)

    assert result[0]["metric"]["job"] == "driftline"
    assert float(result[0]["value"][1]) == 42.5
    assert [t["health"] for t in prometheus.targets()] == ["up"]
    with pytest.raises(RuntimeError, match="parse error"):
        prometheus.query("sum(")


def test_alertmanager_api(alertmanager_factory) -> None:
    alertmanager = alertmanager_factory()
    assert alertmanager.alerts() == []
    assert alertmanager.status()["cluster"]["status"] == "disabled"


def test_prometheus_rules_fire_into_alertmanager(
    tmp_path: Path,
    metrics_endpoint,
    prometheus_factory: Callable,
    alertmanager_factory: Callable,
) -> None:
    target, _registry = metrics_endpoint
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: smoke\n"
        "    rules:\n"
        "      - alert: DriftlineSmoke\n"
        "        expr: vector(1)\n"
        "        labels: {severity: info}\n"
    )
    alertmanager = alertmanager_factory()
    prometheus_factory([target], rule_files=[rules], alertmanager_url=alertmanager.url)

    deadline = time.monotonic() + 30
    while not (alerts := alertmanager.alerts()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [a["labels"]["alertname"] for a in alerts] == ["DriftlineSmoke"]


def test_confluent_kafka_client_produces_consumes_and_commits(kafka_broker, kafka_topic) -> None:
    """The optional fast client (source.kafka.client: confluent-kafka) is installed and
    talks to the test broker: librdkafka produces, consumes in a group and commits."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as CTP

    topic = kafka_topic(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "acks": "all",
                         "partitioner": "murmur2_random"})
    for i in range(100):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap,
                         "group.id": f"smoke-ck-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        records: list = []
        deadline = time.monotonic() + 30
        while len(records) < 100 and time.monotonic() < deadline:
            records += [r for r in consumer.consume(100, 0.5) if r.error() is None]
        consumer.commit(asynchronous=False)
        committed = consumer.committed([CTP(topic, p) for p in range(3)], timeout=10)
    finally:
        consumer.close()
    assert sorted(r.value() for r in records) == sorted(f"v{i}".encode() for i in range(100))
    assert {r.partition() for r in records} == {0, 1, 2}
    # murmur2, as kafka-python and Java: the same key lands on the same partition
    from kafka.partitioner.default import murmur2
    assert all(r.partition() == (murmur2(r.key()) & 0x7FFFFFFF) % 3 for r in records)
    assert sum(tp.offset for tp in committed) == 100
