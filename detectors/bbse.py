"""Black Box Shift Estimation (BBSE) of label shift from a classifier's predictions.

Lipton, Wang and Smola, "Detecting and Correcting for Label Shift with Black Box
Predictors", ICML 2018.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from ._common import check_min_samples, check_unit_interval, one_d
from .chisquare import ChiSquareDetector
from .correction import adjust_p_values
from .errors import DetectorError, InsufficientDataError
from .results import DriftResult, FeatureResult

__all__ = ["BBSE", "LabelShiftEstimate", "SingularConfusionMatrixError"]

_CLASS_KINDS = "biuUSO"  # as ChiSquareDetector: floats are not classes


class SingularConfusionMatrixError(DetectorError, ValueError):
    """The reference confusion matrix cannot be inverted (reliably).

    Raised by :class:`BBSE` when a class is never predicted, or never the true label,
    on the reference data (the matrix is singular: the message names those classes), or
    when the matrix's condition number exceeds ``max_condition_number``.
    """


@dataclass(frozen=True, slots=True)
class LabelShiftEstimate:
    """Estimated label shift of one window (see :class:`BBSE`).

    Per-class fields are tuples aligned with ``classes``.

    Attributes
    ----------
    classes : tuple
        The classes, in the order of every per-class field.
    weights : tuple of float
        Importance weights :math:`\\hat w_j = \\hat q(y=j) / \\hat p(y=j)`, negative
        entries of :math:`\\hat C^{-1} \\hat\\mu` set to 0. ``nan`` when insufficient.
    raw_weights : tuple of float
        :math:`\\hat C^{-1} \\hat\\mu` before clipping.
    clipped : bool
        ``True`` when some raw weight was negative (and clipped to 0): a sign that the
        window is small, the classifier weak, or the shift not a pure label shift.
    standard_errors : tuple of float
        Delta-method standard errors of the raw weights (window and reference sampling).
    ci_lower, ci_upper : tuple of float
        Wald confidence interval ``raw ± z * se`` at level ``confidence``, clipped at 0
        (true weights are never negative).
    confidence : float
        Level of the interval.
    target_distribution : tuple of float
        Estimated label distribution of the window, :math:`\\hat q_j = \\hat w_j \\hat p_j`
        (renormalised to sum to 1, which matters only after clipping).
    reference_distribution : tuple of float
        Reference label distribution :math:`\\hat p_j`.
    condition_number : float
        2-norm condition number of the reference confusion matrix.
    statistic : float
        Pearson's :math:`X^2` of the window's predicted-class counts against the
        reference's (``nan`` when insufficient).
    p_value : float or None
        Its :math:`\\chi^2_{k-1}` p-value: the test of :math:`w = 1` (no label shift).
        ``None`` when insufficient.
    threshold : float
        Significance level ``alpha``.
    shifted : bool
        ``p_value < alpha``.
    n_reference, n_current : int
        Reference records and window predictions.
    insufficient_data : bool
        The window held fewer than ``min_samples`` predictions; nothing was estimated.
    """

    classes: tuple[Hashable, ...]
    weights: tuple[float, ...]
    raw_weights: tuple[float, ...]
    clipped: bool
    standard_errors: tuple[float, ...]
    ci_lower: tuple[float, ...]
    ci_upper: tuple[float, ...]
    confidence: float
    target_distribution: tuple[float, ...]
    reference_distribution: tuple[float, ...]
    condition_number: float
    statistic: float
    p_value: float | None
    threshold: float
    shifted: bool
    n_reference: int
    n_current: int
    insufficient_data: bool = False


class BBSE:
    """Black Box Shift Estimation: label-shift weights from a black-box classifier.

    Parameters
    ----------
    reference_y_true, reference_y_pred : numpy.ndarray
        1-D arrays of equal length: true and predicted classes on held-out reference
        data (not the model's training data, whose confusion matrix is optimistic).
        str, bytes, int or bool arrays, or object arrays of hashable values.
    classes : sequence of hashable, optional
        The classes, in the order the results use. Default: the sorted distinct values
        of both reference arrays (first-seen order when they cannot be sorted). Must
        include every reference value.
    alpha : float, default 0.05
        Significance level of the no-shift test, in (0, 1).
    confidence : float, default 0.95
        Level of the weights' Wald intervals, in (0, 1).
    max_condition_number : float, default 1e4
        Largest acceptable condition number of the confusion matrix. Above it the
        weights are mostly noise (their error grows with :math:`1/\\sigma_{\\min}(C)`)
        and construction fails; ``math.inf`` accepts any invertible matrix.
    min_samples : int, default 1
        Fewest records the reference may hold (fewer raises
        :class:`~detectors.errors.InsufficientDataError`); a window with fewer
        predictions yields ``insufficient_data=True``.
    min_expected : float, default 5.0
        Rare predicted classes are pooled for the no-shift test, as by
        :class:`~detectors.chisquare.ChiSquareDetector`; 0 turns pooling off.

    Raises
    ------
    SingularConfusionMatrixError
        Some class is never predicted, or never the true label, on the reference (the
        message names them), or the condition number exceeds ``max_condition_number``.

    Notes
    -----
    **Label shift** assumes :math:`p(x \\mid y)` is the same in reference and window
    while the priors move from :math:`p(y)` to :math:`q(y)`; then a fixed classifier
    :math:`f` has the same confusion behaviour :math:`p(\\hat y \\mid y)` in both, and
    the window's predicted-class distribution is

    .. math:: \\mu_i = q(\\hat y = i) = \\sum_j p(\\hat y = i, y = j)\\, w_j = (C w)_i,
              \\qquad w_j = q(y=j) / p(y=j),

    with the joint confusion matrix :math:`C_{ij} = p(\\hat y = i, y = j)`, estimated
    once from the :math:`n_0` reference records. BBSE solves
    :math:`\\hat w = \\hat C^{-1} \\hat\\mu` with :math:`\\hat\\mu` the window's
    predicted-class frequencies (:math:`n_1` predictions), clips negative entries to 0
    and estimates :math:`\\hat q_j = \\hat w_j \\hat p_j` with
    :math:`\\hat p_j = \\sum_i \\hat C_{ij}`. No label of the window is needed.

    **Uncertainty.** By the delta method (:math:`dw = C^{-1}(d\\mu - dC\\, w)`), with
    :math:`\\hat\\mu` multinomial over :math:`n_1` and :math:`\\mathrm{vec}\\,\\hat C`
    multinomial over :math:`n_0`, independent,

    .. math:: \\operatorname{Cov}(\\hat w) \\approx
        \\frac{C^{-1} \\operatorname{diag}(\\mu) C^{-\\top} - w w^\\top}{n_1}
        + \\frac{C^{-1} \\operatorname{diag}\\big(C (w \\circ w)\\big) C^{-\\top}
                 - w w^\\top}{n_0},

    evaluated at the estimates (raw :math:`\\hat w`). The first term is the window's
    sampling error, the second the reference confusion matrix's; both are kept, since
    with equal sizes they are of the same order and the window term alone would give
    intervals that cover far too rarely. The Wald interval is
    :math:`\\hat w_j \\pm z_{(1+\\gamma)/2}\\, \\mathrm{se}_j`.

    **Test of no shift.** When :math:`C` is invertible, :math:`w = 1` exactly when
    :math:`\\mu = C 1`, the reference's own predicted-class distribution. So the test
    of :math:`H_0: w = 1` is a chi-square test of homogeneity of the window's
    predicted-class counts against the reference's (Rabanser et al., "Failing Loudly",
    2019, test :math:`\\hat\\mu` directly, as here): it needs no inverse, so it is not
    inflated by an ill-conditioned :math:`C`, and it is two-sample, so the reference's
    own sampling error is accounted for. The p-value equals
    ``scipy.stats.chi2_contingency(table, correction=False).pvalue`` on the
    :math:`2 \\times k` table after rare classes are pooled (see
    :class:`~detectors.chisquare.ChiSquareDetector`; ``min_expected=0``: the raw table).
    """

    def __init__(
        self,
        reference_y_true: np.ndarray,
        reference_y_pred: np.ndarray,
        classes: Sequence[Hashable] | None = None,
        *,
        alpha: float = 0.05,
        confidence: float = 0.95,
        max_condition_number: float = 1e4,
        min_samples: int = 1,
        min_expected: float = 5.0,
    ) -> None:
        self.alpha = check_unit_interval("alpha", alpha)
        self.confidence = check_unit_interval("confidence", confidence)
        if isinstance(max_condition_number, bool) or not isinstance(
            max_condition_number, (int, float, np.integer, np.floating)
        ):
            raise TypeError(
                "max_condition_number must be a float >= 1, got "
                f"{type(max_condition_number).__name__}"
            )
        if not float(max_condition_number) >= 1.0:  # also rejects NaN
            raise ValueError(f"max_condition_number must be >= 1, got {max_condition_number!r}")
        self.max_condition_number = float(max_condition_number)
        self.min_samples = check_min_samples(min_samples)

        y_true = _classes_array("reference_y_true", reference_y_true)
        y_pred = _classes_array("reference_y_pred", reference_y_pred)
        if y_true.size != y_pred.size:
            raise ValueError(
                "reference_y_true and reference_y_pred must have the same length, got "
                f"{y_true.size} and {y_pred.size}"
            )
        if y_true.size < self.min_samples:
            raise InsufficientDataError(
                f"reference has {y_true.size} records; min_samples is {self.min_samples}"
            )
        self.classes: tuple[Hashable, ...] = _resolve_classes(classes, y_true, y_pred)
        self._index = {c: i for i, c in enumerate(self.classes)}
        k = len(self.classes)
        true_codes = _codes("reference_y_true", y_true, self._index)
        pred_codes = _codes("reference_y_pred", y_pred, self._index)
        self.n_reference = int(y_true.size)

        counts = np.bincount(pred_codes * k + true_codes, minlength=k * k).reshape(k, k)
        confusion = counts / self.n_reference
        never_predicted = [c for c, row in zip(self.classes, counts, strict=True) if not row.any()]
        never_true = [c for c, col in zip(self.classes, counts.T, strict=True) if not col.any()]
        if never_predicted or never_true:
            parts = []
            if never_predicted:
                parts.append(f"never predicted on the reference: {never_predicted!r}")
            if never_true:
                parts.append(f"never the true label on the reference: {never_true!r}")
            raise SingularConfusionMatrixError(
                "the reference confusion matrix is singular; classes " + "; ".join(parts)
            )
        condition = float(np.linalg.cond(confusion))
        if not math.isfinite(condition) or condition > 1.0 / np.finfo(np.float64).eps:
            raise SingularConfusionMatrixError(
                f"the reference confusion matrix is singular (condition number {condition:.4g})"
            )
        if condition > self.max_condition_number:
            raise SingularConfusionMatrixError(
                f"the reference confusion matrix is ill-conditioned: condition number "
                f"{condition:.4g} exceeds max_condition_number={self.max_condition_number:.4g}"
            )
        self.condition_number = condition
        confusion.setflags(write=False)
        #: :math:`\\hat C_{ij} = \\hat p(\\hat y = i, y = j)` (rows: predicted class).
        self.confusion_matrix: np.ndarray = confusion
        self._inverse = np.linalg.inv(confusion)
        reference_labels = confusion.sum(axis=0)
        reference_labels.setflags(write=False)
        #: :math:`\\hat p(y = j)` on the reference.
        self.reference_distribution: np.ndarray = reference_labels
        # Two-sample homogeneity test of predicted-class counts: H0 mu == C 1 <=> w == 1.
        self._chi2 = ChiSquareDetector(
            {"prediction": y_pred}, alpha=self.alpha, correction="none", min_samples=1,
            min_expected=min_expected,
        )
        self._z = float(ndtri(0.5 + self.confidence / 2.0))

    name = "label_shift"

    def __repr__(self) -> str:
        return (
            f"BBSE(classes={list(self.classes)!r}, n_reference={self.n_reference}, "
            f"condition_number={self.condition_number:.4g}, alpha={self.alpha}, "
            f"confidence={self.confidence})"
        )

    def estimate(self, window_y_pred: np.ndarray) -> LabelShiftEstimate:
        """Estimate the label shift of a window from its predictions alone.

        Parameters
        ----------
        window_y_pred : numpy.ndarray
            1-D array of the classifier's predicted classes on the window.

        Returns
        -------
        LabelShiftEstimate

        Raises
        ------
        ValueError
            ``window_y_pred`` is not 1-D or holds classes not in ``classes``.
        TypeError
            Unsupported dtype.
        """
        y_pred = _classes_array("window_y_pred", window_y_pred)
        k = len(self.classes)
        n = int(y_pred.size)
        p_ref = tuple(self.reference_distribution.tolist())
        if n < self.min_samples:
            nan = (math.nan,) * k
            return LabelShiftEstimate(
                classes=self.classes,
                weights=nan,
                raw_weights=nan,
                clipped=False,
                standard_errors=nan,
                ci_lower=nan,
                ci_upper=nan,
                confidence=self.confidence,
                target_distribution=nan,
                reference_distribution=p_ref,
                condition_number=self.condition_number,
                statistic=math.nan,
                p_value=None,
                threshold=self.alpha,
                shifted=False,
                n_reference=self.n_reference,
                n_current=n,
                insufficient_data=True,
            )
        codes = _codes("window_y_pred", y_pred, self._index)
        mu = np.bincount(codes, minlength=k) / n
        raw = self._inverse @ mu
        clipped = bool((raw < 0).any())
        weights = np.maximum(raw, 0.0)
        q = weights * self.reference_distribution
        q = q / q.sum() if q.sum() > 0 else q  # all weights clipped: nothing to normalise

        inv = self._inverse
        outer = np.outer(raw, raw)
        window_term = (inv * mu) @ inv.T - outer  # C^-1 diag(mu) C^-T - w w^T
        reference_term = (inv * (self.confusion_matrix @ raw**2)) @ inv.T - outer
        covariance = window_term / n + reference_term / self.n_reference
        se = np.sqrt(np.maximum(np.diag(covariance), 0.0))  # rounding may leave -1e-18
        lower = np.maximum(raw - self._z * se, 0.0)
        upper = np.maximum(raw + self._z * se, 0.0)

        test = self._chi2.test({"prediction": y_pred}).features[0]
        assert test.p_value is not None  # n >= 1: the window was tested
        return LabelShiftEstimate(
            classes=self.classes,
            weights=tuple(weights.tolist()),
            raw_weights=tuple(raw.tolist()),
            clipped=clipped,
            standard_errors=tuple(se.tolist()),
            ci_lower=tuple(lower.tolist()),
            ci_upper=tuple(upper.tolist()),
            confidence=self.confidence,
            target_distribution=tuple(q.tolist()),
            reference_distribution=p_ref,
            condition_number=self.condition_number,
            statistic=test.statistic,
            p_value=test.p_value,
            threshold=self.alpha,
            shifted=test.p_value < self.alpha,
            n_reference=self.n_reference,
            n_current=n,
        )


    def test(self, window_y_pred: np.ndarray) -> DriftResult:
        """:meth:`estimate` as a :class:`~detectors.results.DriftResult`, for the daemon.

        The result's ``statistic``/``p_value``/``drifted`` are the omnibus test of
        :math:`w = 1` (see :meth:`estimate`). Its ``features`` hold one entry per class,
        named ``str(class)``: ``statistic`` is the class's weight :math:`\\hat w_j`,
        ``p_value`` the two-sided Wald test of :math:`w_j = 1` (raw weight and standard
        error), ``adjusted_p_value`` that after Bonferroni across the classes, and
        ``drifted`` the class's flag: adjusted p-value below ``alpha`` *and* the omnibus
        test rejecting (the Wald tests alone over-reject at small windows; gated by the
        omnibus test they flag an unshifted window at most ``alpha`` of the time).

        A window predicting classes the reference never saw is not a pure label shift:
        the weights are ``nan``, and the omnibus test compares the predicted-class counts
        with the new classes included. That flags the window once the new classes are
        frequent enough to keep their own column; a handful of them is pooled with other
        rare classes (``min_expected``) and need not.
        """
        y_pred = _classes_array("window_y_pred", window_y_pred)
        names = tuple(str(c) for c in self.classes)
        try:
            est = self.estimate(y_pred)
        except ValueError:  # classes the reference never saw (shape and dtype were checked)
            test = self._chi2.test({"prediction": y_pred}).features[0]
            assert test.p_value is not None
            nan_features = tuple(FeatureResult(n, math.nan, None, None, False, self.n_reference,
                                               int(y_pred.size)) for n in names)
            return DriftResult(self.name, test.statistic, test.p_value, self.alpha,
                               test.p_value < self.alpha, self.n_reference, int(y_pred.size),
                               "bonferroni", nan_features)
        if est.insufficient_data:
            return DriftResult(
                self.name, math.nan, None, self.alpha, False, self.n_reference, est.n_current,
                "bonferroni", tuple(FeatureResult(n, math.nan, None, None, False,
                                                  self.n_reference, est.n_current)
                                    for n in names), insufficient_data=True)
        raw = np.asarray(est.raw_weights)
        se = np.asarray(est.standard_errors)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(raw - 1.0) / se
        # se == 0 only when the weight is pinned exactly: equal to 1 or certainly not.
        p = np.where(se > 0, 2.0 * ndtr(-z), np.where(raw == 1.0, 1.0, 0.0))
        adjusted = adjust_p_values(p, "bonferroni")
        features = tuple(
            # A class is flagged only when the omnibus test rejects too: the Wald tests
            # alone over-reject at small windows (12% at 50, 25% at 20 instead of 5%);
            # gated, no class is flagged on an unshifted window more often than alpha.
            FeatureResult(n, w, float(pi), float(ai), bool(ai < self.alpha and est.shifted),
                          self.n_reference, est.n_current)
            for n, w, pi, ai in zip(names, est.weights, p, adjusted, strict=True))
        assert est.p_value is not None
        return DriftResult(self.name, est.statistic, est.p_value, self.alpha, est.shifted,
                           self.n_reference, est.n_current, "bonferroni", features)


def _classes_array(name: str, values: object) -> np.ndarray:
    """``values`` as a 1-D array of classes (not copied)."""
    return one_d(name, values, _CLASS_KINDS, " (floats are not classes)")


def _distinct(values: np.ndarray) -> list[Any]:
    """Distinct values as plain Python objects (object arrays need not be orderable)."""
    if values.dtype.kind != "O":
        return np.unique(values).tolist()
    try:
        return list(dict.fromkeys(values.tolist()))
    except TypeError as exc:
        raise TypeError(f"reference classes must be hashable: {exc}") from None


def _resolve_classes(
    classes: Sequence[Hashable] | None, y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[Hashable, ...]:
    found = list(dict.fromkeys(_distinct(y_true) + _distinct(y_pred)))
    if classes is None:
        try:
            return tuple(sorted(found))
        except TypeError:  # mixed, unorderable hashables: keep first-seen order
            return tuple(found)
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"classes must be a sequence of classes, got {type(classes).__name__}")
    given = np.asarray(classes).tolist() if isinstance(classes, np.ndarray) else list(classes)
    try:
        unique = dict.fromkeys(given)
    except TypeError as exc:
        raise TypeError(f"classes must be hashable: {exc}") from None
    if len(unique) != len(given):
        raise ValueError(f"classes must be distinct, got {given!r}")
    if len(given) < 2:
        raise ValueError(f"classes must hold at least 2 classes, got {given!r}")
    missing = [c for c in found if c not in unique]
    if missing:
        raise ValueError(f"classes is missing reference classes {missing!r}")
    return tuple(given)


def _codes(name: str, values: np.ndarray, index: dict[Hashable, int]) -> np.ndarray:
    """Index of each value's class; ValueError naming the values that are no class."""
    try:
        if values.dtype.kind == "O":
            items = values.tolist()
            unknown = list(dict.fromkeys(v for v in items if v not in index))
            if not unknown:
                return np.fromiter((index[v] for v in items), dtype=np.intp, count=len(items))
        else:
            distinct, inverse = np.unique(values, return_inverse=True)
            keys = distinct.tolist()
            unknown = [v for v in keys if v not in index]
            if not unknown:
                return np.array([index[v] for v in keys], dtype=np.intp)[inverse]
    except TypeError as exc:  # unhashable objects
        raise TypeError(f"{name} holds unhashable values: {exc}") from None
    raise ValueError(f"{name} holds classes not seen on the reference: {unknown!r}")
