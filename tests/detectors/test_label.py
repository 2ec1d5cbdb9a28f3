"""Prediction, label and performance (concept) drift: scipy parity, calibration, API."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from detectors.chisquare import ChiSquareDetector
from detectors.errors import InsufficientDataError
from detectors.label import LabelDriftDetector, PerformanceDriftDetector, PredictionDriftDetector
from detectors.results import DriftResult

ALPHA = 0.05
TRIALS = 500
# Rejection counts consistent (99%) with a true rate of ALPHA over TRIALS trials: [13, 38].
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)
LEVELS = np.array(["cat", "dog", "bird", "fish"])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
CLASS_DETECTORS = [(PredictionDriftDetector, "prediction"), (LabelDriftDetector, "label")]


def classifier_sample(
    rng: np.random.Generator, n: int, error_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """3-class labels and predictions that are wrong with probability ``error_rate``."""
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < error_rate, (y_true + rng.integers(1, 3, n)) % 3, y_true)
    return y_true, y_pred


def regressor_sample(
    rng: np.random.Generator, n: int, bias: float = 0.0, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    y_true = rng.normal(size=n)
    return y_true, y_true - bias + rng.normal(scale=noise, size=n)


def scipy_chi2(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    a, b = Counter(ref.tolist()), Counter(cur.tolist())
    categories = list(dict.fromkeys([*a, *b]))
    table = np.array([[a[c] for c in categories], [b[c] for c in categories]])
    result = stats.chi2_contingency(table, correction=False)
    return result.statistic, result.pvalue


def error_table(
    ref: tuple[np.ndarray, np.ndarray], cur: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    e0, e1 = int(np.sum(ref[0] != ref[1])), int(np.sum(cur[0] != cur[1]))
    return np.array([[e0, ref[0].size - e0], [e1, cur[0].size - e1]])


# --- prediction / label drift --------------------------------------------------------------


@pytest.mark.parametrize(("cls", "feature"), CLASS_DETECTORS)
@pytest.mark.parametrize("seed", range(6))
def test_class_distribution_parity_with_chi2_contingency(cls, feature: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = [(50, 50), (1000, 200), (200, 3000)][seed % 3]
    ref = rng.choice(LEVELS, size=n1, p=WEIGHTS)
    cur = rng.choice(LEVELS, size=n2, p=rng.dirichlet(np.ones(4)))
    if seed % 2:  # int classes, and a class the reference never saw
        ref, cur = rng.integers(0, 4, n1), rng.integers(0, 5, n2)
    result = cls(ref, min_expected=0).test(cur)  # pooling off: the raw table
    statistic, p_value = scipy_chi2(ref, cur)
    # by default rare classes are pooled exactly as ChiSquareDetector pools a feature
    pooled = cls(ref).test(cur).features[0]
    direct = ChiSquareDetector({feature: ref}, correction="none").test({feature: cur})
    assert (pooled.statistic, pooled.p_value) == (direct.features[0].statistic,
                                                  direct.features[0].p_value)
    assert isinstance(result, DriftResult)
    assert (result.detector, result.correction, result.threshold) == (cls.name, "none", 0.05)
    (only,) = result.features
    assert only.feature == feature and only.p_value is not None
    np.testing.assert_allclose(only.statistic, statistic, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(only.p_value, p_value, rtol=1e-9, atol=1e-12)
    assert result.p_value == only.adjusted_p_value == only.p_value
    assert result.drifted == (only.p_value < ALPHA)
    assert (result.n_reference, result.n_current) == (n1, n2)


def test_names() -> None:
    assert PredictionDriftDetector.name == "prediction_chi2"
    assert LabelDriftDetector.name == "label_chi2"
    assert PerformanceDriftDetector.name == "performance"


def test_prediction_drift_false_positive_rate_is_alpha() -> None:
    rng = np.random.default_rng(7)
    rejections = sum(
        PredictionDriftDetector(rng.choice(LEVELS, 300, p=WEIGHTS), alpha=ALPHA)
        .test(rng.choice(LEVELS, 300, p=WEIGHTS))
        .drifted
        for _ in range(TRIALS)
    )
    assert LOW <= rejections <= HIGH  # measured: 28 / 500


def test_label_shift_is_detected() -> None:
    rng = np.random.default_rng(3)
    result = LabelDriftDetector(rng.choice(LEVELS, 2000, p=WEIGHTS)).test(
        rng.choice(LEVELS, 2000, p=WEIGHTS[::-1])
    )
    assert result.drifted and result.p_value is not None and result.p_value < 1e-10


@pytest.mark.parametrize(("cls", "feature"), CLASS_DETECTORS)
def test_class_detectors_insufficient_and_validation(cls, feature: str) -> None:
    ref = np.array(["a", "b", "a", "c"])
    empty = cls(ref).test(ref[:0])
    assert empty.insufficient_data and not empty.drifted and empty.p_value is None
    assert math.isnan(empty.statistic) and empty.detector == cls.name
    assert cls(ref, min_samples=3).test(ref[:2]).insufficient_data
    assert not cls(ref, min_samples=3).test(ref[:3]).insufficient_data
    with pytest.raises(InsufficientDataError, match="reference"):
        cls(ref, min_samples=5)
    with pytest.raises(TypeError, match="reference"):
        cls(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reference"):
        cls(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="reference"):
        cls("abc")
    with pytest.raises(TypeError, match="current"):
        cls(ref).test(np.array([1.5]))
    with pytest.raises(ValueError, match="current"):
        cls(ref).test(ref.reshape(2, 2))
    with pytest.raises(ValueError, match="alpha"):
        cls(ref, alpha=1.0)
    with pytest.raises(TypeError, match="alpha"):
        cls(ref, alpha="0.05")
    with pytest.raises(ValueError, match="min_samples"):
        cls(ref, min_samples=0)
    with pytest.raises(TypeError, match="min_samples"):
        cls(ref, min_samples=True)


# --- performance: classifier ---------------------------------------------------------------


@pytest.mark.parametrize("test", ["fisher", "chi2"])
@pytest.mark.parametrize("seed", range(8))
def test_classifier_parity_with_scipy(test: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n0, n1 = [(30, 30), (500, 80), (80, 500), (5000, 2000)][seed % 4]
    e0, e1 = [(0.1, 0.1), (0.2, 0.35), (0.05, 0.02), (0.5, 0.45)][seed % 4]
    ref, cur = classifier_sample(rng, n0, e0), classifier_sample(rng, n1, e1)
    result = PerformanceDriftDetector(*ref, test=test).test(*cur)
    table = error_table(ref, cur)
    if test == "fisher":
        expected = stats.fisher_exact(table, alternative="two-sided").pvalue
    else:
        chi2 = stats.chi2_contingency(table, correction=False)
        # a 2 x 2 table with an expected count below 5 gets Fisher's exact test: the
        # chi-square approximation over-rejects there (detectors.chisquare.EXACT_BELOW)
        expected = (stats.fisher_exact(table).pvalue if chi2.expected_freq.min() < 5
                    else chi2.pvalue)
    (only,) = result.features
    assert only.feature == "error_rate" and result.p_value is not None
    np.testing.assert_allclose(result.p_value, expected, rtol=1e-9, atol=1e-12)
    rate_change = table[1, 0] / n1 - table[0, 0] / n0
    assert result.statistic == pytest.approx(rate_change, abs=1e-15) == only.statistic
    assert (result.n_reference, result.n_current) == (n0, n1)
    assert result.detector == "performance" and result.correction == "none"
    assert result.drifted == (result.p_value < ALPHA)


@pytest.mark.parametrize("test", ["fisher", "chi2"])
@pytest.mark.parametrize("wrong", [False, True])
def test_classifier_all_right_or_all_wrong_gives_p_one(test: str, wrong: bool) -> None:
    y = np.arange(40) % 3
    pred = (y + 1) % 3 if wrong else y
    result = PerformanceDriftDetector(y, pred, test=test).test(y[:35], pred[:35])
    assert (result.statistic, result.p_value, result.drifted) == (0.0, 1.0, False)


@pytest.mark.parametrize("test", ["fisher", "chi2"])
def test_classifier_false_positive_rate_is_alpha(test: str) -> None:
    # Exact sizes at n = 500 per side and a 20% error rate (summed over the binomial
    # outcomes): Fisher 0.0416 (exact tests are conservative), chi-square 0.0498.
    # Measured here: Fisher 16 / 500, chi-square 18 / 500.
    rng = np.random.default_rng(2024)
    rejections = 0
    for _ in range(TRIALS):
        ref, cur = classifier_sample(rng, 500, 0.2), classifier_sample(rng, 500, 0.2)
        rejections += PerformanceDriftDetector(*ref, test=test, alpha=ALPHA).test(*cur).drifted
    assert LOW <= rejections <= HIGH


@pytest.mark.parametrize("test", ["fisher", "chi2"])
def test_classifier_degradation_is_detected(test: str) -> None:
    rng = np.random.default_rng(5)
    detector = PerformanceDriftDetector(*classifier_sample(rng, 2000, 0.1), test=test)
    worse = detector.test(*classifier_sample(rng, 1000, 0.2))
    assert worse.drifted and worse.p_value is not None and worse.p_value < 1e-8
    assert worse.statistic == pytest.approx(0.1, abs=0.03)
    same = detector.test(*classifier_sample(rng, 1000, 0.1))
    assert not same.drifted


def test_classifier_accepts_str_object_and_float_classes() -> None:
    y = np.array(["a", "b", "c", "a"] * 10)
    pred = np.array(["a", "b", "b", "a"] * 10)
    as_str = PerformanceDriftDetector(y, pred).test(y, pred)
    as_object = PerformanceDriftDetector(y.astype(object), pred).test(y, pred.astype(object))
    assert as_str == as_object
    assert as_str.statistic == 0.0 and as_str.p_value == 1.0
    codes = np.array([0.0, 1.0, 2.0, 0.0] * 10)
    as_float = PerformanceDriftDetector(codes, codes[::-1].copy()).test(codes, codes)
    assert as_float.p_value is not None and as_float.statistic < 0


def test_missing_labels_are_ignored() -> None:
    rng = np.random.default_rng(9)
    ref, cur = classifier_sample(rng, 200, 0.2), classifier_sample(rng, 100, 0.3)
    detector = PerformanceDriftDetector(*ref)
    full = detector.test(*cur)
    # The same window with 40 more records whose labels have not arrived yet.
    y_true = np.concatenate([cur[0].astype(np.float64), np.full(40, np.nan)])
    y_pred = np.concatenate([cur[1], rng.integers(0, 3, 40)])
    assert detector.test(y_true, y_pred) == full
    y_obj = np.concatenate([cur[0].astype(object), np.full(40, None, dtype=object)])
    assert detector.test(y_obj, y_pred) == full
    # Too few labelled records: insufficient, not an error.
    few = detector.test(np.concatenate([y_true[:29], np.full(50, np.nan)]), y_pred[:79])
    assert few.insufficient_data and not few.drifted and few.p_value is None
    assert math.isnan(few.statistic) and few.n_current == 29
    assert few.features[0].feature == "error_rate" and few.features[0].p_value is None
    assert not detector.test(*[a[:30] for a in cur]).insufficient_data


# --- performance: regressor ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_regressor_parity_with_ks_2samp(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    n0, n1 = [(30, 30), (1000, 300), (300, 1000), (12_000, 500), (500, 500), (100, 2000)][seed]
    ref = regressor_sample(rng, n0)
    cur = regressor_sample(rng, n1, bias=0.2 * (seed % 2), noise=1.0 + 0.3 * (seed % 3 == 1))
    result = PerformanceDriftDetector(*ref, task="regression").test(*cur)
    expected = stats.ks_2samp(ref[0] - ref[1], cur[0] - cur[1])
    (only,) = result.features
    assert only.feature == "residual" and result.detector == "performance"
    assert result.p_value is not None and only.p_value == result.p_value
    np.testing.assert_allclose(result.statistic, expected.statistic, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.p_value, expected.pvalue, rtol=1e-9, atol=1e-12)
    assert (result.n_reference, result.n_current) == (n0, n1)


def test_regressor_false_positive_rate_is_alpha() -> None:
    # n = 500: the exact KS null is discrete, but its attainable size there is 0.0495.
    rng = np.random.default_rng(2024)
    rejections = 0
    for _ in range(TRIALS):
        ref, cur = regressor_sample(rng, 500), regressor_sample(rng, 500)
        rejections += PerformanceDriftDetector(*ref, task="regression").test(*cur).drifted
    assert LOW <= rejections <= HIGH  # measured: 21 / 500


def test_regressor_bias_and_spread_are_detected() -> None:
    rng = np.random.default_rng(11)
    detector = PerformanceDriftDetector(*regressor_sample(rng, 2000), task="regression")
    assert detector.test(*regressor_sample(rng, 1000, bias=0.3)).drifted
    assert detector.test(*regressor_sample(rng, 1000, noise=1.5)).drifted
    assert not detector.test(*regressor_sample(rng, 1000)).drifted


def test_regressor_missing_labels_and_insufficient() -> None:
    rng = np.random.default_rng(12)
    ref, cur = regressor_sample(rng, 100), regressor_sample(rng, 50)
    detector = PerformanceDriftDetector(*ref, task="regression", min_samples=10)
    y_true = np.concatenate([cur[0], [np.nan] * 5])
    y_pred = np.concatenate([cur[1], np.zeros(5)])
    assert detector.test(y_true, y_pred) == detector.test(*cur)
    few = detector.test(y_true[-14:], y_pred[-14:])  # 9 labelled
    assert few.insufficient_data and few.n_current == 9 and few.features[0].feature == "residual"


# --- performance: validation, determinism --------------------------------------------------


def test_performance_validation() -> None:
    y, pred = np.arange(40) % 3, np.arange(40) % 2
    with pytest.raises(ValueError, match="task"):
        PerformanceDriftDetector(y, pred, task="ranking")
    with pytest.raises(ValueError, match="test"):
        PerformanceDriftDetector(y, pred, test="ks")
    with pytest.raises(ValueError, match="test"):
        PerformanceDriftDetector(y * 1.0, pred * 1.0, task="regression", test="fisher")
    with pytest.raises(ValueError, match="alpha"):
        PerformanceDriftDetector(y, pred, alpha=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        PerformanceDriftDetector(y, pred, min_samples=0)
    with pytest.raises(InsufficientDataError, match="reference"):
        PerformanceDriftDetector(y[:29], pred[:29])
    with pytest.raises(ValueError, match="length"):
        PerformanceDriftDetector(y, pred[:-1])
    with pytest.raises(ValueError, match="reference y_true"):
        PerformanceDriftDetector(y.reshape(4, 10), pred)
    with pytest.raises(TypeError, match="different kinds"):
        PerformanceDriftDetector(y.astype(str), pred)
    with pytest.raises(ValueError, match="y_pred"):
        PerformanceDriftDetector(y * 1.0, np.where(pred == 0, np.nan, 1.0))
    with pytest.raises(ValueError, match="y_pred"):
        PerformanceDriftDetector(y, np.array([None, *pred[1:]], dtype=object))
    with pytest.raises(ValueError, match="y_true"):
        PerformanceDriftDetector(np.where(y == 0, np.inf, 1.0), pred * 1.0, task="regression")
    with pytest.raises(TypeError, match="y_true"):
        PerformanceDriftDetector(y.astype(str), pred.astype(str), task="regression")
    detector = PerformanceDriftDetector(y, pred)
    with pytest.raises(ValueError, match="current"):
        detector.test(y, pred[:-2])
    with pytest.raises(TypeError, match="current y_pred"):
        detector.test(y, 3)


def test_performance_deterministic_frozen_and_inputs_not_mutated() -> None:
    rng = np.random.default_rng(13)
    ref, cur = regressor_sample(rng, 300), regressor_sample(rng, 200, bias=0.1)
    before = [a.copy() for a in (*ref, *cur)]
    detector = PerformanceDriftDetector(*ref, task="regression")
    first, second = detector.test(*cur), detector.test(*cur)
    assert (
        first
        == second
        == PerformanceDriftDetector(*before[:2], task="regression").test(*before[2:])
    )
    for a, b in zip(before, (*ref, *cur), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.drifted = True  # type: ignore[misc]
