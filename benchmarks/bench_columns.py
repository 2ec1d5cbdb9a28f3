"""A window's drift report at scale: its columns, then KS + chi-square.

``--rows`` decoded records of a model with 50 features (35 numeric, 15 categorical) in one
count window, a 10,000-row reference. Times, best of ``--repeat``:

* before (record windows): the window keeps its record objects, and at close
  :func:`monitor.windows.feature_columns` builds one array per feature (float64, or object
  for categories); KS and chi-square then test those arrays;
* columnar windows (:mod:`monitor.columns`): the records go into the window's column
  buffers once per batch of ``--batch`` records (the daemon's default ``max_poll_records``),
  categories as integer codes; at close the detectors get views of those arrays (KS over
  the floats, chi-square counting codes with ``np.bincount``).

"Window ingest" is everything the window does with the records (adding each one, with its
offsets and times, and, for columnar windows, the per-batch column writes), so the two
columns compare like with like. The records are decoded before timing (about 1.5 KB of
memory per record: 1M rows need ~4 GB).

    python benchmarks/bench_columns.py [--rows 1000000] [--repeat 3] [--batch 5000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from detectors.chisquare import ChiSquareDetector
from detectors.ks import KSDetector
from monitor.columns import ColumnLayout
from monitor.schema import Decoder, ModelSchema
from monitor.synthetic import SyntheticStream
from monitor.windows import ClosedWindow, CountWindows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=5000)
    args = ap.parse_args()
    stream = SyntheticStream(n_numeric=35, n_categorical=15, seed=4, drift_at=args.rows // 2)
    kinds = stream.features()
    decoder = Decoder({stream.model: ModelSchema(kinds)})  # type: ignore[arg-type]
    records = [decoder.decode(v) for v in stream.encoded(args.rows)]
    names = tuple(kinds)
    numeric = {n: k == "numeric" for n, k in kinds.items()}
    ref = stream.reference_columns(10_000)
    ks = KSDetector({n: np.asarray(ref[n], np.float64) for n in names if numeric[n]})
    chi2 = ChiSquareDetector({n: np.asarray(ref[n], object) for n in names if not numeric[n]})
    categorical = tuple(n for n in names if not numeric[n])
    layout = ColumnLayout.of(kinds, categories={n: chi2.categories(n) for n in categorical})

    def ingest(layout: ColumnLayout | None) -> ClosedWindow:
        windows = CountWindows(stream.model, args.rows, layout=layout)
        closed: list[ClosedWindow] = []
        for start in range(0, args.rows, args.batch):
            for offset in range(start, min(start + args.batch, args.rows)):
                closed += windows.add(records[offset], ("t", 0), offset)
            windows.seal()
        [window] = closed
        return window

    def old_report(w: ClosedWindow) -> Any:
        cols = w.feature_columns(names, numeric)  # from the record objects
        return ks.test(cols), chi2.test(cols)

    def new_report(w: ClosedWindow) -> Any:
        assert w.columns is not None
        cols = w.feature_columns(tuple(n for n in names if numeric[n]), numeric)
        coded = {n: w.columns.coded(n) for n in categorical}
        return ks.test(cols), chi2.test_codes({n: c for n, (c, _) in coded.items()},
                                              {n: k for n, (_, k) in coded.items()})

    before_ingest, before_window = best(lambda: ingest(None), args.repeat)
    before_report, old = best(partial(old_report, before_window), args.repeat)
    before_window = None  # its records are freed before the columnar run
    after_ingest, after_window = best(lambda: ingest(layout), args.repeat)
    after_report, new = best(partial(new_report, after_window), args.repeat)
    assert old == new, "columnar windows must report exactly what record windows do"

    print(f"# {args.rows:,} rows x 50 features (35 numeric, 15 categorical) in one window, "
          f"reference 10,000, batches of {args.batch:,}")
    print(f"# {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}; best of {args.repeat}")
    print("| step | record windows (before) | columnar windows |")
    print("|---|---:|---:|")
    print(f"| window ingest (add each record; columns per batch) | {before_ingest:.2f} s | "
          f"{after_ingest:.2f} s |")
    print(f"| report at close: columns + KS (35) + chi-square (15) | {before_report:.2f} s | "
          f"{after_report:.2f} s |")
    print(f"| **total: columns built and tested** | {before_ingest + before_report:.2f} s | "
          f"{after_ingest + after_report:.2f} s |")


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The fastest of ``repeat`` calls and the last call's result."""
    times, out = [], None
    for _ in range(repeat):
        out = None  # the previous result is freed before the next call
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
