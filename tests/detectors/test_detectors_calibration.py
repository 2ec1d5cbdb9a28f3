"""Type I error calibration and power of the detectors on seeded simulations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors import ChiSquareDetector, KSDetector

ALPHA = 0.05
TRIALS = 500
# Rejection counts consistent (99%) with a true rate of ALPHA over TRIALS trials.
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)
LEVELS = np.array(["a", "b", "c", "d"])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])


def rejections(make_detector, draw, n_features: int, correction: str) -> int:
    """How many of TRIALS same-distribution trials the detector flags as drifted."""
    rng = np.random.default_rng(12345)
    count = 0
    for _ in range(TRIALS):
        ref = {f"f{i}": draw(rng) for i in range(n_features)}
        cur = {f"f{i}": draw(rng) for i in range(n_features)}
        count += make_detector(ref, alpha=ALPHA, correction=correction).test(cur).drifted
    return count


def normal(rng: np.random.Generator) -> np.ndarray:
    # KS's exact null distribution is discrete: the attainable size nearest below 0.05 is
    # 0.0396 at n = 200 (too close to the interval's edge) but 0.0495 at n = 500.
    return rng.normal(size=500)


def categorical(rng: np.random.Generator) -> np.ndarray:
    return rng.choice(LEVELS, size=200, p=WEIGHTS)


@pytest.mark.parametrize(
    ("detector", "draw"), [(KSDetector, normal), (ChiSquareDetector, categorical)]
)
def test_single_feature_false_positive_rate_is_alpha(detector, draw) -> None:
    assert LOW <= rejections(detector, draw, 1, "none") <= HIGH


@pytest.mark.parametrize("correction", ["bonferroni", "benjamini-hochberg"])
@pytest.mark.parametrize(
    ("detector", "draw"), [(KSDetector, normal), (ChiSquareDetector, categorical)]
)
def test_family_wise_rate_over_ten_features_at_most_alpha(detector, draw, correction: str) -> None:
    # Under the global null BH's FDR is its family-wise rate, so both are bounded by alpha.
    assert rejections(detector, draw, 10, correction) <= HIGH


def test_uncorrected_family_wise_rate_is_inflated() -> None:
    # Sanity check of the setup: without correction 10 features give ~1 - 0.95^10 = 40%.
    assert rejections(KSDetector, normal, 10, "none") > 0.3 * TRIALS


def test_half_sigma_shift_is_detected() -> None:
    rng = np.random.default_rng(1)
    ref = {"x": rng.normal(size=1000), "noise": rng.normal(size=1000)}
    cur = {"x": rng.normal(0.5, size=1000), "noise": rng.normal(size=1000)}
    result = KSDetector(ref).test(cur)
    by_name = {f.feature: f for f in result.features}
    adjusted = by_name["x"].adjusted_p_value
    assert result.drifted and by_name["x"].drifted and adjusted is not None and adjusted < 1e-10
    assert not by_name["noise"].drifted


def test_shifted_category_mix_is_detected() -> None:
    rng = np.random.default_rng(2)
    ref = {"c": rng.choice(LEVELS, size=1000, p=WEIGHTS)}
    cur = {"c": rng.choice(LEVELS, size=1000, p=[0.25, 0.25, 0.25, 0.25])}
    result = ChiSquareDetector(ref).test(cur)
    assert result.drifted and result.p_value is not None and result.p_value < 1e-10
