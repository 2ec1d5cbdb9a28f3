"""Per-feature drift tests: driftline vs a plain scipy loop vs Evidently's Report, one run.

Cases (reference and current window of 10,000 rows each, no drift):
  * 100 numeric features, two-sample KS;
  * 20 categorical features of 10 levels, chi-square.

driftline's reference state is prepared once, as the daemon does, and only ``test()`` is
timed; the scipy loop and Evidently get the raw columns (their only interface). Evidently
runs ``DataDriftPreset`` with the same test forced for every column (``ks`` or
``chisquare``); its chi-square is a goodness-of-fit test against the reference
proportions, not the two-sample homogeneity test driftline and the loop run, so only the KS
p-values are compared with it.

    pip install 'driftline[bench]'      # Evidently; it needs pandas < 3
    python benchmarks/bench_vs_evidently.py [--repeat 5] [--no-evidently]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from detectors import ChiSquareDetector, KSDetector


def best_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000, out


def evidently_report(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray], method: str,
                     categorical: bool) -> Callable[[], dict[str, float]]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = list(ref)
    definition = (DataDefinition(categorical_columns=names) if categorical
                  else DataDefinition(numerical_columns=names))
    ref_ds = Dataset.from_pandas(pd.DataFrame(ref), data_definition=definition)
    cur_ds = Dataset.from_pandas(pd.DataFrame(cur), data_definition=definition)
    report = Report([DataDriftPreset(method=method)])

    def run() -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = report.run(cur_ds, ref_ds).dict()
        out = {}
        for metric in result["metrics"]:
            cfg = metric.get("config", {})
            if cfg.get("type", "").endswith("ValueDrift"):
                out[cfg["column"]] = float(metric["value"])
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--no-evidently", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    rows = []

    ref = {f"x{i}": rng.normal(size=n) for i in range(100)}
    cur = {f"x{i}": rng.normal(size=n) for i in range(100)}
    det = KSDetector(ref, correction="none")
    ours_ms, ours = best_ms(lambda: det.test(cur), args.repeat)
    loop_ms, loop = best_ms(lambda: [stats.ks_2samp(ref[k], cur[k]) for k in ref], args.repeat)
    ours_p = np.array([f.p_value for f in ours.features])
    same = np.allclose(ours_p, np.array([r.pvalue for r in loop]), rtol=1e-12, atol=0)
    ev_ms, ev_same = None, None
    if not args.no_evidently:
        ev_ms, ev = best_ms(evidently_report(ref, cur, "ks", categorical=False),
                            max(1, args.repeat // 2))
        ev_same = bool(np.allclose([ev[k] for k in ref], ours_p, rtol=1e-9, atol=0))
    rows.append(("KS, 100 numeric features", ours_ms, loop_ms, same, ev_ms, ev_same))

    levels = np.asarray([f"l{i}" for i in range(10)], dtype=object)
    cref = {f"c{i}": levels[rng.integers(0, 10, n)] for i in range(20)}
    ccur = {f"c{i}": levels[rng.integers(0, 10, n)] for i in range(20)}
    cdet = ChiSquareDetector(cref, correction="none")

    def chi2_loop() -> list[float]:
        out = []
        for k in cref:
            cats, inv = np.unique(np.concatenate([cref[k], ccur[k]]), return_inverse=True)
            table = np.stack([np.bincount(inv[:n], minlength=len(cats)),
                              np.bincount(inv[n:], minlength=len(cats))])
            out.append(stats.chi2_contingency(table, correction=False).pvalue)
        return out

    ours_ms, ours = best_ms(lambda: cdet.test(ccur), args.repeat)
    loop_ms, loop = best_ms(chi2_loop, args.repeat)
    same = np.allclose(np.array([f.p_value for f in ours.features]), np.array(loop),
                       rtol=1e-12, atol=0)
    ev_ms = None
    if not args.no_evidently:
        ev_ms, _ = best_ms(evidently_report(cref, ccur, "chisquare", categorical=True),
                           max(1, args.repeat // 2))
    rows.append(("chi-square, 20 categorical x 10", ours_ms, loop_ms, same, ev_ms, None))

    print(f"# per-feature tests, {n} reference vs {n} current rows; best of {args.repeat} "
          f"(Evidently best of {max(1, args.repeat // 2)})")
    print(f"# {platform.machine()}, {platform.processor() or 'cpu'}, Python "
          f"{platform.python_version()}, numpy {np.__version__}")
    print("| case | driftline ms | scipy loop ms | loop / driftline | same p-values as loop "
          "(rtol 1e-12) | Evidently ms | Evidently / driftline | Evidently p-values equal |")
    print("|---|---:|---:|---:|:-:|---:|---:|:-:|")
    for name, o, lp, same, ev, ev_same in rows:
        ev_cols = ("n/a", "n/a", "n/a") if ev is None else (
            f"{ev:.0f}", f"{ev / o:.0f}x",
            "n/a (goodness-of-fit)" if ev_same is None else ("yes" if ev_same else "no"))
        print(f"| {name} | {o:.1f} | {lp:.1f} | {lp / o:.1f}x | {'yes' if same else 'no'} | "
              f"{ev_cols[0]} | {ev_cols[1]} | {ev_cols[2]} |")


if __name__ == "__main__":
    main()
