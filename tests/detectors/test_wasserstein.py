"""WassersteinDetector: parity with scipy.stats.wasserstein_distance / numpy.std."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors import WassersteinDetector

SIZES = [(2, 1), (2, 2), (3, 10), (10, 3), (37, 91), (1000, 100), (100, 1000), (5000, 5000)]
FLAVOURS = ["normal", "shifted", "ties", "integers", "heavy-tail", "tiny-scale", "bool"]


def make_column(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """``side`` 0 is the reference, 1 the current window."""
    if flavour == "normal":
        return rng.normal(size=n)
    if flavour == "shifted":
        return rng.normal(0.3 * side, 1 + side, size=n)
    if flavour == "ties":
        return np.round(rng.normal(size=n), 1)
    if flavour == "integers":
        return rng.integers(0, 5, size=n)
    if flavour == "heavy-tail":
        return rng.standard_cauchy(size=n) * 1e6
    if flavour == "tiny-scale":
        return rng.normal(size=n) * 1e-100
    return rng.random(n) < 0.3 + 0.2 * side


def expected(ref: np.ndarray, cur: np.ndarray) -> float:
    distance, std = stats.wasserstein_distance(ref, cur), np.std(ref)
    if std == 0:
        return 0.0 if distance == 0 else math.inf
    return distance / std


@pytest.mark.parametrize("seed", range(40))
def test_parity_with_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    flavours = [FLAVOURS[(seed + i) % len(FLAVOURS)] for i in range(3)]
    ref = {f"{i}-{fl}": make_column(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"{i}-{fl}": make_column(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    result = WassersteinDetector(ref, min_samples=1, n_resamples=0).test(cur)
    for feature in result.features:
        want = expected(ref[feature.feature], cur[feature.feature])
        np.testing.assert_allclose(feature.statistic, want, rtol=1e-9, atol=1e-12)
        assert feature.p_value is None and feature.drifted == (feature.statistic > 0.1)
        assert (feature.n_reference, feature.n_current) == (n1, n2)
    assert result.p_value is None and result.correction == "none" and result.threshold == 0.1


# database=None: keep failing examples out of a .hypothesis/ folder in the working tree
@settings(max_examples=150, deadline=None, database=None)
@given(
    ref=st.lists(st.integers(-3, 3), min_size=2, max_size=40),
    cur=st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    scale=st.sampled_from([1.0, 0.1, 1e-150, 1e150]),
)
def test_parity_property_small_samples_with_ties(
    ref: list[int], cur: list[int], scale: float
) -> None:
    # a constant reference is test_constant_reference's case: the oracle divides by the
    # rounding noise of its standard deviation (0.1 * [1, 1, 1]: 7e15 instead of inf)
    assume(len(set(ref)) > 1)
    x, y = np.array(ref) * scale, np.array(cur) * scale
    feature = WassersteinDetector({"x": x}, min_samples=1).test({"x": y}).features[0]
    np.testing.assert_allclose(feature.statistic, expected(x, y), rtol=1e-9, atol=1e-12)


def test_a_shift_by_k_standard_deviations_scores_k() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(10, 3, size=2000)
    detector = WassersteinDetector({"x": ref})
    for k in (0.05, 0.5, 2.0):
        statistic = detector.test({"x": ref + k * np.std(ref)}).features[0].statistic
        assert statistic == pytest.approx(k, rel=1e-9)


def test_scale_and_location_invariant() -> None:
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=500), rng.normal(0.2, size=300)
    base = WassersteinDetector({"x": ref}).test({"x": cur}).statistic
    moved = WassersteinDetector({"x": ref * 1e3 - 7}).test({"x": cur * 1e3 - 7}).statistic
    assert moved == pytest.approx(base, rel=1e-9)


def test_constant_reference() -> None:
    detector = WassersteinDetector({"x": np.full(50, 2.0)})
    same = detector.test({"x": np.full(10, 2.0)})
    assert same.features[0].statistic == 0.0 and not same.drifted
    other = detector.test({"x": np.array([2.0] * 9 + [2.5])})
    assert other.features[0].statistic == math.inf and other.drifted
    # a constant window against a varying reference is an ordinary case
    varying = WassersteinDetector({"x": np.array([1.0, 3.0])}).test({"x": np.full(4, 2.0)})
    assert varying.features[0].statistic == pytest.approx(1.0)


def test_threshold_and_parameters() -> None:
    ref = {"x": np.arange(100.0)}
    shifted = {"x": np.arange(100.0) + 5}
    statistic = WassersteinDetector(ref).test(shifted).statistic
    assert statistic == pytest.approx(5 / np.std(np.arange(100.0)))
    assert not WassersteinDetector(ref, threshold=statistic).test(shifted).drifted
    assert WassersteinDetector(ref, threshold=0.9 * statistic, n_resamples=0).test(shifted).drifted
    for params, error in (
        ({"threshold": -0.5}, ValueError),
        ({"threshold": None}, TypeError),
        ({"min_samples": 0}, ValueError),
        ({"alpha": 1.5}, ValueError),  # alpha: the calibration level
        ({"bins": 10}, TypeError),
    ):
        with pytest.raises(error, match=next(iter(params))):
            WassersteinDetector(ref, **params)
    with pytest.raises(TypeError, match="'x'"):
        WassersteinDetector({"x": np.array(["a", "b"])})


def test_int_and_float32_columns_match_float64() -> None:
    rng = np.random.default_rng(7)
    ref, cur = rng.integers(0, 20, 300), rng.integers(0, 21, 250)
    a = WassersteinDetector({"x": ref}).test({"x": cur})
    b = WassersteinDetector({"x": ref.astype(np.float32)}).test({"x": cur.astype(np.float64)})
    assert a == b
