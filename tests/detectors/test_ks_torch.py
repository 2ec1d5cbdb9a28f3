"""ks_statistics_torch / TorchKSDetector: bit-identical to KSDetector, conformance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors import DriftResult, InsufficientDataError, KSDetector
from detectors.backend import DeviceUnavailableError
from detectors.ks import _ks_distance
from detectors.ks_torch import TorchKSDetector, ks_statistics_torch

SIZES = [(1, 1), (1, 7), (7, 1), (2, 2), (10, 10), (37, 91), (100, 1000), (1000, 1000),
         (5000, 2000), (10_001, 300)]  # fmt: skip
FLAVOURS = [
    "normal",
    "shifted",
    "ties",
    "integers",
    "equal-constant",
    "different-constant",
    "heavy-tail",
]
ALPHA = 0.05


def make_column(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """``side`` 0 is the reference, 1 the current window."""
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
    return rng.standard_cauchy(size=n) * 1e6


def expected_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """KSDetector's own distance function."""
    sorted_ref = np.sort(ref.astype(np.float64))
    ecdf = np.searchsorted(sorted_ref, sorted_ref, side="right") / sorted_ref.size
    return _ks_distance(sorted_ref, ecdf, cur)


# --- the batched statistic ----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_batched_distances_are_bit_identical(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 7919 + m)
    ref = np.stack([make_column(rng, n, f, 0) for f in FLAVOURS])
    cur = np.stack([make_column(rng, m, f, 1) for f in FLAVOURS])
    got = ks_statistics_torch(
        torch.sort(torch.from_numpy(ref), dim=1).values, torch.from_numpy(cur)
    )
    assert got.dtype == torch.float64 and got.shape == (len(FLAVOURS),)
    want = [expected_distance(r, c) for r, c in zip(ref, cur, strict=True)]
    assert got.tolist() == want


def test_distances_match_scipy() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(5, 400)), rng.normal(0.1, size=(5, 300))
    got = ks_statistics_torch(torch.from_numpy(np.sort(ref, axis=1)), torch.from_numpy(cur))
    want = [stats.ks_2samp(r, c, method="asymp").statistic for r, c in zip(ref, cur, strict=True)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_statistic_input_validation() -> None:
    ref, cur = torch.zeros(3, 10, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="features"):
        ks_statistics_torch(ref, cur[:2])
    with pytest.raises(ValueError, match="sorted_reference"):
        ks_statistics_torch(ref[0], cur)
    with pytest.raises(ValueError, match="current"):
        ks_statistics_torch(ref, cur[:, :0])
    with pytest.raises(ValueError, match="dtype"):
        ks_statistics_torch(ref, cur.float())
    with pytest.raises(TypeError, match="current"):
        ks_statistics_torch(ref, cur.long())
    with pytest.raises(TypeError, match="sorted_reference"):
        ks_statistics_torch(ref.numpy(), cur)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        ks_statistics_torch(ref, torch.full((3, 5), math.nan, dtype=torch.float64))


# --- the detector: same results as KSDetector ---------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_results_equal_ks_detector(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    flavours = [FLAVOURS[(seed + i) % len(FLAVOURS)] for i in range(4)]
    ref = {f"{i}-{fl}": make_column(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"{i}-{fl}": make_column(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    correction = ("bonferroni", "benjamini-hochberg", "none")[seed % 3]
    want = KSDetector(ref, min_samples=1, correction=correction).test(cur)
    got = TorchKSDetector(ref, min_samples=1, correction=correction).test(cur)
    assert got == want


def test_columns_of_different_lengths_are_grouped() -> None:
    rng = np.random.default_rng(3)
    ref: dict[str, np.ndarray] = {
        "a": rng.normal(size=300),
        "b": np.round(rng.normal(size=300), 1),
        "c": rng.integers(0, 4, size=120),
        "d": rng.normal(size=120).astype(np.float32),
        "e": rng.normal(size=55),
    }
    cur: dict[str, np.ndarray] = {
        "a": rng.normal(0.2, size=200),
        "b": np.round(rng.normal(size=90), 1),  # same reference size as "a", other window size
        "c": rng.integers(0, 5, size=120),
        "d": rng.normal(size=120),
        "e": rng.normal(size=55),
        "ignored": np.zeros(3),
    }
    detector = TorchKSDetector(ref, correction="none")
    assert [names for names, _ in detector._groups.values()] == [("a", "b"), ("c", "d"), ("e",)]
    assert detector.test(cur) == KSDetector(ref, correction="none").test(cur)


# database=None: keep failing examples out of a .hypothesis/ folder in the working tree
@settings(max_examples=100, deadline=None, database=None)
@given(
    ref=st.lists(st.integers(-3, 3), min_size=1, max_size=30),
    cur=st.lists(st.integers(-3, 3), min_size=1, max_size=30),
    scale=st.sampled_from([1.0, 0.1, 1e-300, 1e300]),
)
def test_parity_property_with_ties(ref: list[int], cur: list[int], scale: float) -> None:
    x, y = {"x": np.array(ref) * scale}, {"x": np.array(cur) * scale}
    assert TorchKSDetector(x, min_samples=1).test(y) == KSDetector(x, min_samples=1).test(y)


# --- conformance ----------------------------------------------------------------------------------


def test_calibrated_under_the_null() -> None:
    trials = 1000
    low, high = stats.binom.interval(0.99, trials, ALPHA)
    rng = np.random.default_rng(2024)
    ref = {f"t{i}": rng.normal(size=500) for i in range(trials)}
    cur = {f"t{i}": rng.normal(size=500) for i in range(trials)}
    result = TorchKSDetector(ref, correction="none").test(cur)
    flagged = sum(f.drifted for f in result.features)
    assert low <= flagged <= high, (flagged, low, high)


def test_shift_is_detected_and_result_shape() -> None:
    rng = np.random.default_rng(7)
    ref = {"same": rng.normal(size=2000), "moved": rng.normal(size=2000)}
    cur = {"same": rng.normal(size=2000), "moved": rng.normal(1.0, size=2000)}
    result = TorchKSDetector(ref).test(cur)
    assert isinstance(result, DriftResult) and result.detector == TorchKSDetector.name == "ks"
    by_name = {f.feature: f for f in result.features}
    assert result.drifted and by_name["moved"].drifted and not by_name["same"].drifted
    assert result.p_value is not None and result.p_value < 0.01
    assert result.correction == "bonferroni" and result.threshold == ALPHA
    assert "TorchKSDetector(" in repr(TorchKSDetector(ref))


def test_deterministic_and_inputs_not_mutated() -> None:
    rng = np.random.default_rng(4)
    reference = {k: np.round(rng.normal(size=300), 1) for k in "abc"}
    current = {k: np.round(rng.normal(size=250), 1) for k in "abc"}
    before = {k: v.copy() for k, v in reference.items()}, {k: v.copy() for k, v in current.items()}
    for arrays in (reference, current):
        for values in arrays.values():
            values.setflags(write=False)
    detector = TorchKSDetector(reference)
    first = detector.test(current)
    assert first == detector.test(current) == TorchKSDetector(before[0]).test(before[1])
    assert detector.test({k: v[::-1] for k, v in current.items()}) == first
    for original, arrays in zip(before, (reference, current), strict=True):
        for key in original:
            np.testing.assert_array_equal(original[key], arrays[key])


def test_bad_input_is_rejected_with_the_culprit_named() -> None:
    rng = np.random.default_rng(5)
    data = {k: rng.normal(size=50) for k in "abc"}
    detector = TorchKSDetector(data)
    two_d = {**data, "b": np.stack([data["b"], data["b"]])}
    with pytest.raises(ValueError, match="'b'"):
        TorchKSDetector(two_d)
    with pytest.raises(ValueError, match="'b'"):
        detector.test(two_d)
    dirty = np.array([0.5, np.nan, 1.5])
    with pytest.raises(ValueError, match="'c'"):
        TorchKSDetector({**data, "c": dirty})
    with pytest.raises(ValueError, match="'c'"):
        detector.test({**data, "c": dirty})
    with pytest.raises(TypeError, match="'a'"):
        detector.test({**data, "a": np.array(["x", "y"])})
    with pytest.raises(KeyError, match="'a'"):
        detector.test({"b": data["b"], "c": data["c"]})
    with pytest.raises(TypeError, match="current"):
        detector.test(list(data.values()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reference"):
        TorchKSDetector(list(data.values()))  # type: ignore[arg-type]
    with pytest.raises(InsufficientDataError, match="'a'"):
        TorchKSDetector({**data, "a": data["a"][:0]})
    with pytest.raises(ValueError, match="alpha"):
        TorchKSDetector(data, alpha=2.0)
    with pytest.raises(ValueError, match="device"):
        TorchKSDetector(data, device="tpu")


@pytest.mark.parametrize("emptied", ["a", "c"])
def test_empty_window_is_insufficient_data(emptied: str) -> None:
    rng = np.random.default_rng(6)
    data = {k: rng.normal(size=40) for k in "abc"}
    result = TorchKSDetector(data).test({**data, emptied: data[emptied][:0]})
    assert result == KSDetector(data).test({**data, emptied: data[emptied][:0]})
    assert result.insufficient_data and not result.drifted and result.p_value is None
    assert math.isnan(result.statistic)


def test_unavailable_cuda_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="'cuda'"):
        TorchKSDetector({"x": np.arange(5.0)}, device="cuda")
    assert TorchKSDetector({"x": np.arange(5.0)}, device="auto").device == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seed", range(5))
def test_cuda_results_equal_ks_detector(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[5 + seed]
    ref = {fl: make_column(rng, n1, fl, 0) for fl in FLAVOURS}
    cur = {fl: make_column(rng, n2, fl, 1) for fl in FLAVOURS}
    detector = TorchKSDetector(ref, device="cuda")
    assert detector.device.startswith("cuda")
    assert detector.test(cur) == KSDetector(ref).test(cur)
