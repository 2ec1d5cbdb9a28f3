"""One conformance suite for every detector kind in registry.KINDS and feature type.

Every (kind, feature type) pair must: keep its false-alarm rate (p-value tests: at
alpha; distances: the default threshold is rarely exceeded on large samples), detect a
clear shift, be deterministic, leave its inputs alone, reject bad input with an error
that names the culprit, and report an empty window as insufficient data.

The calibration runs many independent trials in one detector, one feature per trial,
with ``correction="none"``: a trial drifts when its feature does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detectors import KINDS, DriftResult, InsufficientDataError, build

CASES = [
    (kind, feature_type)
    for kind, info in sorted(KINDS.items())
    for feature_type in sorted(info.feature_types)
]
IDS = [f"{kind}-{feature_type}" for kind, feature_type in CASES]

ALPHA = 0.05
TRIALS = 1000  # p-value tests: rejections must lie in the 99% binomial interval
LOW, HIGH = stats.binom.interval(0.99, TRIALS, ALPHA)
NULL_N = 500  # KS's exact null is discrete: its attainable size is 0.0495 at n = 500
DISTANCE_TRIALS = 100
DISTANCE_N = 2000
LEVELS = np.array(["a", "b", "c", "d"])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])


def draw(rng: np.random.Generator, feature_type: str, n: int, shifted: bool = False):
    if feature_type == "numeric":
        return rng.normal(1.0 if shifted else 0.0, size=n)
    return rng.choice(LEVELS, size=n, p=WEIGHTS[::-1] if shifted else WEIGHTS)


def sample(seed: int, feature_type: str, n: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: draw(rng, feature_type, n) for name in ("a", "b", "c")}


def make(kind: str, feature_type: str, reference, **params):
    if KINDS[kind].has_p_value:
        params.setdefault("alpha", ALPHA)
    return build(kind, reference, feature_type=feature_type, **params)


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
def test_no_drift_under_the_null(kind: str, feature_type: str) -> None:
    rng = np.random.default_rng(2024)
    if KINDS[kind].has_p_value:
        trials, n, params = TRIALS, NULL_N, {"correction": "none"}
    else:
        trials, n, params = DISTANCE_TRIALS, DISTANCE_N, {}
    ref = {f"t{i}": draw(rng, feature_type, n) for i in range(trials)}
    cur = {f"t{i}": draw(rng, feature_type, n) for i in range(trials)}
    result = make(kind, feature_type, ref, **params).test(cur)
    flagged = sum(f.drifted for f in result.features)
    if KINDS[kind].has_p_value:
        assert LOW <= flagged <= HIGH, (flagged, LOW, HIGH)
        p = np.array([f.p_value for f in result.features])
        assert np.all((p >= 0) & (p <= 1))
    else:
        assert flagged <= 0.05 * trials, flagged
        assert np.all(np.array([f.statistic for f in result.features]) >= 0)


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
def test_shift_is_detected(kind: str, feature_type: str) -> None:
    rng = np.random.default_rng(7)
    ref = {"same": draw(rng, feature_type, 2000), "moved": draw(rng, feature_type, 2000)}
    cur = {
        "same": draw(rng, feature_type, 2000),
        "moved": draw(rng, feature_type, 2000, shifted=True),
    }
    result = make(kind, feature_type, ref).test(cur)
    by_name = {f.feature: f for f in result.features}
    assert result.drifted and by_name["moved"].drifted and not by_name["same"].drifted
    assert result.statistic == by_name["moved"].statistic
    if KINDS[kind].has_p_value:
        # < 0.01, not smaller: Anderson-Darling floors its p-values at 0.001 (x 2 features)
        assert result.p_value is not None and result.p_value < 0.01
        assert result.p_value == by_name["moved"].adjusted_p_value


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
def test_result_shape(kind: str, feature_type: str) -> None:
    data = sample(1, feature_type)
    result = make(kind, feature_type, data).test(sample(2, feature_type))
    info = KINDS[kind]
    assert isinstance(result, DriftResult) and result.detector == kind
    assert [f.feature for f in result.features] == ["a", "b", "c"]
    assert not result.insufficient_data and (result.n_reference, result.n_current) == (300, 300)
    assert result.statistic == max(f.statistic for f in result.features)
    assert result.drifted == any(f.drifted for f in result.features)
    if info.has_p_value:
        assert result.threshold == ALPHA and result.correction == "bonferroni"
        adjusted = [f.adjusted_p_value for f in result.features]
        present = [p for p in adjusted if p is not None]
        assert len(present) == 3 and result.p_value == min(present)
        assert all(f.drifted == (p < ALPHA) for f, p in zip(result.features, present, strict=True))
    else:
        # distances are calibrated to the window size (detectors._base.PerFeatureDistance):
        # a feature drifts above both the threshold and its resampled null quantile
        assert result.correction == "max-t" and result.p_value is not None
        assert all(f.null_quantile is not None and f.drifted == (
            f.statistic > max(result.threshold, f.null_quantile)) for f in result.features)


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
def test_deterministic_and_inputs_not_mutated(kind: str, feature_type: str) -> None:
    reference, current = sample(3, feature_type), sample(4, feature_type)
    reference_before = {k: v.copy() for k, v in reference.items()}
    current_before = {k: v.copy() for k, v in current.items()}
    for arrays in (reference, current):  # a write to an input would raise
        for values in arrays.values():
            values.setflags(write=False)
    detector = make(kind, feature_type, reference)
    first, second = detector.test(current), detector.test(current)
    assert first == second == make(kind, feature_type, reference_before).test(current_before)
    # order within the window does not matter; extra keys are ignored
    shuffled = {k: v[::-1] for k, v in current.items()}
    assert detector.test({**shuffled, "extra": np.array([1.0])}) == first
    for before, after in ((reference_before, reference), (current_before, current)):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
def test_bad_input_is_rejected_with_the_culprit_named(kind: str, feature_type: str) -> None:
    data = sample(5, feature_type)
    detector = make(kind, feature_type, data)
    two_d = {**data, "b": np.stack([data["b"], data["b"]])}
    with pytest.raises(ValueError, match="'b'"):
        make(kind, feature_type, two_d)
    with pytest.raises(ValueError, match="'b'"):
        detector.test(two_d)
    # NaN: rejected by value for numeric features, by dtype (float) for categorical ones
    dirty = np.array([0.5, np.nan, 1.5])
    with pytest.raises((ValueError, TypeError), match="'c'"):
        make(kind, feature_type, {**data, "c": dirty})
    with pytest.raises((ValueError, TypeError), match="'c'"):
        detector.test({**data, "c": dirty})
    with pytest.raises(KeyError, match="'a'"):
        detector.test({"b": data["b"], "c": data["c"]})
    with pytest.raises(TypeError, match="current"):
        detector.test(list(data.values()))
    with pytest.raises(TypeError, match="reference"):
        make(kind, feature_type, list(data.values()))
    with pytest.raises(ValueError, match="reference"):
        make(kind, feature_type, {})
    with pytest.raises(InsufficientDataError, match="'a'"):
        make(kind, feature_type, {**data, "a": data["a"][:0]})
    with pytest.raises(TypeError, match="str"):
        make(kind, feature_type, {1: data["a"]})


@pytest.mark.parametrize(("kind", "feature_type"), CASES, ids=IDS)
@pytest.mark.parametrize("emptied", ["a", "c"])
def test_empty_window_is_insufficient_data(kind: str, feature_type: str, emptied: str) -> None:
    data = sample(6, feature_type)
    result = make(kind, feature_type, data).test({**data, emptied: data[emptied][:0]})
    assert result.insufficient_data and not result.drifted and result.p_value is None
    assert math.isnan(result.statistic)
    assert all(
        math.isnan(f.statistic) and f.p_value is None and f.adjusted_p_value is None
        for f in result.features
    )
    assert not any(f.drifted for f in result.features)
    assert {f.feature: f.n_current for f in result.features}[emptied] == 0
