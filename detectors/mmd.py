"""Maximum mean discrepancy (MMD) permutation test for multivariate samples (embeddings)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import (
    NUMERIC_KINDS,
    assemble,
    can_reject,
    check_int,
    check_unit_interval,
    insufficient,
)
from .backend import check_device, require_torch, resolve_device, resolve_dtype
from .errors import InsufficientDataError
from .results import DriftResult

__all__ = ["KernelMMD", "MMDDetector", "MMDSetup"]

#: Backends of the multivariate detectors.
BACKENDS: tuple[str, ...] = ("numpy", "torch")
#: The median heuristic looks at the pairs of at most this many reference rows.
MEDIAN_ROWS = 2000
#: The reference's kernel tiles are kept between windows when they take at most this.
REFERENCE_CACHE_BYTES = 256 * 2**20
#: Permuted statistics within this times the pooled mean kernel value of the observed one
#: count as ties (see :class:`MMDDetector` Notes).
TIE_TOLERANCE = 1e-12
#: Rows of permutation labels drawn at a time (bounds the random keys' memory).
_LABEL_CHUNK = 128


class MMDDetector:
    """Kernel two-sample test (MMD, Gaussian kernel) of a window against a reference.

    Tests whether the rows of a current ``(m, d)`` array (e.g. embeddings) come from
    the same ``d``-dimensional distribution as those of the reference ``(n, d)``; the
    result has one pseudo-feature, ``feature``.

    Parameters
    ----------
    reference : numpy.ndarray, shape (n, d)
        Numeric (bool, int or float; NaN and inf rejected), ``n >= min_samples``,
        ``d >= 1``. Copied; the caller's array is not modified.
    alpha : float, default 0.05
        Significance level in (0, 1): the window drifts when ``p_value < alpha``.
    n_permutations : int, default 1000
        Random permutations of the pooled sample (>= 1). The smallest attainable
        p-value is ``1 / (1 + n_permutations)``.
    bandwidth : float or "median", default "median"
        Kernel bandwidth :math:`\\sigma` (finite, > 0), or ``"median"`` for the median
        heuristic on the reference (see Notes).
    backend : {"numpy", "torch"}, default "numpy"
        Where the kernel and the permutation sums are computed. ``"torch"`` needs torch
        (``pip install 'driftline[embeddings]'``).
    device : {"cpu", "cuda", "cuda:N", "auto"}, default "cpu"
        torch device (see :func:`detectors.backend.resolve_device`); resolved here, so
        an unavailable CUDA device raises
        :class:`~detectors.backend.DeviceUnavailableError` at construction. The numpy
        backend runs on the CPU only and accepts only ``"cpu"``.
    dtype : {None, "float32", "float64"}, default None
        Compute precision of the kernel and the permutation products. ``None``: float32
        on CUDA, float64 otherwise. Statistics are always accumulated and combined in
        float64.
    max_n : int or None, default None
        When set (>= 2), at most ``max_n`` rows of each side are tested: a seeded
        random subsample of the reference (drawn once, here) and of each window. The
        reported ``n_reference`` / ``n_current`` are the sizes actually tested.
    seed : int, default 0
        Seeds the permutations (``numpy.random.default_rng(seed)``, the same for every
        window and both backends), the subsamples and the median heuristic's rows.
    block_size : int, default 2048
        Side of the kernel tiles (>= 1): at most ``block_size**2`` kernel entries exist
        at a time, whatever the sample sizes.
    min_samples : int, default 2
        Fewest rows a side may hold (>= 2). A reference with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a window with fewer yields a
        result with ``insufficient_data=True``.
    feature : str, default "embedding"
        Name of the result's single pseudo-feature.

    Attributes
    ----------
    bandwidth : float
        The kernel bandwidth :math:`\\sigma` in use.
    device : str
        ``"cpu"`` for numpy; the resolved torch device (``"cpu"``, ``"cuda:0"``, ...).
    dtype : str
        The compute precision in use.

    Notes
    -----
    **Statistic.** With the Gaussian kernel
    :math:`k(x, y) = \\exp(-\\lVert x - y \\rVert^2 / (2\\sigma^2))`, reference
    :math:`X = (x_i)_{i \\le n}` and window :math:`Y = (y_j)_{j \\le m}`, the statistic is
    the unbiased estimate of the squared MMD (Gretton et al., 2012, eq. 3)

    .. math:: \\widehat{\\mathrm{MMD}}^2_u = \\frac{1}{n(n-1)} \\sum_{i \\ne i'} k(x_i, x_{i'})
              + \\frac{1}{m(m-1)} \\sum_{j \\ne j'} k(y_j, y_{j'})
              - \\frac{2}{nm} \\sum_{i, j} k(x_i, y_j),

    whose null expectation is 0 for any sizes (so values are comparable across window
    sizes; it can be slightly negative). The biased V-statistic adds the diagonal terms
    and is biased upwards by about :math:`(1 - \\bar k_X)/n + (1 - \\bar k_Y)/m`; it is
    computed on the way (below) but only the unbiased one is reported and permuted.

    **Permutation test.** Pool :math:`Z = (X, Y)`, :math:`N = n + m`, pooled kernel
    matrix :math:`K`. A relabelling is a vector :math:`a \\in \\{0, 1\\}^N` with :math:`n`
    ones (the rows called "reference"); let :math:`s = a/n - (1 - a)/m`, row sums
    :math:`r = K\\mathbf{1}` and :math:`T = \\mathbf{1}^\\top K \\mathbf{1}`. Then the biased
    statistic is :math:`q = s^\\top K s`, the mean kernel within each side is

    .. math:: w_X = \\frac{m^2}{N^2} q + \\frac{2m}{N^2} s^\\top r + \\frac{T}{N^2},\\qquad
              w_Y = \\frac{n^2}{N^2} q - \\frac{2n}{N^2} s^\\top r + \\frac{T}{N^2},

    and, since :math:`k(z, z) = 1`,
    :math:`\\widehat{\\mathrm{MMD}}^2_u = q + (w_X - 1)/(n - 1) + (w_Y - 1)/(m - 1)`.
    With the :math:`P = ` ``n_permutations`` relabellings and the observed one stacked
    as the rows of :math:`S \\in \\mathbb{R}^{(P+1) \\times N}`, all of them come from one
    pass over :math:`K`: :math:`q = \\mathrm{rowsum}((S K) \\circ S)` and
    :math:`S r` -- matrix products, no loop over permutations. The p-value is

    .. math:: p = \\frac{1 + \\#\\{b : \\widehat{\\mathrm{MMD}}^2_{u,b} \\ge
              \\widehat{\\mathrm{MMD}}^2_{u,\\mathrm{obs}} - \\tau\\}}{1 + P},

    valid (never anti-conservative) for a fixed kernel under exchangeability. The
    tolerance :math:`\\tau = 10^{-12}\\,T/N^2` (:math:`T/N^2` is the pooled mean
    kernel value, the scale of every term) counts float64 rounding-level differences
    as ties, so that mathematically equal statistics (e.g. of duplicated rows) compare
    the same way on every float64 backend; it is many orders of magnitude below the
    null spread of the statistic (which shrinks like :math:`1/N`). In float32 exact
    ties are split by rounding noise instead, which can lower the p-value by up to the
    fraction of tied permutations: use float64 for very discrete data. The
    relabellings are drawn by ``numpy.random.default_rng(seed)`` (each row: the
    :math:`n` smallest of :math:`N` uniform keys), the same for every window and for
    both backends, which therefore give the same p-value.

    **Blocking.** :math:`K` is never formed: it is visited in ``block_size`` square
    tiles, on and above the diagonal only (it is symmetric), reference and window
    rows being tiled separately. Tile :math:`K_{IJ}` adds
    :math:`(2 - \\delta_{IJ})\\,\\mathrm{rowsum}((S_{:,I} K_{IJ}) \\circ S_{:,J})` to
    :math:`q` and its row and column sums to :math:`r`. Each kernel entry is computed
    once per window, costing :math:`N^2 d` multiply-adds for the kernel and
    :math:`N^2 (P+1)` for the permutations (halved by symmetry). Memory is
    :math:`O(N(P + d) + \\mathrm{block\\_size}^2 + \\mathrm{block\\_size}\\,P)`: at
    :math:`n = m = 50\\,000`, :math:`d = 384`, float64, about 1.6 GB with
    :math:`P = 1000` (:math:`S` 0.8 GB, labels and their random keys 0.3 GB, data
    and its copies 0.5 GB, one tile 32 MB; 0.95 GiB peak RSS measured with
    :math:`P = 100`), against 80 GB for the dense :math:`K`. The reference's own
    tiles (:math:`K_{XX}`) and their row sums are computed once, here, and reused by
    every window when they take at most :data:`REFERENCE_CACHE_BYTES`.

    **Bandwidth.** ``"median"`` sets :math:`\\sigma` to the median Euclidean distance
    between distinct reference rows (over the pairs of a seeded subsample of
    :data:`MEDIAN_ROWS` rows when the reference is larger; if that median is 0, the
    median of the non-zero distances; if all rows are equal, 1). It is computed on the
    reference, once, rather than on each pooled sample: the kernel, hence the
    statistic's scale, is then the same for every window, the reference tiles can be
    precomputed, and a drifted window cannot inflate the bandwidth (the pooled median
    grows with the shift, which flattens the kernel and costs power). The price is
    that the kernel depends on which rows are labelled "reference", so the permutation
    test is exact only up to the median's sampling fluctuation, which is
    :math:`O(n^{-1/2})` relative and, by the calibration tests, immaterial even at
    :math:`n = 30`. A fixed ``bandwidth`` gives an exact test.

    **Subsampling** (``max_n``) bounds the cost at :math:`O(\\mathrm{max\\_n}^2 (d + P))`
    per window but tests fewer rows: the test stays valid, but since the null spread
    of :math:`\\widehat{\\mathrm{MMD}}^2_u` shrinks like :math:`1/n`, the smallest
    detectable :math:`\\mathrm{MMD}^2` grows by about ``n / max_n`` (the smallest
    detectable mean shift by about :math:`\\sqrt{n / \\mathrm{max\\_n}}`).

    **Precision.** float64 (the CPU default) agrees with the dense formula to about
    :math:`10^{-13}` absolute. float32 (the CUDA default, several times faster on GPUs)
    differs from it by about :math:`10^{-9}` (:math:`n = m = 2000`, :math:`d = 384`),
    far below the null spread (:math:`2 \\cdot 10^{-5}` there), so p-values agree up to
    rare near-boundary permutations; ask for ``dtype="float64"`` for the same p-values
    as the CPU. TF32 matrix products (``torch.backends.cuda.matmul.allow_tf32``, off
    by default; the detector does not touch global torch settings) lose about three
    more digits in the squared distances and should stay off.
    """

    name = "mmd"

    def __init__(
        self,
        reference: np.ndarray,
        *,
        alpha: float = 0.05,
        n_permutations: int = 1000,
        bandwidth: float | str = "median",
        backend: str = "numpy",
        device: str = "cpu",
        dtype: str | None = None,
        max_n: int | None = None,
        seed: int = 0,
        block_size: int = 2048,
        min_samples: int = 2,
        feature: str = "embedding",
    ) -> None:
        setup = MMDSetup(reference, alpha=alpha, n_permutations=n_permutations,
                         backend=backend, device=device, dtype=dtype, max_n=max_n, seed=seed,
                         block_size=block_size, min_samples=min_samples, feature=feature)
        self._setup = setup
        self.alpha, self.n_permutations, self.seed = setup.alpha, setup.n_permutations, setup.seed
        self.block_size, self.min_samples, self.max_n = (setup.block_size, setup.min_samples,
                                                         setup.max_n)
        self.feature, self.backend = setup.feature, setup.backend
        self.device, self.dtype = setup.device, setup.dtype
        self.n_features, self._n = setup.n_features, setup.n
        self.bandwidth = (
            median_distance(setup.reference, self.seed)
            if isinstance(bandwidth, str) and bandwidth == "median"
            else check_bandwidth(bandwidth)
        )
        self._kernel = KernelMMD(setup, (self.bandwidth,))

    def __repr__(self) -> str:
        return (
            f"MMDDetector(n_reference={self._n}, n_features={self.n_features}, "
            f"alpha={self.alpha}, n_permutations={self.n_permutations}, "
            f"bandwidth={self.bandwidth!r}, backend={self.backend!r}, device={self.device!r}, "
            f"dtype={self.dtype!r}, max_n={self.max_n}, seed={self.seed})"
        )

    def test(self, current: np.ndarray) -> DriftResult:
        """Test the rows of ``current`` against the reference.

        Parameters
        ----------
        current : numpy.ndarray, shape (m, d)
            Numeric, same ``d`` as the reference, no NaN/inf. An empty window (``m = 0``,
            also an empty 1-D array), one with fewer than ``min_samples`` rows, or one
            whose smallest attainable p-value is not below ``alpha`` (too few
            ``n_permutations`` for ``alpha``, or too few distinct splits of tiny
            samples; :meth:`MMDSetup.smallest_p_value`) gives a result with
            ``insufficient_data=True``. Not modified.

        Returns
        -------
        DriftResult
            ``detector="mmd"``, one feature; ``statistic`` is
            :math:`\\widehat{\\mathrm{MMD}}^2_u`, ``p_value`` the permutation p-value,
            ``correction="none"``.

        Raises
        ------
        ValueError, TypeError
            ``current`` is not a 2-D numeric array, has another number of columns than
            the reference, or holds NaN/inf.
        """
        cur = self._setup.window(current)
        if not self._setup.decidable(cur.shape[0]):
            return insufficient(
                self.name, (self.feature,), [self._n], [cur.shape[0]], self.alpha, "none"
            )
        observed, permuted, tolerance = self._statistics(cur)
        p_value = permutation_p_value(observed, permuted, tolerance)
        m = min(cur.shape[0], self.max_n or cur.shape[0])
        return assemble(
            self.name,
            (self.feature,),
            np.array([observed]),
            np.array([p_value]),
            [self._n],
            [m],
            self.alpha,
            "none",
        )

    def _statistics(self, cur: np.ndarray) -> tuple[float, np.ndarray, float]:
        """Observed and permuted :math:`\\widehat{\\mathrm{MMD}}^2_u` of a validated window,
        and the tie tolerance :math:`\\tau`."""
        observed, permuted, tolerance = self._kernel.statistics(cur)
        return float(observed[0]), permuted[0], float(tolerance[0])

    @property
    def _cache(self) -> dict[tuple[int, int], list[Any]]:
        """The cached reference kernel tiles (empty when over the budget)."""
        return self._kernel._cache


class MMDSetup:
    """The options and the validated reference shared by the MMD detectors.

    Validates every option (errors name the option), the reference (numeric, finite, at
    least ``min_samples`` rows, not overflow-scale) and builds the backend. ``reference``
    is the subsampled (``max_n``) reference centred on its mean: a common offset (1e9)
    would otherwise swamp the differences in float arithmetic
    (:math:`|x|^2 - 2 x \\cdot y + |y|^2` cancels).
    """

    def __init__(
        self,
        reference: np.ndarray,
        *,
        alpha: float,
        n_permutations: int,
        backend: str,
        device: str,
        dtype: str | None,
        max_n: int | None,
        seed: int,
        block_size: int,
        min_samples: int,
        feature: str,
        what: str = "reference",
    ) -> None:
        self.alpha = check_unit_interval("alpha", alpha)
        self.n_permutations = check_int("n_permutations", n_permutations, 1)
        self.seed = check_int("seed", seed, 0)
        self.block_size = check_int("block_size", block_size, 1)
        self.min_samples = check_int("min_samples", min_samples, 2)
        self.max_n = None if max_n is None else check_int("max_n", max_n, 2)
        self.feature = check_feature(feature)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_device(device)
        if backend == "numpy" and device != "cpu":
            raise ValueError(
                f"device {device!r} needs backend='torch'; the numpy backend runs on 'cpu' only"
            )
        self.backend = backend
        ref = check_matrix(reference, what)
        if ref.shape[0] < self.min_samples:
            raise InsufficientDataError(
                f"{what} has {ref.shape[0]} rows; min_samples is {self.min_samples}"
            )
        ref = subsample(ref, self.max_n, (self.seed, 1))
        with np.errstate(over="ignore", invalid="ignore"):
            self.center = ref.mean(axis=0)
            ref = ref - self.center
        check_scale(ref, what)
        self.reference = ref
        self.n, self.n_features = ref.shape
        self.ops: _NumpyOps | _TorchOps
        if backend == "numpy":
            self.ops = _NumpyOps(resolve_dtype(dtype, on_cuda=False))
        else:
            self.ops = _TorchOps(device, dtype)
        self.device, self.dtype = self.ops.device, self.ops.dtype

    def smallest_p_value(self, m: int) -> float:
        """The smallest p-value a permutation test on ``m`` window rows can give: one in
        ``1 + n_permutations``, and no less than one in the number of distinct ways to
        split the pooled rows (:math:`\\binom{n + m}{m}`: six for 2 + 2 rows)."""
        m = min(m, self.max_n or m)
        # log of the number of splits (lgamma: the count itself overflows a float)
        log_splits = math.lgamma(self.n + m + 1) - math.lgamma(self.n + 1) - math.lgamma(m + 1)
        return max(1.0 / (1.0 + self.n_permutations), math.exp(-log_splits))

    def decidable(self, m: int) -> bool:
        """Whether a window of ``m`` rows can be tested: at least ``min_samples`` rows
        and a smallest attainable p-value below ``alpha``
        (:func:`~detectors._common.can_reject`)."""
        return m >= self.min_samples and can_reject(self.smallest_p_value(m), self.alpha)

    def window(self, current: np.ndarray, what: str = "current") -> np.ndarray:
        """``current`` validated (same columns as the reference, finite, not
        overflow-scale), as a float64 copy; not centred nor subsampled."""
        cur = check_matrix(current, what, self.n_features)
        with np.errstate(over="ignore", invalid="ignore"):
            check_scale(cur - self.center, what)
        return cur


class KernelMMD:
    """Observed and permuted unbiased MMD² at several Gaussian bandwidths at once.

    Each window's pairwise squared distances are computed once, tile by tile, and every
    bandwidth's kernel tile is derived from them (an elementwise exp), so ``L``
    bandwidths cost one distance pass plus ``L`` exponentials and permutation products,
    not ``L`` full tests. The reference's kernel tiles are cached per bandwidth when they
    take at most :data:`REFERENCE_CACHE_BYTES` per bandwidth. Every bandwidth sees the
    same relabellings (:func:`permutation_labels` of the setup's seed). See
    :class:`MMDDetector` (Notes) for the algebra.
    """

    def __init__(self, setup: MMDSetup, bandwidths: Sequence[float]) -> None:
        self.setup = setup
        self.bandwidths = tuple(float(b) for b in bandwidths)
        self._gammas = tuple(1.0 / (2.0 * b**2) for b in self.bandwidths)
        ops, n = setup.ops, setup.n
        self._ref = ops.array(setup.reference)
        self._ref_sq = ops.sqnorms(self._ref)
        self._ref_blocks = tiles(0, n, setup.block_size)
        # K_XX per bandwidth: the reference's tiles on and above the diagonal, row sums.
        self._cache: dict[tuple[int, int], list[Any]] = {}
        self._ref_rowsums: list[Any] = []
        itemsize = np.dtype(setup.dtype).itemsize
        blocks = self._ref_blocks
        cached = sum(
            (i1 - i0) * (j1 - j0) * itemsize
            for b, (i0, i1) in enumerate(blocks)
            for j0, j1 in blocks[b:]
        )
        if cached <= REFERENCE_CACHE_BYTES:
            rowsums = [ops.zeros64(n) for _ in self._gammas]
            for b, (i0, i1) in enumerate(blocks):
                for c in range(b, len(blocks)):
                    j0, j1 = blocks[c]
                    d2 = ops.sqdist(self._ref[i0:i1], self._ref_sq[i0:i1],
                                    self._ref[j0:j1], self._ref_sq[j0:j1])
                    kernels = list(ops.gaussians(d2, self._gammas, b == c))
                    self._cache[b, c] = kernels
                    for sums, tile in zip(rowsums, kernels, strict=True):
                        sums[i0:i1] += ops.rowsum64(tile)
                        if b != c:
                            sums[j0:j1] += ops.colsum64(tile)
            self._ref_rowsums = rowsums

    def statistics(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(L,)`` observed, ``(L, P)`` permuted :math:`\\widehat{\\mathrm{MMD}}^2_u` and
        ``(L,)`` tie tolerances :math:`\\tau` of a validated window (not centred)."""
        setup = self.setup
        cur = subsample(current, setup.max_n, (setup.seed, 2)) - setup.center  # as the ref
        ops, n, m = setup.ops, setup.n, cur.shape[0]
        big_n, n_kernels = n + m, len(self._gammas)
        labels = permutation_labels(setup.seed, n, m, setup.n_permutations)
        signs = ops.signs(labels, n, m)
        del labels
        cur_t = ops.array(cur)
        cur_sq = ops.sqnorms(cur_t)
        blocks = self._ref_blocks + tiles(n, big_n, setup.block_size)
        n_ref_blocks = len(self._ref_blocks)

        def rows(start: int, stop: int) -> tuple[Any, Any]:
            if start >= n:
                return cur_t[start - n : stop - n], cur_sq[start - n : stop - n]
            return self._ref[start:stop], self._ref_sq[start:stop]

        q = [ops.zeros64(setup.n_permutations + 1) for _ in self._gammas]
        rowsums = [ops.zeros64(big_n) for _ in self._gammas]
        if self._cache:
            for sums, ref_sums in zip(rowsums, self._ref_rowsums, strict=True):
                sums[:n] += ref_sums
        for b, (i0, i1) in enumerate(blocks):
            zi, zi_sq = rows(i0, i1)
            s_i = signs[:, i0:i1]
            for c in range(b, len(blocks)):
                j0, j1 = blocks[c]
                kernels = self._cache.get((b, c)) if c < n_ref_blocks else None
                fresh = kernels is None
                if kernels is None:
                    zj, zj_sq = rows(j0, j1)
                    kernels = ops.gaussians(ops.sqdist(zi, zi_sq, zj, zj_sq), self._gammas,
                                            b == c)
                for k, tile in enumerate(kernels):
                    if fresh:
                        rowsums[k][i0:i1] += ops.rowsum64(tile)
                        if b != c:
                            rowsums[k][j0:j1] += ops.colsum64(tile)
                    contribution = ops.rowsum64((s_i @ tile) * signs[:, j0:j1])
                    q[k] += contribution if b == c else 2.0 * contribution
                del kernels
        observed = np.empty(n_kernels)
        permuted = np.empty((n_kernels, setup.n_permutations))
        tolerance = np.empty(n_kernels)
        for k in range(n_kernels):
            u = ops.to_numpy(ops.matvec64(signs, rowsums[k]))
            q_np = ops.to_numpy(q[k])
            total = float(ops.to_numpy(rowsums[k]).sum())
            within_x = (m / big_n) ** 2 * q_np + 2.0 * m * u / big_n**2 + total / big_n**2
            within_y = (n / big_n) ** 2 * q_np - 2.0 * n * u / big_n**2 + total / big_n**2
            mmd2 = q_np + (within_x - 1.0) / (n - 1) + (within_y - 1.0) / (m - 1)
            observed[k], permuted[k], tolerance[k] = (mmd2[0], mmd2[1:],
                                                      TIE_TOLERANCE * total / big_n**2)
        return observed, permuted, tolerance


# --- the two backends: the same operations on numpy arrays and on torch tensors ---------------


class _NumpyOps:
    """Kernel tiles and reductions with numpy (CPU)."""

    device = "cpu"

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self._dtype = np.dtype(dtype)

    def array(self, values: np.ndarray) -> np.ndarray:
        return np.array(values, dtype=self._dtype)  # a copy, C-contiguous

    def sqnorms(self, x: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, x)

    def sqdist(
        self, a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray
    ) -> np.ndarray:
        tile = a @ b.T
        tile *= -2.0
        tile += a_sq[:, None]
        tile += b_sq[None, :]
        np.maximum(tile, 0.0, out=tile)
        return tile

    def gaussians(
        self, d2: np.ndarray, gammas: Sequence[float], diagonal: bool
    ) -> list[np.ndarray]:
        """One kernel tile per gamma; the last one overwrites ``d2``."""
        out = []
        for k, gamma in enumerate(gammas):
            tile = d2 if k == len(gammas) - 1 else d2.copy()
            tile *= -gamma
            np.exp(tile, out=tile)
            if diagonal:
                np.fill_diagonal(tile, 1.0)
            out.append(tile)
        return out

    def signs(self, labels: np.ndarray, n: int, m: int) -> np.ndarray:
        return np.where(labels, self._dtype.type(1.0 / n), self._dtype.type(-1.0 / m))

    def zeros64(self, size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.float64)

    def rowsum64(self, x: np.ndarray) -> np.ndarray:
        return x.sum(axis=1, dtype=np.float64)

    def colsum64(self, x: np.ndarray) -> np.ndarray:
        return x.sum(axis=0, dtype=np.float64)

    def matvec64(self, matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return (matrix @ vector.astype(self._dtype)).astype(np.float64)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x


class _TorchOps:
    """The same operations with torch, on an explicit device."""

    def __init__(self, device: str, dtype: str | None) -> None:
        self._torch = require_torch("backend='torch'")
        self._device = resolve_device(device)
        self.device = str(self._device)
        self.dtype = resolve_dtype(dtype, on_cuda=self._device.type == "cuda")
        self._dtype = getattr(self._torch, self.dtype)

    def array(self, values: np.ndarray) -> Any:
        return self._torch.tensor(values, dtype=self._dtype, device=self._device)

    def sqnorms(self, x: Any) -> Any:
        return (x * x).sum(dim=1)

    def sqdist(self, a: Any, a_sq: Any, b: Any, b_sq: Any) -> Any:
        tile = a @ b.T
        tile.mul_(-2.0)
        tile.add_(a_sq[:, None])
        tile.add_(b_sq[None, :])
        tile.clamp_(min=0.0)
        return tile

    def gaussians(self, d2: Any, gammas: Sequence[float], diagonal: bool) -> list[Any]:
        out = []
        for k, gamma in enumerate(gammas):
            tile = d2 if k == len(gammas) - 1 else d2.clone()
            tile.mul_(-gamma)
            tile.exp_()
            if diagonal:
                tile.fill_diagonal_(1.0)
            out.append(tile)
        return out

    def signs(self, labels: np.ndarray, n: int, m: int) -> Any:
        mask = self._torch.from_numpy(labels).to(self._device)
        plus = self._torch.tensor(1.0 / n, dtype=self._dtype, device=self._device)
        minus = self._torch.tensor(-1.0 / m, dtype=self._dtype, device=self._device)
        return self._torch.where(mask, plus, minus)

    def zeros64(self, size: int) -> Any:
        return self._torch.zeros(size, dtype=self._torch.float64, device=self._device)

    def rowsum64(self, x: Any) -> Any:
        return x.sum(dim=1, dtype=self._torch.float64)

    def colsum64(self, x: Any) -> Any:
        return x.sum(dim=0, dtype=self._torch.float64)

    def matvec64(self, matrix: Any, vector: Any) -> Any:
        return (matrix @ vector.to(self._dtype)).to(self._torch.float64)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.cpu().numpy()


# --- helpers shared with the classifier two-sample test ----------------------------------------


def check_feature(feature: str) -> str:
    """Validate the name of the pseudo-feature."""
    if not isinstance(feature, str):
        raise TypeError(f"feature must be a str, got {type(feature).__name__}")
    return feature


def check_bandwidth(bandwidth: object) -> float:
    """Validate an explicit bandwidth: a finite float > 0."""
    if isinstance(bandwidth, bool) or not isinstance(
        bandwidth, (int, float, np.floating, np.integer)
    ):
        raise TypeError(
            f"bandwidth must be a float > 0 or 'median', got {type(bandwidth).__name__}"
        )
    if not 0.0 < float(bandwidth) < math.inf:  # also rejects NaN
        raise ValueError(f"bandwidth must be finite and > 0 or 'median', got {bandwidth!r}")
    return float(bandwidth)


def check_matrix(values: object, what: str, n_features: int | None = None) -> np.ndarray:
    """Return ``values`` as a float64 ``(rows, features)`` array (a copy).

    ``what`` names the argument in messages. An empty 1-D array is taken as zero rows.
    """
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{what} must be a 2-D numeric array, got {type(values).__name__}")
    array = np.asarray(values)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f"{what} has unsupported dtype {array.dtype}; expected numbers")
    if array.ndim == 1 and array.size == 0 and n_features is not None:
        array = array.reshape(0, n_features)
    if array.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D array of shape (rows, features), got shape {array.shape}"
        )
    if n_features is None and array.shape[1] < 1:
        raise ValueError(f"{what} must have at least one column, got shape {array.shape}")
    if n_features is not None and array.shape[1] != n_features:
        raise ValueError(f"{what} has {array.shape[1]} columns but the reference has {n_features}")
    out = np.array(array, dtype=np.float64)  # always a copy
    if not np.isfinite(out).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return out


#: Largest magnitude (after centring) MMD accepts: squared distances must stay finite.
MAX_SCALE = 1e150


def check_scale(values: np.ndarray, what: str) -> None:
    """Reject values whose squared distances would overflow (name the first column)."""
    bad = ~(np.abs(values) <= MAX_SCALE).all(axis=0)  # also NaN from an overflowed mean
    if bad.any():
        raise ValueError(f"{what} column {int(np.flatnonzero(bad)[0])} holds values beyond "
                         f"{MAX_SCALE:g} from the reference's mean (overflow-scale input): "
                         "rescale it")


def subsample(values: np.ndarray, max_n: int | None, key: tuple[int, int]) -> np.ndarray:
    """At most ``max_n`` rows of ``values``, drawn without replacement (in their order)."""
    if max_n is None or values.shape[0] <= max_n:
        return values
    rows = np.random.default_rng(key).choice(values.shape[0], size=max_n, replace=False)
    return values[np.sort(rows)]


def pair_distances(reference: np.ndarray, seed: int) -> np.ndarray:
    """Euclidean distances between the distinct rows of a seeded subsample of
    :data:`MEDIAN_ROWS` reference rows (all rows when fewer), each pair once."""
    x = subsample(reference, MEDIAN_ROWS, (seed, 0))
    sq = np.einsum("ij,ij->i", x, x)
    gram = x @ x.T
    upper = np.triu_indices(x.shape[0], k=1)
    d2 = sq[upper[0]] + sq[upper[1]] - 2.0 * gram[upper]
    return np.sqrt(np.maximum(d2, 0.0))


def median_of(distances: np.ndarray) -> float:
    """The median heuristic on :func:`pair_distances`: their median; if 0, the median of
    the non-zero ones; if all are 0, 1."""
    median = float(np.median(distances))
    if median > 0.0:
        return median
    positive = distances[distances > 0.0]
    return float(np.median(positive)) if positive.size else 1.0


def median_distance(reference: np.ndarray, seed: int) -> float:
    """The median heuristic's bandwidth (see :class:`MMDDetector` Notes)."""
    return median_of(pair_distances(reference, seed))


def permutation_labels(seed: int, n: int, m: int, n_permutations: int) -> np.ndarray:
    """``(n_permutations + 1, n + m)`` bool: row 0 the observed labels, then random ones.

    ``True`` marks the rows labelled "reference". Each random row puts ``True`` on the
    ``n`` smallest of ``n + m`` uniform keys from ``numpy.random.default_rng(seed)``: a
    uniformly random relabelling, drawn vectorised over chunks of rows.
    """
    big_n = n + m
    labels = np.zeros((n_permutations + 1, big_n), dtype=bool)
    labels[0, :n] = True
    rng = np.random.default_rng(seed)
    for start in range(1, n_permutations + 1, _LABEL_CHUNK):
        stop = min(start + _LABEL_CHUNK, n_permutations + 1)
        keys = rng.random((stop - start, big_n))
        chosen = np.argpartition(keys, n - 1, axis=1)[:, :n]
        np.put_along_axis(labels[start:stop], chosen, True, axis=1)
    return labels


def permutation_p_value(observed: float, permuted: np.ndarray, tolerance: float) -> float:
    """:math:`(1 + \\#\\{b: T_b \\ge T_{obs} - \\tau\\}) / (1 + P)`."""
    return (1.0 + np.count_nonzero(permuted >= observed - tolerance)) / (1.0 + permuted.size)


def tiles(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive ranges of at most ``size``."""
    return [(i, min(i + size, stop)) for i in range(start, stop, size)]
