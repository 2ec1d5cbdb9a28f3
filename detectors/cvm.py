"""Two-sample Cramér-von Mises and Anderson-Darling drift detectors for numeric features."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping

import numpy as np
from scipy.special import gammaln, kv
from scipy.stats import cramervonmises_2samp

from ._base import PerFeatureTest
from ._common import (
    check_int,
    check_min_samples,
    check_options,
    merge_sorted,
    running_count,
    tie_runs,
)

__all__ = ["AndersonDarlingDetector", "CramerVonMisesDetector"]

# cramervonmises_2samp(method="auto") uses the exact null distribution iff
# max(n1, n2) <= this, the asymptotic one otherwise.
_MAX_EXACT_N = 20
# The tail of _cdf_cvm_inf's series is dropped once a term is below this (as scipy).
_SERIES_TOLERANCE = 1e-7

# anderson_ksamp's table (Scholz and Stephens 1987, Table 2) for k = 2 samples (m = 1):
# critical values of the normalised statistic at these significance levels.
_AD_LEVELS = np.array([0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001])
_AD_CRITICAL = (
    np.array([0.675, 1.281, 1.645, 1.96, 2.326, 2.573, 3.085])
    + np.array([-0.245, 0.25, 0.678, 1.149, 1.822, 2.364, 3.615]) / math.sqrt(1)
    + np.array([-0.105, -0.305, -0.362, -0.391, -0.396, -0.345, -0.154]) / 1
)
# Quadratic in the statistic fitted to log(level), as anderson_ksamp does on each call.
_AD_FIT = np.polyfit(_AD_CRITICAL, np.log(_AD_LEVELS), 2)
_AD_P_MAX = float(_AD_LEVELS.max())
_AD_P_MIN = float(_AD_LEVELS.min())


class _SortedReferenceTest(PerFeatureTest):
    """Shared constructor of the two rank tests: the reference columns, sorted."""

    _max_alpha = 1.0  # largest alpha whose rejections still mean something

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        alpha: float = 0.05,
        correction: str = "bonferroni",
        min_samples: int = 2,
        n_permutations: int = 4999,
        seed: int = 0,
    ) -> None:
        self.alpha, self.correction, self.min_samples = check_options(
            alpha, correction, min_samples
        )
        check_min_samples(self.min_samples, lowest=2)  # both statistics need 2 per sample
        self.n_permutations = check_int("n_permutations", n_permutations, 99)
        self.seed = check_int("seed", seed, 0)
        if self.alpha > self._max_alpha:
            raise ValueError(
                f"alpha must be <= {self._max_alpha} for {self.name} "
                f"(its p-values are capped there), got {alpha!r}"
            )
        self._sorted = self._sorted_reference(reference)

    def _samples(self, columns: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each feature's sorted reference and sorted window, in ``features`` order."""
        for feature in self.features:
            yield self._sorted[feature], np.sort(columns[feature].astype(np.float64))

    def _tied_p_value(self, ref: np.ndarray, cur: np.ndarray, statistic: str
                      ) -> tuple[float, float] | None:
        """``(statistic, permutation p-value)`` when the pooled sample has ties, else None.

        ``statistic`` is ``"cvm"`` or ``"anderson"`` (see :func:`_tied_test`).
        """
        if (not np.any(ref[1:] == ref[:-1]) and not np.any(cur[1:] == cur[:-1])
                and not np.any(np.searchsorted(ref, cur, side="left")
                               != np.searchsorted(ref, cur, side="right"))):
            return None  # no ties: the closed forms (scipy's) are valid
        merged, from_current = merge_sorted(ref, cur)
        starts, ends = tie_runs(merged)
        if starts.size == merged.size:
            return None
        in_current = running_count(from_current)[ends - 1]
        b = np.diff(np.concatenate(([0], in_current))).astype(np.int64)
        return _tied_test((ends - starts).astype(np.int64), b, statistic,
                          self.n_permutations, self.seed)


class CramerVonMisesDetector(_SortedReferenceTest):
    """Per-feature two-sample Cramér-von Mises test against a fixed reference.

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
        Fewest values a column may hold, at least 2 (the statistic's variance needs
        two values per sample). A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    With sample sizes :math:`n` (reference) and :math:`m` (window),
    :math:`N = n + m`, and the midranks :math:`r_i` (reference values, sorted) and
    :math:`s_j` (window values, sorted) of each sample in the pooled sample (tied values
    share the average of their ranks),

    .. math:: U = n \\sum_{i=1}^n (r_i - i)^2 + m \\sum_{j=1}^m (s_j - j)^2,
              \\qquad T = \\frac{U}{n m N} - \\frac{4 n m - 1}{6 N},

    which estimates :math:`\\frac{nm}{N} \\int (F_1 - F_2)^2 \\, dH_N` (Anderson 1962)
    and weighs the whole distribution, where KS looks at the largest gap only. The
    statistic and p-value equal ``scipy.stats.cramervonmises_2samp(reference, current)``
    (``method="auto"``): when :math:`\\max(n, m) \\le 20` the p-value is exact (scipy
    computes it, by enumerating the null distribution of :math:`U`); otherwise
    :math:`T` is standardised with its exact mean and variance and referred to the
    limiting distribution of the one-sample statistic (Csörgő and Faraway 1996's
    series), vectorised here over the features. The ranks come from merging the
    window, once sorted, into the presorted reference.

    **Ties.** The closed forms assume continuous data, and scipy's statistic mixes pooled
    midranks with within-sample ranks (two identical constant columns of 500 and 200
    rows get p = 2e-8). When the pooled sample has a tie, the statistic is Anderson's
    tie-aware ``T = n m / N**2 * sum_j l_j (F_j - G_j)**2`` over the distinct values
    (ECDFs ``F`` and ``G``, ``l_j`` pooled values equal to the j-th) and the p-value a
    permutation one (:func:`_tied_test`: at most ``n_permutations`` draws,
    seeded by ``seed``); without ties both equal scipy's.
    """

    name = "cvm"

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        statistics = np.empty(len(self.features))
        p_values = np.ones(len(self.features))
        standardised = np.full(len(self.features), np.nan)
        for i, (ref, cur) in enumerate(self._samples(columns)):
            tied = self._tied_p_value(ref, cur, "cvm")
            if tied is not None:
                statistics[i], p_values[i] = tied
                continue
            nx, ny = ref.size, cur.size
            u = _cvm_u(ref, cur)
            k, n = nx * ny, nx + ny  # Python ints: exact, as in scipy
            statistics[i] = u / (k * n) - (4 * k - 1) / (6 * n)
            if max(nx, ny) <= _MAX_EXACT_N:
                p_values[i] = _cvm_exact_p(ref, cur)
            else:
                standardised[i] = _cvm_standardised(statistics[i], nx, ny)
        # scipy returns 1 below 0.003, where 1 - cdf would be 1 to about 1e-18
        tail = standardised >= 0.003  # False for NaN (the exact ones)
        if tail.any():
            p_values[tail] = np.maximum(1.0 - _cdf_cvm_inf(standardised[tail]), 0.0)
        return statistics, p_values


class AndersonDarlingDetector(_SortedReferenceTest):
    """Per-feature two-sample Anderson-Darling test against a fixed reference.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D numeric array (bool, int or float; NaN and inf rejected).
        Each column is sorted once, here; the caller's arrays are not modified.
    alpha : float, default 0.05
        Significance level in (0, 0.25], applied to the adjusted p-values: p-values are
        capped at 0.25, so a larger ``alpha`` would flag every feature (see Notes).
    correction : {"bonferroni", "benjamini-hochberg", "none"}, default "bonferroni"
        Multiple-testing correction across the features.
    min_samples : int, default 2
        Fewest values a column may hold, at least 2 (the normalisation needs
        :math:`N \\ge 4` pooled values). A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    The k-sample Anderson-Darling test of Scholz and Stephens (1987) for
    :math:`k = 2`, in its midrank version (eq. 7 there), which allows ties. With the
    :math:`L` distinct pooled values :math:`z_1 < \\dots < z_L`, :math:`l_j` pooled
    values equal to :math:`z_j`, :math:`B_j = \\#\\{\\text{pooled} < z_j\\} + l_j / 2`,
    and for sample :math:`i` of size :math:`n_i`,
    :math:`M_{ij} = \\#\\{\\text{sample } i < z_j\\} + f_{ij} / 2` (:math:`f_{ij}` of its
    values equal to :math:`z_j`),

    .. math:: A^2_{akN} = \\frac{N-1}{N} \\sum_{i=1}^{2} \\frac{1}{n_i} \\sum_{j=1}^{L}
              \\frac{l_j}{N} \\frac{(N M_{ij} - n_i B_j)^2}
              {B_j (N - B_j) - N l_j / 4},

    and the reported statistic is normalised, :math:`(A^2_{akN} - 1) / \\sigma_N` with
    :math:`\\sigma_N^2` the exact variance under the null (it can be negative). This
    equals ``scipy.stats.anderson_ksamp([reference, current], variant="midrank")``
    (the default variant; scipy 1.17 warns unless ``variant`` is given).

    The p-value is scipy's: interpolated (a quadratic in the statistic fitted to the
    logarithm of the levels) from the table of critical values at the levels 0.25, 0.1,
    0.05, 0.025, 0.01, 0.005 and 0.001, and **capped at 0.25 and floored at 0.001**
    outside that range. scipy warns when it caps or floors; this detector computes the
    same numbers itself and does not warn. Consequences: a p-value of 0.25 means
    "0.25 or more", and 0.001 means "0.001 or less", so a Bonferroni-adjusted p-value
    can never fall below ``0.001 * n_features``: with more than ``alpha / 0.001``
    features (50 at ``alpha=0.05``) no feature can be flagged with Bonferroni; prefer
    ``"benjamini-hochberg"`` or KS/CvM there. Permutation p-values (scipy's
    ``method=PermutationMethod()``) are not offered: too slow for a daemon.

    **Ties.** The statistic above is right with ties, but the tabulated p-values assume
    continuous data (8-15% rejections at 5% on integer data). When the pooled sample has
    a tie the p-value is a permutation one (:func:`_tied_test`: at most
    ``n_permutations`` draws, seeded by ``seed``), neither capped nor floored; without
    ties it is scipy's. When every pooled value is the same (scipy raises: "needs more
    than one distinct observation"), the two samples cannot differ: :math:`A^2_{akN}` is
    taken as 0, giving the statistic :math:`-1 / \\sigma_N` and p-value 1.
    """

    name = "anderson"
    _max_alpha = _AD_P_MAX

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        statistics = np.empty(len(self.features))
        p_values = np.empty(len(self.features))
        for i, (ref, cur) in enumerate(self._samples(columns)):
            tied = self._tied_p_value(ref, cur, "anderson")
            if tied is not None:
                a2akn, p_values[i] = tied
                statistics[i] = (a2akn - 1) / math.sqrt(_ad_variance(ref.size, cur.size))
                continue
            a2akn = _ad_midrank(ref, cur)
            statistics[i] = (a2akn - 1) / math.sqrt(_ad_variance(ref.size, cur.size))
            p_values[i] = _ad_p_value(statistics[i])
        return statistics, p_values


def _cvm_u(ref: np.ndarray, cur: np.ndarray) -> float:
    """``U`` of cramervonmises_2samp from two sorted float arrays (scipy's operations)."""
    merged, from_current = merge_sorted(ref, cur)
    starts, ends = tie_runs(merged)
    # scipy.stats.rankdata(method="average"): 0.5 * (end + start + 1) for a run [start, end)
    midrank = np.repeat(0.5 * (ends + starts + 1), ends - starts)
    rx, ry = midrank[~from_current], midrank[from_current]
    nx, ny = ref.size, cur.size
    return float(
        nx * np.sum((rx - np.arange(1, nx + 1, dtype=np.float64)) ** 2)
        + ny * np.sum((ry - np.arange(1, ny + 1, dtype=np.float64)) ** 2)
    )


def _cvm_exact_p(ref: np.ndarray, cur: np.ndarray) -> float:
    """Exact p-value for small samples, from scipy (an enumeration; at most 20 x 20)."""
    return float(cramervonmises_2samp(ref, cur, method="exact").pvalue)


def _cvm_standardised(t: float, nx: int, ny: int) -> float:
    """``T`` standardised with its exact null mean and variance (Anderson 1962, eq. 15)."""
    n, k = nx + ny, nx * ny
    et = (1 + 1 / n) / 6
    # exact integers, one correctly rounded division (as scipy)
    vt = (n + 1) * (4 * k * n - 3 * (nx**2 + ny**2) - 2 * k) / (45 * n**2 * 4 * k)
    return 1 / 6 + (t - et) / math.sqrt(45 * vt)


def _cdf_cvm_inf(x: np.ndarray) -> np.ndarray:
    """Limiting CDF of the one-sample Cramér-von Mises statistic at each ``x > 0``.

    The series of Csörgő and Faraway (1996), eq. 1.2, summed until a term is below
    1e-7: the same terms, in the same order, as scipy.stats._hypotests._cdf_cvm_inf.
    """
    total = np.zeros_like(x)
    running = np.ones(x.shape, dtype=bool)
    k = 0
    while running.any():
        xs = x[running]
        u = math.exp(gammaln(k + 0.5) - gammaln(k + 1)) / (np.pi**1.5 * np.sqrt(xs))
        y = 4 * k + 1
        q = y**2 / (16 * xs)
        term = u * math.sqrt(y) * np.exp(-q) * kv(0.25, q)
        total[running] += term
        running[running] = np.abs(term) >= _SERIES_TOLERANCE
        k += 1
    return total


def _ad_midrank(ref: np.ndarray, cur: np.ndarray) -> float:
    """Scholz and Stephens' :math:`A^2_{akN}` for two sorted float arrays (scipy's operations)."""
    merged, from_current = merge_sorted(ref, cur)
    n_pooled = merged.size
    starts, ends = tie_runs(merged)
    if starts.size < 2:
        return 0.0  # one distinct value: identical ECDFs (scipy raises here)
    lj = (ends - starts).astype(np.float64)
    bj = starts + lj / 2.0
    denominator = bj * (n_pooled - bj) - n_pooled * lj / 4.0
    in_current = running_count(from_current)
    cur_le = in_current[ends - 1]  # current values <= z_j
    cur_lt = np.concatenate(([0], cur_le[:-1]))  # current values < z_j
    total = 0.0
    for size, le, lt in (
        (ref.size, ends - cur_le, starts - cur_lt),  # reference first, as scipy (samples order)
        (cur.size, cur_le, cur_lt),
    ):
        mij = le.astype(np.float64)
        mij -= (le - lt) / 2.0
        inner = lj / float(n_pooled) * (n_pooled * mij - bj * size) ** 2 / denominator
        total += inner.sum() / size
    return total * ((n_pooled - 1.0) / n_pooled)


@functools.lru_cache(maxsize=4096)
def _ad_variance(n_ref: int, n_cur: int) -> float:
    """Null variance :math:`\\sigma_N^2` of :math:`A^2_{akN}` for k = 2 (scipy's operations).

    Depends only on the sample sizes, which repeat from window to window.
    """
    k = 2
    n = np.array([n_ref, n_cur])
    big_n = n_ref + n_cur
    H = (1.0 / n).sum()  # the paper's names
    hs_cs = (1.0 / np.arange(big_n - 1, 1, -1)).cumsum()
    h = hs_cs[-1] + 1
    g = (hs_cs / np.arange(2, big_n)).sum()
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * H
    b = (2 * g - 4) * k**2 + 8 * h * k + (2 * g - 14 * h - 4) * H - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k**2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * H + 4 * h
    d = (2 * h + 6) * k**2 - 4 * h * k
    return float(
        (a * big_n**3 + b * big_n**2 + c * big_n + d)
        / ((big_n - 1.0) * (big_n - 2.0) * (big_n - 3.0))
    )


def _ad_p_value(statistic: float) -> float:
    """anderson_ksamp's interpolated p-value for k = 2, capped at 0.25, floored at 0.001."""
    if statistic < _AD_CRITICAL.min():
        return _AD_P_MAX
    if statistic > _AD_CRITICAL.max():
        return _AD_P_MIN
    return math.exp(np.polyval(_AD_FIT, statistic))


# --- ties: exact tie-aware statistics, permutation p-values ---------------------------------

#: Sequential Monte Carlo (Besag and Clifford 1991): stop once this many permuted
#: statistics reach the observed one; the p-value is then ``_STOP_AFTER / draws``.
_STOP_AFTER = 20
# Up to this many distinct values, window counts are drawn as multivariate hypergeometric
# vectors (cost per draw ~ distinct values); above, as random subsets (cost ~ pooled size).
_HYPERGEOMETRIC_MAX_L = 64


def _tie_statistics(lj: np.ndarray, b: np.ndarray, n: int, m: int, statistic: str
                    ) -> np.ndarray:
    """The tie-aware statistic of each row of window counts ``b`` (rows x distinct values).

    ``lj``: pooled count of each distinct value (sorted values); the reference holds
    ``lj - b``. ``"cvm"``: ``T = n m / N**2 * sum_j l_j (F_j - G_j)**2`` with the
    ECDFs at the distinct values (Anderson 1962's statistic, ties counted with their
    multiplicity). ``"anderson"``: Scholz and Stephens' midrank :math:`A^2_{akN}`.
    """
    big_n = n + m
    b = np.atleast_2d(b).astype(np.float64)
    cum_l = np.cumsum(lj, dtype=np.float64)
    cum_b = np.cumsum(b, axis=1)
    if statistic == "cvm":
        diff = (cum_l - cum_b) / n - cum_b / m
        return (n * m / big_n**2) * (diff**2 @ lj.astype(np.float64))
    lf = lj.astype(np.float64)
    bj = cum_l - lf / 2.0
    denominator = bj * (big_n - bj) - big_n * lf / 4.0
    ok = denominator > 0  # only one distinct value makes it 0 (then A2akN = 0)
    total = np.zeros(b.shape[0])
    if not ok.any():
        return total
    weight = lf[ok] / big_n / denominator[ok]
    m_cur = (cum_b - b / 2.0)[:, ok]
    m_ref = (cum_l - lf / 2.0)[ok] - m_cur
    total += ((big_n * m_ref - bj[ok] * n) ** 2 @ weight) / n
    total += ((big_n * m_cur - bj[ok] * m) ** 2 @ weight) / m
    return total * ((big_n - 1.0) / big_n)


def _tied_test(lj: np.ndarray, b: np.ndarray, statistic: str, n_permutations: int,
               seed: int) -> tuple[float, float]:
    """Observed tie-aware statistic and its permutation p-value.

    Under no drift the window is a random subset of the pooled sample (exchangeability),
    so the window's counts of the distinct values are multivariate hypergeometric: the
    permutation distribution is drawn directly from the counts. The p-value is
    ``(1 + #{b: T_b >= T}) / (B + 1)`` over at most ``n_permutations`` draws,
    stopped early (Besag and Clifford's sequential p-value, also valid) once
    ``_STOP_AFTER`` draws reach ``T``: a window without drift costs a few dozen draws.
    """
    m = int(b.sum())
    big_n = int(lj.sum())
    n = big_n - m
    observed = float(_tie_statistics(lj, b, n, m, statistic)[0])
    if lj.size < 2:
        return observed, 1.0  # one distinct value: every permutation is the same
    rng = np.random.default_rng(seed)
    tol = 1e-10 * max(abs(observed), 1e-300)  # equal statistics must count as reached
    group = np.repeat(np.arange(lj.size), lj)
    reached = drawn = 0
    chunk = 64
    while drawn < n_permutations:
        size = min(chunk, n_permutations - drawn)
        if lj.size <= _HYPERGEOMETRIC_MAX_L:
            draws = rng.multivariate_hypergeometric(lj, m, size=size)
        else:
            picks = np.stack([rng.choice(big_n, m, replace=False) for _ in range(size)])
            rows = np.arange(size)[:, None] * lj.size
            draws = np.bincount((rows + group[picks]).ravel(),
                                minlength=size * lj.size).reshape(size, lj.size)
        hits = _tie_statistics(lj, draws, n, m, statistic) >= observed - tol
        total = reached + int(hits.sum())
        if total >= _STOP_AFTER:
            position = int(np.flatnonzero(np.cumsum(hits) + reached >= _STOP_AFTER)[0])
            return observed, _STOP_AFTER / (drawn + position + 1)
        reached, drawn = total, drawn + size
        chunk = min(chunk * 2, 1024)
    return observed, (reached + 1) / (drawn + 1)
