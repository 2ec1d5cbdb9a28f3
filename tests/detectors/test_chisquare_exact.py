"""Chi-square where pooling would leave nothing to test: the exact conditional test.

Ten classes in windows of 10 to 20 make every column rare; pooling them all left one
column and p = 1 on every window (no power at all). The raw table now gets Pearson's X^2
referred to its exact distribution given the margins (Monte Carlo, seeded). Checked
against full enumeration, for level at windows of 10 and 20, and for power.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from detectors import ChiSquareDetector, PredictionDriftDetector
from detectors.chisquare import EXACT_DRAWS

ALPHA = 0.05
CLASSES = 10
UNIFORM = np.full(CLASSES, 1 / CLASSES)
# two classes take 60% of the window (from 20%): a knock-out of the others' share
SKEWED = np.array([0.3, 0.3] + [0.05] * 8)


def exact_p(table: np.ndarray) -> float:
    """P(X^2 >= observed) given the margins, by enumerating every window row."""
    totals, m = table.sum(axis=0), int(table[1].sum())
    observed = stats.chi2_contingency(table, correction=False).statistic
    total_prob = 0.0
    p = 0.0
    for row in itertools.product(*(range(int(t) + 1) for t in totals)):
        if sum(row) != m:
            continue
        prob = stats.multivariate_hypergeom.pmf(row, totals, m)
        total_prob += prob
        candidate = np.array([totals - np.array(row), row])
        if stats.chi2_contingency(candidate, correction=False).statistic >= observed - 1e-9:
            p += prob
    assert total_prob == pytest.approx(1.0)
    return p


@pytest.mark.parametrize("ref_counts, cur_counts", [
    ([8, 6, 6], [3, 2, 5]),
    ([5, 5, 4, 6], [0, 1, 5, 2]),
    ([3, 9, 2, 4], [4, 0, 1, 1]),
])
def test_monte_carlo_p_value_matches_full_enumeration(ref_counts: list[int],
                                                      cur_counts: list[int]) -> None:
    ref = np.repeat(np.arange(len(ref_counts)), ref_counts)
    cur = np.repeat(np.arange(len(cur_counts)), cur_counts)
    feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    want = exact_p(np.array([ref_counts, cur_counts]))
    # Monte Carlo standard error at most sqrt(0.25 / 4999) = 0.007
    assert feature.p_value == pytest.approx(want, abs=4 * np.sqrt(0.25 / EXACT_DRAWS))


def rates(window: int, probabilities: np.ndarray, calls: int, seed: int) -> float:
    """Share of features flagged: 40 independent features per call, reference 1,000."""
    rng = np.random.default_rng(seed)
    features = [f"f{i}" for i in range(40)]
    ref = {f: rng.choice(CLASSES, size=1000, p=UNIFORM) for f in features}
    det = ChiSquareDetector(ref, alpha=ALPHA, correction="none")
    flagged = 0
    for _ in range(calls):
        result = det.test({f: rng.choice(CLASSES, size=window, p=probabilities)
                           for f in features})
        flagged += sum(f.drifted for f in result.features)
    return flagged / (calls * len(features))


@pytest.mark.parametrize("window", [10, 20])
def test_level_and_power_at_tiny_windows(window: int) -> None:
    null = rates(window, UNIFORM, calls=10, seed=window)  # 400 tests
    low, high = stats.binom.interval(0.99, 400, ALPHA)
    assert null <= high / 400, null  # a valid test; discreteness may make it conservative
    assert null >= low / 400 / 2, null  # and it still uses its level
    power = rates(window, SKEWED, calls=4, seed=100 + window)  # 160 tests
    # before: p = 1 on every such window, power 0; measured 0.58 (10) and 0.85 (20)
    assert power > {10: 0.45, 20: 0.75}[window], power


def test_predicted_classes_in_a_window_of_ten_are_tested() -> None:
    rng = np.random.default_rng(3)
    det = PredictionDriftDetector(rng.choice(CLASSES, size=2000, p=UNIFORM))
    result = det.test(np.array([0] * 8 + [1] * 2))  # two classes out of ten
    assert result.p_value is not None and result.p_value < 0.01 and result.drifted
    quiet = det.test(np.arange(CLASSES))  # one of each: as expected as it gets
    assert quiet.p_value is not None and quiet.p_value > 0.5 and not quiet.drifted
