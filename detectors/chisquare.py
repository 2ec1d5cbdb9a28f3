"""Chi-square test of homogeneity drift detector for categorical features."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping

import numpy as np
from scipy.special import chdtrc

from ._common import (
    CATEGORICAL_KINDS,
    assemble,
    check_options,
    current_columns,
    insufficient,
    reference_columns,
)
from .results import DriftResult

__all__ = ["ChiSquareDetector"]


class ChiSquareDetector:
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
    and the p-value 1, as scipy also reports. The approximation wants expected counts
    of about 5 or more; rare categories make the p-values unreliable.

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
    ) -> None:
        self.alpha, self.correction, self.min_samples = check_options(
            alpha, correction, min_samples
        )
        columns = reference_columns(reference, CATEGORICAL_KINDS, self.min_samples)
        self.features: tuple[str, ...] = tuple(columns)
        self._counts = {feature: _count(feature, values) for feature, values in columns.items()}
        self._sizes = {feature: values.size for feature, values in columns.items()}

    def __repr__(self) -> str:
        return (
            f"ChiSquareDetector(features={list(self.features)!r}, alpha={self.alpha}, "
            f"correction={self.correction!r}, min_samples={self.min_samples})"
        )

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Test every reference feature of ``current`` (extra keys are ignored).

        Raises
        ------
        KeyError
            A reference feature is missing from ``current``.
        ValueError, TypeError
            A column is not 1-D, has an unsupported dtype, or holds unhashable values.
        """
        columns = current_columns(current, self.features, CATEGORICAL_KINDS)
        n_ref = [self._sizes[f] for f in self.features]
        n_cur = [columns[f].size for f in self.features]
        if min(n_cur) < self.min_samples:
            return insufficient(self.name, self.features, n_ref, n_cur, self.alpha, self.correction)
        statistics = np.zeros(len(self.features))
        dof = np.zeros(len(self.features))
        for i, feature in enumerate(self.features):
            statistics[i], dof[i] = _pearson(
                self._counts[feature], _count(feature, columns[feature])
            )
        # One vectorised call for all features; dof 0 (a single category) gives p = 1.
        p_values = np.where(dof > 0, chdtrc(np.maximum(dof, 1), statistics), 1.0)
        return assemble(
            self.name,
            self.features,
            statistics,
            p_values,
            n_ref,
            n_cur,
            self.alpha,
            self.correction,
        )


def _count(feature: str, values: np.ndarray) -> dict[Hashable, int]:
    """Category -> count, keyed by plain Python values so str/object columns match."""
    if values.dtype.kind == "O":
        # Object columns need not be orderable (np.unique sorts), only hashable.
        try:
            return dict(Counter(values.tolist()))
        except TypeError as exc:
            raise TypeError(f"feature {feature!r} holds unhashable values: {exc}") from None
    categories, counts = np.unique(values, return_counts=True)
    return dict(zip(categories.tolist(), counts.tolist(), strict=True))


def _pearson(reference: dict[Hashable, int], current: dict[Hashable, int]) -> tuple[float, int]:
    """Pearson's X^2 and its degrees of freedom for the 2 x k table of two count maps.

    Operations and their order follow scipy's chi2_contingency / power_divergence,
    so the statistic agrees with scipy to the last bit or so.
    """
    categories = list(reference) + [c for c in current if c not in reference]
    if len(categories) < 2:
        return 0.0, 0
    observed = np.array(
        [[reference.get(c, 0) for c in categories], [current.get(c, 0) for c in categories]],
        dtype=np.float64,
    )
    expected = (
        observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
    )
    return float((((observed - expected) ** 2) / expected).ravel().sum()), len(categories) - 1
