"""Two-sample Kolmogorov-Smirnov drift detector for numeric features."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
from scipy.stats import kstwo

# Private scipy helper, reused on purpose: the exact p-value for unequal sample sizes
# (a compiled lattice-path count) then matches ks_2samp bit for bit. Being private it
# may move or change between scipy releases; the parity tests would catch either.
from scipy.stats._stats_py import _attempt_exact_2kssamp

from ._base import PerFeatureTest
from ._common import check_options

__all__ = ["KSDetector"]

# ks_2samp(method="auto") attempts the exact p-value iff max(n1, n2) <= this, and uses
# the asymptotic distribution otherwise (MAX_AUTO_N in scipy's ks_2samp).
_MAX_EXACT_N = 10_000
# When fewer products than this are still running, numpy's per-call overhead (a few
# microseconds a step) exceeds the scalar work (~0.1 us per product and step); the rest
# are finished one scalar at a time. Measured break-even: 30 to 60.
_SCALAR_BELOW = 32


class KSDetector(PerFeatureTest):
    """Per-feature two-sample Kolmogorov-Smirnov test against a fixed reference.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D numeric array (bool, int or float; NaN and inf rejected).
        Each column is sorted once, here; the caller's arrays are not modified.
    alpha : float, default 0.05
        Significance level in (0, 1), applied to the adjusted p-values.
    correction : {"bonferroni", "benjamini-hochberg", "none"}, default "bonferroni"
        Multiple-testing correction across the features.
    min_samples : int, default 2
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    For a reference sample of size :math:`n_1` with empirical CDF :math:`F_1` and a
    current sample of size :math:`n_2` with empirical CDF :math:`F_2`, the statistic is

    .. math:: D = \\sup_x |F_1(x) - F_2(x)|.

    :math:`F_1 - F_2` only rises at reference points and only falls at current points,
    so its maximum is attained on the (presorted) reference points and its minimum on
    the current points: ``np.searchsorted`` gives both without merging the samples.
    Ties are handled because ECDFs are evaluated right-continuously.

    The statistic and p-value equal ``scipy.stats.ks_2samp(reference, current)`` with
    its defaults (two-sided, ``method="auto"``): when :math:`\\max(n_1, n_2) \\le 10^4`
    the exact null distribution is used (:math:`D` is first snapped to the lattice
    :math:`h / \\mathrm{lcm}(n_1, n_2)`), otherwise the asymptotic one,
    ``kstwo.sf(D, round(n_1 n_2 / (n_1 + n_2)))``. Where scipy's exact computation
    fails numerically it falls back to the asymptotic p-value with a warning; this
    detector does the same, silently. For :math:`n_1 = n_2` the exact p-value is the
    alternating series of Hodges (1958),

    .. math:: P(D \\ge h/n) = 2 A_0 (1 - A_1 (1 - A_2 (1 - \\dots))),\\quad
              A_k = \\prod_{j=0}^{h-1} \\frac{n - kh - j}{n + kh + j + 1},

    evaluated with scipy's floating-point operations in scipy's order, batched over
    all :math:`k` and all features.

    The test assumes continuous distributions; with ties its p-values are conservative.
    """

    name = "ks"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        alpha: float = 0.05,
        correction: str = "bonferroni",
        min_samples: int = 2,
    ) -> None:
        self.alpha, self.correction, self.min_samples = check_options(
            alpha, correction, min_samples
        )
        self._sorted = self._sorted_reference(reference)
        self._ecdf: dict[str, np.ndarray] = {}  # reference ECDF at each sorted reference point
        for feature, ref in self._sorted.items():
            ecdf = np.searchsorted(ref, ref, side="right") / ref.size
            ecdf.setflags(write=False)
            self._ecdf[feature] = ecdf

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        distances = np.array(
            [_ks_distance(self._sorted[f], self._ecdf[f], columns[f]) for f in self.features]
        )
        return _ks_2samp_p_values(np.array(n_ref), np.array(n_cur), distances)


def _ks_distance(ref: np.ndarray, ref_ecdf: np.ndarray, current: np.ndarray) -> float:
    """``D`` between sorted ``ref`` (ECDF ``ref_ecdf``) and unsorted ``current``.

    Same floating-point values as ks_2samp's ``cdf1 - cdf2`` at the pooled points.
    """
    cur = np.sort(np.asarray(current, dtype=np.float64))  # np.sort copies
    n1, n2 = ref.size, cur.size
    # F1 - F2 at the reference points, where it rises
    rise = ref_ecdf - np.searchsorted(cur, ref, side="right") / n2
    # ... and its minimum over the current points, where it falls. Between two reference
    # points F1 is constant, k / n1, and F2 grows, so the minimum of a run of current
    # points in [ref[k-1], ref[k]) is at its last one, where n2 * F2 = #{cur < ref[k]}:
    # m + 1 binary searches into the window instead of n2 into the reference (the same
    # integers, hence the same floats, as evaluating at every current point).
    below = np.empty(n1 + 1, dtype=np.int64)
    below[:n1] = np.searchsorted(cur, ref, side="left")
    below[n1] = n2
    runs = np.diff(below, prepend=0) > 0  # the runs that hold current points
    fall = np.arange(n1 + 1)[runs] / n1 - below[runs] / n2
    max_s = rise.max()
    min_s = min(max(-fall.min(), 0.0), 1.0)
    return float(min_s if min_s > max_s else max_s)


def _right_ranks(sorted_values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(x, x, side="right")`` for sorted ``x``, in linear time."""
    # index of the last element of each run of equal values
    last = np.flatnonzero(np.append(sorted_values[1:] != sorted_values[:-1], True))
    return np.repeat(last + 1, np.diff(last, prepend=-1))


def _ks_2samp_p_values(
    n1: np.ndarray, n2: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Statistic and p-value of ``ks_2samp(method="auto")`` from sizes and raw ``D``.

    Parameters
    ----------
    n1, n2 : numpy.ndarray of int
        Sample sizes (>= 1) of each test.
    d : numpy.ndarray of float
        Raw KS distances.

    Returns
    -------
    statistic, p_value : numpy.ndarray
        The statistic as ks_2samp reports it (snapped to the lattice ``h / lcm`` when
        the exact method is used) and the two-sided p-value.
    """
    n1 = np.asarray(n1, dtype=np.int64)
    n2 = np.asarray(n2, dtype=np.int64)
    statistic = np.array(d, dtype=np.float64)
    p = np.full(statistic.shape, np.nan)

    exact = np.maximum(n1, n2) <= _MAX_EXACT_N
    g = np.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = np.round(statistic * lcm).astype(np.int64)
    statistic[exact] = h[exact] * 1.0 / lcm[exact]
    p[exact & (h == 0)] = 1.0
    square = exact & (h > 0) & (n1 == n2)
    if square.any():
        p[square] = _prob_outside_square(n1[square], h[square])
    for i in np.flatnonzero(exact & (h > 0) & (n1 != n2)):
        p[i] = _exact_unequal(int(n1[i]), int(n2[i]), int(h[i]))

    # The asymptotic distribution: for large samples, and where exact failed (as scipy).
    asymp = ~exact | ~((p >= 0.0) & (p <= 1.0))
    if asymp.any():
        m, n = n1[asymp].astype(np.float64), n2[asymp].astype(np.float64)
        p[asymp] = kstwo.sf(statistic[asymp], np.round(m * n / (m + n)))
    return statistic, np.clip(p, 0.0, 1.0)


@functools.lru_cache(maxsize=65_536)
def _exact_unequal(n1: int, n2: int, h: int) -> float:
    """Exact p-value of ``D = h / lcm(n1, n2)`` for ``n1 != n2``; NaN where scipy's fails.

    Costs about ``2 D n1 n2`` compiled steps (milliseconds at 10k x 5k) and depends
    only on ``(n1, n2, h)``, which repeat from window to window under a fixed
    reference and window size, hence the cache.
    """
    g = math.gcd(n1, n2)
    ok, _, prob = _attempt_exact_2kssamp(n1, n2, g, h / ((n1 // g) * n2), "two-sided")
    return float(prob) if ok else math.nan


def _prob_outside_square(n: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Batched ``scipy.stats._stats_py._compute_prob_outside_square``, bit for bit.

    For each pair ``(n, h)`` with ``1 <= h <= n`` returns :math:`P(D_{n,n} \\ge h/n)`
    (see :class:`KSDetector` Notes). scipy forms each :math:`A_k` by a Python loop over
    ``j``, about ``n`` scalar steps per test; here step ``j`` is one numpy operation over
    every ``(test, k)`` product still running, so a window costs about ``max(h)`` numpy
    steps. The float operations and their order are scipy's, hence identical results.
    """
    sizes = n // h + 1  # k = 0 .. floor(n / h)
    owner = np.repeat(np.arange(n.size), sizes)
    starts = np.cumsum(sizes) - sizes
    k = np.arange(owner.size) - np.repeat(starts, sizes)
    kh = k * h[owner]
    # Longest products first, so the ones still running are always a prefix.
    order = np.argsort(-h[owner], kind="stable")
    steps = h[owner][order]
    num = (n[owner] - kh)[order].astype(np.float64)  # n - kh - j  ==  num - j
    den = (n[owner] + kh + 1)[order].astype(np.float64)  # n + kh + j + 1  ==  den + j
    prod = np.ones(num.size)
    negated_steps = -steps  # ascending, as searchsorted needs

    j, live = 0, steps.size  # live: number of products with more than j factors
    while live >= _SCALAR_BELOW:
        prod[:live] = (num[:live] - j) * prod[:live] / (den[:live] + j)
        j += 1
        live = int(np.searchsorted(negated_steps, -j, side="left"))
    for i in range(live):
        p, a, b = float(prod[i]), float(num[i]), float(den[i])
        for jj in range(j, int(steps[i])):
            p = (a - jj) * p / (b + jj)
        prod[i] = p

    terms = np.empty_like(prod)
    terms[order] = prod
    out = np.empty(n.size)
    for t, (start, size) in enumerate(zip(starts.tolist(), sizes.tolist(), strict=True)):
        total = 0.0
        for a_k in reversed(terms[start : start + size].tolist()):  # Horner, k = K .. 0
            total = a_k * (1.0 - total)
        out[t] = 2 * total
    return out
