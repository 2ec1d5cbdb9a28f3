"""Label drift, prediction drift and concept drift (windowed model performance).

* :class:`PredictionDriftDetector` and :class:`LabelDriftDetector` test whether the class
  distribution of a window's predictions (or of its actual labels) differs from the
  reference's: a chi-square test of homogeneity, delegated to
  :class:`~detectors.chisquare.ChiSquareDetector`.
* :class:`PerformanceDriftDetector` tests whether the model's *performance* changed, which
  is how concept drift (a change of :math:`P(y \\mid x)`) shows once the delayed labels
  arrive: error counts for a classifier (Fisher's exact or chi-square test), residual
  distributions for a regressor (two-sample Kolmogorov-Smirnov test).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
from scipy.stats import fisher_exact

from ._common import check_min_samples, check_unit_interval, one_d
from .chisquare import ChiSquareDetector
from .errors import InsufficientDataError
from .ks import KSDetector
from .results import DriftResult, FeatureResult

__all__ = ["LabelDriftDetector", "PerformanceDriftDetector", "PredictionDriftDetector"]

# dtype kinds of class arrays: bool, signed, unsigned / str, bytes, object. Floats are
# rejected, as by ChiSquareDetector: equality of floats is a poor notion of "same class".
_CLASS_KINDS = "biuUSO"
_TASKS = ("classification", "regression")
_TESTS = {"classification": ("fisher", "chi2"), "regression": ("ks",)}


class _ClassDistributionDetector:
    """Chi-square homogeneity test of one 1-D array of classes against a reference."""

    name: ClassVar[str]
    #: Name of the single pseudo-feature the wrapped ChiSquareDetector sees.
    feature: ClassVar[str]

    def __init__(self, reference: np.ndarray, *, alpha: float = 0.05, min_samples: int = 1,
                 min_expected: float = 5.0) -> None:
        self.alpha = check_unit_interval("alpha", alpha)
        self.min_samples = check_min_samples(min_samples)
        values = one_d("reference", reference, _CLASS_KINDS)
        if values.size < self.min_samples:
            raise InsufficientDataError(
                f"reference has {values.size} values; min_samples is {self.min_samples}"
            )
        # One feature, so there is nothing to correct for.
        self._chi2 = ChiSquareDetector(
            {self.feature: values},
            alpha=self.alpha,
            correction="none",
            min_samples=self.min_samples,
            min_expected=min_expected,
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(alpha={self.alpha}, min_samples={self.min_samples}, "
                f"min_expected={self._chi2.min_expected})")

    def test(self, current: np.ndarray) -> DriftResult:
        """Test the class distribution of ``current`` against the reference.

        Parameters
        ----------
        current : numpy.ndarray
            1-D array of the window's classes (same kinds as the reference).

        Returns
        -------
        DriftResult
            ``detector`` is this detector's ``name``; one feature, named after
            ``feature``; ``correction="none"``. A window with fewer than ``min_samples``
            values gives ``insufficient_data=True``.

        Raises
        ------
        ValueError, TypeError
            ``current`` is not 1-D, has a float dtype, or holds unhashable values.
        """
        values = one_d("current", current, _CLASS_KINDS)
        result = self._chi2.test({self.feature: values})
        return dataclasses.replace(result, detector=self.name)


class PredictionDriftDetector(_ClassDistributionDetector):
    """Chi-square test of the predicted-class distribution against reference predictions.

    Prediction drift needs no labels, so it is the earliest signal a classifier's
    inputs moved in a way that matters to the model.

    Parameters
    ----------
    reference : numpy.ndarray
        1-D array of the model's predicted classes on the reference data: str, bytes,
        int or bool, or object arrays of hashable values. Float arrays are rejected
        (encode classes as ints or strings). Counted once, here.
    alpha : float, default 0.05
        Significance level in (0, 1).
    min_samples : int, default 1
        Fewest values the reference may hold (fewer raises
        :class:`~detectors.errors.InsufficientDataError`); a window with fewer yields
        ``insufficient_data=True``.
    min_expected : float, default 5.0
        Classes whose smallest expected count is below this are pooled (see
        :class:`~detectors.chisquare.ChiSquareDetector`); 0 turns pooling off.

    Notes
    -----
    With reference class counts :math:`O_{0j}` and window class counts :math:`O_{1j}`
    over the :math:`k` classes seen in either, Pearson's statistic of the
    :math:`2 \\times k` table,

    .. math:: X^2 = \\sum_{i,j} \\frac{(O_{ij} - E_{ij})^2}{E_{ij}}, \\qquad
              E_{ij} = \\frac{R_i C_j}{N},

    is referred to :math:`\\chi^2_{k-1}`; the p-value equals
    ``scipy.stats.chi2_contingency(table, correction=False).pvalue`` on the table after
    rare classes are pooled (``min_expected``, default 5; 0: the raw table). See
    :class:`~detectors.chisquare.ChiSquareDetector`, which does the work on the single
    pseudo-feature ``"prediction"``.
    """

    name = "prediction_chi2"
    feature = "prediction"


class LabelDriftDetector(_ClassDistributionDetector):
    """Chi-square test of the actual-label distribution against reference labels.

    Label drift (prior shift, :math:`P(y)` changes) is tested exactly as
    :class:`PredictionDriftDetector` tests predictions, on the pseudo-feature
    ``"label"``. Pass only the labels that have arrived: the window's delayed labels
    need not cover all of its records, and a missing label is not a class.

    Parameters
    ----------
    reference : numpy.ndarray
        1-D array of the actual classes of the reference data (see
        :class:`PredictionDriftDetector` for the accepted dtypes).
    alpha : float, default 0.05
        Significance level in (0, 1).
    min_samples : int, default 1
        Fewest values the reference may hold; a window with fewer yields
        ``insufficient_data=True``.
    min_expected : float, default 5.0
        As for :class:`PredictionDriftDetector`.

    Notes
    -----
    Same statistic as :class:`PredictionDriftDetector`. When the labels are available
    and the classifier's confusion matrix is stable, :class:`~detectors.bbse.BBSE`
    estimates the shifted label distribution from predictions alone.
    """

    name = "label_chi2"
    feature = "label"


class PerformanceDriftDetector:
    """Concept drift: windowed model performance against reference performance.

    Parameters
    ----------
    reference_y_true, reference_y_pred : numpy.ndarray
        1-D arrays of equal length: actual and predicted targets on reference data the
        model was not trained on. For a classifier, classes of any dtype compared with
        ``==`` (str, int, bool, float or object); for a regressor, numbers.
    task : {"classification", "regression"}, default "classification"
        What the model predicts.
    test : {"fisher", "chi2", "ks"} or None, default None
        ``"fisher"`` (Fisher's exact test) or ``"chi2"`` (Pearson's chi-square) on the
        error counts of a classifier; ``"ks"`` (two-sample Kolmogorov-Smirnov) on the
        residuals of a regressor. ``None`` picks ``"fisher"`` or ``"ks"`` by ``task``.
    alpha : float, default 0.05
        Significance level in (0, 1).
    min_samples : int, default 30
        Fewest *labelled* records a side may hold. A reference with fewer raises
        :class:`~detectors.errors.InsufficientDataError`; a window with fewer yields a
        result with ``insufficient_data=True`` (the normal state of a window whose
        labels have not arrived yet).

    Notes
    -----
    Labels arrive late, so a window's ``y_true`` may be incomplete: a record whose label
    is missing (``NaN`` in a float array, ``None`` in an object array) is *unlabelled*
    and ignored on both sides. Predictions may not be missing.

    **Classifier.** A record is an error when :math:`y \\ne \\hat y`. With :math:`e_0`
    errors in :math:`n_0` labelled reference records and :math:`e_1` in :math:`n_1`
    labelled window records, the :math:`2 \\times 2` table

    .. math:: \\begin{pmatrix} e_0 & n_0 - e_0 \\\\ e_1 & n_1 - e_1 \\end{pmatrix}

    is tested for homogeneity (equal error rates). ``test="fisher"`` conditions on the
    margins: the p-value is the total hypergeometric probability of the tables no more
    likely than the observed one, exactly
    ``scipy.stats.fisher_exact(table).pvalue`` (two-sided). Being exact and discrete it
    is conservative (size at most ``alpha``). ``test="chi2"`` refers Pearson's
    :math:`X^2` (no continuity correction) to :math:`\\chi^2_1`, exactly
    ``scipy.stats.chi2_contingency(table, correction=False).pvalue``; it wants expected
    counts of about 5 or more. When nobody erred, or everybody did, the rates cannot
    differ: p = 1. The reported statistic, in both cases, is the change in error rate
    :math:`e_1 / n_1 - e_0 / n_0` (positive: the model got worse).

    **Regressor.** The residuals :math:`r = y - \\hat y` of the window are compared
    with the reference residuals by the two-sample Kolmogorov-Smirnov test; the
    statistic :math:`D` and p-value equal ``scipy.stats.ks_2samp(r_ref, r_window)``
    (see :class:`~detectors.ks.KSDetector`). A shift of the residuals' location is a
    bias, a change of their spread a change of accuracy; KS sees both.

    Both tests are two-sided: a model that got *better* has drifted too. Compare the
    sign of the statistic (classifier) to tell the two apart.
    """

    name = "performance"

    def __init__(
        self,
        reference_y_true: np.ndarray,
        reference_y_pred: np.ndarray,
        *,
        task: str = "classification",
        test: str | None = None,
        alpha: float = 0.05,
        min_samples: int = 30,
    ) -> None:
        if not isinstance(task, str) or task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        if test is None:
            test = _TESTS[task][0]
        if not isinstance(test, str) or test not in _TESTS[task]:
            raise ValueError(f"test must be one of {_TESTS[task]} for task={task!r}, got {test!r}")
        self.task, self.test_name = task, test
        self.alpha = check_unit_interval("alpha", alpha)
        self.min_samples = check_min_samples(min_samples)
        y_true, y_pred = self._labelled("reference", reference_y_true, reference_y_pred)
        if y_true.size < self.min_samples:
            raise InsufficientDataError(
                f"reference has {y_true.size} labelled records; min_samples is {self.min_samples}"
            )
        self.n_reference = int(y_true.size)
        self.feature = "error_rate" if task == "classification" else "residual"
        if task == "classification":
            errors = _errors(y_true, y_pred)
            self._reference_errors = int(np.count_nonzero(errors))
            self.reference_error_rate = self._reference_errors / self.n_reference
            if test == "chi2":
                self._chi2 = ChiSquareDetector(
                    {"error": errors}, alpha=self.alpha, correction="none", min_samples=1
                )
        else:
            self.reference_error_rate = math.nan
            # KSDetector sorts its own float64 copy of the residuals, once.
            self._ks = KSDetector(
                {"residual": y_true - y_pred}, alpha=self.alpha, correction="none", min_samples=1
            )

    def __repr__(self) -> str:
        return (
            f"PerformanceDriftDetector(task={self.task!r}, test={self.test_name!r}, "
            f"alpha={self.alpha}, min_samples={self.min_samples}, "
            f"n_reference={self.n_reference})"
        )

    def test(self, y_true: np.ndarray, y_pred: np.ndarray) -> DriftResult:
        """Test the window's performance against the reference's.

        Parameters
        ----------
        y_true, y_pred : numpy.ndarray
            1-D arrays of equal length: the window's actual targets (missing labels
            allowed, see Notes of the class) and predictions.

        Returns
        -------
        DriftResult
            ``detector="performance"``, ``correction="none"`` and one feature,
            ``"error_rate"`` (classifier; statistic = window minus reference error rate)
            or ``"residual"`` (regressor; statistic = KS distance). ``n_current`` counts
            the labelled records only. Fewer than ``min_samples`` of them give
            ``insufficient_data=True``.

        Raises
        ------
        ValueError, TypeError
            An array is not 1-D, the lengths differ, a dtype does not suit the task, or
            a prediction (or, for a regressor, a present label) is not finite.
        """
        y_true, y_pred = self._labelled("current", y_true, y_pred)
        n = int(y_true.size)
        if n < self.min_samples:
            return DriftResult(
                detector=self.name,
                statistic=math.nan,
                p_value=None,
                threshold=self.alpha,
                drifted=False,
                n_reference=self.n_reference,
                n_current=n,
                correction="none",
                features=(
                    FeatureResult(self.feature, math.nan, None, None, False, self.n_reference, n),
                ),
                insufficient_data=True,
            )
        if self.task == "regression":
            result = self._ks.test({"residual": y_true - y_pred})
            return dataclasses.replace(
                result,
                detector=self.name,
                features=(dataclasses.replace(result.features[0], feature=self.feature),),
            )
        errors = _errors(y_true, y_pred)
        e1 = int(np.count_nonzero(errors))
        e0, n0 = self._reference_errors, self.n_reference
        if self.test_name == "fisher":
            table = [[e0, n0 - e0], [e1, n - e1]]
            p_value = float(fisher_exact(table, alternative="two-sided").pvalue)
        else:
            chi2 = self._chi2.test({"error": errors}).features[0].p_value
            assert chi2 is not None  # n >= min_samples >= 1, so the window was tested
            p_value = chi2
        p_value = min(max(p_value, 0.0), 1.0)
        statistic = e1 / n - e0 / n0
        drifted = p_value < self.alpha
        feature = FeatureResult(self.feature, statistic, p_value, p_value, drifted, n0, n)
        return DriftResult(
            detector=self.name,
            statistic=statistic,
            p_value=p_value,
            threshold=self.alpha,
            drifted=drifted,
            n_reference=n0,
            n_current=n,
            correction="none",
            features=(feature,),
        )

    def _labelled(self, side: str, y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
        """Validate one side's pair of arrays; return them without unlabelled records."""
        kinds = "biufUSO" if self.task == "classification" else "biuf"
        true = one_d(f"{side} y_true", y_true, kinds)
        pred = one_d(f"{side} y_pred", y_pred, kinds)
        if true.size != pred.size:
            raise ValueError(
                f"{side} y_true and y_pred must have the same length, got {true.size} and "
                f"{pred.size}"
            )
        if "O" not in (true.dtype.kind, pred.dtype.kind) and _family(true) != _family(pred):
            # numpy compares str with int as "never equal": every record would be an error.
            raise TypeError(
                f"{side} y_true ({true.dtype}) and y_pred ({pred.dtype}) hold different kinds "
                "of values"
            )
        if pred.dtype.kind == "f" and not np.isfinite(pred).all():
            raise ValueError(f"{side} y_pred contains NaN or infinite values")
        if pred.dtype.kind == "O" and any(v is None for v in pred.tolist()):
            raise ValueError(f"{side} y_pred contains None (predictions may not be missing)")
        # Missing labels are the normal state of delayed labels: drop, don't reject.
        if true.dtype.kind == "f":
            if np.isinf(true).any():
                raise ValueError(f"{side} y_true contains infinite values")
            labelled = ~np.isnan(true)
        elif true.dtype.kind == "O":
            labelled = np.array([v is not None for v in true.tolist()], dtype=bool)
        else:
            return true, pred
        if labelled.all():
            return true, pred
        return true[labelled], pred[labelled]


def _family(array: np.ndarray) -> str:
    """Which values a dtype holds: numbers, str or bytes (never equal across families)."""
    kind = array.dtype.kind
    return "number" if kind in "biuf" else kind


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Boolean array: which records the classifier got wrong."""
    return np.asarray(y_true != y_pred, dtype=bool)
