"""A window's drift report at scale, from bytes: decode, columns, then KS + chi-square.

``--rows`` encoded records of a model with 50 features (35 numeric, 15 categorical) go into
one count window, a 10,000-row reference. The loop has the pipeline's shape: per batch of
``--batch`` messages (the daemon's default ``max_poll_records``) decode each message, add
each record to the window, seal the batch; the records are dropped after their batch. Timed
separately, best of ``--repeat`` (and the slowest, when ``--repeat`` > 1):

* decode: bytes -> records, the native decoder (msgspec);
* window ingest: each record added (offsets, times), and per batch the columns written
  (:mod:`monitor.columns`), including the last batch's at close;
* report at close: KS over the numeric columns (views), chi-square counting category codes.

Two decoders, the same windows and detectors:

* before: records carry only their feature dicts (``Decoder(pack_rows=False)``): a batch's
  columns are read out of the dicts, a Python step per value;
* after: the decoder also packs each record's features (one ``struct.pack``: doubles and
  category ids), and a batch's columns are one ``np.frombuffer`` plus one gather of ids.

Issue #14's figure is "columns built + report"; decode is shown beside it because packing
moves work into the decoder. The two sides' reports are asserted equal.

    python benchmarks/bench_columns.py [--rows 1000000] [--repeat 3] [--batch 5000]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from detectors.chisquare import ChiSquareDetector
from detectors.ks import KSDetector
from monitor.columns import ColumnLayout
from monitor.schema import Decoder, ModelSchema
from monitor.synthetic import SyntheticStream
from monitor.windows import ClosedWindow, CountWindows

STEPS = ("decode", "ingest", "report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    load_before = os.getloadavg()
    stream = SyntheticStream(n_numeric=35, n_categorical=15, seed=4, drift_at=args.rows // 2)
    kinds = stream.features()
    models = {stream.model: ModelSchema(kinds)}  # type: ignore[arg-type]
    encoded = list(stream.encoded(args.rows))
    names = tuple(kinds)
    numeric = tuple(n for n in names if kinds[n] == "numeric")
    categorical = tuple(n for n in names if kinds[n] != "numeric")
    ref = stream.reference_columns(10_000)
    ks = KSDetector({n: np.asarray(ref[n], np.float64) for n in numeric})
    chi2 = ChiSquareDetector({n: np.asarray(ref[n], object) for n in categorical})
    layout = ColumnLayout.of(kinds, categories={n: list(map(str, chi2.categories(n)))
                                                for n in categorical})

    def run(pack_rows: bool) -> tuple[dict[str, float], Any]:
        decoder = Decoder(models, pack_rows=pack_rows)
        windows = CountWindows(stream.model, args.rows, layout=layout)
        closed: list[ClosedWindow] = []
        times = dict.fromkeys(STEPS, 0.0)
        for start in range(0, args.rows, args.batch):
            t0 = time.perf_counter()
            batch = [decoder.decode(v) for v in encoded[start:start + args.batch]]
            t1 = time.perf_counter()
            for offset, record in enumerate(batch, start):
                closed += windows.add(record, ("t", 0), offset)
            windows.seal()
            t2 = time.perf_counter()
            times["decode"] += t1 - t0
            times["ingest"] += t2 - t1
        [w] = closed
        assert w.columns is not None
        t0 = time.perf_counter()
        cols = w.feature_columns(numeric, {n: True for n in numeric})
        coded = {n: w.columns.coded(n) for n in categorical}
        report = ks.test(cols), chi2.test_codes({n: c for n, (c, _) in coded.items()},
                                                {n: k for n, (_, k) in coded.items()})
        times["report"] = time.perf_counter() - t0
        return times, report

    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    reports = {}
    for _ in range(args.repeat):
        for pack_rows in (False, True):  # alternating, so load swings hit both sides
            gc.collect()
            times, reports[pack_rows] = run(pack_rows)
            results[pack_rows].append(times)
    assert reports[False] == reports[True], "packed rows must report what dicts do"
    load_after = os.getloadavg()

    print(f"# {args.rows:,} rows x 50 features (35 numeric, 15 categorical) in one window, "
          f"reference 10,000, batches of {args.batch:,}; per batch: decode, add, seal")
    print(f"# {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}, msgspec {msgspec.__version__}")
    print(f"# load average (1, 5, 15 min) before: {fmt_load(load_before)}, "
          f"after: {fmt_load(load_after)}")
    spread = " (slowest)" if args.repeat > 1 else ""
    print(f"# best of {args.repeat}{spread}; µs per record in brackets")
    print("| step | before: feature dicts | after: packed rows |")
    print("|---|---:|---:|")
    rows = [("decode (bytes -> records, native decoder)", ("decode",)),
            ("window ingest (add each record; columns per batch)", ("ingest",)),
            ("report at close: KS (35) + chi-square (15)", ("report",)),
            ("**#14: columns built + report**", ("ingest", "report")),
            ("decode + columns + report", STEPS)]
    for label, steps in rows:
        cells = [cell([sum(t[s] for s in steps) for t in results[p]], args.rows)
                 for p in (False, True)]
        print(f"| {label} | {cells[0]} | {cells[1]} |")


def cell(seconds: list[float], rows: int) -> str:
    best = min(seconds)
    out = f"{best:.2f} s [{best / rows * 1e6:.2f}]"
    return out + f" ({max(seconds):.2f} s)" if len(seconds) > 1 else out


def fmt_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
