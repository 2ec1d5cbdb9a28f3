"""Time the MMD permutation test: batched (numpy, torch) against a naive loop over permutations.

Run ``python benchmarks/bench_mmd.py`` (options: ``--help``). For each size ``n`` (rows
per side, reference and window both ``n x d`` standard normal, d = 384 by default) it
prints the time of one window's ``MMDDetector.test`` with 1000 permutations:

* driftline numpy (CPU, float64);
* driftline torch on the CPU (float64), and on CUDA (float32, its default) when torch
  sees a CUDA device;
* the naive baseline: the dense pooled kernel matrix computed once, then a Python loop
  over permutations, each gathering ``K[perm][:, perm]`` and averaging its blocks (the
  textbook implementation);
* a smarter loop ("matvec loop"): the same dense kernel matrix, then per permutation
  one matrix-vector product ``K s`` and the same closed form as the detector (so it
  isolates the gain of batching all permutations into matrix-matrix products).

The two loops run ``--naive-permutations`` permutations and are extrapolated linearly to
the full count (kernel time + per-permutation time x count); the table says how many
were measured.

Times are per window and exclude the detector's construction (reference validation,
median bandwidth, the cached reference kernel tiles when they fit in 256 MiB: done once
per reference in a daemon), which is shown separately for numpy ("numpy init"); the
loops' times include their whole kernel matrix. Each "ratio" is that loop's time over
driftline numpy's. The numpy and torch CPU p-values are checked to be equal.

The last row runs ``--big`` rows per side (default 50,000) in a child process, blocked,
with ``--big-permutations`` permutations (default 100, fewer than 1000 to bound the time
on small machines; the memory does not depend much on it: see the detector's Notes),
and reports its wall time and the child's peak resident memory -- the dense kernel
matrix alone would need ``8 (2 n)^2`` bytes (80 GB at 50,000).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.mmd import MMDDetector
from detectors.results import DriftResult

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best wall time of ``repeat`` (>= 1) calls in seconds, and the last result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_test(detector: MMDDetector, window: np.ndarray, repeat: int) -> tuple[float, DriftResult]:
    """Best time of ``detector.test(window)`` and its result."""
    return best_time(lambda: detector.test(window), repeat)


def data(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def naive(
    x: np.ndarray, y: np.ndarray, bandwidth: float, n_perm: int
) -> tuple[float, float, float]:
    """(kernel s, s per permutation of the gather loop, s per permutation of the matvec loop)."""
    start = time.perf_counter()
    z = np.vstack([x, y])
    sq = np.einsum("ij,ij->i", z, z)
    k = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0) / (2 * bandwidth**2))
    kernel_s = time.perf_counter() - start
    n, m = len(x), len(y)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    stats = []
    for _ in range(n_perm):
        perm = rng.permutation(n + m)
        kp = k[np.ix_(perm, perm)]
        kxx, kyy, kxy = kp[:n, :n], kp[n:, n:], kp[:n, n:]
        stats.append(
            (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()
        )
    gather_s = (time.perf_counter() - start) / n_perm
    start = time.perf_counter()
    rowsum, total, big_n = k.sum(axis=1), k.sum(), n + m
    for _ in range(n_perm):
        a = np.zeros(big_n, dtype=bool)
        a[rng.permutation(big_n)[:n]] = True
        s = np.where(a, 1.0 / n, -1.0 / m)
        q, u = s @ (k @ s), s @ rowsum  # one matrix-vector product per permutation
        within_x = (m / big_n) ** 2 * q + 2 * m * u / big_n**2 + total / big_n**2
        within_y = (n / big_n) ** 2 * q - 2 * n * u / big_n**2 + total / big_n**2
        stats.append(q + (within_x - 1) / (n - 1) + (within_y - 1) / (m - 1))
    return kernel_s, gather_s, (time.perf_counter() - start) / n_perm


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    VmHWM (Linux) belongs to this process's address space only; ``ru_maxrss`` can carry
    the parent's high-water mark over fork/exec, so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def big_child(n: int, d: int, n_perm: int, block_size: int, backend: str = "numpy",
              device: str = "cpu") -> None:
    """Run in a child process: one blocked window at ``n`` per side; print JSON."""
    x, y = data(n, d)
    start = time.perf_counter()
    detector = MMDDetector(x, n_permutations=n_perm, block_size=block_size,
                           **({"backend": "torch", "device": device} if backend == "torch"
                              else {}))
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    result = detector.test(y)
    test_s = time.perf_counter() - start
    peak_kib = peak_rss_kib()
    gpu_peak = 0.0
    if device.startswith("cuda"):
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        json.dumps(
            {
                "gpu_peak_gib": gpu_peak,
                "init_s": init_s,
                "test_s": test_s,
                "peak_gib": peak_kib / 2**20,
                "statistic": result.statistic,
                "p_value": result.p_value,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,5000,10000", help="rows per side, comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--naive-permutations", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    parser.add_argument("--big", type=int, default=50_000, help="0 skips the big row")
    parser.add_argument("--big-permutations", type=int, default=100)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--big-backend", choices=["numpy", "torch"], default="numpy")
    parser.add_argument("--big-device", default="cpu", help="torch big row: cpu, cuda, cuda:N")
    parser.add_argument("--big-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.big_child:
        big_child(args.big, args.dim, args.big_permutations, args.block_size,
                  args.big_backend, args.big_device)
        return

    n_perm, d = args.permutations, args.dim
    use_torch = not args.no_torch
    use_cuda = use_torch and cuda_available()
    print(f"MMD permutation test, d = {d}, {n_perm} permutations, one window; times in ms")
    header = (
        f"{'n per side':>10} | {'numpy init':>10} | {'numpy CPU':>10} | {'torch CPU':>10} | "
        f"{'torch CUDA':>10} | "
        f"{'naive loop':>11} | {'ratio':>6} | {'matvec loop':>11} | {'ratio':>6} | "
        "numpy vs torch CPU | loops measured"
    )
    print(header)
    print("-" * len(header))
    for n in (int(s) for s in args.sizes.split(",") if s):
        x, y = data(n, d)
        common = {"n_permutations": n_perm, "block_size": args.block_size}
        start = time.perf_counter()
        numpy_det = MMDDetector(x, **common)
        init_s = time.perf_counter() - start
        numpy_s, numpy_res = time_test(numpy_det, y, args.repeat)
        torch_s = cuda_s = float("nan")
        parity = "-"
        if use_torch:
            torch_det = MMDDetector(x, backend="torch", device="cpu", **common)
            torch_s, torch_res = time_test(torch_det, y, args.repeat)
            same_p = torch_res.p_value == numpy_res.p_value
            rel = abs(torch_res.statistic - numpy_res.statistic) / abs(numpy_res.statistic)
            parity = f"p {'==' if same_p else '!='}, stat rel {rel:.0e}"
        if use_cuda:
            cuda_det = MMDDetector(x, backend="torch", device="cuda", **common)
            cuda_det.test(y)  # warm-up: CUDA context, kernels
            cuda_s, _ = time_test(cuda_det, y, max(args.repeat, 3))
        kernel_s, gather_s, matvec_s = naive(x, y, numpy_det.bandwidth, args.naive_permutations)
        naive_s = kernel_s + gather_s * n_perm
        loop_s = kernel_s + matvec_s * n_perm
        print(
            f"{n:>10,} | {init_s * 1e3:>10,.0f} | {numpy_s * 1e3:>10,.0f} | "
            f"{torch_s * 1e3:>10,.0f} | "
            f"{cuda_s * 1e3:>10,.0f} | {naive_s * 1e3:>11,.0f} | {naive_s / numpy_s:>5.1f}x | "
            f"{loop_s * 1e3:>11,.0f} | {loop_s / numpy_s:>5.1f}x | {parity} | "
            f"{args.naive_permutations} perms, extrapolated"
        )
    if args.big:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--big-child",
                f"--big={args.big}",
                f"--dim={d}",
                f"--big-permutations={args.big_permutations}",
                f"--block-size={args.block_size}",
                f"--big-backend={args.big_backend}",
                f"--big-device={args.big_device}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out = json.loads(child.stdout.strip().splitlines()[-1])
        dense_gb = 8 * (2 * args.big) ** 2 / 1e9
        print(
            f"{args.big:>10,} | {out['init_s'] * 1e3:>10,.0f} | {out['test_s'] * 1e3:>10,.0f} | "
            f"{args.big_backend} {args.big_device}, blocked "
            f"(tiles {args.block_size}^2), {args.big_permutations} permutations (reduced), "
            f"no subsampling: peak RSS {out['peak_gib']:.2f} GiB, peak GPU memory "
            f"{out['gpu_peak_gib']:.2f} GiB (dense K: {dense_gb:.0f} GB); "
            f"p = {out['p_value']:.3g}"
        )
    print(f"CPU cores available: {len(os.sched_getaffinity(0))}")


if __name__ == "__main__":
    main()
