"""Normalised Wasserstein (earth mover's) distance drift detector for numeric features."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._base import PerFeatureDistance
from ._common import check_min_samples, check_threshold, merge_sorted, running_count

__all__ = ["WassersteinDetector"]


class WassersteinDetector(PerFeatureDistance):
    """Per-feature Wasserstein-1 distance, in reference standard deviations.

    A feature drifts when its normalised distance exceeds both ``threshold`` and its
    resampled null quantile at the window's size (``alpha``, ``n_resamples``, ``seed``,
    ``window_sizes``: see :class:`~detectors._base.PerFeatureDistance`).

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D numeric array (bool, int or float; NaN and inf rejected).
        Each column is sorted, and its standard deviation taken, once, here; the
        caller's arrays are not modified.
    threshold : float, default 0.1
        A feature drifts when its normalised distance is strictly greater than this
        (finite, >= 0). 0.1 means: the window's distribution moved by about a tenth of
        the reference's standard deviation (a shift of the mean by ``0.1 sigma`` gives
        exactly 0.1).
    min_samples : int, default 2
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    For a reference sample with empirical CDF :math:`F_1` and a window with empirical
    CDF :math:`F_2`,

    .. math:: W_1 = \\int_{-\\infty}^{\\infty} |F_1(x) - F_2(x)|\\,dx,
              \\qquad \\text{statistic} = W_1 / \\sigma_1,

    where :math:`\\sigma_1` is the reference's population standard deviation
    (``numpy.std``, ``ddof=0``), as in Evidently's ``wasserstein`` test. :math:`W_1`
    equals ``scipy.stats.wasserstein_distance(reference, current)``: the integrand is
    piecewise constant between consecutive pooled values, and the pooled values are
    obtained by merging the window, once sorted, into the presorted reference (linear
    time) instead of sorting both samples again.

    A constant reference column has :math:`\\sigma_1 = 0`: the statistic is then 0
    when the window holds only that same value and ``+inf`` (drift at any threshold)
    otherwise, the limit of :math:`W_1 / \\sigma_1`. Any change of a column that never
    varied is reported; for a column where that is noise, exclude it or use another
    detector.

    Under no drift, :math:`W_1 / \\sigma_1` shrinks like :math:`1/\\sqrt{m}`. For
    normal samples of equal size it averages about 0.13 at 200 against 200 (most such
    windows exceed the default threshold), 0.06 at 1000 (about 4% exceed it), 0.04 at
    2000 (about 1%) and 0.018 at 10 000 (none): the default threshold suits windows of
    a few thousand values or more.
    """

    name = "wasserstein"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        threshold: float = 0.1,
        min_samples: int = 2,
        alpha: float = 0.05,
        n_resamples: int = 1000,
        seed: int = 0,
        window_sizes: Sequence[int] = (),
    ) -> None:
        self.threshold = check_threshold(threshold)
        self.min_samples = check_min_samples(min_samples)
        self._sorted = self._sorted_reference(reference)
        self._std = {}
        for feature, ref in self._sorted.items():
            # centred first: values near 1e308 would overflow the variance
            with np.errstate(over="ignore", invalid="ignore"):
                std = float(np.std(ref - ref[ref.size // 2]))
                span = ref[-1] - ref[0]
            if not math.isfinite(std) or not math.isfinite(span):
                raise ValueError(f"reference feature {feature!r} spans more than the float "
                                 "range (values near 1e308): rescale it")
            self._std[feature] = std
        self._calibration(alpha, n_resamples, seed, window_sizes)

    def __repr__(self) -> str:
        return (
            f"WassersteinDetector(features={list(self.features)!r}, "
            f"threshold={self.threshold}, min_samples={self.min_samples})"
        )

    def _distances(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        statistics = np.array([self._one(f, columns[f]) for f in self.features])
        if np.isnan(statistics).any():
            feature = self.features[int(np.flatnonzero(np.isnan(statistics))[0])]
            raise ValueError(f"current feature {feature!r}: the distance is not finite "
                             "(values near the float range): rescale the feature")
        return statistics

    def _one(self, feature: str, values: np.ndarray) -> float:
        distance = wasserstein_sorted(self._sorted[feature], values)
        std = self._std[feature]
        if std > 0.0:
            return distance / std
        return 0.0 if distance == 0.0 else math.inf

    def _null_distances(self, feature: str, m: int, rng: np.random.Generator,
                        count: int) -> np.ndarray:
        # W1 of a window drawn from the reference's values is the sum over the gaps g
        # between consecutive reference values of |F_window - (g + 1) / n| * width_g.
        # F_window is constant (k / m) between the k-th and (k+1)-th sorted draws, so
        # with prefix sums each such stretch costs O(1): O(m log m) per draw, not O(n).
        ref = self._sorted[feature]
        n, std = ref.size, self._std[feature]
        if std == 0.0 or n < 2:
            return np.zeros(count)  # every draw is the reference's one value
        width = np.diff(ref) / std
        u = np.arange(1, n, dtype=np.float64) / n
        w_sum = np.concatenate(([0.0], np.cumsum(width)))
        u_sum = np.concatenate(([0.0], np.cumsum(u * width)))
        picks = np.sort(rng.integers(0, n, size=(count, m)), axis=1)
        edges = np.concatenate((np.zeros((count, 1), dtype=np.int64), picks,
                                np.full((count, 1), n - 1, dtype=np.int64)), axis=1)
        a, b = np.minimum(edges[:, :-1], n - 1), np.minimum(edges[:, 1:], n - 1)
        c = np.arange(m + 1, dtype=np.float64) / m
        cross = np.clip(np.ceil(c * n - 1e-9).astype(np.int64) - 1, a, b)
        below = c * (w_sum[cross] - w_sum[a]) - (u_sum[cross] - u_sum[a])
        above = (u_sum[b] - u_sum[cross]) - c * (w_sum[b] - w_sum[cross])
        return np.asarray((below + above).sum(axis=1))


def wasserstein_sorted(ref: np.ndarray, current: np.ndarray) -> float:
    """``scipy.stats.wasserstein_distance(ref, current)`` for sorted float64 ``ref``."""
    cur = np.sort(np.asarray(current, dtype=np.float64))  # np.sort copies
    merged, from_current = merge_sorted(ref, cur)
    # Number of current values among the pooled values up to and including each one but
    # the last. Where values tie the width below is 0, so only the count after the last
    # of each run of ties matters, and there it is the count of values <= that value.
    in_current = running_count(from_current[:-1])
    width = np.subtract(merged[1:], merged[:-1], out=merged[:-1])  # merged is ours to reuse
    # |F1 - F2| on each gap, built in place (large temporaries are costly)
    gap = np.arange(1, merged.size, dtype=np.float64)
    gap -= in_current
    gap /= ref.size
    gap -= np.divide(in_current, cur.size)
    np.abs(gap, out=gap)
    gap *= width
    # a plain pairwise sum: np.dot would go through a multithreaded BLAS for no gain
    return float(gap.sum())
