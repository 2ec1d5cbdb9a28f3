"""Black Box Shift Estimation: recovery of simulated label shift, calibration, API."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from detectors.bbse import BBSE, LabelShiftEstimate, SingularConfusionMatrixError
from detectors.errors import DetectorError, InsufficientDataError

ALPHA = 0.05
# A fixed 3-class classifier: CONFUSION[j, i] = P(predicted i | true j).
CONFUSION = np.array([[0.80, 0.15, 0.05], [0.10, 0.75, 0.15], [0.05, 0.20, 0.75]])
P_REF = np.array([0.5, 0.3, 0.2])
Q_WINDOW = np.array([0.2, 0.3, 0.5])
TRUE_WEIGHTS = Q_WINDOW / P_REF  # [0.4, 1.0, 2.5]
TRIALS = 300


def simulate(
    rng: np.random.Generator, priors: np.ndarray, n: int, confusion: np.ndarray = CONFUSION
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` records: true classes from ``priors``, predictions through ``confusion``."""
    y_true = rng.choice(len(priors), size=n, p=priors)
    cumulative = np.cumsum(confusion, axis=1)[y_true]
    y_pred = np.minimum((rng.random(n)[:, None] > cumulative).sum(axis=1), len(priors) - 1)
    return y_true, y_pred


def test_recovers_simulated_label_shift() -> None:
    rng = np.random.default_rng(0)
    bbse = BBSE(*simulate(rng, P_REF, 20_000))
    _, window_pred = simulate(rng, Q_WINDOW, 20_000)
    estimate = bbse.estimate(window_pred)
    assert isinstance(estimate, LabelShiftEstimate)
    assert estimate.classes == (0, 1, 2)
    error = np.abs(np.array(estimate.weights) - TRUE_WEIGHTS)
    assert error.max() < 0.1  # measured: 0.015
    assert np.abs(np.array(estimate.target_distribution) - Q_WINDOW).max() < 0.01
    assert math.fsum(estimate.target_distribution) == pytest.approx(1.0, abs=1e-12)
    assert not estimate.clipped and estimate.weights == estimate.raw_weights
    assert estimate.shifted and estimate.p_value is not None and estimate.p_value < 1e-100
    assert all(
        lo <= w <= hi
        for lo, w, hi in zip(estimate.ci_lower, TRUE_WEIGHTS, estimate.ci_upper, strict=True)
    )
    assert (estimate.n_reference, estimate.n_current) == (20_000, 20_000)
    np.testing.assert_allclose(estimate.reference_distribution, P_REF, atol=0.01)
    assert 1.0 < estimate.condition_number < 10.0  # measured: 3.1


def test_no_shift_gives_weights_near_one() -> None:
    rng = np.random.default_rng(1)
    bbse = BBSE(*simulate(rng, P_REF, 20_000))
    estimate = bbse.estimate(simulate(rng, P_REF, 20_000)[1])
    assert np.abs(np.array(estimate.weights) - 1.0).max() < 0.1
    assert not estimate.shifted and estimate.p_value is not None and estimate.p_value > ALPHA


def test_weights_solve_the_confusion_system_exactly() -> None:
    y_true = np.array([0] * 6 + [1] * 4 + [2] * 5 + [0, 1, 2, 2, 1])
    y_pred = np.array([0] * 6 + [1] * 4 + [2] * 5 + [1, 2, 0, 1, 0])
    bbse = BBSE(y_true, y_pred, min_expected=0)  # tiny: pooling would merge every class
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (y_pred, y_true), 1.0 / y_true.size)
    np.testing.assert_allclose(bbse.confusion_matrix, confusion, rtol=0, atol=1e-15)
    window = np.array([0, 0, 1, 2, 2, 2, 1, 0, 2, 2])
    mu = np.bincount(window, minlength=3) / window.size
    expected = np.linalg.solve(confusion, mu)
    estimate = bbse.estimate(window)
    np.testing.assert_allclose(estimate.raw_weights, expected, rtol=1e-12)
    assert estimate.condition_number == pytest.approx(np.linalg.cond(confusion), rel=1e-12)
    # The no-shift test: chi-square homogeneity of predicted-class counts, as scipy.
    table = np.array([np.bincount(y_pred, minlength=3), np.bincount(window, minlength=3)])
    chi2 = stats.chi2_contingency(table, correction=False)
    assert estimate.p_value is not None
    np.testing.assert_allclose(estimate.statistic, chi2.statistic, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(estimate.p_value, chi2.pvalue, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="read-only"):
        bbse.confusion_matrix[0, 0] = 1.0


def test_no_shift_test_is_calibrated() -> None:
    # 300 seeded same-prior windows, each against its own reference: rejections must be
    # consistent (99%) with rate ALPHA: [6, 25]. Measured: 9 / 300.
    low, high = stats.binom.interval(0.99, TRIALS, ALPHA)
    rejections = 0
    for seed in range(TRIALS):
        rng = np.random.default_rng(1000 + seed)
        bbse = BBSE(*simulate(rng, P_REF, 2000))
        rejections += bbse.estimate(simulate(rng, P_REF, 2000)[1]).shifted
    assert low <= rejections <= high


def test_delta_method_standard_errors_and_intervals() -> None:
    # Under shift: the reported standard errors match the weights' spread over seeded
    # trials, and the 95% Wald intervals cover the true weights at their nominal rate.
    raw, se, covered = [], [], np.zeros(3, dtype=int)
    for seed in range(TRIALS):
        rng = np.random.default_rng(5000 + seed)
        bbse = BBSE(*simulate(rng, P_REF, 5000))
        estimate = bbse.estimate(simulate(rng, Q_WINDOW, 5000)[1])
        raw.append(estimate.raw_weights)
        se.append(estimate.standard_errors)
        covered += (np.array(estimate.ci_lower) <= TRUE_WEIGHTS) & (
            TRUE_WEIGHTS <= np.array(estimate.ci_upper)
        )
    spread = np.std(raw, axis=0, ddof=1)
    # Measured spread [0.020, 0.067, 0.108], mean se [0.021, 0.063, 0.109]; the window
    # term alone would give [0.016, 0.040, 0.056], 20-50% too small.
    np.testing.assert_allclose(np.mean(se, axis=0), spread, rtol=0.15)
    low, high = stats.binom.interval(0.99, TRIALS, 0.95)
    assert all(low <= c <= high for c in covered), covered  # measured: [287, 279, 285]


def test_clipping_of_negative_weights() -> None:
    # The classifier predicts 1 only for true 1s, yet also calls a true 1 a 0; a window
    # predicting only 1s then needs a negative weight on class 0, which is clipped.
    y_true = np.array([0] * 40 + [1] * 30 + [1] * 30)
    y_pred = np.array([0] * 40 + [0] * 30 + [1] * 30)
    estimate = BBSE(y_true, y_pred).estimate(np.ones(50, dtype=int))
    assert estimate.clipped
    assert min(estimate.raw_weights) < 0 and min(estimate.weights) == 0.0
    assert math.fsum(estimate.target_distribution) == pytest.approx(1.0, abs=1e-12)
    assert all(lo >= 0.0 for lo in estimate.ci_lower)


def test_singular_confusion_matrix_names_the_classes() -> None:
    y_true = np.array(["a", "b", "c", "a", "b", "c"])
    never_predicted_c = np.array(["a", "b", "b", "a", "b", "a"])
    with pytest.raises(SingularConfusionMatrixError, match=r"never predicted.*'c'"):
        BBSE(y_true, never_predicted_c)
    with pytest.raises(SingularConfusionMatrixError, match=r"never the true label.*'d'"):
        BBSE(y_true, np.array(["a", "b", "c", "d", "b", "c"]))
    with pytest.raises(SingularConfusionMatrixError, match=r"'z'"):
        BBSE(y_true, y_true, classes=["a", "b", "c", "z"])
    # Every class predicted and true, yet rank one: numerically singular.
    with pytest.raises(SingularConfusionMatrixError, match="singular"):
        BBSE(np.array([0, 1, 0, 1]), np.array([0, 1, 1, 0]), max_condition_number=math.inf)
    assert issubclass(SingularConfusionMatrixError, DetectorError)
    assert issubclass(SingularConfusionMatrixError, ValueError)


def test_ill_conditioned_confusion_matrix_is_rejected() -> None:
    # A nearly random binary classifier: C is close to rank one.
    rng = np.random.default_rng(2)
    y_true, y_pred = simulate(rng, np.array([0.5, 0.5]), 4000, np.array([[0.51, 0.49]] * 2))
    bbse = BBSE(y_true, y_pred, max_condition_number=math.inf)
    assert bbse.condition_number > 20
    with pytest.raises(SingularConfusionMatrixError, match="condition number"):
        BBSE(y_true, y_pred, max_condition_number=5.0)


def test_classes_order_and_object_labels() -> None:
    rng = np.random.default_rng(3)
    codes_true, codes_pred = simulate(rng, P_REF, 3000)
    names = np.array(["low", "mid", "high"])
    by_name = BBSE(names[codes_true], names[codes_pred], classes=["low", "mid", "high"])
    by_code = BBSE(codes_true, codes_pred)
    window = simulate(rng, Q_WINDOW, 1000)[1]
    a, b = by_name.estimate(names[window]), by_code.estimate(window)
    assert a.classes == ("low", "mid", "high") and b.classes == (0, 1, 2)
    assert a.weights == b.weights and a.p_value == b.p_value
    # Default order is sorted; object arrays match str arrays.
    default = BBSE(names[codes_true].astype(object), names[codes_pred])
    assert default.classes == ("high", "low", "mid")
    c = default.estimate(names[window].astype(object))
    assert dict(zip(c.classes, c.weights, strict=True)) == pytest.approx(
        dict(zip(a.classes, a.weights, strict=True)), rel=1e-12
    )


def test_window_with_unknown_class_is_rejected() -> None:
    bbse = BBSE(np.array([0, 1, 0, 1, 0]), np.array([0, 1, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"window_y_pred.*\[7\]"):
        bbse.estimate(np.array([0, 1, 7]))
    with pytest.raises(ValueError, match=r"window_y_pred.*'x'"):
        bbse.estimate(np.array(["x"], dtype=object))


def test_insufficient_window() -> None:
    bbse = BBSE(np.array([0, 1, 0, 1, 0]), np.array([0, 1, 1, 1, 0]), min_samples=2)
    for window in (np.array([], dtype=int), np.array([1])):
        estimate = bbse.estimate(window)
        assert estimate.insufficient_data and not estimate.shifted and estimate.p_value is None
        assert all(math.isnan(w) for w in estimate.weights) and len(estimate.weights) == 2
    assert not bbse.estimate(np.array([1, 0])).insufficient_data
    with pytest.raises(InsufficientDataError, match="reference"):
        BBSE(np.array([0]), np.array([0]), min_samples=2)


def test_validation() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="alpha"):
        BBSE(y, y, alpha=1.5)
    with pytest.raises(TypeError, match="alpha"):
        BBSE(y, y, alpha=None)
    with pytest.raises(ValueError, match="confidence"):
        BBSE(y, y, confidence=0.0)
    with pytest.raises(ValueError, match="max_condition_number"):
        BBSE(y, y, max_condition_number=0.5)
    with pytest.raises(ValueError, match="max_condition_number"):
        BBSE(y, y, max_condition_number=float("nan"))
    with pytest.raises(ValueError, match="min_samples"):
        BBSE(y, y, min_samples=0)
    with pytest.raises(ValueError, match="same length"):
        BBSE(y, y[:-1])
    with pytest.raises(TypeError, match="reference_y_true"):
        BBSE(y * 1.0, y)
    with pytest.raises(ValueError, match="reference_y_pred"):
        BBSE(y, y.reshape(2, 3))
    with pytest.raises(ValueError, match="classes"):
        BBSE(y, y, classes=[0, 1])  # 2 is missing
    with pytest.raises(ValueError, match="distinct"):
        BBSE(y, y, classes=[0, 1, 2, 1])
    with pytest.raises(TypeError, match="classes"):
        BBSE(y, y, classes="012")
    with pytest.raises(TypeError, match="window_y_pred"):
        BBSE(y, y).estimate(np.array([0.0, 1.0]))


def test_deterministic_frozen_and_inputs_not_mutated() -> None:
    rng = np.random.default_rng(4)
    y_true, y_pred = simulate(rng, P_REF, 1000)
    window = simulate(rng, Q_WINDOW, 500)[1]
    copies = [a.copy() for a in (y_true, y_pred, window)]
    first = BBSE(y_true, y_pred).estimate(window)
    assert first == BBSE(*copies[:2]).estimate(copies[2]) == BBSE(y_true, y_pred).estimate(window)
    for a, b in zip(copies, (y_true, y_pred, window), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.shifted = False  # type: ignore[misc]
    assert Counter(type(w) for w in first.weights) == {float: 3}


def test_test_reports_the_omnibus_test_and_per_class_weights() -> None:
    rng = np.random.default_rng(11)
    bbse = BBSE(*simulate(rng, P_REF, 20_000), alpha=ALPHA)
    _, shifted = simulate(rng, Q_WINDOW, 5_000)
    result = bbse.test(shifted)
    est = bbse.estimate(shifted)
    assert result.detector == "label_shift" and result.drifted
    assert result.statistic == est.statistic and result.p_value == est.p_value
    assert [f.feature for f in result.features] == ["0", "1", "2"]
    assert [f.statistic for f in result.features] == list(est.weights)
    # per class: two-sided Wald test of w_j = 1, Bonferroni over the classes
    for f, w, se in zip(result.features, est.raw_weights, est.standard_errors, strict=True):
        p = 2 * stats.norm.sf(abs(w - 1) / se)
        assert f.p_value == pytest.approx(p, rel=1e-9)
        assert f.adjusted_p_value == pytest.approx(min(1.0, 3 * p), rel=1e-9)
    # w = [0.4, 1.0, 2.5]: the first and last class moved, the middle one did not
    assert [f.drifted for f in result.features] == [True, False, True]

    _, same = simulate(rng, P_REF, 5_000)
    unshifted = bbse.test(same)
    assert not unshifted.drifted and unshifted.p_value is not None and unshifted.p_value > ALPHA


def test_test_with_a_class_the_reference_never_saw() -> None:
    rng = np.random.default_rng(12)
    y_true, y_pred = simulate(rng, P_REF, 5_000)
    bbse = BBSE(y_true.astype(str), y_pred.astype(str))
    window = np.concatenate([simulate(rng, P_REF, 900)[1].astype(str), ["new"] * 100])
    result = bbse.test(window)  # no pure label shift: no weights, but a clear drift
    assert result.drifted and result.p_value is not None and result.p_value < 1e-6
    assert all(math.isnan(f.statistic) and f.p_value is None for f in result.features)
    empty = bbse.test(np.array([], dtype=str))
    assert empty.insufficient_data and not empty.drifted and empty.p_value is None
