"""The real `driftline run` daemon as a subprocess, for fault-injection tests.

Small API, shared by the integration tests (import it as ``from integration.daemon_proc
import ...``; ``tests/conftest.py`` puts ``tests/`` on ``sys.path``):

* :func:`make_streams` - ``n`` :class:`SyntheticStream` models whose names (keys) spread over
  every partition of the topic.
* :func:`produce_streams` - produce records ``[start, stop)`` of every stream, interleaved
  round-robin, each keyed by its model name (count windows are deterministic across restarts
  only then, see README "Delivery guarantee").
* :class:`DaemonProc` - writes a settings file for the streams (``client``: the Kafka client,
  the default one unless a test runs with each, see the ``kafka_client`` fixture), starts /
  SIGKILLs / SIGTERMs the daemon (output appended to ``daemon.log``), reads ``/metrics``,
  ``/readyz``, the stored windows and results, and waits for conditions, failing with the log tail.
* :func:`uninterrupted_results` - the expected results: a second daemon (own group id, own
  database) over the same topic, run to completion without faults.
* :func:`comparable` / :func:`assert_same_results` - stored rows keyed by
  (model, window_index, detector), duplicates rejected, and a readable diff.
* :func:`committed_offsets` / :func:`end_offsets` - a group's committed offsets and the
  topic's end offsets, per partition.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.partitioner.default import murmur2
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from services import register_cleanup, unregister_cleanup
from services.ports import free_port
from sqlalchemy import func, select

from monitor.kafka_io import produce
from monitor.storage import SqlStore, WindowRow
from monitor.synthetic import SyntheticStream

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_ROWS = 5_000

#: Consumer options for every daemon the tests start. kafka-python's default session timeout
#: is 45 s: after a SIGKILL the group waits that long for the dead member before the
#: restarted daemon gets its partitions. 6 s is the broker's minimum.
FAST_GROUP = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}

_KAFKA_LOGGER = re.compile(r"^\S+ \S+ [A-Z]+ kafka[.:]")  # "date time LEVEL kafka.x: ..."

ResultKey = tuple[str, int, str]  # (model, window_index, detector)
#: The stored fields that must not change across crashes and outages (not evaluated_at).
COMPARED_FIELDS = ("statistic", "p_value", "drifted", "insufficient_data", "n_current",
                   "n_records", "window_start", "window_end", "offsets", "features")


# --- workload ------------------------------------------------------------------------------


def partition_of(key: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives ``key`` (murmur2, as Java)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def model_names(n: int, partitions: int) -> list[str]:
    """``n`` names ``m<i>`` (lowest ``i`` first) that together use every partition."""
    by_partition: dict[int, str] = {}
    i = 0
    while len(by_partition) < min(n, partitions):
        by_partition.setdefault(partition_of(f"m{i}", partitions), f"m{i}")
        i += 1
    names = list(by_partition.values())
    names += itertools.islice((f"m{i}" for i in itertools.count() if f"m{i}" not in names),
                              max(0, n - len(names)))
    return sorted(names, key=lambda s: int(s[1:]))


def make_streams(n: int, *, partitions: int = 3, drift_at: int | None = None,
                 magnitude: float = 0.5) -> list[SyntheticStream]:
    """``n`` models, each with its own seed, keyed so that they cover every partition."""
    return [SyntheticStream(model=name, seed=int(name[1:]), drift_at=drift_at,
                            magnitude=magnitude)
            for name in model_names(n, partitions)]


def interleaved(streams: Sequence[SyntheticStream], counts: Mapping[str, int],
                start: int = 0, stop: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(model key, record) pairs, round-robin over the models, records ``[start, stop)`` of
    each (``stop`` capped at the model's count). Values are identical whatever the split."""
    its = [itertools.islice(s.encoded(counts[s.model]), start,
                            None if stop is None else min(stop, counts[s.model]))
           for s in streams]
    keys = [s.model.encode() for s in streams]
    for row in itertools.zip_longest(*its):
        for key, value in zip(keys, row, strict=True):
            if value is not None:
                yield key, value


def produce_streams(bootstrap: str, topic: str, streams: Sequence[SyntheticStream],
                    counts: Mapping[str, int], start: int = 0, stop: int | None = None) -> int:
    """Produce :func:`interleaved` records to ``topic``; returns how many were acknowledged.

    gzip batches: kafka-python computes batch CRCs in pure Python unless the optional
    ``crc32c`` package is installed, and compressed batches are ~4x smaller to checksum
    (producing 200,000 records takes about a third of the time; the daemon reads them
    faster too)."""
    return produce(bootstrap, topic, interleaved(streams, counts, start, stop),
                   extra={"compression_type": "gzip"})


def full_windows(counts: Mapping[str, int], window: int) -> int:
    """How many count windows close for these per-model record counts."""
    return sum(c // window for c in counts.values())


# --- Kafka offsets -------------------------------------------------------------------------


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    """partition -> committed offset of ``group`` (one topic per group in these tests)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        got = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in got.items()}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return {tp.partition: o for tp, o in ends.items()}


# --- the daemon ----------------------------------------------------------------------------


class DaemonProc:
    """One daemon configuration (``workdir/driftline.yml``) and its successive processes.

    ``start()`` may be called again after ``kill()``/``terminate()``: same settings, same
    metrics port, same group, same database. Every start appends a marker line to the log.
    Use it as a context manager (or call ``close()``) so no process outlives the test.
    """

    def __init__(self, workdir: Path, *, bootstrap: str, topic: str, db_url: str,
                 streams: Sequence[SyntheticStream], window: int, group: str | None = None,
                 consumer: Mapping[str, Any] | None = None, log_level: str = "INFO",
                 model_extra: Mapping[str, Any] | None = None,
                 kafka_extra: Mapping[str, Any] | None = None, workers: int = 1,
                 client: str = "confluent-kafka") -> None:
        self.workers = workers  # `driftline run --workers`; 1: one process, no supervisor
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap, self.topic, self.db_url = bootstrap, topic, db_url
        self.group = group or f"{topic}-{self.workdir.name}"
        self.port = free_port()
        self.log_path = self.workdir / "daemon.log"
        self.config_path = self.workdir / "driftline.yml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        models = []
        for s in streams:
            ref = s.write_reference_csv(self.workdir / f"reference-{s.model}.csv",
                                        REFERENCE_ROWS)
            models.append({**s.settings_doc(ref, window), **dict(model_extra or {})})
        self.config_path.write_text(yaml.safe_dump({
            "source": {"kafka": {
                "bootstrap_servers": bootstrap, "topics": [topic], "group_id": self.group,
                "dead_letter_topic": f"{self.group}-dead-letter", "poll_timeout_ms": 200,
                "client": client,
                "consumer": {**FAST_GROUP, **dict(consumer or {})}, **dict(kafka_extra or {})}},
            "metrics": {"address": "127.0.0.1", "port": self.port},
            "storage": {"url": db_url},
            "log_level": log_level,
            "models": models,
        }, sort_keys=False))
        # Tables first, so reads never race the daemon's CREATE TABLE.
        self.store = SqlStore(db_url)
        self.store.create_schema()

    # -- process control ----------------------------------------------------------------
    def start(self, ready_timeout: float = 60.0) -> None:
        """Start the daemon and wait until it serves /metrics."""
        assert not self.alive, "daemon already running"
        self.starts += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"=== test harness: start #{self.starts} at {time.time():.3f}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run", "--config", str(self.config_path),
                 "--workers", str(self.workers)],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                cwd=self.workdir, env={**os.environ, "PYTHONPATH": str(ROOT)})
        register_cleanup(self, self._kill_quietly)
        self.wait_for(lambda: self.http_status("/metrics") == 200, ready_timeout,
                      "the daemon to serve /metrics")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._note(f"SIGKILL (exit {self.proc.returncode})")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit status (0 expected)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_tail()}")
        self._note(f"SIGTERM (exit {code})")
        return code

    def close(self) -> None:
        self._kill_quietly()
        self.store.close()

    def _kill_quietly(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        unregister_cleanup(self)

    def __enter__(self) -> DaemonProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _note(self, text: str) -> None:
        with self.log_path.open("ab") as fh:
            fh.write(f"=== test harness: {text} at {time.time():.3f}\n".encode())

    # -- observation ----------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60, kafka: bool = False) -> str:
        """The last ``lines`` log lines; kafka-python's own lines (a flood of connection
        errors during an outage) only with ``kafka``."""
        kept = [ln for ln in self.log_text().splitlines()
                if kafka or not _KAFKA_LOGGER.match(ln)]
        return "\n".join(kept[-lines:])

    def http_status(self, path: str) -> int | None:
        """The HTTP status of GET ``path`` (None: no answer)."""
        return self.http_get(path)[0]

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int | None, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            exc.close()
            return exc.code, body
        except OSError:
            return None, ""

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of sample ``name`` whose labels include ``labels`` (summed over the
        rest); None when /metrics does not answer or has no such sample."""
        status, text = self.http_get("/metrics")
        if status != 200:
            return None
        values = [s.value for fam in text_string_to_metric_families(text)
                  for s in fam.samples
                  if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(values) if values else None

    def stored_windows(self) -> int:
        """Feature windows stored (rows of driftline_windows, one per (model, window_index))."""
        query = select(func.count()).select_from(WindowRow).where(WindowRow.stream == "features")
        with self.store.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def results(self) -> list[dict[str, Any]]:
        return self.store.results()

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str,
                 interval: float = 0.2, expect_alive: bool = True) -> float:
        """Poll ``check`` until true; returns the seconds waited. Fails (with the daemon's log
        tail) on timeout or, with ``expect_alive``, when the daemon exits meanwhile."""
        t0 = time.monotonic()
        while True:
            if check():
                return time.monotonic() - t0
            if expect_alive and self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {what}; "
                            f"log {self.log_path}:\n{self.log_tail()}", pytrace=False)
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{self._hint()}; "
                            f"log {self.log_path}:\n{self.log_tail()}", pytrace=False)
            time.sleep(interval)

    def _hint(self) -> str:
        assigned = re.findall(r"partitions assigned: (.*)", self.log_text())
        if assigned and assigned[-1].strip() == "[]":
            return (" (the daemon holds no partitions: its last rebalance assigned it [], see "
                    "kafka-python's 'No partition metadata for topic' line with kafka=True)")
        return ""

    def wait_for_windows(self, n: int, timeout: float) -> float:
        return self.wait_for(lambda: self.stored_windows() >= n, timeout,
                             f"{n} stored windows (have {self.stored_windows()})")


# --- expected results ----------------------------------------------------------------------


def comparable(rows: Sequence[Mapping[str, Any]]) -> dict[ResultKey, dict[str, Any]]:
    """Rows keyed by (model, window_index, detector), only :data:`COMPARED_FIELDS`; a
    duplicated key fails the test."""
    keys = Counter((r["model"], r["window_index"], r["detector"]) for r in rows)
    dup = {k: n for k, n in keys.items() if n > 1}
    assert not dup, f"duplicated window results: {dup}"
    return {(r["model"], r["window_index"], r["detector"]): {f: r[f] for f in COMPARED_FIELDS}
            for r in rows}


def assert_same_results(got: Mapping[ResultKey, Mapping[str, Any]],
                        expected: Mapping[ResultKey, Mapping[str, Any]]) -> None:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = [(k, f, got[k][f], expected[k][f]) for k in sorted(set(got) & set(expected))
              for f in COMPARED_FIELDS if f != "features" and got[k][f] != expected[k][f]]
    differ += [(k, "features", "...", "...") for k in sorted(set(got) & set(expected))
               if got[k]["features"] != expected[k]["features"]]
    assert not (missing or extra or differ), (
        f"results differ from the uninterrupted run: {len(missing)} missing {missing[:10]}, "
        f"{len(extra)} unexpected {extra[:10]}, {len(differ)} differing fields "
        f"(key, field, got, expected) {differ[:10]}")


def uninterrupted_results(workdir: Path, *, bootstrap: str, topic: str, db_url: str,
                          streams: Sequence[SyntheticStream], window: int,
                          counts: Mapping[str, int], timeout: float = 240.0,
                          proc: DaemonProc | None = None,
                          client: str = "confluent-kafka") -> dict[ResultKey, dict[str, Any]]:
    """What a daemon run without faults stores for the records on ``topic``: a second real
    daemon (own group id ``<topic>-<workdir name>``, own database ``db_url``) run until every
    full window is stored, then SIGTERMed. Pass ``proc`` (a started DaemonProc made with the
    same arguments) to run it concurrently with something else and collect it here."""
    ref = proc or DaemonProc(workdir, bootstrap=bootstrap, topic=topic, db_url=db_url,
                             streams=streams, window=window, client=client)
    try:
        if not ref.alive and ref.starts == 0:
            ref.start()
        ref.wait_for_windows(full_windows(counts, window), timeout)
        code = ref.terminate()
        assert code == 0, f"reference daemon exited {code}:\n{ref.log_tail()}"
        return comparable(ref.results())
    finally:
        ref.close()
