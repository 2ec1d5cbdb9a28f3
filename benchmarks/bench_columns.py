"""A window's drift report at scale: building its columns from records, then KS + chi-square.

``--rows`` decoded records of a model with 50 features (35 numeric, 15 categorical) in one
window, a 10,000-row reference. Times, best of ``--repeat``: building the columns the old way
(one Python step per record and feature), with :func:`monitor.windows.feature_columns`, and
the per-feature KS and chi-square tests on those columns. The records are decoded before
timing (about 1.5 KB of memory per record and feature set: 1M rows need ~4 GB).

    python benchmarks/bench_columns.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detectors.chisquare import ChiSquareDetector
from detectors.ks import KSDetector
from monitor.schema import Decoder, ModelSchema
from monitor.synthetic import SyntheticStream
from monitor.windows import feature_columns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
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

    def per_cell() -> dict[str, np.ndarray]:  # what the window's columns cost before
        return {n: np.asarray([r.features[n] for r in records],
                              dtype=np.float64 if numeric[n] else object) for n in names}

    old = best(per_cell, args.repeat)
    new = best(lambda: feature_columns(records, names, numeric), args.repeat)
    cols = feature_columns(records, names, numeric)
    ref_cols = per_cell()
    assert all(np.array_equal(cols[n], ref_cols[n]) for n in names)
    tests = best(lambda: (ks.test(cols), chi2.test(cols)), args.repeat)

    print(f"# {args.rows:,} rows x 50 features (35 numeric, 15 categorical), reference 10,000")
    print(f"# {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}; best of {args.repeat}")
    print("| step | s |")
    print("|---|---:|")
    print(f"| columns, one Python step per (record, feature) (before) | {old:.2f} |")
    print(f"| columns, `feature_columns` | {new:.2f} |")
    print(f"| KS (35) + chi-square (15) on the columns | {tests:.2f} |")
    print(f"| report with `feature_columns` | {new + tests:.2f} |")


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
