"""ClassifierTwoSampleDetector: logistic fit, held-out AUC / Mann-Whitney p-value, calibration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import expit

from detectors import DriftResult, InsufficientDataError
from detectors.c2st import ClassifierTwoSampleDetector, fit_logistic
from detectors.mmd import subsample

ALPHA = 0.05
TRIALS = 300
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)


def samples(seed: int, n: int = 100, m: int = 80, d: int = 4, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(shift, size=(m, d))


# --- the classifier -----------------------------------------------------------------------------


def penalised_loss(theta: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    f = x @ theta[:-1] + theta[-1]
    w = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (1 - y).sum()))
    return float(w @ (np.logaddexp(0, f) - y * f) + 0.5 * l2 * theta[:-1] @ theta[:-1])


@pytest.mark.parametrize("l2", [0.0, 1.0, 10.0])
def test_newton_finds_the_penalised_optimum(l2: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (rng.random(300) < expit(x @ [1.0, -0.5, 0.0, 0.2, 0.0] + 0.3)).astype(float)
    y[:40] = 1.0  # unbalanced classes
    fit = fit_logistic(x, y, l2=l2)
    assert fit.converged and fit.n_iter < 15
    theta = np.r_[fit.weights, fit.intercept]
    reference = optimize.minimize(
        penalised_loss, np.zeros(6), args=(x, y, l2), method="BFGS", options={"gtol": 1e-10}
    )
    np.testing.assert_allclose(theta, reference.x, atol=1e-5)
    assert penalised_loss(theta, x, y, l2) <= reference.fun + 1e-9
    # the gradient vanishes
    f = x @ fit.weights + fit.intercept
    w = np.where(y == 1, 300 / (2 * y.sum()), 300 / (2 * (1 - y).sum()))
    residual = w * (expit(f) - y)
    np.testing.assert_allclose(x.T @ residual + l2 * fit.weights, 0, atol=1e-7)
    assert abs(residual.sum()) < 1e-7


def test_separable_data_gives_finite_weights() -> None:
    x = np.r_[np.linspace(-3, -1, 20), np.linspace(1, 3, 20)][:, None]
    y = np.r_[np.zeros(20), np.ones(20)]
    fit = fit_logistic(x, y, l2=1.0)
    assert fit.converged and np.all(np.isfinite(fit.weights)) and fit.weights[0] > 0
    unpenalised = fit_logistic(x, y, l2=0.0, max_iter=30)  # diverges slowly; stays finite
    assert np.all(np.isfinite(unpenalised.weights))


# --- statistic and p-value ----------------------------------------------------------------------


def test_auc_and_p_value_are_mann_whitney_on_held_out_scores() -> None:
    x, y = samples(1, shift=0.2)
    detector = ClassifierTwoSampleDetector(x)
    ref_scores, cur_scores = detector.held_out_scores(y)
    assert (ref_scores.size, cur_scores.size) == (50, 40)  # test_size 0.5 of each side
    pairs = cur_scores[:, None] - ref_scores[None, :]
    auc = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    expected = stats.mannwhitneyu(cur_scores, ref_scores, alternative="greater")
    result = detector.test(y)
    assert result.statistic == pytest.approx(auc, abs=1e-12)
    assert result.p_value == expected.pvalue
    # rebuilt by hand: standardize with the reference's training rows, fit on the training
    # rows of both sides, score the held-out rows (disjoint from the training rows)
    ref_train, ref_held = detector._split(100, np.random.default_rng((0, 0)))
    cur_train, cur_held = detector._split(80, np.random.default_rng(0))
    assert not set(ref_train) & set(ref_held) and not set(cur_train) & set(cur_held)
    mean, scale = x[ref_train].mean(axis=0), x[ref_train].std(axis=0)
    fit = fit_logistic(
        np.vstack([(x[ref_train] - mean) / scale, (y[cur_train] - mean) / scale]),
        np.r_[np.zeros(ref_train.size), np.ones(cur_train.size)],
    )
    np.testing.assert_allclose(ref_scores, fit.decision((x[ref_held] - mean) / scale))
    np.testing.assert_allclose(cur_scores, fit.decision((y[cur_held] - mean) / scale))


@pytest.mark.parametrize(("size", "test_size", "held"), [(10, 0.5, 5), (2, 0.5, 1), (5, 0.01, 1)])
def test_split_keeps_both_parts(size: int, test_size: float, held: int) -> None:
    detector = ClassifierTwoSampleDetector(np.eye(4), test_size=test_size, min_samples=2)
    train, held_out = detector._split(size, np.random.default_rng(0))
    assert held_out.size == held and train.size == size - held
    assert sorted(np.r_[train, held_out].tolist()) == list(range(size))


def test_constant_data_is_never_drift() -> None:
    result = ClassifierTwoSampleDetector(np.ones((20, 3))).test(np.ones((20, 3)))
    assert (result.statistic, result.p_value, result.drifted) == (0.5, 1.0, False)
    moved = ClassifierTwoSampleDetector(np.ones((40, 3))).test(np.full((40, 3), 2.0))
    assert moved.drifted and moved.statistic == 1.0


# --- calibration and power ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m", "draw"),
    [(60, 60, "normal"), (100, 40, "exponential")],
)
def test_calibrated_under_the_null(n: int, m: int, draw: str) -> None:
    rng = np.random.default_rng(99 + n)
    sample = rng.normal if draw == "normal" else rng.exponential
    rejections = 0
    for trial in range(TRIALS):
        result = ClassifierTwoSampleDetector(sample(size=(n, 4)), seed=trial).test(
            sample(size=(m, 4))
        )
        assert result.p_value is not None and 0 <= result.p_value <= 1
        rejections += result.drifted
    assert LOW <= rejections <= HIGH, (rejections, LOW, HIGH)


def test_shift_is_detected() -> None:
    x, y = samples(7, n=400, m=400, d=10)
    y[:, 3] += 0.5
    result = ClassifierTwoSampleDetector(x).test(y)
    assert result.drifted and result.p_value is not None and result.p_value < 1e-4
    assert result.statistic > 0.6
    same = ClassifierTwoSampleDetector(x).test(samples(8, n=400, m=400, d=10)[1])
    assert 0.4 < same.statistic < 0.6


# --- conformance ----------------------------------------------------------------------------------


def test_result_shape() -> None:
    x, y = samples(9)
    result = ClassifierTwoSampleDetector(x, feature="vec").test(y)
    assert isinstance(result, DriftResult) and result.detector == "c2st"
    assert result.correction == "none" and result.threshold == ALPHA
    (feature,) = result.features
    assert feature.feature == "vec" and (feature.n_reference, feature.n_current) == (100, 80)
    assert result.statistic == feature.statistic and 0 <= result.statistic <= 1
    assert result.p_value == feature.p_value == feature.adjusted_p_value
    assert feature.p_value is not None
    assert result.drifted == feature.drifted == (feature.p_value < ALPHA)
    assert "ClassifierTwoSampleDetector(" in repr(ClassifierTwoSampleDetector(x))


def test_deterministic_and_inputs_not_mutated() -> None:
    x, y = samples(10, shift=0.1)
    x_before, y_before = x.copy(), y.copy()
    x.setflags(write=False)
    y.setflags(write=False)
    detector = ClassifierTwoSampleDetector(x, seed=3)
    first = detector.test(y)
    assert first == detector.test(y) == ClassifierTwoSampleDetector(x_before, seed=3).test(y_before)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert ClassifierTwoSampleDetector(x, seed=4).test(y) != first


def test_max_n_subsamples_each_side() -> None:
    x, y = samples(11, n=300, m=250)
    result = ClassifierTwoSampleDetector(x, max_n=100).test(y)
    assert (result.n_reference, result.n_current) == (100, 100)
    manual = ClassifierTwoSampleDetector(subsample(x, 100, (0, 1)))
    assert manual.test(subsample(y, 100, (0, 2))) == result


@pytest.mark.parametrize("empty", [np.zeros((0, 4)), np.array([]), np.zeros((3, 4))])
def test_empty_window_is_insufficient_data(empty: np.ndarray) -> None:
    x, _ = samples(12)
    result = ClassifierTwoSampleDetector(x).test(empty)
    assert result.insufficient_data and not result.drifted and result.p_value is None
    assert math.isnan(result.statistic) and result.n_current == len(empty)


def test_bad_data_is_rejected_with_the_culprit_named() -> None:
    x, _ = samples(13)
    detector = ClassifierTwoSampleDetector(x)
    cases: tuple[tuple[Any, type[Exception]], ...] = (
        (x[:, 0], ValueError),
        (x[None], ValueError),
        (np.zeros((5, 0)), ValueError),
        (np.where(np.eye(100, 4) > 0, np.nan, x), ValueError),
        (x.astype(str), TypeError),
        (None, TypeError),
    )
    for bad, error in cases:
        with pytest.raises(error, match="reference"):
            ClassifierTwoSampleDetector(bad)
        with pytest.raises(error, match="current"):
            detector.test(bad)
    with pytest.raises(ValueError, match=r"current has 5 columns but the reference has 4"):
        detector.test(np.zeros((10, 5)))
    with pytest.raises(InsufficientDataError, match="reference"):
        ClassifierTwoSampleDetector(x[:3])


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ({"alpha": 1.0}, ValueError, "alpha"),
        ({"test_size": 0.0}, ValueError, "test_size"),
        ({"test_size": 1.0}, ValueError, "test_size"),
        ({"test_size": "half"}, TypeError, "test_size"),
        ({"l2": -1.0}, ValueError, "l2"),
        ({"l2": math.inf}, ValueError, "l2"),
        ({"l2": None}, TypeError, "l2"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_n": 3}, ValueError, "max_n"),
        ({"seed": -2}, ValueError, "seed"),
        ({"min_samples": 1}, ValueError, "min_samples"),
        ({"feature": None}, TypeError, "feature"),
    ],
)
def test_bad_parameters_are_rejected(params: dict, error: type, name: str) -> None:
    x, _ = samples(14)
    with pytest.raises(error, match=name):
        ClassifierTwoSampleDetector(x, **params)
