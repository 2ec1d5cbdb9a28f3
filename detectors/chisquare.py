"""Chi-square test of homogeneity drift detector for categorical features."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy.special import chdtrc
from scipy.stats import fisher_exact

from ._base import PerFeatureTest
from ._common import (
    CATEGORICAL_KINDS,
    assemble,
    check_category_types,
    check_nonnegative,
    check_options,
    count_categories,
    current_columns,
)
from .results import DriftResult

__all__ = ["ChiSquareDetector"]

#: A 2 x 2 table (after pooling) whose smallest expected count is below this gets
#: Fisher's exact test instead of the chi-square approximation (``min_expected > 0``).
EXACT_BELOW = 5.0
#: Draws of the Monte Carlo exact test used when pooling would leave nothing to test.
EXACT_DRAWS = 4999


class ChiSquareDetector(PerFeatureTest):
    """Per-feature chi-square test of homogeneity against a fixed reference.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D array of category values: str, bytes, int or bool arrays,
        or object arrays of hashable values. Float arrays are rejected (encode
        categories as ints or strings). Category counts are computed once, here.
    alpha : float, default 0.05
        Significance level in (0, 1), applied to the adjusted p-values.
    correction : {"bonferroni", "benjamini-hochberg", "none"}, default "bonferroni"
        Multiple-testing correction across the features.
    min_samples : int, default 1
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.
    min_expected : float, default 5.0
        Finite and >= 0. Categories whose smallest expected count (see Notes) is below
        this are pooled into one column before the test; 0 disables pooling.

    Notes
    -----
    For each feature, the categories seen in the reference or in the current window
    (a category seen in neither is not a column) give a :math:`2 \\times k` table of
    counts :math:`O_{ij}` (row 0 reference, row 1 current). With row totals
    :math:`R_i`, column totals :math:`C_j` and grand total :math:`N`, the expected
    counts under homogeneity are :math:`E_{ij} = R_i C_j / N` and

    .. math:: X^2 = \\sum_{i,j} \\frac{(O_{ij} - E_{ij})^2}{E_{ij}}
              \\sim \\chi^2_{k-1} \\text{ asymptotically},

    so the p-value is the :math:`\\chi^2_{k-1}` survival function at :math:`X^2`. This
    equals ``scipy.stats.chi2_contingency(table, correction=False)``. When only one
    category occurs (:math:`k = 1`) the two samples cannot differ: the statistic is 0
    and the p-value 1, as scipy also reports.

    **Pooling of rare categories.** The :math:`\\chi^2` approximation wants expected
    counts of about 5 or more; with many rare categories the p-values are unreliable,
    typically too small (Zipf-like frequencies over 50 categories, reference 2000,
    window 200: about 12% of same-distribution windows flagged at ``alpha=0.05``).
    So, per feature and per window, every column whose smallest expected count
    :math:`\\min(R_0, R_1)\\, C_j / N` is below ``min_expected`` is merged into one
    pooled column. If the pooled column is itself below ``min_expected``, the other
    columns are folded into it, smallest first (by :math:`C_j`; ties in table order),
    until it is not, but one column is always left besides it: pooling never turns a
    testable table into an untestable one. (A :math:`2 \\times 2` table cannot be
    pooled further; Pearson's test on it keeps roughly its nominal size even with small
    expected counts, whereas pooling it away would make a binary feature with a rare
    level untestable, whatever its drift.) The test is then run on the pooled table
    (kept columns in table order, the pooled column last), so the result equals
    ``scipy.stats.chi2_contingency(pooled, correction=False)``. When every column is
    rare (a window too small for any category to reach ``min_expected``, e.g. ten
    classes in a window of 10 to 20), pooling would leave one column, nothing to test;
    the raw table then gets an **exact conditional test** instead: Fisher's for two
    columns, otherwise Pearson's :math:`X^2` referred to its distribution given the
    margins, the window's counts drawn as multivariate hypergeometric
    (:data:`EXACT_DRAWS` draws, seeded, the same for every window; p-value
    :math:`(1 + \\#\\{X^2_b \\ge X^2\\}) / (1 + B)`), valid at every size. The statistic
    is then :math:`X^2` of the raw table. Categories seen in the window only (or in
    the reference only) follow the same rule: a frequent new category keeps its own
    column, rare ones are pooled (together they may still show as an excess in the
    pooled column).

    The decision looks at the margins (column totals :math:`C_j`, row totals) only,
    never at how a column splits between reference and window. Pearson's test is
    conditional on the margins: under homogeneity the table given its margins is
    multivariate hypergeometric, whatever the category probabilities. A merge chosen
    from the margins is therefore fixed given them, and the pooled table is again a
    homogeneity table whose :math:`X^2` is referred to :math:`\\chi^2_{m-1}`
    (:math:`m` pooled columns). A merge chosen from the cells (say, from the window's
    counts alone) would depend on the very counts being tested and bias the test.
    ``min_expected=0`` disables pooling: the result is then ``chi2_contingency`` on
    the raw table. Pooling costs power only against changes confined to the rare
    categories, which then show only through the pooled column.

    Values are matched by Python equality and hash, so ``1`` and ``True`` (or ``1``
    and ``1.0`` in object arrays) are one category.
    """

    name = "chi2"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        alpha: float = 0.05,
        correction: str = "bonferroni",
        min_samples: int = 1,
        min_expected: float = 5.0,
    ) -> None:
        self.alpha, self.correction, self.min_samples = check_options(
            alpha, correction, min_samples
        )
        self.min_expected = check_nonnegative("min_expected", min_expected)
        columns = self._reference(reference, CATEGORICAL_KINDS)
        self._counts = {f: count_categories(f, values) for f, values in columns.items()}

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, min_expected={self.min_expected})"

    def categories(self, feature: str) -> list[Hashable]:
        """The reference's categories of ``feature``, in order of first occurrence."""
        return list(self._counts[feature])

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Test every reference feature of ``current`` (extra keys are ignored).

        Raises
        ------
        KeyError
            A reference feature is missing from ``current``.
        ValueError, TypeError
            A column is not 1-D, has an unsupported dtype, or holds unhashable values.
        """
        return self._test(current)

    def test_codes(
        self, codes: Mapping[str, np.ndarray], categories: Mapping[str, Sequence[Hashable]]
    ) -> DriftResult:
        """:meth:`test` on a window given as integer codes: ``categories[f][codes[f][i]]``
        is value ``i`` of feature ``f``. Same result as :meth:`test` on the decoded values,
        counted with one ``np.bincount`` per feature instead of a hash per value.

        Raises
        ------
        KeyError
            A reference feature is missing from ``codes`` or ``categories``.
        ValueError, TypeError
            A code column is not 1-D integers, or a code has no category.
        """
        counts: dict[str, dict[Hashable, int]] = {}
        n_cur = []
        for feature in self.features:
            if feature not in codes or feature not in categories:
                raise KeyError(f"current window is missing feature {feature!r}")
            counts[feature] = count_codes(feature, codes[feature], categories[feature],
                                          self._counts[feature])
            n_cur.append(int(np.asarray(codes[feature]).size))
        n_ref = [self._sizes[f] for f in self.features]
        if min(n_cur) < self.min_samples:
            return self._insufficient(n_ref, n_cur)
        statistics, p_values = self._counted_statistics(counts)
        return assemble(self.name, self.features, statistics, p_values, n_ref, n_cur,
                        self.alpha, self.correction)

    def _columns(self, current: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return current_columns(current, self.features, CATEGORICAL_KINDS)

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._counted_statistics(
            {f: count_categories(f, columns[f]) for f in self.features})

    def _counted_statistics(
        self, counts: Mapping[str, dict[Hashable, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        statistics = np.zeros(len(self.features))
        dof = np.zeros(len(self.features))
        exact: dict[int, float | None] = {}
        for i, feature in enumerate(self.features):
            current = counts[feature]
            check_category_types(feature, self._counts[feature], current)
            statistics[i], dof[i], exact[i] = _pearson(self._counts[feature], current,
                                                       self.min_expected)
        # One vectorised call for all features; dof 0 (a single category) gives p = 1.
        p_values = np.where(dof > 0, chdtrc(np.maximum(dof, 1), statistics), 1.0)
        for i, p in exact.items():
            if p is not None:
                p_values[i] = p
        return statistics, p_values


def count_codes(
    feature: str, codes: np.ndarray, categories: Sequence[Hashable],
    known: Mapping[Hashable, int] | None = None,
) -> dict[Hashable, int]:
    """Category -> count from integer codes.

    Categories not in ``known`` (the reference's) come in order of first occurrence in
    ``codes``, the order :func:`~detectors._common.count_categories` gives the decoded
    values: it is the order of the new columns of the table. ``known`` ones come first.
    """
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu":
        raise TypeError(
            f"feature {feature!r}: codes must be a 1-D integer array, got "
            f"{codes.dtype} of shape {codes.shape}")
    if codes.size == 0:
        return {}
    if int(codes.min()) < 0 or int(codes.max()) >= len(categories):
        raise ValueError(
            f"feature {feature!r}: codes must lie in [0, {len(categories)}) (one per "
            f"category), got [{int(codes.min())}, {int(codes.max())}]")
    counts = np.bincount(codes)
    present = np.flatnonzero(counts).tolist()
    known = known or {}
    new = [c for c in present if categories[c] not in known]
    if len(new) > 1:  # rare: several new categories in one window
        mask = np.isin(codes, new)
        seen, first = np.unique(codes[mask], return_index=True)
        new = seen[np.argsort(first)].tolist()
    return {categories[c]: int(counts[c])
            for c in [*(c for c in present if categories[c] in known), *new]}


def _pool(observed: np.ndarray, min_expected: float) -> np.ndarray:
    """Pool the rare columns of a 2 x k table of counts (see the class Notes).

    Decided from the margins only. Returns ``observed`` itself when nothing is pooled,
    else the kept columns in table order followed by the pooled column; one column
    only when every column is rare. Counts are integers, so all the sums are exact.
    """
    totals = observed[0] + observed[1]
    smallest_row, grand = float(observed.sum(axis=1).min()), float(totals.sum())
    rare = smallest_row * totals / grand < min_expected
    if not rare.any():
        return observed
    keep = ~rare
    pooled_total = float(totals[rare].sum())
    if smallest_row * pooled_total / grand < min_expected and keep.any():
        # Fold the kept columns in, smallest total first (stable: ties in table order),
        # while the pool is rare, but leave one. running[f]: pool total after f folds.
        kept = np.flatnonzero(keep)
        order = kept[np.argsort(totals[kept], kind="stable")]
        running = pooled_total + np.concatenate(([0.0], np.cumsum(totals[order[:-1]])))
        still_rare = smallest_row * running / grand < min_expected
        # True then False (running grows): fold up to the first False, else all but one.
        folds = order.size - 1 if still_rare.all() else int(np.argmin(still_rare))
        keep[order[:folds]] = False
    table = np.empty((2, int(np.count_nonzero(keep)) + 1))
    table[:, :-1] = observed[:, keep]
    table[:, -1] = observed[:, ~keep].sum(axis=1)
    return table


def _pearson(
    reference: dict[Hashable, int], current: dict[Hashable, int], min_expected: float
) -> tuple[float, int, float | None]:
    """Pearson's X^2 and its degrees of freedom for the 2 x k table of two count maps.

    Rare columns are pooled first (:func:`_pool`) unless ``min_expected`` is 0.
    Operations and their order follow scipy's chi2_contingency / power_divergence,
    so the statistic agrees with scipy's on the (pooled) table to the last bit or so.
    """
    categories = list(reference) + [c for c in current if c not in reference]
    if len(categories) < 2:
        return 0.0, 0, None
    observed = np.array(
        [[reference.get(c, 0) for c in categories], [current.get(c, 0) for c in categories]],
        dtype=np.float64,
    )
    if min_expected > 0.0:
        pooled = _pool(observed, min_expected)
        if pooled.shape[1] < 2:
            return _exact(observed)
        observed = pooled
    expected = (
        observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
    )
    statistic = float((((observed - expected) ** 2) / expected).ravel().sum())
    exact = None
    if min_expected > 0.0 and observed.shape[1] == 2 and expected.min() < EXACT_BELOW:
        # a 2 x 2 table with a small expected count: the chi-square approximation
        # over-rejects (7.2% at 5% for a 2% level in windows of 20); Fisher's exact test
        exact = float(fisher_exact(observed.astype(np.int64)).pvalue)
    return statistic, observed.shape[1] - 1, exact


def _exact(observed: np.ndarray) -> tuple[float, int, float]:
    """Pearson's X^2 of a 2 x k table (k >= 2) with an exact conditional p-value.

    Given the margins, the window's row is multivariate hypergeometric under homogeneity;
    two columns get Fisher's test, more get :data:`EXACT_DRAWS` seeded draws of it.
    """
    totals = (observed[0] + observed[1]).astype(np.int64)
    n, m = observed.sum(axis=1)
    grand = n + m
    expected = m * totals / grand  # the window's expected counts

    def pearson(window: np.ndarray) -> np.ndarray:
        # both rows' terms: (O1 - E1)^2 (1/E1 + 1/E0), since O0 - E0 = -(O1 - E1)
        return ((window - expected) ** 2 * (grand**2 / (n * m * totals))).sum(axis=-1)

    statistic = float(pearson(observed[1]))
    if totals.size == 2:
        return statistic, 1, float(fisher_exact(observed.astype(np.int64)).pvalue)
    # "count" is ~10x faster but takes memory in proportion to the grand total
    rng = np.random.default_rng(0)
    if grand <= 1e6:
        draws = rng.multivariate_hypergeometric(totals, int(m), size=EXACT_DRAWS, method="count")
    else:
        draws = rng.multivariate_hypergeometric(totals, int(m), size=EXACT_DRAWS)
    tolerance = 1e-9 * max(statistic, 1.0)  # equal tables must tie despite rounding
    exceed = np.count_nonzero(pearson(draws.astype(np.float64)) >= statistic - tolerance)
    return statistic, totals.size - 1, (1.0 + exceed) / (1.0 + EXACT_DRAWS)
