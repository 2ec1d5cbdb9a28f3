"""Kullback-Leibler and Jensen-Shannon drift detectors for numeric and categorical features."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import rel_entr

from ._binning import BinnedDetector, check_epsilon, smoothed

__all__ = ["JSDetector", "KLDetector"]

_LOG_2 = np.log(2.0)


class KLDetector(BinnedDetector):
    """Per-feature Kullback-Leibler divergence of the window from the reference.

    A distance, not a test: there are no p-values and no multiple-testing correction;
    a feature drifts when its divergence exceeds ``threshold``.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D array. Numeric features: bool, int or float (NaN and inf
        rejected). Categorical features: bool, int, str, bytes, or object arrays of
        hashable values. Bins are computed once, here; the caller's arrays are not
        modified.
    threshold : float, default 0.1
        A feature drifts when its divergence (in nats) is strictly greater than this
        (finite, >= 0).
    bins : int, default 10
        Number of reference-quantile bins of a numeric feature (>= 2; ties can merge
        some). Ignored for categorical features.
    epsilon : float, default 1e-4
        Proportion given to an empty bin (in (0, 1)), see Notes.
    feature_type : {"numeric", "categorical"} or None, default None
        Type of every feature. ``None`` infers it per column from the reference's dtype:
        int and float columns are numeric; bool, str, bytes and object columns are
        categorical. Pass ``"categorical"`` for integer-coded categories.
    min_samples : int, default 1
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    The samples are binned as in :class:`~detectors.psi.PSIDetector`. With reference
    proportions :math:`r_i` and current proportions :math:`c_i`, both smoothed (each
    proportion that is exactly 0 replaced by :math:`\\varepsilon`, then each side
    renormalised to sum to 1),

    .. math:: \\mathrm{KL}(c \\| r) = \\sum_i c_i \\ln \\frac{c_i}{r_i} \\ge 0,

    in nats; floating-point rounding below 0 is clipped to 0. It is asymmetric: mass the
    window puts where the reference has little (new categories, values outside the
    reference's range) weighs most. Without smoothing a bin empty in the reference but
    not in the window would make it infinite. Under no drift it is about
    :math:`\\tfrac12 (1/n + 1/m)\\,\\chi^2_{k-1}` for ``k`` bins (about 0.0045 for 10
    bins and 2000 against 2000 values).
    """

    name = "kl"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        threshold: float = 0.1,
        bins: int = 10,
        epsilon: float = 1e-4,
        feature_type: str | None = None,
        min_samples: int = 1,
        alpha: float = 0.05,
        n_resamples: int = 1000,
        seed: int = 0,
        window_sizes: Sequence[int] = (),
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        super().__init__(
            reference,
            threshold=threshold,
            bins=bins,
            feature_type=feature_type,
            min_samples=min_samples,
            alpha=alpha,
            n_resamples=n_resamples,
            seed=seed,
            window_sizes=window_sizes,
        )

    def _statistic(self, reference: np.ndarray, current: np.ndarray) -> float:
        r = smoothed(reference, self.epsilon)
        c = smoothed(current, self.epsilon)
        return max(float(np.sum(c * np.log(c / r))), 0.0)


class JSDetector(BinnedDetector):
    """Per-feature Jensen-Shannon distance (base 2) between reference and window.

    A distance, not a test: there are no p-values and no multiple-testing correction;
    a feature drifts when its distance exceeds ``threshold``.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D array. Numeric features: bool, int or float (NaN and inf
        rejected). Categorical features: bool, int, str, bytes, or object arrays of
        hashable values. Bins are computed once, here; the caller's arrays are not
        modified.
    threshold : float, default 0.1
        A feature drifts when its distance is strictly greater than this (finite, >= 0;
        the distance lies in [0, 1]).
    bins : int, default 10
        Number of reference-quantile bins of a numeric feature (>= 2; ties can merge
        some). Ignored for categorical features.
    feature_type : {"numeric", "categorical"} or None, default None
        Type of every feature. ``None`` infers it per column from the reference's dtype:
        int and float columns are numeric; bool, str, bytes and object columns are
        categorical. Pass ``"categorical"`` for integer-coded categories.
    min_samples : int, default 1
        Fewest values a column may hold. A reference column with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a current window with fewer
        (in any feature) yields a result with ``insufficient_data=True``.

    Notes
    -----
    The samples are binned as in :class:`~detectors.psi.PSIDetector`. With reference
    proportions :math:`r` and current proportions :math:`c` (not smoothed: none is
    needed) and their mixture :math:`m = (r + c) / 2`,

    .. math:: \\mathrm{JS}(r, c) = \\sqrt{\\tfrac12 \\mathrm{KL}(r \\| m)
              + \\tfrac12 \\mathrm{KL}(c \\| m)}

    with logarithms to base 2, so :math:`0 \\le \\mathrm{JS} \\le 1` (1 for disjoint
    supports). This is a metric, symmetric, and equals
    ``scipy.spatial.distance.jensenshannon(r, c, base=2)`` (same operations; a
    divergence rounded below 0 is clipped to 0 instead of giving NaN).

    Being a square root, it shrinks slowly with the sample sizes: under no drift the
    divergence is about :math:`(1/n + 1/m)\\,\\chi^2_{k-1} / (8 \\ln 2)`, so with 10 bins
    the distance is typically about 0.04 for 2000 against 2000 values but about 0.13
    for 200 against 200, above the default threshold. Use it on large windows (or raise
    the threshold, or use fewer bins).
    """

    name = "js"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        threshold: float = 0.1,
        bins: int = 10,
        feature_type: str | None = None,
        min_samples: int = 1,
        alpha: float = 0.05,
        n_resamples: int = 1000,
        seed: int = 0,
        window_sizes: Sequence[int] = (),
    ) -> None:
        super().__init__(
            reference,
            threshold=threshold,
            bins=bins,
            feature_type=feature_type,
            min_samples=min_samples,
            alpha=alpha,
            n_resamples=n_resamples,
            seed=seed,
            window_sizes=window_sizes,
        )

    def _statistic(self, reference: np.ndarray, current: np.ndarray) -> float:
        # scipy.spatial.distance.jensenshannon(reference, current, base=2), step by step
        p = reference / np.sum(reference)
        q = current / np.sum(current)
        m = (p + q) / 2.0
        js = np.sum(rel_entr(p, m)) + np.sum(rel_entr(q, m))
        js /= _LOG_2
        return math.sqrt(max(float(js / 2.0), 0.0))
