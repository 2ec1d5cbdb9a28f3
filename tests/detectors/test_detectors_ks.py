"""KSDetector: parity with scipy.stats.ks_2samp (statistic and p-value)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.stats import _stats_py

from detectors import KSDetector
from detectors import ks as ks_module

SIZES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (2, 2),
    (3, 3),
    (3, 10),
    (10, 3),
    (10, 10),
    (37, 91),
    (100, 100),
    (100, 1000),
    (1000, 100),
    (1000, 1000),
    (5000, 5000),
    (5000, 1000),
    (10_000, 10_000),
    (10_001, 200),
    (20_000, 3),
]
FLAVOURS = [
    "normal",
    "shifted",
    "ties",
    "integers",
    "equal-constant",
    "different-constant",
    "heavy-tail",
]


def make_column(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """One sample of ``n`` values; ``side`` 0 is the reference, 1 the current window."""
    if flavour == "normal":
        return rng.normal(size=n)
    if flavour == "shifted":
        return rng.normal(0.3 * side, size=n)
    if flavour == "ties":
        return np.round(rng.normal(size=n), 1)
    if flavour == "integers":
        return rng.integers(0, 5, size=n).astype(np.float64)
    if flavour == "equal-constant":
        return np.full(n, 3.25)
    if flavour == "different-constant":
        return np.full(n, 3.25 + side)
    return rng.standard_cauchy(size=n) * 1e6  # heavy tails, large magnitudes


def assert_matches_scipy(
    ref: np.ndarray, cur: np.ndarray, statistic: float, p_value: float | None
) -> None:
    assert p_value is not None
    with warnings.catch_warnings():
        # scipy warns when its exact p-value fails and it falls back to asymptotic
        # (e.g. 7 vs 7 values, D = 1/7); the detector falls back the same way, silently.
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = stats.ks_2samp(ref, cur)
    np.testing.assert_allclose(statistic, expected.statistic, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p_value, expected.pvalue, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(50))
def test_parity_with_ks_2samp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    # Several flavours in one detector, so the batched p-value paths see mixed features.
    flavours = [FLAVOURS[(seed + i) % len(FLAVOURS)] for i in range(3)]
    ref = {f"{i}-{fl}": make_column(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"{i}-{fl}": make_column(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    result = KSDetector(ref, min_samples=1, correction="none").test(cur)
    for feature in result.features:
        assert_matches_scipy(
            ref[feature.feature], cur[feature.feature], feature.statistic, feature.p_value
        )
        assert (feature.n_reference, feature.n_current) == (n1, n2)


# database=None: keep failing examples out of a .hypothesis/ folder in the working tree
@settings(max_examples=150, deadline=None, database=None)
@given(
    ref=st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    cur=st.lists(st.integers(-3, 3), min_size=1, max_size=40),
    scale=st.sampled_from([1.0, 0.1, 1e-300, 1e300]),
)
def test_parity_property_small_samples_with_ties(
    ref: list[int], cur: list[int], scale: float
) -> None:
    x, y = np.array(ref) * scale, np.array(cur) * scale
    feature = KSDetector({"x": x}, min_samples=1).test({"x": y}).features[0]
    assert_matches_scipy(x, y, feature.statistic, feature.p_value)


def test_square_exact_failure_falls_back_like_scipy() -> None:
    # scipy's exact series gives a "probability" just above 1 here and falls back.
    x, y = np.zeros(7), np.array([0.0] * 6 + [1.0])
    feature = KSDetector({"x": x}).test({"x": y}).features[0]
    assert_matches_scipy(x, y, feature.statistic, feature.p_value)


def test_constant_columns() -> None:
    same = KSDetector({"x": np.full(50, 2.0)}).test({"x": np.full(70, 2.0)}).features[0]
    assert (same.statistic, same.p_value, same.drifted) == (0.0, 1.0, False)
    apart = KSDetector({"x": np.full(50, 2.0)}).test({"x": np.full(70, 3.0)}).features[0]
    assert apart.statistic == 1.0 and apart.drifted


def test_int_and_float32_columns_match_float64() -> None:
    rng = np.random.default_rng(7)
    ref, cur = rng.integers(0, 20, 300), rng.integers(0, 21, 250)
    a = KSDetector({"x": ref}).test({"x": cur}).features[0]
    b = KSDetector({"x": ref.astype(np.float32)}).test({"x": cur.astype(np.float64)}).features[0]
    assert a == b
    assert_matches_scipy(ref, cur, a.statistic, a.p_value)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 1000, 9973, 10_000])
def test_batched_square_p_values_are_bit_identical(n: int) -> None:
    hs = sorted(
        {1, 2, 3, max(1, n // 7), max(1, n // 2), n} | {h for h in (17, 100, 250) if h <= n}
    )
    got = ks_module._prob_outside_square(np.full(len(hs), n), np.array(hs))
    want = [_stats_py._compute_prob_outside_square(n, h) for h in hs]
    assert got.tolist() == want


def test_exact_failure_falls_back_to_asymptotic_like_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(n1: int, n2: int, g: int, d: float, alternative: str) -> tuple[bool, float, float]:
        lcm = (n1 // g) * n2
        return False, round(d * lcm) / lcm, math.nan

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=300), rng.normal(0.2, size=200)
    monkeypatch.setattr(_stats_py, "_attempt_exact_2kssamp", fail)
    monkeypatch.setattr(ks_module, "_attempt_exact_2kssamp", fail)
    ks_module._exact_unequal.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns about the fallback
            expected = stats.ks_2samp(x, y)
        got = KSDetector({"x": x}).test({"x": y}).features[0]
    finally:
        ks_module._exact_unequal.cache_clear()
    assert (got.statistic, got.p_value) == (expected.statistic, expected.pvalue)


def test_auto_method_switches_at_scipys_threshold() -> None:
    rng = np.random.default_rng(11)
    for n1 in (10_000, 10_001):
        x, y = rng.normal(size=n1), rng.normal(0.02, size=10_000)
        feature = KSDetector({"x": x}).test({"x": y}).features[0]
        assert_matches_scipy(x, y, feature.statistic, feature.p_value)
