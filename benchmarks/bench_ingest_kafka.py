"""Ingest from a real broker: Kafka's own consumer tool, a bare client loop and `driftline run`.

Starts a local single-node broker as the tests do (``scripts/kafka.sh``, jars from Maven
Central, cached), produces ``--records`` synthetic inference records (about 300 bytes each,
7 features, uncompressed) to one topic, then reads them all, one reader after another, side by
side in one run:

* Kafka's consumer performance tool (``org.apache.kafka.tools.ConsumerPerformance`` from the
  ``kafka-tools`` jar, fetched from Maven Central next to the broker's jars);
* a bare kafka-python loop and a bare confluent-kafka loop (``Consumer.consume`` batches),
  each without and with ``json.loads`` of each value;
* ``driftline run`` (SQLite storage, 10,000-record count windows, KS and chi-square) until it
  has consumed every record, per ``kafka.client`` (kafka-python, confluent-kafka): one
  model on the same topic in one process (``--workers 1``); then N models, each in its own
  one-partition topic with n/N records (produced once, before these rows), read with
  ``--workers 1`` and with ``--workers N``; with ``--baseline-root DIR`` also the daemon of
  another checkout (e.g. the main branch, its default client) for a before/after in the
  same run.

Rates are records/s from the first record read to the last (group joins and the JVM's or
daemon's start-up excluded; the daemon's end is the first ``/metrics`` scrape, every 0.1 s,
that shows all records consumed).

    python benchmarks/bench_ingest_kafka.py [--records 1000000] [--workers N]
        [--baseline-root /work/main]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from confluent_kafka import Consumer
from kafka import KafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from services.kafka import KAFKA_SH, KafkaBroker  # noqa: E402
from services.ports import free_port  # noqa: E402

from monitor.synthetic import SyntheticStream  # noqa: E402

WINDOW = 10_000
CLIENTS = ("kafka-python", "confluent-kafka")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="N of the `driftline run --workers N` row")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="another checkout whose `driftline run` is measured too")
    args = ap.parse_args()
    n = args.records
    stream = SyntheticStream(seed=1, drift_at=n // 2)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        broker = KafkaBroker(tmp / "kafka")
        broker.start()
        try:
            broker.create_topic("logs", args.partitions)
            t0 = time.perf_counter()
            produce_records(broker.bootstrap, stream, n, tmp)
            produce_s = time.perf_counter() - t0
            mb = n * len(next(stream.encoded(1))) / 1e6
            rows.append(("Kafka ConsumerPerformance (Java)",
                         consumer_perf(broker.bootstrap, n, tmp)))
            rows.append(("kafka-python loop", bare_loop(broker.bootstrap, n, decode=False)))
            rows.append(("kafka-python loop + json.loads",
                         bare_loop(broker.bootstrap, n, decode=True)))
            rows.append(("confluent-kafka loop", confluent_loop(broker.bootstrap, n,
                                                                decode=False)))
            rows.append(("confluent-kafka loop + json.loads",
                         confluent_loop(broker.bootstrap, n, decode=True)))
            for client in CLIENTS:
                rows.append((f"driftline run, {client}",
                             daemon(ROOT, broker.bootstrap, stream, n, tmp / f"d-{client}",
                                    client=client)))
            models = produce_worker_topics(broker, n, args.workers, tmp / "topics")
            for client in CLIENTS:
                for w in dict.fromkeys((1, args.workers)):
                    rows.append((f"driftline run --workers {w}, {args.workers} topics, {client}",
                                 daemon_workers(broker, models, n, w, client,
                                                tmp / f"w{w}-{client}")))
            if args.baseline_root is not None:
                rows.append((f"driftline run ({args.baseline_root})",
                             daemon(args.baseline_root.resolve(), broker.bootstrap, stream, n,
                                    tmp / "d-base")))
        finally:
            broker.stop()

    print(f"# ingest from a local broker: {n:,} records (~{mb:.0f} MB JSON, uncompressed), "
          f"{args.partitions} partitions, produced in {produce_s:.0f} s")
    print(f"# {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    tool = rows[0][1]
    bare = rows[1][1]
    width = max(len(label) for label, _ in rows)
    print(f"| {'reader':<{width}} | {'records/s':>10} | {'/ Kafka tool':>12} "
          f"| {'/ bare loop':>11} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 14}|{'-' * 13}|")
    for label, rate in rows:
        print(f"| {label:<{width}} | {rate:>10,.0f} | {rate / tool:>11.1%} "
              f"| {rate / bare:>10.1%} |")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tools_classpath() -> str:
    """The broker's jars plus ``kafka-tools`` (not a broker dependency), both cached."""
    libs = Path(subprocess.run([str(KAFKA_SH), "fetch"], capture_output=True, text=True,
                               check=True).stdout.strip())
    version = re.search(r"kafka_2\.13-([^ ]+)\.jar", " ".join(p.name for p in libs.iterdir()))
    assert version, f"no kafka_2.13 jar in {libs}"
    tools = libs.parent / "tools"
    jar = tools / f"kafka-tools-{version.group(1)}.jar"
    if not jar.exists():
        subprocess.run(["mvn", "-B", "-q", "dependency:copy",
                        f"-Dartifact=org.apache.kafka:kafka-tools:{version.group(1)}",
                        f"-DoutputDirectory={tools}"], check=True)
    return f"{libs}/*:{tools}/*"


def produce_records(bootstrap: str, stream: SyntheticStream, n: int, tmp: Path) -> None:
    """``n`` records with Kafka's ProducerPerformance (kafka-python would take minutes).

    It sends payloads drawn at random from a file: up to 200,000 distinct records here, so
    records repeat in a bigger run (count windows do not mind the order)."""
    payloads = tmp / "payloads.jsonl"
    with payloads.open("wb") as fh:
        for v in stream.encoded(min(n, 200_000)):
            fh.write(v + b"\n")
    subprocess.run(
        ["java", "-Xmx512m", "-cp", tools_classpath(),
         "org.apache.kafka.tools.ProducerPerformance", "--topic", "logs",
         "--num-records", str(n), "--throughput", "-1", "--payload-file", str(payloads),
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=1", "linger.ms=20",
         "batch.size=262144"], capture_output=True, text=True, check=True, cwd=tmp)


def consumer_perf(bootstrap: str, n: int, tmp: Path) -> float:
    out = subprocess.run(
        ["java", "-Xmx512m", "-cp", tools_classpath(),
         "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap,
         "--topic", "logs", "--messages", str(n), "--group", "perf-tool",
         "--timeout", "60000"],
        capture_output=True, text=True, check=True, cwd=tmp).stdout
    lines = [ln for ln in out.splitlines() if "," in ln and "WARN" not in ln]
    if len(lines) != 2:
        raise RuntimeError(f"unexpected ConsumerPerformance output:\n{out}")
    header, values = lines
    stats = dict(zip((h.strip() for h in header.split(",")),
                     (v.strip() for v in values.split(",")), strict=False))
    assert int(stats["data.consumed.in.nMsg"]) >= n, out
    return float(stats["fetch.nMsg.sec"])  # excludes the group join, like the rows below


def bare_loop(bootstrap: str, n: int, *, decode: bool) -> float:
    consumer = KafkaConsumer("logs", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=f"bare-{decode}", enable_auto_commit=False)
    got = 0
    first = 0.0
    try:
        while got < n:
            for records in consumer.poll(timeout_ms=1000).values():
                if not got:
                    first = time.perf_counter()
                for r in records:
                    if decode:
                        json.loads(r.value)
                got += len(records)
        return n / (time.perf_counter() - first)
    finally:
        consumer.close()


def confluent_loop(bootstrap: str, n: int, *, decode: bool) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-ck-{decode}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["logs"])
    got = 0
    first = 0.0
    try:
        while got < n:
            batch = consumer.consume(5000, 1.0)
            if batch and not got:
                first = time.perf_counter()
            for r in batch:
                if r.error() is None:
                    if decode:
                        json.loads(r.value())
                    got += 1
        return n / (time.perf_counter() - first)
    finally:
        consumer.close()


def daemon(root: Path, bootstrap: str, stream: SyntheticStream, n: int, work: Path,
           client: str | None = None) -> float:
    """One model on the 2-partition topic ``logs``, one process."""
    work.mkdir()
    ref = stream.write_reference_csv(work / "reference.csv", 10_000)
    kafka = {"bootstrap_servers": bootstrap, "topics": ["logs"], "group_id": f"daemon-{work.name}",
             "dead_letter_topic": f"dead-{work.name}", **({"client": client} if client else {})}
    # the baseline checkout may predate --workers
    return run_daemon(root, work, kafka, [stream.settings_doc(ref, WINDOW)], n,
                      workers=1 if root == ROOT else None)


def produce_worker_topics(broker: KafkaBroker, n: int, workers: int, work: Path) -> list[dict]:
    """N models, each alone in a one-partition topic with n/N records (a model must live in
    one partition to be read by one worker; see README "Scaling out"). Same record size
    and windows as the one-topic rows. Returns the models' settings."""
    work.mkdir()
    models = []
    for i in range(workers):
        s = SyntheticStream(model=f"w{i}", seed=100 + i, drift_at=n // workers // 2)
        broker.create_topic(f"logs-w{i}", 1)
        payloads = work / f"payloads-{i}.jsonl"
        payloads.write_bytes(b"".join(v + b"\n" for v in s.encoded(min(n // workers, 200_000))))
        subprocess.run(
            ["java", "-Xmx512m", "-cp", tools_classpath(),
             "org.apache.kafka.tools.ProducerPerformance", "--topic", f"logs-w{i}",
             "--num-records", str(n // workers), "--throughput", "-1", "--payload-file",
             str(payloads), "--producer-props", f"bootstrap.servers={broker.bootstrap}",
             "acks=1", "linger.ms=20", "batch.size=262144"],
            capture_output=True, text=True, check=True, cwd=work)
        models.append(s.settings_doc(s.write_reference_csv(work / f"ref-{i}.csv", 10_000),
                                     WINDOW))
    return models


def daemon_workers(broker: KafkaBroker, models: list[dict], n: int, workers: int,
                   client: str, work: Path) -> float:
    """``driftline run --workers W`` over the N models' topics (W = 1 or N)."""
    work.mkdir()
    kafka = {"bootstrap_servers": broker.bootstrap,
             "topics": [f"logs-w{i}" for i in range(len(models))], "client": client,
             "group_id": f"daemon-{work.name}", "dead_letter_topic": f"dead-{work.name}"}
    return run_daemon(ROOT, work, kafka, models, len(models) * (n // len(models)),
                      workers=workers)


def run_daemon(root: Path, work: Path, kafka: dict, models: list[dict], total: int,
               workers: int | None) -> float:
    """Starts ``driftline run`` of ``root`` and measures it until ``total`` records were
    consumed (summed over its ``/metrics``)."""
    port = free_port()
    config = work / "driftline.yml"
    config.write_text(yaml.safe_dump({
        "source": {"kafka": kafka},
        "metrics": {"address": "127.0.0.1", "port": port},
        "storage": {"url": f"sqlite:///{work / 'driftline.db'}"},
        "log_level": "WARNING", "models": models}, sort_keys=False))
    flags = ["--workers", str(workers)] if workers is not None else []
    with (work / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "--config",
                                 str(config), *flags], stdout=log, stderr=subprocess.STDOUT,
                                cwd=work, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        first, at_first = 0.0, 0.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(work / 'daemon.log').read_text()[-3000:]}")
            done = consumed(port)
            now = time.perf_counter()
            if done and not first:
                first, at_first = now, done
            if done >= total:
                return (total - at_first) / (now - first)
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("driftline_records_consumed_total{"))


if __name__ == "__main__":
    main()
