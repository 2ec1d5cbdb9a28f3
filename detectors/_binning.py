"""Reference binning shared by the binned distance detectors PSI, KL and JS (private).

A feature is *numeric* or *categorical*. Both are reduced, once per reference, to bins
and reference counts; each window is then counted into the same bins.

Numeric bins
    The reference's empirical ``j / bins`` quantiles for ``j = 1 .. bins - 1``, taken at
    data points (the inverse of the ECDF: the smallest value ``x`` with
    ``F_ref(x) >= j / bins``), deduplicated, are the inner edges of right-closed bins
    ``(-inf, e_1], (e_1, e_2], ..., (e_last, inf)``. With distinct reference values each
    bin holds ``n / bins`` reference values (up to rounding). Values outside the
    reference's range fall into the outermost bins, so a window need not share the
    reference's support. Ties can merge quantiles (fewer bins). When the reference's
    minimum is itself an edge (an atom holding at least ``1 / bins`` of the reference,
    e.g. a constant column), values *below* it get a bin of their own instead of sharing
    the atom's; values above an atom at the maximum get one anyway (the top bin). These
    two out-of-range bins are the only ones that can be empty in the reference.
Categorical bins
    One bin per category seen in the reference, plus one per category first seen in the
    window. Values are matched by Python equality and hash, as in
    :class:`~detectors.chisquare.ChiSquareDetector`.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence

import numpy as np

from ._base import PerFeatureDistance
from ._common import (
    ANY_KINDS,
    CATEGORICAL_KINDS,
    NUMERIC_KINDS,
    check_category_types,
    check_min_samples,
    check_threshold,
    check_unit_interval,
    count_categories,
    typed_current_columns,
)
from .results import DriftResult

NUMERIC = "numeric"
CATEGORICAL = "categorical"
FEATURE_TYPES: tuple[str, ...] = (NUMERIC, CATEGORICAL)
# dtype kinds a column inferred as numeric has; every other accepted kind is categorical.
_INFERRED_NUMERIC = "iuf"


def check_feature_type(feature_type: object) -> str | None:
    """Validate ``feature_type``: ``"numeric"``, ``"categorical"`` or ``None`` (infer)."""
    if feature_type is not None and (
        not isinstance(feature_type, str) or feature_type not in FEATURE_TYPES
    ):
        raise ValueError(
            f"feature_type must be one of {FEATURE_TYPES} or None, got {feature_type!r}"
        )
    return feature_type


def check_bins(bins: int) -> int:
    """Validate ``bins``: an int >= 2."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise TypeError(f"bins must be an int >= 2, got {type(bins).__name__}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins!r}")
    return int(bins)


def check_epsilon(epsilon: float) -> float:
    """Validate ``epsilon``: a float in (0, 1)."""
    return check_unit_interval("epsilon", epsilon)


def quantile_edges(sorted_reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges of a sorted, non-empty float reference (see the module docstring)."""
    n = sorted_reference.size
    j = np.arange(1, bins, dtype=np.int64)
    # smallest index i with (i + 1) / n >= j / bins, in exact integer arithmetic
    index = (j * n + bins - 1) // bins - 1
    edges = np.unique(sorted_reference[index])
    if edges[0] == sorted_reference[0]:
        # the largest float below the minimum: (-inf, that] holds exactly the x < minimum
        edges = np.concatenate(([np.nextafter(edges[0], -math.inf)], edges))
    return edges


class NumericBins:
    """Quantile bins of one numeric reference column and its counts."""

    __slots__ = ("edges", "reference_counts")

    def __init__(self, values: np.ndarray, bins: int) -> None:
        ref = np.sort(values.astype(np.float64))  # astype copies: the input is never touched
        self.edges = quantile_edges(ref, bins)
        self.edges.setflags(write=False)
        self.reference_counts = self._count(ref)
        self.reference_counts.setflags(write=False)

    def _count(self, values: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.edges, values, side="left")
        return np.bincount(index, minlength=self.edges.size + 1).astype(np.float64)

    def counts(self, feature: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts over the bins."""
        return self.reference_counts, self._count(values.astype(np.float64, copy=False))


class CategoricalBins:
    """The categories of one categorical reference column and their counts."""

    __slots__ = ("index", "reference_counts")

    def __init__(self, feature: str, values: np.ndarray) -> None:
        counts = count_categories(feature, values)
        self.index = {category: i for i, category in enumerate(counts)}
        self.reference_counts = np.array(list(counts.values()), dtype=np.float64)
        self.reference_counts.setflags(write=False)

    def counts(self, feature: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference and current counts; categories new in the window get bins at the end."""
        known = np.zeros(len(self.index))
        unseen = []
        current = count_categories(feature, values)
        check_category_types(feature, self.index, current)
        for category, count in current.items():
            i = self.index.get(category)
            if i is None:
                unseen.append(count)
            else:
                known[i] = count
        if not unseen:
            return self.reference_counts, known
        reference = np.concatenate((self.reference_counts, np.zeros(len(unseen))))
        return reference, np.concatenate((known, np.array(unseen, dtype=np.float64)))


def smoothed(counts: np.ndarray, epsilon: float) -> np.ndarray:
    """Proportions with empty bins set to ``epsilon``, renormalised to sum to 1."""
    p = counts / counts.sum()
    p[counts == 0] = epsilon
    return p / p.sum()


class BinnedDetector(PerFeatureDistance):
    """Common machinery of PSI, KL and JS; subclasses define ``name`` and ``_statistic``."""

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        threshold: float,
        bins: int,
        feature_type: str | None,
        min_samples: int,
        alpha: float = 0.05,
        n_resamples: int = 1000,
        seed: int = 0,
        window_sizes: Sequence[int] = (),
    ) -> None:
        self.threshold = check_threshold(threshold)
        self.bins = check_bins(bins)
        self.min_samples = check_min_samples(min_samples)
        self.feature_type = check_feature_type(feature_type)
        accepted = {None: ANY_KINDS, NUMERIC: NUMERIC_KINDS, CATEGORICAL: CATEGORICAL_KINDS}
        columns = self._reference(reference, accepted[self.feature_type])
        types_: dict[str, str] = {}
        self._bins: dict[str, NumericBins | CategoricalBins] = {}
        for feature, values in columns.items():
            kind = self.feature_type or (
                NUMERIC if values.dtype.kind in _INFERRED_NUMERIC else CATEGORICAL
            )
            types_[feature] = kind
            self._bins[feature] = (
                NumericBins(values, self.bins)
                if kind == NUMERIC
                else CategoricalBins(feature, values)
            )
        self._feature_types = types_
        self._kinds = {
            f: NUMERIC_KINDS if t == NUMERIC else CATEGORICAL_KINDS for f, t in types_.items()
        }
        self._calibration(alpha, n_resamples, seed, window_sizes)

    def _null_distances(self, feature: str, m: int, rng: np.random.Generator,
                        count: int) -> np.ndarray:
        reference = self._bins[feature].reference_counts
        draws = rng.multinomial(m, reference / reference.sum(), size=count).astype(np.float64)
        return np.array([self._statistic(reference, row) for row in draws])

    @property
    def feature_types(self) -> Mapping[str, str]:
        """feature -> "numeric" or "categorical" (read-only).

        A property over a plain dict: a stored mappingproxy would make the detector
        unpicklable, and the daemon saves prepared reference state with pickle.
        """
        return types.MappingProxyType(self._feature_types)

    def __repr__(self) -> str:
        epsilon = getattr(self, "epsilon", None)
        return (
            f"{type(self).__name__}(features={list(self.features)!r}, "
            f"threshold={self.threshold}, bins={self.bins}, "
            + (f"epsilon={epsilon}, " if epsilon is not None else "")
            + f"feature_type={self.feature_type!r}, min_samples={self.min_samples})"
        )

    def _statistic(self, reference: np.ndarray, current: np.ndarray) -> float:
        """The distance between two count vectors over the same bins."""
        raise NotImplementedError

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Compare every reference feature of ``current`` (extra keys are ignored).

        Raises
        ------
        KeyError
            A reference feature is missing from ``current``.
        ValueError, TypeError
            A column is not 1-D, has a dtype its feature type does not accept (a numeric
            feature takes bool, int or float; a categorical one bool, int, str, bytes or
            object), holds NaN/inf (numeric) or unhashable values (categorical).
        """
        return self._test(current)

    def _columns(self, current: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return typed_current_columns(current, self._kinds)

    def _distances(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(
            [self._statistic(*self._bins[f].counts(f, columns[f])) for f in self.features]
        )
