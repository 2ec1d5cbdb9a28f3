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
import statistics
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
    # Repeats interleave the variants (A B C A B C ...) on the same records, so a slow spell
    # of a shared machine hits them alike; each row is the median of its repeats and the
    # policy's ratio the median of the per-repeat ratios.
    times: dict[str, list[float]] = {label: [] for label, _extra in variants}
    for _ in range(args.repeat):
        for label, extra in variants:
            times[label].append(_run_pipeline(stream, values, args.window, extra))
    for label, _extra in variants:
        rows.append((label, args.records / statistics.median(times[label])))
    ratios = [lab / pol for lab, pol in zip(times["+ delayed labels"],
                                            times["+ labels + retrain policy"], strict=True)]

    print(f"# ingest throughput: {args.records} records ({mb:.1f} MB JSON), 20 features "
          f"(16 numeric, 4 categorical), windows of {args.window}")
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"median of {args.repeat} interleaved repeats (decode: best)")
    print(f"| {'path':<30} | {'records/s':>10} |")
    print(f"|{'-' * 32}|{'-' * 12}|")
    for label, rate in rows:
        print(f"| {label:<30} | {rate:>10,.0f} |")
    print(f"# with the retrain policy: {statistics.median(ratios):.3f} x the throughput with "
          f"labels alone (per repeat: {', '.join(f'{r:.3f}' for r in ratios)})")


def _run_pipeline(stream: SyntheticStream, values: list[bytes], window: int,
                  extra: dict[str, bool]) -> float:
    """Seconds for one daemon (fresh SQLite database) to ingest ``values``."""
    with tempfile.TemporaryDirectory() as tmp:
        ref = stream.write_reference_csv(Path(tmp) / "ref.csv", 10_000)
        model = stream.settings_doc(ref, window)
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
        t = _time(lambda: daemon.pipeline.run(threading.Event(), until_exhausted=True))
        assert len({r["window_index"] for r in daemon.store.results()}) \
            == len(values) // window
        daemon.close()
        return t


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
