"""MMDDetector: dense-formula correctness, blocking, numpy/torch parity, calibration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist

from detectors import DetectorError, DriftResult, InsufficientDataError
from detectors import mmd as mmd_module
from detectors.backend import DeviceUnavailableError
from detectors.mmd import MMDDetector, permutation_labels, subsample

ALPHA = 0.05
TRIALS = 300
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)


def dense_statistics(x: np.ndarray, y: np.ndarray, sigma: float, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of every relabelling, straight from the definition (pooled K)."""
    z = np.vstack([x, y])
    n, m = len(x), len(y)
    k = np.exp(-(pdist_matrix(z) ** 2) / (2 * sigma**2))
    out = []
    for a in labels:
        kxx, kyy, kxy = k[np.ix_(a, a)], k[np.ix_(~a, ~a)], k[np.ix_(a, ~a)]
        out.append(
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return np.array(out)


def pdist_matrix(z: np.ndarray) -> np.ndarray:
    return np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))


def p_value_of(observed: float, permuted: np.ndarray) -> float:
    return (1 + np.count_nonzero(permuted >= observed - 1e-12)) / (1 + permuted.size)


def samples(seed: int, n: int = 60, m: int = 50, d: int = 4, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(shift, size=(m, d))


# --- correctness --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("block_size", [7, 64, 2048])
def test_matches_the_dense_formula_for_every_permutation(backend: str, block_size: int) -> None:
    x, y = samples(1, n=40, m=25, d=3, shift=0.3)
    detector = MMDDetector(x, n_permutations=60, block_size=block_size, backend=backend)
    observed, permuted, _ = detector._statistics(y)
    want = dense_statistics(x, y, detector.bandwidth, permutation_labels(0, 40, 25, 60))
    np.testing.assert_allclose(observed, want[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(permuted, want[1:], rtol=0, atol=1e-13)
    result = detector.test(y)
    assert result.statistic == observed
    assert result.p_value == p_value_of(want[0], want[1:])


def test_permutation_labels() -> None:
    labels = permutation_labels(3, 7, 5, 200)
    assert labels.shape == (201, 12) and labels.dtype == bool
    assert labels[0].tolist() == [True] * 7 + [False] * 5
    assert (labels.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(labels, permutation_labels(3, 7, 5, 200))
    assert not np.array_equal(labels, permutation_labels(4, 7, 5, 200))
    # uniform over positions: each is "reference" 7/12 of the time
    np.testing.assert_allclose(labels[1:].mean(axis=0), 7 / 12, atol=0.12)
    # chunked drawing: more permutations than one chunk, rows still distinct
    many = permutation_labels(0, 30, 30, 300)
    assert len({row.tobytes() for row in many}) == 301


@pytest.mark.parametrize("cache", [True, False])
def test_blocked_equals_unblocked_at_n_3000(monkeypatch: pytest.MonkeyPatch, cache: bool) -> None:
    if not cache:
        monkeypatch.setattr(mmd_module, "REFERENCE_CACHE_BYTES", 0)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(3000, 8)), rng.normal(0.03, size=(3000, 8))
    blocked = MMDDetector(x, n_permutations=100, block_size=700)
    assert bool(blocked._cache) == cache
    whole = MMDDetector(x, n_permutations=100, block_size=6000)
    b_obs, b_perm, tie = blocked._statistics(y)
    w_obs, w_perm, _ = whole._statistics(y)
    np.testing.assert_allclose(b_obs, w_obs, rtol=1e-9)
    np.testing.assert_allclose(b_perm, w_perm, rtol=0, atol=1e-12)
    assert np.count_nonzero(b_perm >= b_obs - tie) == np.count_nonzero(w_perm >= w_obs - tie)


@pytest.mark.parametrize(
    "case", ["null", "shifted", "scaled", "duplicated-rows", "binary", "unequal"]
)
def test_numpy_and_torch_agree_in_float64(case: str) -> None:
    rng = np.random.default_rng(11)
    n, m, d = (120, 45, 6) if case == "unequal" else (80, 80, 6)
    x: np.ndarray = rng.normal(size=(n, d))
    y: np.ndarray = rng.normal(size=(m, d))
    if case == "shifted":
        y += 0.4
    elif case == "scaled":
        y *= 1.3
    elif case == "duplicated-rows":  # exact ties between permuted statistics
        x, y = np.tile(x[:10], (8, 1)), np.tile(x[:10], (8, 1))
    elif case == "binary":
        x, y = rng.integers(0, 2, (n, d)), rng.integers(0, 2, (m, d))
    params: dict[str, Any] = {"n_permutations": 300, "block_size": 50, "seed": 4}
    a = MMDDetector(x, backend="numpy", **params)
    b = MMDDetector(x, backend="torch", device="cpu", **params)
    assert a.dtype == b.dtype == "float64" and b.device == "cpu"
    ra, rb = a.test(y), b.test(y)
    np.testing.assert_allclose(rb.statistic, ra.statistic, rtol=1e-6, atol=1e-15)
    assert ra.p_value == rb.p_value
    assert ra.drifted == rb.drifted
    (fa,), (fb,) = ra.features, rb.features
    assert (fa.n_reference, fa.n_current) == (fb.n_reference, fb.n_current) == (n, m)


def test_torch_float32_is_close_to_float64() -> None:
    x, y = samples(2, n=200, m=200, d=8, shift=0.15)
    wide = MMDDetector(x, backend="torch", n_permutations=200).test(y)
    narrow_detector = MMDDetector(x, backend="torch", dtype="float32", n_permutations=200)
    assert narrow_detector.dtype == "float32"
    narrow = narrow_detector.test(y)
    assert abs(narrow.statistic - wide.statistic) < 1e-5
    assert narrow.p_value is not None and wide.p_value is not None
    assert abs(narrow.p_value - wide.p_value) <= 2 / 201


def test_numpy_float32_option() -> None:
    x, y = samples(3)
    wide = MMDDetector(x, n_permutations=100).test(y)
    narrow = MMDDetector(x, n_permutations=100, dtype="float32")
    assert narrow.dtype == "float32"
    assert abs(narrow.test(y).statistic - wide.statistic) < 1e-5


# --- bandwidth ----------------------------------------------------------------------------------


def test_median_heuristic_is_the_median_reference_distance() -> None:
    x, _ = samples(4, n=300)
    detector = MMDDetector(x, n_permutations=10)
    assert math.isclose(detector.bandwidth, float(np.median(pdist(x))), rel_tol=1e-9)
    fixed = MMDDetector(x, n_permutations=10, bandwidth=2.5)
    assert fixed.bandwidth == 2.5


def test_median_heuristic_subsamples_large_references() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(mmd_module.MEDIAN_ROWS + 500, 3))
    rows = subsample(x, mmd_module.MEDIAN_ROWS, (0, 0))
    assert rows.shape[0] == mmd_module.MEDIAN_ROWS
    bandwidth = mmd_module.median_distance(x, 0)
    assert math.isclose(bandwidth, float(np.median(pdist(rows))), rel_tol=1e-9)
    assert math.isclose(bandwidth, float(np.median(pdist(x))), rel_tol=0.02)


def test_median_heuristic_degenerate_references() -> None:
    assert MMDDetector(np.ones((10, 3)), n_permutations=5).bandwidth == 1.0
    mostly_equal = np.vstack([np.zeros((8, 2)), [[3.0, 4.0], [6.0, 8.0]]])
    # more than half the pairs are at distance 0: median of the non-zero ones (5, 5, ..., 10)
    positive = pdist(mostly_equal)
    expected = float(np.median(positive[positive > 0]))
    assert MMDDetector(mostly_equal, n_permutations=5).bandwidth == pytest.approx(expected)
    # constant reference, different window: still a valid test
    result = MMDDetector(np.ones((10, 3)), n_permutations=50).test(np.zeros((10, 3)))
    assert result.drifted and result.p_value == 1 / 51


# --- calibration and power ----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(30, 30), (40, 20)])
def test_calibrated_under_the_null(n: int, m: int) -> None:
    rng = np.random.default_rng(2024 + n)
    rejections, statistics = 0, []
    for trial in range(TRIALS):
        x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
        result = MMDDetector(x, alpha=ALPHA, n_permutations=200, seed=trial).test(y)
        assert result.p_value is not None and 1 / 201 <= result.p_value <= 1
        rejections += result.drifted
        statistics.append(result.statistic)
    assert LOW <= rejections <= HIGH, (rejections, LOW, HIGH)
    # unbiased: the null mean is 0
    stat = np.array(statistics)
    assert abs(stat.mean()) < 4 * stat.std() / math.sqrt(TRIALS)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_shift_is_detected(backend: str) -> None:
    x, y = samples(7, n=200, m=150, d=5, shift=0.5)
    result = MMDDetector(x, n_permutations=200, backend=backend).test(y)
    assert result.drifted and result.p_value == 1 / 201 and result.statistic > 0


def test_variance_change_is_detected() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(300, 4)), rng.normal(scale=1.5, size=(300, 4))
    assert MMDDetector(x, n_permutations=200).test(y).drifted


# --- conformance ----------------------------------------------------------------------------------


def test_result_shape() -> None:
    x, y = samples(9)
    result = MMDDetector(x, n_permutations=99, feature="vec").test(y)
    assert isinstance(result, DriftResult) and result.detector == "mmd"
    assert result.correction == "none" and result.threshold == ALPHA
    assert not result.insufficient_data
    (feature,) = result.features
    assert feature.feature == "vec"
    assert (result.n_reference, result.n_current) == (feature.n_reference, feature.n_current)
    assert (result.n_reference, result.n_current) == (60, 50)
    assert result.statistic == feature.statistic
    assert result.p_value == feature.p_value == feature.adjusted_p_value
    assert feature.p_value is not None
    assert result.drifted == feature.drifted == (feature.p_value < ALPHA)
    assert "MMDDetector(" in repr(MMDDetector(x, n_permutations=9))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_deterministic_and_inputs_not_mutated(backend: str) -> None:
    x, y = samples(10, shift=0.1)
    x_before, y_before = x.copy(), y.copy()
    x.setflags(write=False)
    y.setflags(write=False)
    detector = MMDDetector(x, n_permutations=200, backend=backend, block_size=16)
    first, second = detector.test(y), detector.test(y)
    fresh = MMDDetector(x_before, n_permutations=200, backend=backend, block_size=16)
    assert first == second == fresh.test(y_before)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    # the window's row order changes the statistic only by rounding
    flipped = detector.test(y[::-1])
    assert flipped.statistic == pytest.approx(first.statistic, rel=1e-9)
    # another seed, other permutations
    assert MMDDetector(x, n_permutations=200, seed=1).test(y).p_value != first.p_value


def test_max_n_subsamples_each_side() -> None:
    x, y = samples(12, n=300, m=250)
    detector = MMDDetector(x, n_permutations=50, max_n=100)
    result = detector.test(y)
    assert (result.n_reference, result.n_current) == (100, 100)
    manual = MMDDetector(subsample(x, 100, (0, 1)), n_permutations=50)
    assert manual.test(subsample(y, 100, (0, 2))) == result
    # windows at or below max_n are used whole
    small = detector.test(y[:80])
    assert small.n_current == 80
    assert small == manual.test(y[:80])


@pytest.mark.parametrize("empty", [np.zeros((0, 4)), np.array([]), np.zeros((1, 4))])
def test_empty_window_is_insufficient_data(empty: np.ndarray) -> None:
    x, _ = samples(13)
    result = MMDDetector(x, n_permutations=10).test(empty)
    assert result.insufficient_data and not result.drifted and result.p_value is None
    assert math.isnan(result.statistic) and result.n_current == len(empty)
    (feature,) = result.features
    assert feature.p_value is None and feature.adjusted_p_value is None and not feature.drifted


def test_bad_data_is_rejected_with_the_culprit_named() -> None:
    x, y = samples(14)
    detector = MMDDetector(x, n_permutations=10)
    cases: tuple[tuple[Any, type[Exception]], ...] = (
        (x[:, 0], ValueError),  # 1-D
        (x[None], ValueError),  # 3-D
        (np.zeros((5, 0)), ValueError),  # no columns
        (np.where(np.eye(60, 4) > 0, np.nan, x), ValueError),
        (np.where(np.eye(60, 4) > 0, np.inf, x), ValueError),
        (x.astype(str), TypeError),
        ("abc", TypeError),
        (None, TypeError),
    )
    for bad, error in cases:
        with pytest.raises(error, match="reference"):
            MMDDetector(bad, n_permutations=10)
        with pytest.raises(error, match="current"):
            detector.test(bad)
    with pytest.raises(ValueError, match=r"current has 3 columns but the reference has 4"):
        detector.test(y[:, :3])
    with pytest.raises(InsufficientDataError, match="reference"):
        MMDDetector(x[:1], n_permutations=10)
    # numbers of any numeric dtype are fine
    ints = MMDDetector(x.round().astype(int), n_permutations=99).test(y.round().astype(np.int8))
    assert ints.p_value is not None


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": "0.05"}, TypeError, "alpha"),
        ({"n_permutations": 0}, ValueError, "n_permutations"),
        ({"n_permutations": 10.0}, TypeError, "n_permutations"),
        ({"n_permutations": True}, TypeError, "n_permutations"),
        ({"bandwidth": 0.0}, ValueError, "bandwidth"),
        ({"bandwidth": -1.0}, ValueError, "bandwidth"),
        ({"bandwidth": math.nan}, ValueError, "bandwidth"),
        ({"bandwidth": "mean"}, TypeError, "bandwidth"),
        ({"backend": "jax"}, ValueError, "backend"),
        ({"device": "cuda"}, ValueError, "device"),  # numpy backend: CPU only
        ({"device": "gpu", "backend": "torch"}, ValueError, "device"),
        ({"device": 0}, TypeError, "device"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"dtype": "float16", "backend": "torch"}, ValueError, "dtype"),
        ({"max_n": 1}, ValueError, "max_n"),
        ({"seed": -1}, ValueError, "seed"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"min_samples": 1}, ValueError, "min_samples"),
        ({"feature": 1}, TypeError, "feature"),
    ],
)
def test_bad_parameters_are_rejected(params: dict, error: type, name: str) -> None:
    x, _ = samples(15)
    with pytest.raises(error, match=name):
        MMDDetector(x, **params)


def test_unavailable_cuda_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x, _ = samples(16)
    with pytest.raises(DeviceUnavailableError, match="'cuda:0'") as info:
        MMDDetector(x, backend="torch", device="cuda:0")
    assert isinstance(info.value, DetectorError)
    auto = MMDDetector(x, backend="torch", device="auto", n_permutations=10)
    assert auto.device == "cpu" and auto.dtype == "float64"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_numpy() -> None:
    x, y = samples(17, n=500, m=400, d=16, shift=0.05)
    want = MMDDetector(x, n_permutations=500, block_size=128).test(y)
    exact = MMDDetector(x, n_permutations=500, backend="torch", device="cuda", dtype="float64")
    assert exact.device.startswith("cuda") and exact.dtype == "float64"
    got = exact.test(y)
    np.testing.assert_allclose(got.statistic, want.statistic, rtol=1e-6)
    assert got.p_value == want.p_value
    fast = MMDDetector(x, n_permutations=500, backend="torch", device="cuda", block_size=128)
    assert fast.dtype == "float32"
    approx = fast.test(y)
    assert abs(approx.statistic - want.statistic) < 1e-5
    assert approx.p_value is not None and want.p_value is not None
    assert abs(approx.p_value - want.p_value) <= 3 / 501
