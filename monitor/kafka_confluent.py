"""Kafka source and dead-letter producer on confluent-kafka (librdkafka).

The same contract as :mod:`monitor.kafka_io` (kafka-python): manual commits of explicit
offsets, rebalance callbacks forwarded to the pipeline, pause/resume, seek, lag and a
``connected`` probe; an idempotent dead-letter producer whose ``recover()`` reads back what
it wrote. Fetching and record parsing run in librdkafka's C threads, and records come in
batches (``Consumer.consume``) instead of one Python object per record.

Settings keep kafka-python's names (``security_protocol``, ``sasl_plain_username``,
``session_timeout_ms`` ...): they are translated to librdkafka's; a key with a dot is taken
as a librdkafka name and passed through. Security values are never logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import (
    TopicPartition as CTP,
)

from monitor.deadletter import dead_letter_headers, recovery_plan
from monitor.errors import RecordError, SinkError, SourceError
from monitor.kafka_io import (
    COMMIT_TIMEOUT_MS,
    DEAD_LETTER_MAX_VALUE,
    RECOVER_TIMEOUT_S,
    _note_source,
    _security,
)
from monitor.settings import KafkaSettings
from monitor.sources import Message, RebalanceHook
from monitor.windows import TopicPartition

log = logging.getLogger("driftline.kafka")
#: librdkafka's own reports (a line per failed reconnect during an outage): under "kafka." so
#: that monitor.story.KafkaLogFilter collapses them as it does kafka-python's.
rdlog = logging.getLogger("kafka.librdkafka")

#: kafka-python names whose librdkafka name is not the same words joined by dots.
_RENAMED = {
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
}
#: kafka-python settings with no librdkafka meaning (client-side only); dropped.
_IGNORED = {"api_version", "max_poll_records", "consumer_timeout_ms"}


def translate(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """kafka-python option names -> librdkafka property names (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if "." in key:
            out[key] = value
        elif key == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
        elif key in _IGNORED:
            continue
        elif key == "bootstrap_servers" and not isinstance(value, str):
            out["bootstrap.servers"] = ",".join(value)
        elif callable(value) or (key.startswith("sasl_oauth")):
            raise ValueError(f"{where}.{key}: not supported with kafka.client confluent-kafka "
                             "(use librdkafka's own sasl.oauthbearer.* properties)")
        else:
            out[_RENAMED.get(key, key.replace("_", "."))] = value
    return out


def _config(settings: KafkaSettings, base: Mapping[str, Any],
            user: Mapping[str, Any], where: str) -> dict[str, Any]:
    try:
        return {"bootstrap.servers": settings.bootstrap_servers, "logger": rdlog,
                **translate(_security(settings), "source.kafka.security"),
                **base, **translate(user, f"source.kafka.{where}")}
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


def _error_cb(owner: str, state: _Connectivity) -> Any:
    def on_error(err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            state.up = False
        # librdkafka reconnects by itself; a failed connection is also in its own log line
        level = (logging.ERROR if err.fatal() else
                 logging.DEBUG if code == KafkaError._TRANSPORT else logging.WARNING)
        rdlog.log(level, "%s: %s", owner, err.str())
    return on_error


class _Connectivity:
    """Whether any broker connection is up, from librdkafka's statistics (every second)."""

    def __init__(self) -> None:
        self.up = True

    def on_stats(self, text: str) -> None:
        try:
            brokers = json.loads(text).get("brokers", {}).values()
        except ValueError:
            return
        self.up = any(b.get("state") == "UP" for b in brokers)


class ConfluentSource:
    """A consumer-group member with manual commits; values stay raw bytes."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._revoked: RebalanceHook = lambda tps: None
        self._assigned: RebalanceHook = lambda tps: None
        self._net = _Connectivity()
        self._assignment: set[TopicPartition] = set()
        # seeks asked for inside the assign callback: applied as the assignment's offsets
        self._pending_seeks: dict[TopicPartition, int] | None = None
        self._paused = False
        self._batch = settings.max_poll_records
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="driftline-commit")
        self._commit_pending: Future[Any] | None = None
        config = _config(settings, {
            "group.id": settings.group_id,
            "enable.auto.commit": False,  # we commit only after the sinks flushed
            "enable.auto.offset.store": False,
            "auto.offset.reset": settings.auto_offset_reset,
            # as kafka_io: a restarted daemon waits this long for its dead predecessor
            "session.timeout.ms": 10_000,
            "topic.metadata.refresh.interval.ms": 30_000,
            "reconnect.backoff.max.ms": 5_000,
            # as kafka_io: round-robin spreads one-partition topics over the members
            "partition.assignment.strategy": "roundrobin,range",
            "statistics.interval.ms": 1_000,  # feeds `connected`
            "stats_cb": self._net.on_stats,
            "error_cb": _error_cb("kafka consumer", self._net),
        }, settings.consumer, "consumer")
        topics = [*settings.topics, *([settings.labels_topic] if settings.labels_topic else [])]
        try:
            self._consumer = Consumer(config)
            self._consumer.subscribe(topics, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)
        except (KafkaException, ValueError, TypeError) as exc:
            # librdkafka connects in the background: what fails here is the configuration
            raise SourceError("confluent-kafka rejected the consumer settings "
                              f"(source.kafka.security / source.kafka.consumer): {exc}") from exc

    # -- rebalancing (librdkafka calls these inside consume()) --------------------------
    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        tps = sorted((p.topic, p.partition) for p in partitions)
        try:
            self._revoked(tps)
        finally:
            self._assignment -= set(tps)
            consumer.unassign()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = sorted((p.topic, p.partition) for p in partitions)
        self._assignment |= set(tps)
        self._pending_seeks = {}
        try:
            self._assigned(tps)
            seeks = self._pending_seeks
        finally:
            self._pending_seeks = None
        # committed offset unless the pipeline rewound the partition
        consumer.assign([CTP(t, p, seeks.get((t, p), OFFSET_INVALID)) for t, p in tps])
        if self._paused:
            consumer.pause([CTP(t, p) for t, p in tps])

    # -- the Source protocol -------------------------------------------------------------
    def poll(self, timeout_s: float) -> list[Message]:
        try:
            records = self._consumer.consume(self._batch, timeout_s)
        except KafkaException as exc:
            raise SourceError(f"consume failed: {exc}") from exc
        out: list[Message] = []
        append = out.append
        # librdkafka's stubs type every field Optional; on a record without error they are set
        for r in cast("list[Any]", records):
            err = r.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consumer: %s (%s/%s)", err.str(), r.topic(),
                                r.partition())
                continue
            headers = r.headers()
            ts = r.timestamp()[1]
            append(Message(r.topic(), r.partition(), r.offset(), r.value(), r.key(),
                           tuple((k, v or b"") for k, v in headers) if headers else (),
                           ts / 1000 if ts > 0 else None))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits synchronously, but waits at most COMMIT_TIMEOUT_MS.

        librdkafka's synchronous commit has no timeout: with the broker gone it waits for
        the coordinator's return, and the loop would sit in it through the whole outage
        without serving the statistics that report it (``connected``, ``/readyz``). So
        the commit runs on a helper thread (librdkafka is thread-safe); past the timeout it
        is reported failed, as kafka-python's bounded commit is, and no other commit starts
        until it has ended, so commits still reach the broker in order.
        """
        pending = self._commit_pending
        if pending is not None and not pending.done():
            raise SourceError("offset commit failed: the previous commit is still waiting "
                              "for the broker")
        job = self._committer.submit(
            self._consumer.commit, offsets=[CTP(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False)
        self._commit_pending = job
        try:
            job.result(timeout=COMMIT_TIMEOUT_MS / 1000)
        except FutureTimeout:
            raise SourceError(f"offset commit failed: no answer from the broker within "
                              f"{COMMIT_TIMEOUT_MS / 1000:g} s") from None
        except KafkaException as exc:
            raise SourceError(f"offset commit failed: {exc}") from exc

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def connected(self) -> bool:
        return self._net.up

    def lag(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        assigned = [CTP(t, p) for t, p in self._assignment]
        try:
            positions = self._consumer.position(assigned)  # local state, no request
        except KafkaException:
            return out
        for tp in positions:
            if tp.offset < 0:
                continue  # nothing fetched yet
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def assignment(self) -> set[TopicPartition]:
        """The partitions the group gave this consumer (local state, no request)."""
        return set(self._assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._pending_seeks is not None and tp in self._assignment:
            self._pending_seeks[tp] = offset  # inside the assign callback
            return
        try:
            self._consumer.seek(CTP(tp[0], tp[1], offset))
        except KafkaException:
            # not fetching yet (just assigned): assign again, this partition at `offset`,
            # the others where they are
            current = self._consumer.position([CTP(t, p) for t, p in self._assignment])
            self._consumer.assign([CTP(c.topic, c.partition, offset if
                                       (c.topic, c.partition) == tp else c.offset)
                                   for c in current])

    def pause(self) -> None:
        self._paused = True
        self._consumer.pause([CTP(t, p) for t, p in self._assignment])

    def resume(self) -> None:
        self._paused = False
        self._consumer.resume([CTP(t, p) for t, p in self._assignment])

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        self._revoked, self._assigned = revoked, assigned

    def close(self) -> None:
        pending = self._commit_pending
        if pending is not None:
            try:  # a commit still waiting for the broker ends before the consumer does
                pending.result(timeout=2 * COMMIT_TIMEOUT_MS / 1000)
            except (FutureTimeout, KafkaException):
                pass
        self._committer.shutdown(wait=False)
        self._consumer.close()


class ConfluentDeadLetter:
    """Produces rejected records, with reason and coordinates in headers, to a topic.

    Idempotent: librdkafka's retries after a lost acknowledgement write nothing twice."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.topic = settings.dead_letter_topic
        self._settings = settings
        self._net = _Connectivity()
        config = _config(settings, {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            # Java's (and kafka-python's) partitioner: the same key, the same partition
            "partitioner": "murmur2_random",
            "error_cb": _error_cb("kafka dead-letter producer", self._net),
        }, settings.producer, "producer")
        try:
            self._producer = Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise SinkError("confluent-kafka rejected the dead-letter producer settings "
                            f"(source.kafka.security / source.kafka.producer): {exc}") from exc
        # one slot per message sent since the last flush: None (pending), an error, or the
        # (partition, offset) it was written at
        self._sent: list[tuple[Message, RecordError, list[Any]]] = []
        self._acked: dict[int, int] = {}  # dead-letter partition -> highest acked offset

    def send(self, msg: Message, error: RecordError) -> None:
        value = msg.value or b""
        headers: list[Any] = dead_letter_headers(msg, error)
        if len(value) > DEAD_LETTER_MAX_VALUE:
            headers.append(("driftline.truncated_from_bytes", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_VALUE]
        slot: list[Any] = [None]

        def delivered(err: KafkaError | None, m: Any) -> None:
            slot[0] = err if err is not None else (m.partition(), m.offset())

        while True:
            try:
                self._producer.produce(self.topic, value=value, key=msg.key, headers=headers,
                                       on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain it
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise SinkError(f"dead-letter send to '{self.topic}' failed: {exc}") from exc
        self._sent.append((msg, error, slot))

    def flush(self) -> None:
        if not self._sent:
            return
        left = self._producer.flush(30)
        if left:  # still queued; librdkafka keeps retrying them, the next flush waits again
            raise SinkError(f"dead-letter flush to '{self.topic}' timed out "
                            f"({left} messages not acknowledged)")
        failed = []
        for msg, error, slot in self._sent:
            result = slot[0]
            if isinstance(result, tuple):
                part, offset = result
                self._acked[part] = max(self._acked.get(part, -1), offset)
            else:
                failed.append((msg, error, result))
        self._sent.clear()
        for msg, error, _ in failed:  # send again; the pipeline retries the flush
            self.send(msg, error)
        if failed:
            raise SinkError(f"{len(failed)} dead-letter sends to '{self.topic}' failed: "
                            f"{failed[0][2]}")

    def positions(self) -> dict[int, int]:
        return dict(self._acked)

    def recover(self, covered: Mapping[int, int]) -> tuple[dict[TopicPartition, int],
                                                           dict[int, int]]:
        marks: dict[TopicPartition, int] = {}
        baselines: dict[int, int] = {}
        try:
            consumer = Consumer(_config(self._settings, {
                # assign() only: no group is joined and nothing is committed
                "group.id": f"{self._settings.group_id}-dead-letter-recovery",
                "enable.auto.commit": False,
            }, self._settings.consumer, "consumer"))
        except KafkaException as exc:
            raise SinkError(f"cannot read dead-letter topic '{self.topic}': {exc}") from exc
        try:
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            missing = meta is None or (meta.error is not None and meta.error.code()
                                       == KafkaError.UNKNOWN_TOPIC_OR_PART)
            if not missing and meta.error is not None:
                raise SinkError(f"cannot read dead-letter topic '{self.topic}': {meta.error}")
            ends: dict[int, int] = {}
            for p in [] if missing else sorted(meta.partitions):
                _low, ends[p] = consumer.get_watermark_offsets(CTP(self.topic, p), timeout=10)
            start, baselines = recovery_plan(ends, covered)
            if not start:
                return marks, baselines
            todo = {p: ends[p] for p in start}  # partition -> end offset to read up to
            consumer.assign([CTP(self.topic, p, o) for p, o in start.items()])
            deadline = time.monotonic() + RECOVER_TIMEOUT_S
            while todo:
                for r in cast("list[Any]", consumer.consume(1000, 0.5)):
                    if r.error() is None:
                        _note_source(marks, r.headers() or ())
                for tp in consumer.position([CTP(self.topic, p) for p in todo]):
                    if tp.offset >= todo[tp.partition]:
                        del todo[tp.partition]
                if todo and time.monotonic() > deadline:
                    raise SinkError(f"dead-letter topic '{self.topic}': not read to its end "
                                    f"within {RECOVER_TIMEOUT_S:.0f}s while recovering")
        except KafkaException as exc:
            raise SinkError(f"cannot read dead-letter topic '{self.topic}': {exc}") from exc
        finally:
            consumer.close()
        return marks, baselines

    def close(self) -> None:
        self._producer.flush(10)
