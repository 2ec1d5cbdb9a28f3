"""MMD test aggregated over several kernel bandwidths, level kept exact (MMDAgg-style)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._common import assemble, insufficient
from .mmd import KernelMMD, MMDSetup, median_of, pair_distances
from .results import DriftResult

__all__ = ["BANDWIDTH_FACTORS", "MMDAggDetector", "min_p_value"]

#: Default bandwidths, as multiples of the median heuristic: a geometric grid of ratio 2
#: around it, plus median / sqrt(2) (the bandwidth alibi-detect's median rule gives).
BANDWIDTH_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0 / math.sqrt(2.0), 1.0, 2.0)
#: No bandwidth below this quantile of the reference's pairwise distances.
FLOOR_QUANTILE = 0.01


class MMDAggDetector:
    """Kernel two-sample test over several Gaussian bandwidths at once (MMDAgg-style).

    One bandwidth cannot suit every shift: the median heuristic is good for a shift of
    the mean in a few dimensions but too wide for changes in the fine structure of
    embeddings (a class mixture, a new cluster), where a narrower kernel sees more.
    This detector computes the unbiased MMD² of :class:`~detectors.mmd.MMDDetector` at
    every bandwidth ``median * f`` (``f`` in ``bandwidth_factors``) on the **same**
    permutations and rejects on the most significant one, with the level corrected for
    having looked at several (below), so the test stays exact at ``alpha``.

    Parameters
    ----------
    reference : numpy.ndarray, shape (n, d)
        As for :class:`~detectors.mmd.MMDDetector`.
    alpha : float, default 0.05
        Significance level in (0, 1): the window drifts when ``p_value < alpha``.
    n_permutations : int, default 1000
        Random permutations of the pooled sample (>= 1), shared by every bandwidth.
    bandwidth_factors : sequence of float, default :data:`BANDWIDTH_FACTORS`
        Bandwidths as multiples of the median heuristic (finite, > 0, at least one,
        no repeats).
    backend, device, dtype, max_n, seed, block_size, min_samples, feature
        As for :class:`~detectors.mmd.MMDDetector` (one such test per bandwidth, all
        with the same ``seed``, hence the same permutations and subsamples).

    Attributes
    ----------
    median : float
        The median heuristic's bandwidth on the reference.
    bandwidths : tuple of float
        The bandwidths in use, ascending: ``median * f``, each raised to at least the
        :data:`FLOOR_QUANTILE` (1%) of the reference's pairwise distances, repeats
        merged (in 384-d sentence embeddings that quantile is 0.84 medians, so the
        default grid becomes 0.84, 1 and 2 medians).

    Notes
    -----
    **Level correction (min-p over a shared permutation set).** Let
    :math:`T_{\\ell,0}` be the observed statistic at bandwidth :math:`\\ell` and
    :math:`T_{\\ell,b}`, :math:`b = 1..P`, its values on the :math:`P` relabellings,
    the same relabellings for every :math:`\\ell`. Each column :math:`b = 0..P` gets,
    per bandwidth, its rank p-value among the :math:`P + 1` values,
    :math:`p_{\\ell,b} = \\#\\{c : T_{\\ell,c} \\ge T_{\\ell,b}\\} / (P + 1)`, and the
    combined statistic is :math:`M_b = \\min_\\ell p_{\\ell,b}`. The p-value is

    .. math:: p = \\#\\{b \\in 0..P : M_b \\le M_0\\} / (P + 1).

    Under no drift the :math:`P + 1` columns are exchangeable (the observed labelling is
    one more uniformly random one), :math:`M` is a symmetric function of them, so
    :math:`p` is a valid permutation p-value whatever the dependence between the
    bandwidths: :math:`\\Pr(p \\le \\alpha) \\le \\alpha`. This is MMDAgg (Schrab et al.,
    2023) with uniform weights: rejecting when some :math:`T_\\ell` exceeds its
    :math:`(1 - u\\alpha)` permutation quantile with :math:`u` the largest keeping the
    family-wise level at :math:`\\alpha`. Bonferroni over the bandwidths would divide
    :math:`\\alpha` by their number; min-p pays only for how much they disagree (the
    statistics at neighbouring bandwidths are strongly correlated), so little power is
    lost against the best single bandwidth and much is gained where the median is wrong.

    Unlike MMDAgg the median is taken on the reference alone (see
    :class:`~detectors.mmd.MMDDetector`, Bandwidth), once, so the reference's kernel
    tiles are computed once per bandwidth. Each window's pairwise distances are computed
    once and every bandwidth's kernel derived from them (:class:`~detectors.mmd.KernelMMD`):
    per window one distance pass (:math:`N^2 d`) plus, per bandwidth, an exponential and
    the permutation products (:math:`N^2 (P + 1)`); the cached reference tiles take one
    :class:`~detectors.mmd.MMDDetector`'s memory per bandwidth.

    The result's ``statistic`` is the MMD² at the most significant bandwidth (the
    smallest :math:`p_{\\ell,0}`; ties: the narrowest).
    """

    name = "mmd_agg"

    def __init__(
        self,
        reference: np.ndarray,
        *,
        alpha: float = 0.05,
        n_permutations: int = 1000,
        bandwidth_factors: Sequence[float] = BANDWIDTH_FACTORS,
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
        self.bandwidth_factors = check_factors(bandwidth_factors)
        self._setup = setup
        self.alpha, self.n_permutations = setup.alpha, setup.n_permutations
        self.feature, self.min_samples, self.max_n = setup.feature, setup.min_samples, setup.max_n
        self.backend, self.device, self.dtype = setup.backend, setup.device, setup.dtype
        self.n_features, self._n = setup.n_features, setup.n
        # The median on the rows the test uses (MMDDetector's own rule), once.
        self.median, floor = median_and_floor(setup.reference, setup.seed)
        # A kernel narrower than nearly every pairwise distance is almost diagonal (all
        # pairs ~0) and tests nothing; in high dimensions, where distances concentrate
        # around the median, the small factors would fall there: they are raised to the
        # floor (the FLOOR_QUANTILE of the distances) and merged.
        self.bandwidths = tuple(sorted({max(self.median * f, floor)
                                        for f in self.bandwidth_factors}))
        # One distance pass per window for every bandwidth.
        self._kernel = KernelMMD(setup, self.bandwidths)

    def __repr__(self) -> str:
        factors = ", ".join(f"{f:g}" for f in self.bandwidth_factors)
        return (f"MMDAggDetector(n_reference={self._n}, n_features={self.n_features}, "
                f"alpha={self.alpha}, n_permutations={self.n_permutations}, "
                f"median={self.median!r}, bandwidth_factors=({factors}), "
                f"backend={self.backend!r}, device={self.device!r}, max_n={self.max_n})")

    def test(self, current: np.ndarray) -> DriftResult:
        """Test the rows of ``current`` against the reference (as
        :meth:`MMDDetector.test <detectors.mmd.MMDDetector.test>`; ``detector="mmd_agg"``,
        ``p_value`` the level-corrected aggregated p-value)."""
        cur = self._setup.window(current)
        if not self._setup.decidable(cur.shape[0]):
            return insufficient(
                self.name, (self.feature,), [self._n], [cur.shape[0]], self.alpha, "none"
            )
        observed, permuted, tolerances = self._kernel.statistics(cur)
        stats = np.concatenate([observed[:, None], permuted], axis=1)
        p_value, best = min_p_value(stats, tolerances)
        m = min(cur.shape[0], self.max_n or cur.shape[0])
        return assemble(self.name, (self.feature,), np.array([observed[best]]),
                        np.array([p_value]), [self._n], [m], self.alpha, "none")


def min_p_value(statistics: np.ndarray, tolerances: np.ndarray) -> tuple[float, int]:
    """The min-p permutation p-value of ``(L, P + 1)`` statistics (column 0 observed) and
    the row (bandwidth) whose own p-value of the observed column is smallest.

    ``tolerances[l]``: differences up to it count as ties in row ``l``
    (see :func:`detectors.mmd.permutation_p_value`).
    """
    n_rows, columns = statistics.shape
    ranks = np.empty((n_rows, columns))
    for row in range(n_rows):
        ordered = np.sort(statistics[row])
        # how many values of the row are >= each value (minus the tie tolerance)
        below = np.searchsorted(ordered, statistics[row] - tolerances[row], side="left")
        ranks[row] = (columns - below) / columns
    smallest = ranks.min(axis=0)
    p_value = float(np.count_nonzero(smallest <= smallest[0]) / columns)
    return p_value, int(np.argmin(ranks[:, 0]))


def median_and_floor(reference: np.ndarray, seed: int) -> tuple[float, float]:
    """The median heuristic (exactly :func:`detectors.mmd.median_distance`) and the
    :data:`FLOOR_QUANTILE` of the positive distances, from one distance computation."""
    distances = pair_distances(reference, seed)
    median = median_of(distances)
    positive = distances[distances > 0.0]
    floor = float(np.quantile(positive, FLOOR_QUANTILE)) if positive.size else 0.0
    return median, min(floor, median)


def check_factors(factors: object) -> tuple[float, ...]:
    """Validate ``bandwidth_factors``: finite positive floats, at least one, no repeats."""
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError("bandwidth_factors must be a sequence of floats > 0, got "
                        f"{type(factors).__name__}")
    out: list[float] = []
    for i, f in enumerate(factors):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)):
            raise TypeError(f"bandwidth_factors[{i}] must be a float > 0, got "
                            f"{type(f).__name__}")
        if not 0.0 < float(f) < math.inf:
            raise ValueError(f"bandwidth_factors[{i}] must be finite and > 0, got {f!r}")
        out.append(float(f))
    if not out:
        raise ValueError("bandwidth_factors must hold at least one factor")
    if len(set(out)) != len(out):
        raise ValueError(f"bandwidth_factors holds a repeated factor: {tuple(out)}")
    return tuple(out)
