"""MMD aggregated over bandwidths (``mmd_agg``): exact level, power where the median
heuristic is wrong, equality with the single-bandwidth test, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats

from detectors import InsufficientDataError, MMDAggDetector, MMDDetector
from detectors.mmd_agg import BANDWIDTH_FACTORS, min_p_value

ALPHA = 0.05


def clusters(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """Two clusters 6 apart in 5 dimensions, each of standard deviation ``spread``."""
    x = spread * rng.normal(size=(n, 5))
    x[:, 0] += np.where(rng.random(n) < 0.5, -3.0, 3.0)
    return x


def test_null_rejection_rate_is_alpha() -> None:
    # 200 unshifted windows of 20 against references of 60 (a new one every 20 windows);
    # the guarantee is P(p <= alpha) <= alpha (``drifted`` is p < alpha, stricter); with
    # 99 permutations p = 0.05 is attainable, so the rate should be alpha itself
    rng = np.random.default_rng(1)
    rejected = 0
    for _ in range(10):
        det = MMDAggDetector(rng.standard_t(4, size=(60, 3)), n_permutations=99,
                             seed=int(rng.integers(1000)))
        rejected += sum(det.test(rng.standard_t(4, size=(20, 3))).p_value <= ALPHA
                        for _ in range(20))
    low, high = stats.binom.interval(0.99, 200, ALPHA)
    assert low <= rejected <= high, rejected / 200


def test_beats_the_median_bandwidth_when_clusters_tighten() -> None:
    # The median distance is the gap between the clusters, so its kernel barely sees
    # their spread halving; a bandwidth a quarter of it does. Measured: 0.48 against 0.12.
    rng = np.random.default_rng(2)
    ref = clusters(rng, 100, 0.5)
    agg = MMDAggDetector(ref, n_permutations=99)
    single = MMDDetector(ref, n_permutations=99)
    windows = [clusters(rng, 30, 0.25) for _ in range(40)]
    power_agg = np.mean([agg.test(w).drifted for w in windows])
    power_single = np.mean([single.test(w).drifted for w in windows])
    assert power_agg >= 0.35 and power_agg >= power_single + 0.25, (power_agg, power_single)


def test_one_bandwidth_gives_the_single_test_p_value() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=(50, 4)), rng.normal(0.3, 1.0, size=(25, 4))
    single = MMDDetector(ref, n_permutations=199)
    for factor in (1.0, 0.5):
        agg = MMDAggDetector(ref, n_permutations=199, bandwidth_factors=(factor,))
        fixed = MMDDetector(ref, n_permutations=199, bandwidth=single.bandwidth * factor)
        want, got = fixed.test(cur), agg.test(cur)
        assert got.detector == "mmd_agg" and got.p_value == want.p_value
        assert got.statistic == pytest.approx(want.statistic, rel=1e-12)
    assert agg.median == pytest.approx(single.bandwidth)


def test_min_p_counts_the_observed_column_and_ties() -> None:
    # rows: bandwidths; column 0 observed. Row 0 ranks it first of 4 (p 1/4), row 1 last.
    statistics = np.array([[5.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    p, best = min_p_value(statistics, np.zeros(2))
    # per column, the smaller of the two rows' rank p-values: 1/4, 3/4, 2/4, 1/4
    assert (p, best) == (0.5, 0)
    assert min_p_value(np.ones((3, 5)), np.zeros(3)) == (1.0, 0)  # all tied: p = 1


def test_aggregated_p_value_is_never_below_the_bonferroni_free_minimum() -> None:
    # min-p over L bandwidths is at least the smallest single-bandwidth p-value and at
    # most L times it (Bonferroni): the correction sits between no correction and Bonferroni
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(60, 3))
    agg = MMDAggDetector(ref, n_permutations=199)
    for shift in (0.0, 0.3, 0.6):
        cur = rng.normal(shift, 1.0, size=(30, 3))
        singles = [MMDDetector(ref, n_permutations=199, bandwidth=b).test(cur).p_value
                   for b in agg.bandwidths]
        p = agg.test(cur).p_value
        assert p is not None and all(s is not None for s in singles)
        smallest = min(s for s in singles if s is not None)
        assert smallest - 1e-12 <= p <= len(singles) * smallest + 1 / 200


def test_small_windows_are_insufficient_and_state_pickles() -> None:
    rng = np.random.default_rng(5)
    det = MMDAggDetector(rng.normal(size=(30, 2)), n_permutations=49, min_samples=5)
    small = det.test(rng.normal(size=(4, 2)))
    assert small.insufficient_data and not small.drifted and small.p_value is None
    again = pickle.loads(pickle.dumps(det))
    cur = rng.normal(size=(10, 2))
    assert again.test(cur) == det.test(cur)
    assert det.bandwidth_factors == BANDWIDTH_FACTORS
    assert "bandwidth_factors=(0.25, 0.5, 0.707107, 1, 2)" in repr(det)


@pytest.mark.parametrize("factors, error, message", [
    ((), ValueError, "at least one factor"),
    ((1.0, 1.0), ValueError, "repeated factor"),
    ((1.0, 0.0), ValueError, r"bandwidth_factors\[1\] must be finite and > 0"),
    ((1.0, float("nan")), ValueError, r"bandwidth_factors\[1\]"),
    ((True,), TypeError, r"bandwidth_factors\[0\] must be a float"),
    ("1.0", TypeError, "must be a sequence"),
])
def test_bad_bandwidth_factors_are_named(factors: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MMDAggDetector(np.eye(4), bandwidth_factors=factors)  # type: ignore[arg-type]


def test_bad_reference_and_window_are_named() -> None:
    with pytest.raises(InsufficientDataError, match="reference has 1 rows"):
        MMDAggDetector(np.ones((1, 3)))
    with pytest.raises(ValueError, match="reference contains NaN"):
        MMDAggDetector(np.array([[1.0, np.nan], [0.0, 1.0]]))
    det = MMDAggDetector(np.random.default_rng(6).normal(size=(20, 3)), n_permutations=9)
    with pytest.raises(ValueError, match="current has 2 columns but the reference has 3"):
        det.test(np.ones((5, 2)))


def test_distances_are_computed_once_for_all_bandwidths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bandwidth's statistics equal its own single-bandwidth test's, from one pass
    over the pairwise distances per window (tiled: 3 reference + 2 window blocks)."""
    from detectors import mmd as mmd_module

    rng = np.random.default_rng(8)
    ref, cur = rng.normal(size=(60, 3)), rng.normal(0.2, 1.2, size=(35, 3))
    agg = MMDAggDetector(ref, n_permutations=99, block_size=20)
    calls = []
    real = mmd_module._NumpyOps.sqdist

    def counting(self: object, *args: np.ndarray) -> np.ndarray:
        calls.append(args[0].shape[0])
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(mmd_module._NumpyOps, "sqdist", counting)
    observed, permuted, _ = agg._kernel.statistics(cur)
    # the reference's own tiles are cached; the window's: 3 x 2 reference-window tiles and
    # 3 window-window tiles on and above the diagonal, once, not once per bandwidth
    assert len(agg.bandwidths) > 1 and len(calls) == 3 * 2 + 3
    monkeypatch.setattr(mmd_module._NumpyOps, "sqdist", real)
    for k, bandwidth in enumerate(agg.bandwidths):
        single = MMDDetector(ref, n_permutations=99, block_size=20, bandwidth=bandwidth)
        obs, perm, _ = single._statistics(cur)
        assert observed[k] == pytest.approx(obs, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(permuted[k], perm, rtol=1e-12, atol=1e-15)
