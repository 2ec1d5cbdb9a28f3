"""Issue 3 against real Kafka and PostgreSQL: poison input, and scale-out to a consumer group.

* Poison: over 10,000 malformed or hostile records (random bytes, truncated JSON, wrong
  types, NaN/Infinity, overflowing numbers, unknown models, 100,000-level nesting, UTF-16,
  Latin-1, empty and null values, top-level arrays and strings, 10 MB payloads, late records,
  and documents harvested from hypothesis strategies) are interleaved with the valid records
  of three models. The real daemon must dead-letter every one of them exactly once, with its
  reason and original coordinates, keep running, exit 0 on SIGTERM, and store exactly what a
  second daemon stores from a topic holding only the valid records.
* Scale-out: three daemons in one group share a 3-partition topic and one database; one is
  stopped with SIGTERM mid-stream, the others take its partitions over, and the stored results
  equal a single daemon's. The time to rebalance is measured and printed.

Run with `-s` to see the figures.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from services import register_cleanup, unregister_cleanup
from services.ports import free_port

from integration.daemon_proc import committed_offsets, end_offsets
from monitor.errors import RecordError
from monitor.kafka_io import DEAD_LETTER_MAX_VALUE
from monitor.metrics import REJECT_REASONS
from monitor.schema import Decoder, ModelSchema
from monitor.storage import SqlStore
from monitor.synthetic import SyntheticStream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
REFERENCE_ROWS = 3_000
MAX_MESSAGE = 16 << 20
#: Stored fields compared between runs (not evaluated_at; offsets only on the same topic).
FIELDS = ("statistic", "p_value", "drifted", "insufficient_data", "n_current", "n_records",
          "window_start", "window_end", "features")


# --- small helpers ---------------------------------------------------------------------------


def partition_of(key: str) -> int:
    """The partition kafka-python's default partitioner picks for ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def names_per_partition(prefix: str, per_partition: int) -> list[str]:
    """``per_partition`` model names hashing to each partition, in partition order."""
    by_part: dict[int, list[str]] = defaultdict(list)
    for i in itertools.count():
        name = f"{prefix}{i}"
        if len(by_part[partition_of(name)]) < per_partition:
            by_part[partition_of(name)].append(name)
        if all(len(by_part[p]) == per_partition for p in range(PARTITIONS)):
            return [n for p in range(PARTITIONS) for n in by_part[p]]
    raise AssertionError("unreachable")


def create_topic(admin: KafkaAdminClient, name: str, partitions: int,
                 configs: Mapping[str, str] | None = None) -> None:
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(configs or {}))])
    except TopicAlreadyExistsError:
        pass
    deadline = time.monotonic() + 30
    while True:
        try:
            (meta,) = admin.describe_topics([name])
            parts = meta.get("partitions") or []
            if meta.get("error_code") == 0 and len(parts) == partitions and all(
                    p.get("error_code") == 0 and p.get("leader_id", -1) >= 0 for p in parts):
                return
        except (KafkaError, ValueError):
            pass
        assert time.monotonic() < deadline, f"topic {name}: no leaders after 30s"
        time.sleep(0.1)


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every message on ``topic`` (read after its producer finished)."""
    ends = end_offsets(bootstrap, topic, partitions)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             check_crcs=False,  # pure-Python CRC32C: seconds per MB
                             fetch_max_bytes=MAX_MESSAGE * 2,
                             max_partition_fetch_bytes=MAX_MESSAGE)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
    finally:
        consumer.close()
    return out


class Daemon:
    """One `driftline run` subprocess with its own settings file, log and metrics port."""

    def __init__(self, workdir: Path, name: str, *, bootstrap: str, topic: str, group: str,
                 dead_letter_topic: str, db_url: str, models: Sequence[dict[str, Any]],
                 consumer: Mapping[str, Any] | None = None,
                 client: str = "kafka-python") -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.group, self.db_url = group, db_url
        self.log_path = self.dir / "daemon.log"
        self.config = self.dir / "driftline.yml"
        self.config.write_text(yaml.safe_dump({
            "source": {"kafka": {"bootstrap_servers": bootstrap, "topics": [topic],
                                 "group_id": group, "dead_letter_topic": dead_letter_topic,
                                 "poll_timeout_ms": 100, "consumer": dict(consumer or {}),
                                 "client": client}},
            "metrics": {"address": "127.0.0.1", "port": self.port},
            "storage": {"url": db_url},
            "models": list(models),
        }, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.sigterm_at: float | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=self.dir,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        register_cleanup(self, self.kill)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigterm(self) -> None:
        assert self.proc is not None
        self.sigterm_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} ignored SIGTERM for {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        unregister_cleanup(self)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ({self.log_path}):\n" + \
            "\n".join(self.log_text().splitlines()[-lines:])

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        return {(s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` matching ``labels`` (0 when not served)."""
        got = self.metrics() or {}
        return sum(v for (n, lab), v in got.items()
                   if n == name and all((k, v2) in lab for k, v2 in labels.items()))

    def assigned(self) -> list[int] | None:
        """Partitions of the last 'partitions assigned' log line (None before the first)."""
        found = re.findall(r"partitions assigned: (\[.*\])", self.log_text())
        return None if not found else sorted(p for _t, p in ast.literal_eval(found[-1]))


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               daemons: Sequence[Daemon] = (), interval: float = 0.25,
               detail: Callable[[], str] = lambda: "") -> float:
    """Poll ``check``; fail with the daemons' log tails on timeout or if one of them exits."""
    t0 = time.monotonic()
    while not check():
        dead = [d for d in daemons if not d.alive]
        if dead or time.monotonic() - t0 > timeout:
            why = f"{', '.join(d.name for d in dead)} exited" if dead else f"{timeout:.0f}s passed"
            pytest.fail(f"{why} while waiting for {what}: {detail()}\n" +
                        "\n".join(d.log_tail() for d in daemons), pytrace=False)
        time.sleep(interval)
    return time.monotonic() - t0


def stored(db_url: str) -> list[dict[str, Any]]:
    store = SqlStore(db_url)
    try:
        store.create_schema()
        return store.results()
    finally:
        store.close()


def comparable(rows: Sequence[Mapping[str, Any]], *, offsets: bool
               ) -> dict[tuple[str, int, str], dict[str, Any]]:
    keys = Counter((r["model"], r["window_index"], r["detector"]) for r in rows)
    assert max(keys.values(), default=1) == 1, "a window stored twice"
    fields = (*FIELDS, "offsets") if offsets else FIELDS
    return {(r["model"], r["window_index"], r["detector"]): {f: r[f] for f in fields}
            for r in rows}


def assert_same(got: Mapping[Any, Mapping[str, Any]], want: Mapping[Any, Mapping[str, Any]],
                what: str) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    differ = [(k, f) for k in sorted(set(got) & set(want)) for f in want[k]
              if got[k][f] != want[k][f]]
    assert not (missing or extra or differ), (
        f"{what}: {len(missing)} windows missing {missing[:5]}, {len(extra)} unexpected "
        f"{extra[:5]}, {len(differ)} differing (key, field) {differ[:5]}")


@pytest.fixture
def topics(kafka_broker) -> Iterator[Callable[..., str]]:  # type: ignore[no-untyped-def]
    made: list[str] = []
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=30_000)

    def make(prefix: str, partitions: int = PARTITIONS,
             configs: Mapping[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        create_topic(admin, name, partitions, configs)
        made.append(name)
        return name

    try:
        yield make
    finally:
        admin.close()
        if kafka_broker.running:
            for name in made:
                kafka_broker.delete_topic(name)


# --- 1. poison input -----------------------------------------------------------------------

POISON_WINDOW = 400
POISON_RECORDS = 2_000  # per model
TIME_WINDOW_S = 4.0  # the synthetic stream has 100 records/s: 400 records per time window
POISON_SEED = 1234
HYPOTHESIS_VALUES = 600


def poison_models() -> list[tuple[SyntheticStream, dict[str, Any]]]:
    """(stream, extra settings): two count-windowed models and one time-windowed one, one
    per partition."""
    a, b, t = names_per_partition("poison-", 1)
    return [(SyntheticStream(model=a, seed=11), {}),
            (SyntheticStream(model=b, seed=12, n_numeric=3, n_categorical=3), {}),
            (SyntheticStream(model=t, seed=13),
             {"window": {"kind": "time", "seconds": TIME_WINDOW_S}})]


def harvest(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` examples of ``strategy`` (deterministic), collected by a plain @given call."""
    out: list[Any] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x: Any) -> None:
        out.append(x)

    collect()
    return out


_scalars = (st.none() | st.booleans() | st.integers()
            | st.integers(min_value=10 ** 300, max_value=10 ** 400)  # overflow a float
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16)
            | st.sampled_from(["", "2025-11-23T00:00:00Z", "not a time", "\ud800", "NaN"]))
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=16)


def _dump(doc: Any, encoding: str = "utf-8") -> bytes:
    return json.dumps(doc, allow_nan=True, ensure_ascii=False,
                      separators=(",", ":")).encode(encoding, "replace")


def poison_corpus(streams: Sequence[SyntheticStream]) -> list[tuple[str, bytes | None]]:
    """(category, value) pairs: every value is rejected by decoding."""
    rng = random.Random(POISON_SEED)
    valid = [r for s in streams for r in s.records(200)]  # templates, never produced as is

    def template() -> dict[str, Any]:
        return json.loads(json.dumps(rng.choice(valid)))

    out: list[tuple[str, bytes | None]] = []
    add = out.append
    for _ in range(2_000):
        add(("random_bytes", rng.randbytes(rng.randint(1, 400))))
    for _ in range(2_000):
        raw = _dump(template())
        add(("truncated_json", raw[:rng.randint(1, len(raw) - 1)]))
    wrong = [("features", "income", "52.1"), ("features", "income", True),
             ("features", "income", [1.0]), ("features", "income", None),
             ("features", "country", 1.5), ("features", "country", {"a": 1}),
             ("top", "timestamp", [1]), ("top", "timestamp", "yesterday"),
             ("top", "timestamp", "2025-11-23T00:00:00"), ("top", "model", 5.5),
             ("top", "model", None), ("top", "features", [1, 2]), ("top", "prediction", {}),
             ("top", "prediction", None), ("top", "request_id", ""),
             ("top", "request_id", 1.5), ("top", "probabilities", ["x"]),
             ("top", "probabilities", []), ("top", "input", {"image": 1}),
             ("top", "embedding", "0.1,0.2")]
    for i in range(1_000):
        doc = template()
        where, key, value = wrong[i % len(wrong)]
        (doc["features"] if where == "features" else doc)[key] = value
        add(("wrong_types", _dump(doc)))
    literals = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]
    for i in range(800):
        doc = template()
        lit = literals[i % len(literals)]
        slot = i % 4
        if slot == 0:
            doc["features"]["income"] = "@@"
        elif slot == 1:
            doc["timestamp"] = "@@"
        elif slot == 2:
            doc["probabilities"] = [0.5, "@@"]
        else:
            doc["embedding"] = ["@@"]
        add(("non_finite", _dump(doc).replace(b'"@@"', lit.encode())))
    for i in range(50):  # valid JSON integers too large for a float
        doc = template()
        doc["features"]["income"] = "@@"
        add(("overflowing_int", _dump(doc).replace(b'"@@"', b"9" * (310 + i))))
    for i in range(800):
        doc = template()
        doc["model"] = rng.choice([f"ghost-{i}", "x" * 5_000, "Crédit-ü", "", " ",
                                   "poison-0 ", "POISON-0"]) if i % 2 else f"ghost-{i}"
        add(("unknown_model", _dump(doc)))
    for depth in (100_000, 100_000, 100_000, 50_000, 5_000, 1_000):
        add(("deep_nesting", b"[" * depth + b"]" * depth))
        add(("deep_nesting", b'{"a":' * depth + b"0" + b"}" * depth))
    for depth in (17, 20, 40, 500):
        doc = template()
        nested: Any = 0
        for _ in range(depth):
            nested = {"x": nested}
        doc["extra"] = nested
        add(("deep_nesting", _dump(doc)))
    encodings = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252"]
    for i in range(800):
        doc = template()
        doc["request_id"] = f"café-ñ-{i}"  # non-ASCII: Latin-1 bytes are not UTF-8
        add(("wrong_encoding", _dump(doc, encodings[i % len(encodings)])))
    for _ in range(100):
        add(("empty", b""))
    for _ in range(50):
        add(("null_value", None))
    tops = [b"[]", b"[1,2,3]", b'"a string"', b"42", b"null", b"true", b"  ", b"{}",
            b'[{"model":"poison-0"}]', b'"{\\"model\\": \\"poison-0\\"}"']
    for i in range(400):
        add(("not_an_object", tops[i % len(tops)]))
    big_doc = template()
    big_doc["extra"] = "x" * (10 << 20)
    # One 10 MB payload goes as it is (kafka-python checksums it in pure Python, slowly),
    # two compressible ones in gzip batches: the daemon gets 10 MB values either way.
    add(("10MB", rng.randbytes(10 << 20)))
    add(("10MB_gzip", _dump(big_doc)))
    add(("10MB_gzip", b"[" * (10 << 20)))
    add(("oversize", _dump({**template(), "pad": "y" * (1 << 20)})))
    # hypothesis supplies hostile JSON values (slowly: a few ms each on a busy machine), used
    # as whole documents and, many times over, as the values of a valid record's fields.
    values = harvest(_json, HYPOTHESIS_VALUES)
    for v in values:
        add(("hypothesis_json", _dump(v, rng.choice(["utf-8", "utf-8", "utf-16"]))))
    fields = [*valid[0], "input", "embedding"]
    for _ in range(3 * len(values)):
        doc = template()
        for name in rng.sample(fields, rng.randint(1, 3)):
            how = rng.random()
            if how < 0.2:
                doc.pop(name, None)
            elif how < 0.6 and isinstance(doc.get("features"), dict) and doc["features"]:
                doc["features"][rng.choice(list(doc["features"]))] = rng.choice(values)
            else:
                doc[name] = rng.choice(values)
        add(("hypothesis_record", _dump(doc)))
    return out


def produce_plan(bootstrap: str, topic: str, plan: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send (category, key, value, partition, reason) in order; returns them with their
    RecordMetadata. Categories ending in "_gzip" go in gzip batches (a second producer,
    flushed around them, so the order on every partition is the plan's)."""
    plain = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                          batch_size=512 * 1024, max_request_size=MAX_MESSAGE)
    gzip = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip",
                         max_request_size=MAX_MESSAGE)
    try:
        futures = []
        for category, key, value, part, reason in plan:
            if category.endswith("_gzip"):
                plain.flush()
                producer = gzip
            else:
                producer = plain
            fut = producer.send(topic, key=key, value=value, partition=part)
            if producer is gzip or category == "10MB":
                producer.flush()
            futures.append((category, key, value, reason, fut))
        plain.flush()
        return [(c, k, v, r, f.get(timeout=60)) for c, k, v, r, f in futures]
    finally:
        plain.close(timeout=10)
        gzip.close(timeout=10)


def test_poison_records_are_dead_lettered_exactly_once_and_change_nothing(
        kafka_broker, topics, fresh_db, kafka_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    t_start = time.monotonic()
    models = poison_models()
    streams = [s for s, _ in models]
    model_docs = []
    for s, extra in models:
        ref = s.write_reference_csv(tmp_path / f"ref-{s.model}.csv", REFERENCE_ROWS)
        model_docs.append({**s.settings_doc(ref, POISON_WINDOW), **extra})
    decoder = Decoder({s.model: ModelSchema(s.features())  # type: ignore[arg-type]
                       for s in streams}, 1 << 20)

    def reject_reason(value: bytes | None) -> str | None:
        try:
            decoder.decode(value)
        except RecordError as err:
            return err.reason
        except OverflowError:  # README: an overflowing number is `non_finite`
            return "non_finite"
        except Exception as exc:  # a decoder bug: fails the reason check
            return f"<{type(exc).__name__}>"
        return None

    corpus = [(c, v, r) for c, v in poison_corpus(streams)
              if (r := reject_reason(v)) is not None]
    valid_by_model = {s.model: list(s.encoded(POISON_RECORDS)) for s in streams}
    # Late records: valid in themselves, but for the time-windowed model's first window,
    # placed after its later records closed that window.
    t_model = streams[2]
    late = [(t_model.model, v) for v in itertools.islice(t_model.encoded(50), 50)]
    t_gen = time.monotonic() - t_start

    poisoned = topics("poison", configs={"max.message.bytes": str(MAX_MESSAGE)})
    clean = topics("clean")
    dlq, clean_dlq = topics("poison-dlq", 1), topics("clean-dlq", 1)

    # Interleave: the models' records round-robin, each poison record at a random place
    # among them, keyed by a model (so on that model's partition), unkeyed, keyed at random,
    # or sent to an explicit partition.
    rng = random.Random(POISON_SEED + 1)
    n_valid = sum(len(v) for v in valid_by_model.values())
    n_poison = len(corpus) + len(late)
    Planned = tuple[str, bytes | None, bytes | None, int | None, str | None]
    base: list[Planned] = []
    late_at = 1_000  # the time model's record index after which late records are placed
    for i in range(POISON_RECORDS):
        for s in streams:
            base.append(("valid", s.model.encode(), valid_by_model[s.model][i], None, None))
            if s is t_model and i >= late_at and late:
                model, value = late.pop()
                base.append(("late", model.encode(), value, None, "late"))
    assert not late
    insert_at: dict[int, list[tuple[str, bytes | None, str]]] = defaultdict(list)
    for item in corpus:
        insert_at[rng.randrange(len(base) + 1)].append(item)
    plan: list[Planned] = []
    for j in range(len(base) + 1):
        for category, poison, reason in insert_at.get(j, ()):
            how = rng.random()
            key = (rng.choice(streams).model.encode() if how < 0.6
                   else None if how < 0.8 else rng.randbytes(8))
            part = rng.randrange(PARTITIONS) if 0.7 <= how < 0.8 else None
            if poison is None and key is None:  # Kafka needs a key or a value
                key = b"tombstone"
            plan.append((category, key, poison, part, reason))
        if j < len(base):
            plan.append(base[j])

    # Expected windows: count windows close every POISON_WINDOW records; the time model's
    # last window stays open (no later record arrives).
    expected_windows = 2 * (POISON_RECORDS // POISON_WINDOW) + \
        int(POISON_RECORDS / 100 / TIME_WINDOW_S) - 1
    d_poison = Daemon(tmp_path, "poisoned", bootstrap=kafka_broker.bootstrap, topic=poisoned,
                      group=f"g-{poisoned}", dead_letter_topic=dlq,
                      db_url=fresh_db("poisoned"), models=model_docs, client=kafka_client)
    d_clean = Daemon(tmp_path, "clean", bootstrap=kafka_broker.bootstrap, topic=clean,
                     group=f"g-{clean}", dead_letter_topic=clean_dlq,
                     db_url=fresh_db("clean"), models=model_docs, client=kafka_client)
    both = [d_poison, d_clean]
    try:
        for d in both:  # they start up (imports, group join) while the records are produced
            d.start()
        sent = produce_plan(kafka_broker.bootstrap, poisoned, plan)
        produce_plan(kafka_broker.bootstrap, clean, [p for p in plan if p[0] == "valid"])
        t_produce = time.monotonic() - t_start - t_gen
        valid_meta = defaultdict(list)  # model -> [(partition, offset)] in order
        for c, k, _v, _r, meta in sent:
            if c == "valid":
                valid_meta[k.decode()].append((meta.partition, meta.offset))
        poison_sent = [(c, k, v, r, meta) for c, k, v, r, meta in sent if c != "valid"]
        assert len(poison_sent) == n_poison >= 10_000

        wait_until(lambda: len({(r["model"], r["window_index"])
                                for r in stored(d_clean.db_url)}) == expected_windows,
                   150, "the clean run's windows", both, interval=1)
        wait_until(lambda: len({(r["model"], r["window_index"])
                                for r in stored(d_poison.db_url)}) == expected_windows
                   and sum(end_offsets(kafka_broker.bootstrap, dlq, 1).values()) >= n_poison
                   and d_poison.metric("driftline_records_consumed_total") >= n_valid,
                   150, "the poisoned run's windows, dead letters and valid records", both,
                   interval=1)
        rejected = {r: d_poison.metric("driftline_records_rejected_total", reason=r)
                    for r in REJECT_REASONS}
        consumed = d_poison.metric("driftline_records_consumed_total")
        time.sleep(1)  # a moment for anything unexpected (a crash, a duplicate) to show
        assert d_poison.alive and d_clean.alive, "\n".join(d.log_tail() for d in both)
        for d in both:
            d.sigterm()
        codes = {d.name: d.wait_exit() for d in both}
        assert codes == {"poisoned": 0, "clean": 0}, "\n".join(d.log_tail() for d in both)
        assert "stopped cleanly" in d_poison.log_text()
    finally:
        for d in both:
            d.kill()
    t_run = time.monotonic() - t_start - t_gen - t_produce

    # 1. every poison record on the dead-letter topic exactly once, where it came from
    dead = read_topic(kafka_broker.bootstrap, dlq, 1)
    got: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for m in dead:
        h = {k: v for k, v in m.headers}
        assert h["driftline.source.topic"] == poisoned.encode()
        got[(int(h["driftline.source.partition"]), int(h["driftline.source.offset"]))].append(
            (h, m.key, m.value))
    assert len(dead) == n_poison, f"{len(dead)} dead letters for {n_poison} poison records"
    dupes = [c for c, v in got.items() if len(v) > 1]
    assert not dupes, f"dead-lettered more than once: {dupes[:10]}"
    by_reason: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    for category, key, value, reason, meta in poison_sent:
        entry = got.get((meta.partition, meta.offset))
        assert entry, f"{category} record at {meta.partition}/{meta.offset} not dead-lettered"
        h, dkey, dvalue = entry[0]
        got_reason = h["driftline.reason"].decode()
        assert got_reason in REJECT_REASONS
        assert got_reason == reason, (category, meta, got_reason, reason, (value or b"")[:200])
        assert h["driftline.detail"]
        assert dkey == key
        raw = value or b""
        assert dvalue == raw[:DEAD_LETTER_MAX_VALUE]
        if len(raw) > DEAD_LETTER_MAX_VALUE:
            assert h["driftline.truncated_from_bytes"] == str(len(raw)).encode()
        by_reason[got_reason] += 1
        by_category[category][got_reason] += 1
    assert {r: int(n) for r, n in rejected.items() if n} == dict(by_reason)
    assert consumed == n_valid
    assert read_topic(kafka_broker.bootstrap, clean_dlq, 1) == []

    # 2. the valid records gave the same results as without poison, from the same records
    want, have = stored(d_clean.db_url), stored(d_poison.db_url)
    assert_same(comparable(have, offsets=False), comparable(want, offsets=False),
                "poisoned vs clean run")
    for row in have:
        if row["model"] != t_model.model:  # count windows: exactly these valid records
            w = row["window_index"]
            coords = valid_meta[row["model"]][w * POISON_WINDOW:(w + 1) * POISON_WINDOW]
            ((part, lo), (_, hi)) = coords[0], coords[-1]
            assert row["offsets"] == {f"{poisoned}/{part}": [lo, hi]}
    assert len({(r["model"], r["window_index"]) for r in have}) == expected_windows

    t_total = time.monotonic() - t_start
    print(f"\npoison: {n_poison} hostile records interleaved with {n_valid} valid ones on "
          f"{PARTITIONS} partitions; {len(dead)} dead letters, none twice")
    print(f"  dead-lettered per reason: {dict(sorted(by_reason.items()))}")
    for category in sorted(by_category):
        print(f"    {category:18s} {sum(by_category[category].values()):5d} "
              f"{dict(by_category[category])}")
    print(f"  {len(have) // 2} windows equal to the clean run's; timings: corpus {t_gen:.1f}s, "
          f"produce {t_produce:.1f}s, daemons {t_run:.1f}s, total {t_total:.1f}s")


# --- 2. scale-out --------------------------------------------------------------------------

SCALE_WINDOW = 400
SCALE_RECORDS = 2_400  # per model: 6 windows
SCALE_PHASE1 = 1_000  # records per model before one daemon is stopped: 2 windows + 200 open


def interleaved(streams: Sequence[SyntheticStream], start: int, stop: int
                ) -> list[tuple[str, bytes | None, bytes, int | None, None]]:
    """Records [start, stop) of every model, round-robin, keyed by model (produce_plan)."""
    cols = [list(itertools.islice(s.encoded(stop), start, stop)) for s in streams]
    return [("valid", s.model.encode(), col[i], None, None)
            for i in range(stop - start) for s, col in zip(streams, cols, strict=True)]


def test_scale_out_survivors_take_over_a_stopped_daemons_partitions(
        kafka_broker, topics, fresh_db, kafka_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    t_start = time.monotonic()
    names = names_per_partition("scale-", 2)  # two models on every partition
    streams = [SyntheticStream(model=n, seed=100 + i, drift_at=1_600 if i % 2 else None,
                               magnitude=1.0) for i, n in enumerate(names)]
    model_docs = [s.settings_doc(s.write_reference_csv(tmp_path / f"ref-{s.model}.csv",
                                                       REFERENCE_ROWS), SCALE_WINDOW)
                  for s in streams]
    topic, dlq = topics("scale"), topics("scale-dlq", 1)
    group, shared_db = f"g-{topic}", fresh_db("scaled")
    bootstrap = kafka_broker.bootstrap
    members = [Daemon(tmp_path, f"member-{i}", bootstrap=bootstrap, topic=topic, group=group,
                      dead_letter_topic=dlq, db_url=shared_db, models=model_docs,
                      client=kafka_client)
               for i in range(3)]
    single = Daemon(tmp_path, "single", bootstrap=bootstrap, topic=topic, group=f"g1-{topic}",
                    dead_letter_topic=dlq, db_url=fresh_db("single"), models=model_docs,
                    client=kafka_client)
    n_windows = len(streams) * (SCALE_RECORDS // SCALE_WINDOW)
    # Tables first: members starting together race to create them (see the next test).
    stored(shared_db)

    def windows(db_url: str) -> int:
        return len({(r["model"], r["window_index"]) for r in stored(db_url)})

    def progress(db_url: str, daemons: Sequence[Daemon]) -> str:
        have: dict[str, list[Any]] = defaultdict(list)
        for r in stored(db_url):
            if r["detector"] == "ks":
                have[r["model"]].append((r["window_index"], r["offsets"]))
        consumed = {d.name: {s.model: d.metric("driftline_records_consumed_total",
                                               model=s.model) for s in streams}
                    for d in daemons if d.alive}
        return f"stored windows {dict(have)}; consumed {consumed}"

    try:
        for d in members:
            d.start()
        # The group is stable once every member's last assignment is one partition, all
        # three different (eager rebalancing: each join reassigns everything).
        wait_until(lambda: sorted(p for d in members for p in d.assigned() or []) == [0, 1, 2]
                   and all(len(d.assigned() or []) == 1 for d in members),
                   90, "three members with one partition each", members, interval=0.5)
        t_stable = time.monotonic() - t_start
        owner = {d.assigned()[0]: d for d in members}  # type: ignore[index]
        produce_plan(bootstrap, topic, interleaved(streams, 0, SCALE_PHASE1))
        wait_until(lambda: sum(d.metric("driftline_records_consumed_total") for d in members)
                   == len(streams) * SCALE_PHASE1, 60, "phase 1 consumed", members)
        wait_until(lambda: windows(shared_db) == len(streams) * (SCALE_PHASE1 // SCALE_WINDOW),
                   60, "phase 1 windows stored", members)
        for p, d in owner.items():  # each member consumed exactly its partition's models
            for s in streams:
                mine = d.metric("driftline_records_consumed_total", model=s.model)
                assert mine == (SCALE_PHASE1 if partition_of(s.model) == p else 0), \
                    (d.name, s.model, mine)

        # Phase 2 streams in while partition 0's owner is stopped (SIGTERM) mid-stream.
        victim = owner[0]
        survivors = [d for d in members if d is not victim]
        victim_models = [s.model for s in streams if partition_of(s.model) == 0]
        sent: list[Any] = []
        producer = threading.Thread(target=lambda: sent.extend(produce_plan(
            bootstrap, topic, interleaved(streams, SCALE_PHASE1, SCALE_RECORDS))))
        producer.start()
        wait_until(lambda: victim.metric("driftline_records_consumed_total",
                                         model=victim_models[0]) > SCALE_PHASE1 + 100,
                   60, "the victim to consume phase 2", members, interval=0.05)
        victim.sigterm()
        t_term = time.monotonic()
        victim_exit_s: list[float] = []

        def taken_over() -> bool:  # survivors had consumed none of the victim's models
            if not victim_exit_s and not victim.alive:
                victim_exit_s.append(time.monotonic() - t_term)
            return any(d.metric("driftline_records_consumed_total", model=m) > 0
                       for d in survivors for m in victim_models)

        rebalance_s = wait_until(taken_over, 60, "a survivor to consume partition 0",
                                 survivors, interval=0.05)
        assert rebalance_s < 30, "the survivors waited for a session timeout?"
        assert victim.wait_exit() == 0, victim.log_tail()
        assert "stopped cleanly" in victim.log_text()
        exit_s = victim_exit_s[0] if victim_exit_s else rebalance_s
        producer.join(timeout=120)
        assert not producer.is_alive() and len(sent) == len(streams) * (
            SCALE_RECORDS - SCALE_PHASE1)

        single.start()  # the reference: one process, its own group and database
        # Until every window is stored, or nothing has moved for a while (records lost:
        # the comparison below then names the windows that are missing).
        last: list[Any] = [None, time.monotonic()]

        def done_or_settled() -> bool:
            state = (windows(shared_db),
                     sum(d.metric("driftline_records_consumed_total") for d in survivors))
            if state != last[0]:
                last[:] = [state, time.monotonic()]
            return state[0] == n_windows or time.monotonic() - last[1] > 8
        wait_until(done_or_settled, 120, "every window stored by the survivors", survivors,
                   interval=1, detail=lambda: progress(shared_db, members))
        wait_until(lambda: windows(single.db_url) == n_windows, 120,
                   "every window stored by the single daemon", [single], interval=1,
                   detail=lambda: progress(single.db_url, [single]))
        for d in [*survivors, single]:
            d.sigterm()
        codes = {d.name: d.wait_exit() for d in [*survivors, single]}
        assert set(codes.values()) == {0}, (codes, [d.log_tail() for d in members])
    finally:
        for d in [*members, single]:
            d.kill()

    assert_same(comparable(stored(shared_db), offsets=True),
                comparable(stored(single.db_url), offsets=True), "3 members vs 1 process")
    ends = end_offsets(bootstrap, topic, PARTITIONS)
    assert committed_offsets(bootstrap, group) == ends
    assert read_topic(bootstrap, dlq, 1) == []
    takeover_logs = [d.name for d in survivors
                     if re.search(rf"partitions assigned: .*'{re.escape(topic)}', 0\)",
                                  d.log_text())]
    assert takeover_logs, [d.log_tail() for d in survivors]
    print(f"\nscale-out: {len(streams)} models on {PARTITIONS} partitions, 3 daemons in one "
          f"group (stable after {t_stable:.1f}s); {victim.name} (partition 0) stopped with "
          f"SIGTERM mid-stream; it exited after {exit_s:.2f}s; survivors consumed its "
          f"partition {rebalance_s:.2f}s after the SIGTERM (time to rebalance); "
          f"{n_windows} windows equal to a single process's; total "
          f"{time.monotonic() - t_start:.1f}s")


def test_members_starting_together_on_a_fresh_database_all_create_the_schema(
        fresh_db) -> None:  # type: ignore[no-untyped-def]
    """Replicas of a scaled-out deployment start at the same moment on an empty database:
    every one must get its tables (CREATE TABLE races must not stop a daemon)."""
    for attempt in range(3):
        url = fresh_db(f"race{attempt}")
        barrier = threading.Barrier(6)
        errors: list[BaseException] = []

        def start(url: str = url, barrier: threading.Barrier = barrier) -> None:
            store = SqlStore(url)
            try:
                with store.engine.connect():
                    pass  # connected: the race is only the DDL
                barrier.wait(timeout=30)
                store.create_schema()
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)
            finally:
                store.close()

        threads = [threading.Thread(target=start) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, f"attempt {attempt}: {len(errors)} of 6 failed: {errors[0]!s:.500}"
