"""Time the detectors against plain loops over scipy, and check they agree.

Run ``python benchmarks/bench_detectors.py [--device cuda]``. Prints one row per case: our time per
window (reference precomputed once, outside the timing), the scipy loop's time per
window, their ratio, and whether statistics and p-values are bitwise identical.

KS timings are cold: the cache of exact unequal-size p-values (keyed by sizes and
lattice statistic, reused across windows in a daemon) is emptied before each run,
except in the row marked warm.

Baselines: KS is ``[ks_2samp(ref[f], cur[f]) for f in features]``. Chi-square has no
raw-array function in scipy, so its baseline counts each feature's two samples over
their union of categories (``np.unique`` + ``np.bincount``) and then calls
``chi2_contingency(table, correction=False)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import ChiSquareDetector, KSDetector
from detectors.ks import _exact_unequal


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ks_case(
    n_features: int, n_ref: int, n_cur: int, repeat: int, warm: bool = False, shift: float = 0.0
) -> tuple[float, float, bool]:
    """KS timings; cold (``warm=False``) empties the exact p-value cache before each run."""
    rng = np.random.default_rng(0)
    ref = {f"f{i}": rng.normal(size=n_ref) for i in range(n_features)}
    cur = {f"f{i}": rng.normal(shift, size=n_cur) for i in range(n_features)}
    detector = KSDetector(ref, correction="none")

    def baseline() -> list:
        return [stats.ks_2samp(ref[f], cur[f]) for f in ref]

    ours = [(f.statistic, f.p_value) for f in detector.test(cur).features]
    theirs = [(float(r.statistic), float(r.pvalue)) for r in baseline()]

    def run() -> object:
        if not warm:
            _exact_unequal.cache_clear()
        return detector.test(cur)

    return best_time(run, repeat), best_time(baseline, repeat), ours == theirs


def chi2_case(
    n_features: int, n_levels: int, n_ref: int, n_cur: int, repeat: int
) -> tuple[float, float, bool]:
    rng = np.random.default_rng(0)
    levels = np.array([f"level_{i}" for i in range(n_levels)])
    ref = {f"c{i}": rng.choice(levels, size=n_ref) for i in range(n_features)}
    cur = {f"c{i}": rng.choice(levels, size=n_cur) for i in range(n_features)}
    detector = ChiSquareDetector(ref, correction="none")

    def baseline() -> list:
        out = []
        for f in ref:
            _, codes = np.unique(np.concatenate([ref[f], cur[f]]), return_inverse=True)
            k = codes.max() + 1
            table = np.stack(
                [np.bincount(codes[:n_ref], minlength=k), np.bincount(codes[n_ref:], minlength=k)]
            )
            out.append(stats.chi2_contingency(table, correction=False))
        return out

    ours = [(f.statistic, f.p_value) for f in detector.test(cur).features]
    theirs = [(float(r.statistic), float(r.pvalue)) for r in baseline()]
    return (
        best_time(lambda: detector.test(cur), repeat),
        best_time(baseline, repeat),
        ours == theirs,
    )


def ks_torch_case(
    n_features: int, n: int, device: str, repeat: int
) -> tuple[float, float, bool]:
    """Batched KS in torch on ``device`` against the numpy detector (not scipy): its
    statistics must be equal and its p-values equal to 1e-12 (the same formulas)."""
    import torch

    from detectors import TorchKSDetector

    rng = np.random.default_rng(0)
    ref = {f"f{i}": rng.normal(size=n) for i in range(n_features)}
    cur = {f"f{i}": rng.normal(size=n) for i in range(n_features)}
    numpy_det = KSDetector(ref, correction="none")
    torch_det = TorchKSDetector(ref, correction="none", device=device)

    def run() -> object:
        result = torch_det.test(cur)  # returns host results: the device work is finished
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return result

    run()  # warm-up: CUDA context and kernels
    ours = [(f.statistic, f.p_value) for f in torch_det.test(cur).features]
    ref_rows = [(f.statistic, f.p_value) for f in numpy_det.test(cur).features]
    same = all(a == c and b is not None and d is not None and abs(b - d) <= 1e-12 * max(d, 1e-300)
               for (a, b), (c, d) in zip(ours, ref_rows, strict=True))
    return best_time(run, repeat), best_time(lambda: numpy_det.test(cur), repeat), same


def auto_method(n1: int, n2: int) -> str:
    """Which p-value method ks_2samp(method="auto") uses at these sizes, found by comparison."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=n1), rng.normal(0.03, size=n2)
    auto = stats.ks_2samp(x, y).pvalue
    picked = [m for m in ("exact", "asymp") if stats.ks_2samp(x, y, method=m).pvalue == auto]
    return "/".join(picked) or "neither"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None,
                        help="also time batched KS in torch here (cpu, cuda, cuda:N)")
    args = parser.parse_args()
    print(f"numpy {np.__version__}, scipy {__import__('scipy').__version__}")
    for n1, n2 in [(10_000, 10_000), (10_000, 5_000), (10_001, 10_000), (50_000, 10_000)]:
        print(f"ks_2samp method='auto' at {n1} x {n2} uses: {auto_method(n1, n2)}")
    print(f"{'case':<44}{'ours ms':>10}{'scipy ms':>10}{'ratio':>8}{'identical':>11}")
    rows = [
        ("KS 20 features, 10k ref x 10k cur", lambda: ks_case(20, 10_000, 10_000, 7)),
        ("KS 100 features, 10k ref x 10k cur", lambda: ks_case(100, 10_000, 10_000, 3)),
        (
            "KS 100 features, 10k x 10k, drifted 0.5 sd",
            lambda: ks_case(100, 10_000, 10_000, 3, shift=0.5),
        ),
        ("KS 100 features, 50k ref x 10k cur (asymp)", lambda: ks_case(100, 50_000, 10_000, 3)),
        ("KS 20 features, 10k ref x 5k cur (exact)", lambda: ks_case(20, 10_000, 5_000, 3)),
        (
            "  same, p-value cache warm (same window)",
            lambda: ks_case(20, 10_000, 5_000, 3, warm=True),
        ),
        ("chi2 20 features x 10 levels, 10k x 10k", lambda: chi2_case(20, 10, 10_000, 10_000, 7)),
    ]
    for label, run in rows:
        ours, theirs, same = run()
        print(
            f"{label:<44}{ours * 1e3:>10.1f}{theirs * 1e3:>10.1f}{theirs / ours:>7.1f}x{same!s:>11}"
        )
    if args.device:
        import torch

        name = (torch.cuda.get_device_name(torch.device(args.device))
                if args.device.startswith("cuda") else "CPU")
        print(f"\nbatched KS in torch {torch.__version__} on {args.device} ({name}); baseline: "
              "the numpy KSDetector; 'identical': equal statistics, p-values to 1e-12")
        print(f"{'case':<44}{'torch ms':>10}{'numpy ms':>10}{'ratio':>8}{'identical':>11}")
        for features, n in ((100, 10_000), (20, 10_000), (100, 50_000)):
            ours, theirs, same = ks_torch_case(features, n, args.device, 20)
            label = f"KS {features} features, {n // 1000}k x {n // 1000}k"
            print(f"{label:<44}{ours * 1e3:>10.2f}{theirs * 1e3:>10.1f}"
                  f"{theirs / ours:>7.1f}x{same!s:>11}")


if __name__ == "__main__":
    main()
