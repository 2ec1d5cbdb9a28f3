"""Ingest throughput: records/s through decode -> window -> KS/chi-square -> sinks -> commit.

20 features (16 numeric, 4 categorical), 10,000-record count windows, a 10,000-row reference.
The records are JSON-encoded before timing; the in-process source hands them over as Kafka
would (raw bytes with offsets), so this measures driftline itself, not the broker.

    python benchmarks/bench_ingest.py [--records 200000] [--repeat 3]

The last two rows give the model delayed labels (none arrive, so every prediction is stored
for the join), then also a retraining policy (its decisions run on every window inside the
results' transaction; the dispatcher thread polls the requests table meanwhile): their ratio
is the policy's overhead on ingest, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.metrics import Metrics
from monitor.schema import Decoder, ModelSchema
from monitor.settings import parse_settings
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    stream = SyntheticStream(n_numeric=16, n_categorical=4, seed=1, drift_at=args.records // 2)
    values = list(stream.encoded(args.records))
    mb = sum(len(v) for v in values) / 1e6
    rows: list[tuple[str, float]] = []

    decoder = Decoder({stream.model: ModelSchema(stream.features())})  # type: ignore[arg-type]
    best = min(_time(lambda: [decoder.decode(v) for v in values]) for _ in range(args.repeat))
    rows.append(("decode + validate only", args.records / best))

    variants = (("full pipeline, SQLite sink", {}),
                ("+ delayed labels", {"labels": True}),
                ("+ labels + retrain policy", {"labels": True, "retrain": True}))
    for label, extra in variants:
        times = []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                ref = stream.write_reference_csv(Path(tmp) / "ref.csv", 10_000)
                model = stream.settings_doc(ref, args.window)
                doc: dict = {"storage": {"url": f"sqlite:///{tmp}/ingest.db"}}
                if extra.get("labels"):
                    lab = Path(tmp) / "labels.csv"
                    lab.write_text("label,prediction\n" + "".join(
                        f"{i % 2},{(i // 3) % 2}\n" for i in range(2000)))
                    model["labels"] = {"reference": {"path": str(lab)}}
                    doc["source"] = {"kafka": {"labels_topic": "labels"}}
                if extra.get("retrain"):
                    model["retrain"] = {"action": {"kind": "command", "command": ["true"]}}
                settings = parse_settings({**doc, "models": [model]}, env={})
                daemon = build_daemon(settings, source=MemorySource(values, batch_size=5000),
                                      dead_letter=MemoryDeadLetter(), serve_metrics=False,
                                      metrics=Metrics(CollectorRegistry()))
                if daemon.dispatcher is not None:
                    daemon.dispatcher.start()
                t = _time(lambda d=daemon: d.pipeline.run(threading.Event(),
                                                          until_exhausted=True))
                assert len({r["window_index"] for r in daemon.store.results()}) \
                    == args.records // args.window
                daemon.close()
                times.append(t)
        rows.append((label, args.records / min(times)))

    print(f"# ingest throughput: {args.records} records ({mb:.1f} MB JSON), 20 features "
          f"(16 numeric, 4 categorical), windows of {args.window}")
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"best of {args.repeat}")
    print(f"| {'path':<30} | {'records/s':>10} |")
    print(f"|{'-' * 32}|{'-' * 12}|")
    for label, rate in rows:
        print(f"| {label:<30} | {rate:>10,.0f} |")
    by = dict(rows)
    ratio = by["+ labels + retrain policy"] / by["+ delayed labels"]
    print(f"# with the retrain policy: {ratio:.3f} x the throughput with labels alone")


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
