"""Public surface, validation, insufficient data, determinism and immutability."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys

import numpy as np
import pytest

import detectors
from detectors import (
    ChiSquareDetector,
    Detector,
    DetectorError,
    DriftResult,
    FeatureResult,
    InsufficientDataError,
    KSDetector,
)

RNG = np.random.default_rng(0)
NUMERIC = {"a": RNG.normal(size=100), "b": RNG.normal(size=80)}
CATEGORICAL = {"a": RNG.choice(np.array(["x", "y", "z"]), size=100), "b": RNG.integers(0, 3, 90)}
CASES = [(KSDetector, NUMERIC), (ChiSquareDetector, CATEGORICAL)]


def test_all_is_complete_and_resolvable() -> None:
    assert sorted(detectors.__all__) == sorted(set(detectors.__all__))
    for name in detectors.__all__:
        assert hasattr(detectors, name), name
    public = {
        name
        for name, value in vars(detectors).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(detectors.__all__)
    for module in ("base", "bbse", "chisquare", "correction", "errors", "ks", "label",
                   "results", "streaming"):
        assert set(getattr(detectors, module).__all__) <= set(detectors.__all__), module


def test_does_not_import_the_daemon() -> None:
    code = (
        "import sys, detectors; print([m for m in ('monitor', 'embeddings') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_exception_hierarchy() -> None:
    assert issubclass(InsufficientDataError, DetectorError)
    assert issubclass(InsufficientDataError, ValueError)


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_detectors_satisfy_protocol_and_result_shape(cls, data) -> None:
    detector = cls(data)
    assert isinstance(detector, Detector)
    result = detector.test(data)
    assert isinstance(result, DriftResult)
    assert (
        result.detector == cls.name
        and result.threshold == 0.05
        and result.correction == "bonferroni"
    )
    assert [f.feature for f in result.features] == list(data)
    assert all(isinstance(f, FeatureResult) for f in result.features)
    assert result.statistic == max(f.statistic for f in result.features)
    adjusted = [f.adjusted_p_value for f in result.features]
    assert None not in adjusted and result.p_value == min(a for a in adjusted if a is not None)
    assert result.drifted == any(f.drifted for f in result.features)
    assert (result.n_reference, result.n_current) == (100, 100)
    assert not result.insufficient_data and not result.drifted
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.drifted = True  # type: ignore[misc]


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_extra_current_keys_are_ignored(cls, data) -> None:
    assert cls(data).test({**data, "extra": np.array(["?"])}) == cls(data).test(data)


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_deterministic_and_inputs_not_mutated(cls, data) -> None:
    reference = {k: v.copy() for k, v in data.items()}
    current = {k: v[::-1].copy() for k, v in data.items()}
    reference_before = {k: v.copy() for k, v in reference.items()}
    current_before = {k: v.copy() for k, v in current.items()}
    detector = cls(reference)
    first, second = detector.test(current), detector.test(current)
    assert first == second == cls(reference_before).test(current_before)
    for before, after in ((reference_before, reference), (current_before, current)):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])


def test_read_only_and_non_contiguous_inputs() -> None:
    values = RNG.normal(size=200)
    values.setflags(write=False)
    result = KSDetector({"x": values[::2]}).test({"x": values[1::2]})
    p_value = result.features[0].p_value
    assert p_value is not None and 0.0 <= p_value <= 1.0


@pytest.mark.parametrize(("cls", "data"), CASES)
@pytest.mark.parametrize("emptied", ["a", "b"])
def test_empty_current_window_is_insufficient_not_an_error(cls, data, emptied: str) -> None:
    current = {**data, emptied: data[emptied][:0]}
    result = cls(data).test(current)
    assert result.insufficient_data and not result.drifted and result.p_value is None
    assert math.isnan(result.statistic)
    assert all(
        f.p_value is None and f.adjusted_p_value is None and not f.drifted for f in result.features
    )
    assert {f.feature: f.n_current for f in result.features}[emptied] == 0


def test_min_samples_threshold() -> None:
    detector = KSDetector(NUMERIC, min_samples=5)
    assert detector.test({k: v[:4] for k, v in NUMERIC.items()}).insufficient_data
    assert not detector.test({k: v[:5] for k, v in NUMERIC.items()}).insufficient_data
    with pytest.raises(InsufficientDataError, match="'a'"):
        KSDetector({"a": np.array([1.0])})  # default min_samples=2


@pytest.mark.parametrize(("cls", "data"), CASES)
@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan")])
def test_bad_alpha(cls, data, alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        cls(data, alpha=alpha)


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_bad_options(cls, data) -> None:
    with pytest.raises(TypeError, match="alpha"):
        cls(data, alpha="0.05")
    with pytest.raises(ValueError, match="correction"):
        cls(data, correction="holm")
    with pytest.raises(ValueError, match="min_samples"):
        cls(data, min_samples=0)
    with pytest.raises(TypeError, match="min_samples"):
        cls(data, min_samples=2.5)


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_bad_reference(cls, data) -> None:
    with pytest.raises(ValueError, match="reference"):
        cls({})
    with pytest.raises(TypeError, match="reference"):
        cls([data["a"]])
    with pytest.raises(ValueError, match="'a'"):
        cls({"a": np.stack([data["a"], data["a"]])})
    with pytest.raises(InsufficientDataError, match="'a'"):
        cls({"a": data["a"][:0]})
    with pytest.raises(TypeError, match="str"):
        cls({1: data["a"]})


@pytest.mark.parametrize(("cls", "data"), CASES)
def test_bad_current(cls, data) -> None:
    detector = cls(data)
    with pytest.raises(KeyError, match="'b'"):
        detector.test({"a": data["a"]})
    with pytest.raises(ValueError, match="'a'"):
        detector.test({**data, "a": data["a"].reshape(10, 10)})
    with pytest.raises(TypeError, match="current"):
        detector.test(list(data.values()))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_ks_rejects_non_finite(bad: float) -> None:
    dirty = NUMERIC["a"].copy()
    dirty[3] = bad
    with pytest.raises(ValueError, match="'a'"):
        KSDetector({**NUMERIC, "a": dirty})
    with pytest.raises(ValueError, match="'a'"):
        KSDetector(NUMERIC).test({**NUMERIC, "a": dirty})


def test_dtype_checks() -> None:
    with pytest.raises(TypeError, match="'a'"):
        KSDetector({"a": np.array(["1.0", "2.0"])})
    with pytest.raises(TypeError, match="'a'"):
        ChiSquareDetector({"a": np.array([1.0, 2.0])})
    unhashable = np.empty(2, dtype=object)
    unhashable[:] = [[1], [2]]
    with pytest.raises(TypeError, match="'a'"):
        ChiSquareDetector({"a": unhashable})
