"""Kafka source, dead-letter producer and replay producer (kafka-python 3.x), and the
factories that pick kafka-python or confluent-kafka (:mod:`monitor.kafka_confluent`).

Security settings (``security_protocol``, ``sasl_*``, ``ssl_*``) are passed through to
kafka-python unchanged and never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTP

from monitor.deadletter import (
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TOPIC,
    RecoverableDeadLetter,
    dead_letter_headers,
    recovery_plan,
)
from monitor.errors import RecordError, SinkError, SourceError
from monitor.settings import KafkaSettings
from monitor.sources import Message, RebalanceHook, Source
from monitor.windows import TopicPartition

log = logging.getLogger("driftline.kafka")

#: Dead-lettered values larger than this are truncated (a header says so): the broker's
#: default message limit is 1 MiB, and a poison 10 MB payload must still be recorded.
DEAD_LETTER_MAX_VALUE = 512 * 1024
COMMIT_TIMEOUT_MS = 5_000
#: How long a restart may take to read back the dead letters written since the last store.
RECOVER_TIMEOUT_S = 60.0


def _security(settings: KafkaSettings) -> dict[str, Any]:
    """The security settings, with ``*_file`` keys replaced by the files' contents."""
    out: dict[str, Any] = {}
    for key, value in settings.security.items():
        if key.endswith("_file"):
            out[key[:-5]] = Path(value).read_text(encoding="utf-8").rstrip("\r\n")
        else:
            out[key] = value
    return out


def _client_config(settings: KafkaSettings, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"bootstrap_servers": settings.bootstrap_servers.split(","),
            **_security(settings), **dict(extra)}


class _Listener(ConsumerRebalanceListener):
    """Forwards kafka-python's rebalance callbacks to the pipeline's hooks."""

    def __init__(self) -> None:
        self.revoked: RebalanceHook = lambda tps: None
        self.assigned: RebalanceHook = lambda tps: None

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class KafkaSource:
    """A consumer-group member with manual commits; values stay raw bytes."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        config = _client_config(settings, {
            "group_id": settings.group_id,
            "enable_auto_commit": False,  # we commit only after the sinks flushed
            "auto_offset_reset": settings.auto_offset_reset,
            "max_poll_records": settings.max_poll_records,
            # A restarted daemon waits this long for its dead predecessor to leave the
            # group (kafka-python's default: 45 s); the broker's minimum is 6 s.
            "session_timeout_ms": 10_000,
            # Fresh metadata within 30 s rather than kafka-python's 5 min (see below).
            "metadata_max_age_ms": 30_000,
            # Reconnect within seconds of a broker's return (default back-off: up to 30 s).
            "reconnect_backoff_max_ms": 5_000,
            # Round-robin first: the range assignor gives partition 0 of every topic to
            # the same member, so models in one-partition topics would all land on one
            # daemon or worker. Range stays listed for members of older versions (the
            # group uses the first strategy every member offers).
            "partition_assignment_strategy": (RoundRobinPartitionAssignor,
                                              RangePartitionAssignor),
            **dict(settings.consumer),
        })
        self._listener = _Listener()
        self._commit_ok = True
        try:
            self._consumer = KafkaConsumer(**config)
            topics = [*settings.topics, *([settings.labels_topic] if settings.labels_topic else [])]
            # Load the topics' metadata before joining: a join whose metadata lacks them
            # is assigned nothing, and kafka-python only notices at the next refresh.
            for topic in topics:
                self._consumer.partitions_for_topic(topic)
            self._consumer.subscribe(topics=topics, listener=self._listener)
        except KafkaError as exc:
            raise SourceError(
                f"cannot connect to Kafka at {settings.bootstrap_servers}: {exc}") from exc

    def poll(self, timeout_s: float) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        out: list[Message] = []
        for tp, records in batches.items():
            topic, partition = tp.topic, tp.partition
            for r in records:  # once per record: no generator unless there are headers
                headers = r.headers
                ts = r.timestamp
                out.append(Message(topic, partition, r.offset, r.value, r.key,
                                   tuple((k, v or b"") for k, v in headers) if headers else (),
                                   ts / 1000 if ts and ts > 0 else None))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            # Bounded: during an outage the loop must go on observing (and reporting) it
            # rather than sit in one commit for kafka-python's 30 s request timeout.
            self._consumer.commit({KafkaTP(t, p): OffsetAndMetadata(o, "", -1)
                                   for (t, p), o in offsets.items()},
                                  timeout_ms=COMMIT_TIMEOUT_MS)
            self._commit_ok = True
        except KafkaError as exc:
            self._commit_ok = False
            raise SourceError(f"offset commit failed: {exc.__class__.__name__}: {exc}") from exc

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def connected(self) -> bool:
        # kafka-python has no public "is the cluster reachable" check: poll() just returns
        # nothing during an outage. Any live broker connection counts (after bootstrap the
        # client talks to the coordinator and leaders, not the bootstrap address).
        try:
            conns = self._consumer._client._manager._conns
            return any(bool(getattr(c, "connected", False)) for c in list(conns.values()))
        except AttributeError:  # internals moved in another kafka-python version
            return self._commit_ok

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)  # from the last fetch: no request is made
            if high is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def assignment(self) -> set[TopicPartition]:
        """The partitions the group gave this consumer (local state, no request)."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTP(*tp), offset)

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        self._listener.revoked = revoked
        self._listener.assigned = assigned

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=5000)


class KafkaDeadLetter:
    """Produces rejected records, with reason and coordinates in headers, to a topic."""

    def __init__(self, settings: KafkaSettings, producer: KafkaProducer | None = None) -> None:
        self.topic = settings.dead_letter_topic
        self._producer = producer or KafkaProducer(**_client_config(settings, {
            "acks": "all", "linger_ms": 5, **dict(settings.producer)}))
        self._sent: list[tuple[Message, RecordError, Any]] = []
        self._settings = settings
        self._acked: dict[int, int] = {}  # dead-letter partition -> highest acked offset

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
                meta = future.get(timeout=0)
            except KafkaError:
                failed.append((msg, error))
                continue
            self._acked[meta.partition] = max(self._acked.get(meta.partition, -1), meta.offset)
        self._sent.clear()
        for msg, error in failed:  # send again; the pipeline retries the flush
            self.send(msg, error)
        if failed:
            raise SinkError(f"{len(failed)} dead-letter sends to '{self.topic}' failed")

    def positions(self) -> dict[int, int]:
        return dict(self._acked)

    def recover(self, covered: Mapping[int, int]) -> tuple[dict[TopicPartition, int],
                                                           dict[int, int]]:
        marks: dict[TopicPartition, int] = {}
        baselines: dict[int, int] = {}
        try:
            consumer = KafkaConsumer(**_client_config(self._settings, {
                "enable_auto_commit": False, **dict(self._settings.consumer),
                "group_id": None}))
        except KafkaError as exc:
            raise SinkError(f"cannot read dead-letter topic '{self.topic}': {exc}") from exc
        try:
            parts = consumer.partitions_for_topic(self.topic) or set()
            tps = [KafkaTP(self.topic, p) for p in sorted(parts)]
            ends = {tp.partition: end for tp, end in consumer.end_offsets(tps).items()} \
                if tps else {}
            start, baselines = recovery_plan(ends, covered)
            if not start:
                return marks, baselines
            todo = {KafkaTP(self.topic, p): ends[p] for p in start}  # read up to the end
            consumer.assign(list(todo))
            for tp in todo:
                consumer.seek(tp, start[tp.partition])
            deadline = time.monotonic() + RECOVER_TIMEOUT_S
            while todo:
                for records in consumer.poll(timeout_ms=500).values():
                    for r in records:
                        _note_source(marks, r.headers or ())
                for tp in [tp for tp, end in todo.items() if consumer.position(tp) >= end]:
                    del todo[tp]
                if todo and time.monotonic() > deadline:
                    raise SinkError(f"dead-letter topic '{self.topic}': not read to its end "
                                    f"within {RECOVER_TIMEOUT_S:.0f}s while recovering")
        except KafkaError as exc:
            raise SinkError(f"cannot read dead-letter topic '{self.topic}': {exc}") from exc
        finally:
            consumer.close()
        return marks, baselines

    def close(self) -> None:
        self._producer.close(timeout=10)


def _note_source(marks: dict[TopicPartition, int],
                 headers: Iterable[tuple[str, bytes | None]]) -> None:
    """Raise the mark of the source partition a dead letter's headers name to its offset."""
    source = _source_of(headers)
    if source is not None:
        key, offset = source
        marks[key] = max(marks.get(key, -1), offset)


def _source_of(headers: Iterable[tuple[str, bytes | None]]
               ) -> tuple[TopicPartition, int] | None:
    """The source coordinates a dead letter's headers name (None if they are missing)."""
    h = {k: v or b"" for k, v in headers}
    try:
        topic = h[HEADER_TOPIC].decode()
        return (topic, int(h[HEADER_PARTITION])), int(h[HEADER_OFFSET])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def make_source(settings: KafkaSettings) -> Source:
    """The consumer of the client ``settings.client`` names."""
    if settings.client == "confluent-kafka":
        from monitor.kafka_confluent import ConfluentSource

        return ConfluentSource(settings)
    return KafkaSource(settings)


def make_dead_letter(settings: KafkaSettings) -> RecoverableDeadLetter:
    """The dead-letter producer of the client ``settings.client`` names."""
    if settings.client == "confluent-kafka":
        from monitor.kafka_confluent import ConfluentDeadLetter

        return ConfluentDeadLetter(settings)
    return KafkaDeadLetter(settings)


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
