"""Memory over a long run: the daemon's resident set size while it ingests ``--records``.

The whole pipeline (decode -> columnar windows -> KS/chi-square -> SQLite -> commit) reads
an endless in-process source: a pool of ``--pool`` encoded records (20 features: 16
numeric, 4 categorical), replayed with rising offsets, so the source itself holds no more
than the pool. Count windows of ``--window`` records close and are stored all along; the
RSS must stay flat once the first windows are through (buffers freed with their windows,
nothing kept per record).

    python benchmarks/bench_rss.py [--records 10000000] [--every 1000000] [--window 100000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import Metrics
from monitor.settings import parse_settings
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--every", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=100_000)
    ap.add_argument("--pool", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()

    stream = SyntheticStream(n_numeric=16, n_categorical=4, seed=1, drift_at=args.pool // 2)
    pool = list(stream.encoded(args.pool))
    values = itertools.islice(itertools.cycle(pool), args.records)
    with tempfile.TemporaryDirectory() as tmp:
        ref = stream.write_reference_csv(Path(tmp) / "ref.csv", 10_000)
        doc = {"storage": {"url": f"sqlite:///{tmp}/rss.db"},
               "models": [stream.settings_doc(ref, args.window)]}
        settings = parse_settings(doc, env={})
        source = MemorySource(values, batch_size=args.batch)
        daemon = build_daemon(settings, source=source, dead_letter=MemoryDeadLetter(),
                              serve_metrics=False, metrics=Metrics(CollectorRegistry()))
        pipeline, stop = daemon.pipeline, threading.Event()
        print(f"# {args.records:,} records through the pipeline (20 features, windows of "
              f"{args.window:,}, batches of {args.batch:,}, SQLite); {cpu_model()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}")
        print("| records | RSS (MB) | windows stored | s | records/s (since last row) |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| 0 | {rss_mb():.0f} | 0 | 0 | |", flush=True)
        t0 = last_t = time.perf_counter()
        done = last_done = 0
        next_row = args.every
        while not source.exhausted:
            batch = source.poll(0)
            pipeline.process(batch)
            if not pipeline.flush_and_commit(stop):
                raise RuntimeError("delivery failed")
            done += len(batch)
            if done >= next_row or (source.exhausted and done > last_done):
                now = time.perf_counter()
                stored = len({r["window_index"] for r in daemon.store.results()})
                print(f"| {done:,} | {rss_mb():.0f} | {stored} | {now - t0:.0f} | "
                      f"{(done - last_done) / (now - last_t):,.0f} |", flush=True)
                last_t, last_done = now, done
                next_row += args.every
        daemon.close()


if __name__ == "__main__":
    main()
