"""Kafka source, dead-letter producer and replay producer (kafka-python 3.x).

Security settings (``security_protocol``, ``sasl_*``, ``ssl_*``) are passed through to
kafka-python unchanged and never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from monitor.deadletter import dead_letter_headers
from monitor.errors import RecordError, SinkError, SourceError
from monitor.settings import KafkaSettings
from monitor.sources import Message
from monitor.windows import TopicPartition

log = logging.getLogger("driftline.kafka")

#: Dead-lettered values larger than this are truncated (a header says so): the broker's
#: default message limit is 1 MiB, and a poison 10 MB payload must still be recorded.
DEAD_LETTER_MAX_VALUE = 512 * 1024


def _client_config(settings: KafkaSettings, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"bootstrap_servers": settings.bootstrap_servers.split(","),
            **dict(settings.security), **dict(extra)}


class KafkaSource:
    """A consumer-group member with manual commits; values stay raw bytes."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        config = _client_config(settings, {
            "group_id": settings.group_id,
            "enable_auto_commit": False,  # we commit only after the sinks flushed
            "auto_offset_reset": settings.auto_offset_reset,
            "max_poll_records": settings.max_poll_records,
            **dict(settings.consumer),
        })
        try:
            self._consumer = KafkaConsumer(**config)
            self._consumer.subscribe(topics=list(settings.topics))
        except KafkaError as exc:
            raise SourceError(
                f"cannot connect to Kafka at {settings.bootstrap_servers}: {exc}") from exc

    def poll(self, timeout_s: float) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                out.append(Message(tp.topic, tp.partition, r.offset, r.value, r.key,
                                   tuple((k, v or b"") for k, v in (r.headers or ()))))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._consumer.commit({KafkaTP(t, p): OffsetAndMetadata(o, "", -1)
                               for (t, p), o in offsets.items()})

    @property
    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaDeadLetter:
    """Produces rejected records, with reason and coordinates in headers, to a topic."""

    def __init__(self, settings: KafkaSettings, producer: KafkaProducer | None = None) -> None:
        self.topic = settings.dead_letter_topic
        self._producer = producer or KafkaProducer(**_client_config(settings, {
            "acks": "all", "linger_ms": 5, **dict(settings.producer)}))
        self._sent: list[tuple[Message, RecordError, Any]] = []

    def send(self, msg: Message, error: RecordError) -> None:
        value = msg.value or b""
        headers = dead_letter_headers(msg, error)
        if len(value) > DEAD_LETTER_MAX_VALUE:
            headers.append(("driftline.truncated_from_bytes", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_VALUE]
        future = self._producer.send(self.topic, value=value, key=msg.key, headers=headers)
        self._sent.append((msg, error, future))

    def flush(self) -> None:
        if not self._sent:
            return
        try:
            self._producer.flush(timeout=30)
        except KafkaError as exc:
            raise SinkError(f"dead-letter flush to '{self.topic}' timed out: {exc}") from exc
        failed = []
        for msg, error, future in self._sent:
            try:
                future.get(timeout=0)
            except KafkaError:
                failed.append((msg, error))
        self._sent.clear()
        for msg, error in failed:  # send again; the pipeline retries the flush
            self.send(msg, error)
        if failed:
            raise SinkError(f"{len(failed)} dead-letter sends to '{self.topic}' failed")

    def close(self) -> None:
        self._producer.close(timeout=10)


def produce(bootstrap_servers: str, topic: str, values: Iterable[tuple[bytes | None, bytes]],
            *, extra: Mapping[str, Any] | None = None) -> int:
    """Send (key, value) pairs to ``topic`` and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), acks="all",
                             linger_ms=20, batch_size=256 * 1024, **dict(extra or {}))
    n = 0
    try:
        futures = []
        for key, value in values:
            futures.append(producer.send(topic, key=key, value=value))
            n += 1
            if len(futures) >= 10_000:
                producer.flush()
                for f in futures:
                    f.get(timeout=30)
                futures.clear()
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=10)
    return n
