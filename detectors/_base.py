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

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._common import (
    NUMERIC_KINDS,
    assemble,
    assemble_distances,
    can_reject,
    check_int,
    check_unit_interval,
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
    """A per-feature distance, calibrated to the window size.

    A feature drifts when its distance exceeds both ``threshold`` (a difference of
    practical size) and the distance reached by chance alone at this window size: the
    ``1 - alpha`` quantile of its null distribution, family-wise over the detector's
    features. The null distribution is estimated from the reference by resampling:
    ``n_resamples`` windows of the window's size drawn with replacement from the
    reference, each compared with the reference by the detector's own distance. It is
    computed once per window size (sizes above 32 are rounded *down* to a grid of ratio
    :math:`2^{1/4}`: a smaller window's null distances are larger, so this errs on the
    side of fewer alarms) and kept in the detector, i.e. in the daemon's prepared
    reference state (``window_sizes`` precomputes it).

    Family-wise over the features (single-step max-T, Westfall and Young): each
    feature's distance is divided by its mean null distance, and the largest of these
    ratios over the features is compared with its resampled distribution (features
    resampled independently: at least as conservative as the real, positively
    dependent ones). A feature's ``adjusted_p_value`` is ``(1 + #{b: S_b >= s_f}) / (B + 1)``
    when its distance exceeds ``threshold`` (1 otherwise), its
    ``p_value`` the marginal resampling p-value, and its ``null_quantile`` the distance
    it has to exceed for ``adjusted_p_value < alpha`` (up to ties: a feature drifts when
    ``adjusted_p_value < alpha``). The smallest attainable p-value
    is :math:`1 / (B + 1)`: when it is not below ``alpha`` (``n_resamples=19`` at
    ``alpha=0.01``) nothing could be flagged and every window is ``insufficient_data``
    (:func:`~detectors._common.can_reject`).

    ``n_resamples=0`` turns the calibration off: the threshold alone decides, with no
    p-values (``p_value=None``), as before driftline 0.3; false alarms are then not
    controlled at small windows.

    Subclasses set ``threshold``, ``min_samples`` and call :meth:`_calibration`; they
    define ``_distances`` and ``_null_distances``.
    """

    threshold: float
    alpha: float = 0.05
    n_resamples: int = 1000
    seed: int = 0
    _null_cache: dict[tuple[str, int], np.ndarray]

    def _calibration(self, alpha: float, n_resamples: int, seed: int,
                     window_sizes: Sequence[int]) -> None:
        """Validate the calibration options; precompute the null at ``window_sizes``."""
        self.alpha = check_unit_interval("alpha", alpha)
        self.n_resamples = check_int("n_resamples", n_resamples, 0)
        if 0 < self.n_resamples < 19:
            raise ValueError(f"n_resamples must be 0 (no calibration) or >= 19, got "
                             f"{n_resamples!r}")
        self.seed = check_int("seed", seed, 0)
        self._null_cache = {}
        for size in window_sizes if self.n_resamples else ():
            for feature in self.features:
                self._null(feature, check_int("window size", size, 1))

    def _null(self, feature: str, m: int) -> np.ndarray:
        """The resampled null distances of ``feature`` at window size ``m`` (cached)."""
        size = grid_size(m)
        key = (feature, size)
        cached = self._null_cache.get(key)
        if cached is None:
            index = self.features.index(feature)
            rng = np.random.default_rng([self.seed, index, size])
            cached = np.asarray(self._null_distances(feature, size, rng, self.n_resamples),
                                dtype=np.float64)
            cached.setflags(write=False)
            self._null_cache[key] = cached
        return cached

    def _null_distances(self, feature: str, m: int, rng: np.random.Generator,
                        count: int) -> np.ndarray:
        """``count`` distances of windows of ``m`` values drawn from the reference."""
        raise NotImplementedError

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
        if self.n_resamples and not can_reject(1.0 / (self.n_resamples + 1.0), self.alpha):
            # the resampled null cannot place a distance beyond its 1 - alpha quantile
            return self._insufficient(n_ref, n_cur)
        distances = self._distances(columns)
        if self.n_resamples == 0:  # uncalibrated: the threshold alone
            return assemble_distances(self.name, self.features, distances, n_ref, n_cur,
                                      self.threshold, None)
        nulls = np.stack([self._null(f, m) for f, m in zip(self.features, n_cur, strict=True)])
        return assemble_distances(
            self.name, self.features, distances, n_ref, n_cur, self.threshold,
            calibrate(distances, nulls, self.threshold, self.alpha), self.alpha)


def grid_size(m: int) -> int:
    """The window size whose null distribution stands for ``m``'s: ``m`` up to 32, else
    the largest ``floor(2 ** (i / 4))`` not above ``m``."""
    if m <= 32:
        return m
    size = int(2 ** (math.floor(4 * math.log2(m) + 1e-9) / 4))
    return min(size, m)


def calibrate(distances: np.ndarray, nulls: np.ndarray, threshold: float, alpha: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw p-values, max-T adjusted p-values and null quantiles of the features.

    ``nulls``: features x resamples. See :class:`PerFeatureDistance`.
    """
    count = nulls.shape[1]
    raw = (1.0 + (nulls >= distances[:, None]).sum(axis=1)) / (count + 1.0)
    scale = nulls.mean(axis=1)
    positive = scale > 0
    safe = np.where(positive, scale, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(positive, distances / safe, np.where(distances > 0, np.inf, 0.0))
    null_max = (nulls / safe[:, None]).max(axis=0)  # a zero scale means all-zero nulls
    adjusted = (1.0 + (null_max[None, :] >= ratio[:, None]).sum(axis=1)) / (count + 1.0)
    adjusted = np.where(distances > threshold, adjusted, 1.0)
    # s > Q  <=>  adjusted < alpha, with Q the (j + 1)-th largest null maximum
    j = math.ceil(alpha * (count + 1) - 1) - 1
    ordered = np.sort(null_max)[::-1]
    q = ordered[j] if 0 <= j < count else math.inf
    quantile = np.maximum(np.where(positive, q * safe, 0.0 if math.isfinite(q) else math.inf),
                          threshold)
    return raw, adjusted, quantile
