"""Base classes of the per-feature detectors (private).

Every per-feature detector validates its reference once, in ``__init__``, and then runs
the same ``test`` skeleton on each window: validate the window's columns, return the
insufficient-data result when a column is shorter than ``min_samples``, otherwise compute
one statistic per feature and assemble the result. What differs is kept in subclasses:

:class:`PerFeatureTest`
    Hypothesis tests (KS, on numpy or torch, Cramér-von Mises, Anderson-Darling): a
    statistic and a p-value per feature (``_statistics``), the p-values corrected across
    features and compared with ``alpha``.
:class:`PerFeatureDistance`
    Distances (Wasserstein, and PSI, KL and JS through
    :class:`~detectors._binning.BinnedDetector`): a statistic per feature
    (``_distances``), compared with ``threshold``; no p-values.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._common import (
    NUMERIC_KINDS,
    assemble,
    assemble_distances,
    current_columns,
    insufficient,
    reference_columns,
)
from .results import DriftResult


class PerFeatureDetector:
    """The reference bookkeeping and ``test`` skeleton shared by the per-feature detectors.

    A subclass's ``__init__`` sets ``min_samples`` and then calls :meth:`_reference` (or
    :meth:`_sorted_reference`), which sets ``features`` and the reference sizes. A
    family of subclasses defines ``_insufficient`` and ``_result``, and a public ``test``
    (with the docstring of its family) that calls :meth:`_test`.
    """

    name: str = ""
    features: tuple[str, ...]
    min_samples: int
    _sizes: dict[str, int]  # feature -> number of reference values

    def _reference(
        self, reference: Mapping[str, np.ndarray], kinds: str = NUMERIC_KINDS
    ) -> dict[str, np.ndarray]:
        """Validate ``reference``; set ``features`` and the sizes; return its columns.

        The columns are not copied: a subclass that keeps them must copy them.
        """
        columns = reference_columns(reference, kinds, self.min_samples)
        self.features = tuple(columns)
        self._sizes = {feature: values.size for feature, values in columns.items()}
        return columns

    def _sorted_reference(self, reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate a numeric ``reference`` as :meth:`_reference` does; return it sorted.

        Each column is a sorted, read-only float64 copy: the caller's arrays are never
        touched.
        """
        sorted_columns = {}
        for feature, values in self._reference(reference).items():
            ref = np.sort(values.astype(np.float64))  # astype copies: the input is never touched
            ref.setflags(write=False)
            sorted_columns[feature] = ref
        return sorted_columns

    def _columns(self, current: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The window's columns of the reference features, validated (numeric here)."""
        return current_columns(current, self.features, NUMERIC_KINDS)

    def _insufficient(self, n_ref: list[int], n_cur: list[int]) -> DriftResult:
        """The result of a window with a column shorter than ``min_samples``."""
        raise NotImplementedError

    def _result(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> DriftResult:
        """The result of a window whose columns are all long enough."""
        raise NotImplementedError

    def _test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """The ``test`` skeleton: validate, check the sizes, then compute the result."""
        columns = self._columns(current)
        n_ref = [self._sizes[f] for f in self.features]
        n_cur = [columns[f].size for f in self.features]
        if min(n_cur) < self.min_samples:
            return self._insufficient(n_ref, n_cur)
        return self._result(columns, n_ref, n_cur)


class PerFeatureTest(PerFeatureDetector):
    """A per-feature hypothesis test: p-values, corrected across features, against ``alpha``.

    Subclasses set ``alpha``, ``correction`` and ``min_samples`` (validated by
    :func:`~detectors._common.check_options`) and define ``_statistics``; the window's
    columns are numeric unless they override ``_columns``.
    """

    alpha: float
    correction: str

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(features={list(self.features)!r}, alpha={self.alpha}, "
            f"correction={self.correction!r}, min_samples={self.min_samples})"
        )

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Test every reference feature of ``current`` (extra keys are ignored).

        Raises
        ------
        KeyError
            A reference feature is missing from ``current``.
        ValueError, TypeError
            A column is not 1-D, not numeric, or holds NaN/inf.
        """
        return self._test(current)

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Statistic and (uncorrected) p-value of every feature, in ``features`` order."""
        raise NotImplementedError

    def _insufficient(self, n_ref: list[int], n_cur: list[int]) -> DriftResult:
        return insufficient(self.name, self.features, n_ref, n_cur, self.alpha, self.correction)

    def _result(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> DriftResult:
        statistics, p_values = self._statistics(columns, n_ref, n_cur)
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


class PerFeatureDistance(PerFeatureDetector):
    """A per-feature distance: a feature drifts when its statistic exceeds ``threshold``.

    Subclasses set ``threshold`` (validated by
    :func:`~detectors._common.check_threshold`) and ``min_samples``, and define
    ``_distances``.
    """

    threshold: float

    def test(self, current: Mapping[str, np.ndarray]) -> DriftResult:
        """Compare every reference feature of ``current`` (extra keys are ignored).

        Raises
        ------
        KeyError
            A reference feature is missing from ``current``.
        ValueError, TypeError
            A column is not 1-D, not numeric, or holds NaN/inf.
        """
        return self._test(current)

    def _distances(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The statistic of every feature, in ``features`` order."""
        raise NotImplementedError

    def _insufficient(self, n_ref: list[int], n_cur: list[int]) -> DriftResult:
        return insufficient(self.name, self.features, n_ref, n_cur, self.threshold, "none")

    def _result(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> DriftResult:
        return assemble_distances(
            self.name, self.features, self._distances(columns), n_ref, n_cur, self.threshold
        )
