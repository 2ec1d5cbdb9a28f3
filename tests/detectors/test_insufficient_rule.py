"""The general insufficient_data rule: a test that cannot reject at a window size says so.

A permutation or resampling test whose smallest attainable p-value at the window's size is
not below ``alpha`` answers "no drift" whatever the data; it must report
``insufficient_data`` (no p-value, not drifted), and test normally once it can reject.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors import MMDAggDetector, MMDDetector, PSIDetector, WassersteinDetector
from detectors._common import can_reject
from detectors.mmd import MMDSetup


def test_can_reject_compares_the_smallest_p_value_with_alpha() -> None:
    assert can_reject(0.01, 0.05) and not can_reject(0.05, 0.05)
    assert not can_reject(1 / 11, 0.05)


@pytest.mark.parametrize("cls", [MMDDetector, MMDAggDetector])
def test_too_few_permutations_for_alpha_is_insufficient_not_a_clean_bill(cls: type) -> None:
    rng = np.random.default_rng(0)
    ref, far = rng.normal(size=(100, 3)), rng.normal(5.0, size=(30, 3))
    few = cls(ref, alpha=0.05, n_permutations=10)  # smallest p-value 1/11 > 0.05
    result = few.test(far)
    assert result.insufficient_data and not result.drifted and result.p_value is None
    enough = cls(ref, alpha=0.05, n_permutations=99)
    result = enough.test(far)
    assert not result.insufficient_data and result.drifted and result.p_value == 0.01
    # the same 10 permutations suffice at a level they can reach
    assert cls(ref, alpha=0.1, n_permutations=10).test(far).drifted


def test_tiny_samples_with_too_few_distinct_splits_are_insufficient() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 2))
    detector = MMDDetector(ref, alpha=0.05, n_permutations=999)
    # 2 + 2 rows split 6 ways: no p-value can fall below 1/6
    assert detector.test(rng.normal(9.0, size=(2, 2))).insufficient_data
    setup = MMDSetup(rng.normal(size=(20, 2)), alpha=0.05, n_permutations=999,
                     backend="numpy", device="cpu", dtype=None, max_n=None, seed=0,
                     block_size=64, min_samples=2, feature="e")
    assert setup.smallest_p_value(1) == pytest.approx(1 / 21)  # 21 splits
    assert setup.smallest_p_value(2) == pytest.approx(max(1 / 1000, 1 / math.comb(22, 2)))
    assert not setup.decidable(1) and setup.decidable(2)
    # large samples: the count of splits overflows a float, the bound is the permutations'
    big = MMDSetup(rng.normal(size=(3000, 1)), alpha=0.05, n_permutations=19,
                   backend="numpy", device="cpu", dtype=None, max_n=None, seed=0,
                   block_size=64, min_samples=2, feature="e")
    assert big.smallest_p_value(3000) == 1 / 20 and not big.decidable(3000)
    # 20 + 2 rows: 231 splits, enough at 5%
    assert MMDDetector(rng.normal(size=(20, 2)), n_permutations=999).test(
        rng.normal(9.0, size=(2, 2))).drifted


@pytest.mark.parametrize("cls", [WassersteinDetector, PSIDetector])
def test_a_distance_whose_resampled_null_cannot_reach_alpha_is_insufficient(cls: type) -> None:
    rng = np.random.default_rng(2)
    ref = {"x": rng.normal(size=500)}
    far = {"x": rng.normal(4.0, size=200)}
    coarse = cls(ref, alpha=0.01, n_resamples=19)  # smallest p-value 1/20 > 0.01
    result = coarse.test(far)
    assert result.insufficient_data and not result.drifted
    assert cls(ref, alpha=0.06, n_resamples=19).test(far).drifted
