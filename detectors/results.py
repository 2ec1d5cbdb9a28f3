"""Typed, immutable results returned by the detectors."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DriftResult", "FeatureResult"]


@dataclass(frozen=True, slots=True)
class FeatureResult:
    """Outcome of one per-feature test.

    Attributes
    ----------
    feature : str
        Feature (column) name.
    statistic : float
        Test statistic (KS distance ``D`` or Pearson's chi-square). ``nan`` when the
        window could not be tested.
    p_value : float or None
        Raw (uncorrected) p-value; ``None`` when the window could not be tested.
    adjusted_p_value : float or None
        p-value after the detector's multiple-testing correction across its features.
    drifted : bool
        ``adjusted_p_value < alpha``.
    n_reference, n_current : int
        Number of values of this feature in the reference and in the current window.
    null_quantile : float or None
        Distance detectors: the distance this feature had to exceed by chance alone at
        this window size (its resampled null quantile, see
        :class:`~detectors._base.PerFeatureDistance`); ``None`` for tests.
    """

    feature: str
    statistic: float
    p_value: float | None
    adjusted_p_value: float | None
    drifted: bool
    n_reference: int
    n_current: int
    null_quantile: float | None = None


@dataclass(frozen=True, slots=True)
class DriftResult:
    """Outcome of one detector run over all of its features.

    Attributes
    ----------
    detector : str
        Detector name, a key of :data:`detectors.registry.KINDS` (or ``"performance"``,
        ``"label_chi2"``, ``"prediction_chi2"`` for the label detectors).
    statistic : float
        Largest per-feature statistic (``nan`` when the window could not be tested).
    p_value : float or None
        Smallest *adjusted* per-feature p-value; ``None`` when the window could not be
        tested. Distance detectors (psi, kl, js, wasserstein) report the smallest
        adjusted resampling p-value of the features above ``threshold`` (1 when none is).
    threshold : float
        For tests, the significance level ``alpha`` the adjusted p-values are compared
        with; for distances, the distance above which a feature counts as drifted.
    drifted : bool
        ``True`` when any feature drifted.
    n_reference, n_current : int
        Largest per-feature sample size on each side (columns normally share one length,
        so these are the row counts of reference and window).
    correction : str
        ``"bonferroni"``, ``"benjamini-hochberg"`` or ``"none"``.
    features : tuple of FeatureResult
        One entry per reference feature, in reference order.
    insufficient_data : bool
        ``True`` when some feature of the current window had fewer than ``min_samples``
        values. Nothing is tested then: ``drifted`` is ``False``, ``p_value`` is
        ``None`` and every feature carries ``statistic=nan`` and ``p_value=None``.
    """

    detector: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int
    correction: str
    features: tuple[FeatureResult, ...]
    insufficient_data: bool = False
    null_quantile: float | None = None
