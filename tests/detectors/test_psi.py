"""PSIDetector: against a hand-written PSI, binning rules, parameters."""

from __future__ import annotations

import bisect
import math
from collections import Counter

import numpy as np
import pytest

from detectors import PSIDetector
from detectors._binning import quantile_edges

SIZES = [(1, 1), (1, 5), (3, 2), (7, 7), (10, 100), (100, 10), (1000, 1000), (5000, 700)]
NUMERIC_FLAVOURS = [
    "normal",
    "shifted",
    "ties",
    "integers",
    "equal-constant",
    "different-constant",
    "heavy-tail",
    "wider",
]


def numeric_column(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """``side`` 0 is the reference, 1 the current window."""
    if flavour == "normal":
        return rng.normal(size=n)
    if flavour == "shifted":
        return rng.normal(0.5 * side, size=n)
    if flavour == "ties":
        return np.round(rng.normal(size=n), 1)
    if flavour == "integers":
        return rng.integers(0, 5 + 2 * side, size=n)  # the window also has values above
    if flavour == "equal-constant":
        return np.full(n, 3.25)
    if flavour == "different-constant":
        return np.full(n, 3.25 + side)
    if flavour == "heavy-tail":
        return rng.standard_cauchy(size=n) * 1e6
    return rng.normal(scale=1 + 2 * side, size=n)  # beyond the reference's range both ways


def categorical_column(rng: np.random.Generator, n: int, kind: str, side: int) -> np.ndarray:
    """Four levels; the window's weights differ and it has a fifth, unseen level."""
    k = 4 + side
    codes = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k)))
    if kind == "str":
        return np.array([f"level-{c}" for c in codes])
    if kind == "int":
        return codes * 3 - 1
    if kind == "bool":
        return codes % 2 == 0
    values = np.empty(n, dtype=object)
    values[:] = [None if c == 0 else ("t", int(c)) if c % 2 else f"s{c}" for c in codes]
    return values


def hand_edges(ref: list[float], bins: int) -> list[float]:
    """The documented edges, by brute force: smallest x with F(x) >= j / bins."""
    ordered = sorted(ref)
    n = len(ordered)
    edges = []
    for j in range(1, bins):
        x = next(v for v in ordered if bisect.bisect_right(ordered, v) * bins >= j * n)
        if x not in edges:
            edges.append(x)
    if edges[0] == ordered[0]:
        edges.insert(0, math.nextafter(ordered[0], -math.inf))
    return edges


def hand_counts(ref: np.ndarray, cur: np.ndarray, numeric: bool, bins: int) -> tuple:
    """Reference and current counts over the documented bins, one value at a time."""
    if numeric:
        edges = hand_edges([float(v) for v in ref], bins)
        slots = len(edges) + 1
        # bisect_left: (e_{i-1}, e_i] is bin i
        r = Counter(bisect.bisect_left(edges, float(v)) for v in ref)
        c = Counter(bisect.bisect_left(edges, float(v)) for v in cur)
        return [r[i] for i in range(slots)], [c[i] for i in range(slots)]
    r, c = Counter(ref.tolist()), Counter(cur.tolist())
    categories = list(r) + [k for k in c if k not in r]
    return [r[k] for k in categories], [c[k] for k in categories]


def hand_psi(ref_counts: list[int], cur_counts: list[int], epsilon: float = 1e-4) -> float:
    def proportions(counts: list[int]) -> np.ndarray:
        p = np.array([x / sum(counts) if x else epsilon for x in counts])
        return p / p.sum()

    r, c = proportions(ref_counts), proportions(cur_counts)
    return float(sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True)))


@pytest.mark.parametrize("seed", range(40))
def test_matches_hand_written_psi(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    bins = [10, 2, 5, 20][seed % 4]
    flavours = [NUMERIC_FLAVOURS[(seed + i) % len(NUMERIC_FLAVOURS)] for i in range(2)]
    kind = ["str", "int", "bool", "object"][seed % 4]
    ref = {f"n{i}-{fl}": numeric_column(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"n{i}-{fl}": numeric_column(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    ref["cat"], cur["cat"] = (
        categorical_column(rng, n1, kind, 0),
        categorical_column(rng, n2, kind, 1),
    )
    # integer columns are numeric unless declared; declare none: "cat" int is then numeric
    detector = PSIDetector(ref, bins=bins, n_resamples=0)  # the threshold alone
    result = detector.test(cur)
    assert result.p_value is None and result.correction == "none" and result.threshold == 0.2
    for feature in result.features:
        numeric = detector.feature_types[feature.feature] == "numeric"
        assert numeric == (ref[feature.feature].dtype.kind in "iuf")
        expected = hand_psi(*hand_counts(ref[feature.feature], cur[feature.feature], numeric, bins))
        np.testing.assert_allclose(feature.statistic, expected, rtol=1e-9, atol=1e-12)
        assert feature.p_value is None and feature.adjusted_p_value is None
        assert feature.drifted == (feature.statistic > 0.2)
        assert (feature.n_reference, feature.n_current) == (n1, n2)
    assert result.statistic == max(f.statistic for f in result.features)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 11, 99, 1000, 1001])
@pytest.mark.parametrize("bins", [2, 3, 10, 100])
def test_quantile_edges_are_exact(n: int, bins: int) -> None:
    # numpy's quantile(method="inverted_cdf") rounds j / bins * n and is off by one
    # now and then (e.g. n=10, j=3); the edges are exact.
    values = np.arange(n, dtype=np.float64) * 0.5 + 1.0
    assert quantile_edges(values, bins).tolist() == hand_edges(values.tolist(), bins)


def test_deciles_hold_a_tenth_each() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=1000)
    detector = PSIDetector({"x": ref})
    assert detector._bins["x"].reference_counts.tolist() == [100.0] * 10
    assert detector.test({"x": ref[::-1].copy()}).features[0].statistic == 0.0


def test_known_value_and_threshold_is_strict() -> None:
    ref = np.array(["a"] * 50 + ["b"] * 50)
    cur = np.array(["a"] * 25 + ["b"] * 75)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    feature = PSIDetector({"c": ref}).test({"c": cur}).features[0]
    assert feature.statistic == pytest.approx(expected, rel=1e-12) and feature.drifted
    at = PSIDetector({"c": ref}, threshold=feature.statistic).test({"c": cur})
    assert not at.drifted and not at.features[0].drifted


def test_constant_reference_gets_bins_below_and_above() -> None:
    detector = PSIDetector({"x": np.full(100, 2.0)})
    same, below, above = (detector.test({"x": np.full(50, v)}) for v in (2.0, 1.0, 3.0))
    assert same.features[0].statistic == 0.0 and not same.drifted
    assert below.drifted and above.drifted
    assert below.features[0].statistic == pytest.approx(above.features[0].statistic)


def test_atom_at_minimum_is_not_pooled_with_lower_values() -> None:
    # 0 holds half the reference. Were values below the minimum binned with it, a window
    # of -1s would score exactly like a window of 0s.
    detector = PSIDetector({"x": np.array([0] * 50 + list(range(1, 51)))})
    zeros = detector.test({"x": np.zeros(50)}).features[0].statistic
    negatives = detector.test({"x": np.full(50, -1.0)}).features[0].statistic
    assert negatives > zeros + 1.0


def test_unseen_categories_get_their_own_bin() -> None:
    ref = np.array(["a"] * 60 + ["b"] * 40)
    cur = np.array(["a"] * 59 + ["b"] * 40 + ["new"])
    feature = PSIDetector({"c": ref}).test({"c": cur}).features[0]
    assert feature.statistic == pytest.approx(hand_psi([60, 40, 0], [59, 40, 1]), rel=1e-12)
    assert 0.0 < feature.statistic < 0.2


def test_epsilon_controls_empty_bins() -> None:
    ref, cur = np.array(["a"] * 100), np.array(["a"] * 90 + ["b"] * 10)
    small = PSIDetector({"c": ref}, epsilon=1e-6).test({"c": cur}).features[0].statistic
    large = PSIDetector({"c": ref}, epsilon=1e-2).test({"c": cur}).features[0].statistic
    assert small == pytest.approx(hand_psi([100, 0], [90, 10], 1e-6), rel=1e-12)
    assert large == pytest.approx(hand_psi([100, 0], [90, 10], 1e-2), rel=1e-12)
    assert small > large


def test_feature_type_and_dtypes() -> None:
    codes = np.array([1, 2, 3, 1, 2, 3, 7])
    assert PSIDetector({"c": codes}).feature_types == {"c": "numeric"}
    assert PSIDetector({"c": codes}, feature_type="categorical").feature_types == {
        "c": "categorical"
    }
    assert PSIDetector({"c": codes > 2}).feature_types == {"c": "categorical"}
    with pytest.raises(TypeError, match="'c'"):
        PSIDetector({"c": codes * 0.5}, feature_type="categorical")
    with pytest.raises(TypeError, match="'c'"):
        PSIDetector({"c": np.array(["x", "y"])}, feature_type="numeric")
    numeric = PSIDetector({"c": codes})
    with pytest.raises(TypeError, match="'c'"):
        numeric.test({"c": np.array(["1", "2"])})
    categorical = PSIDetector({"c": np.array(["x", "y"])})
    with pytest.raises(TypeError, match="'c'"):
        categorical.test({"c": np.array([1.0, 2.0])})
    # int categories match int values of another width, and ints in object arrays
    detector = PSIDetector({"c": codes}, feature_type="categorical")
    as_object = codes.astype(object)
    assert detector.test({"c": codes.astype(np.int8)}) == detector.test({"c": as_object})


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"threshold": -0.1}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": float("inf")}, ValueError, "threshold"),
        ({"threshold": "0.2"}, TypeError, "threshold"),
        ({"threshold": True}, TypeError, "threshold"),
        ({"bins": 1}, ValueError, "bins"),
        ({"bins": 2.5}, TypeError, "bins"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"epsilon": 1.0}, ValueError, "epsilon"),
        ({"epsilon": "small"}, TypeError, "epsilon"),
        ({"feature_type": "text"}, ValueError, "feature_type"),
        ({"min_samples": 0}, ValueError, "min_samples"),
        ({"min_samples": 1.5}, TypeError, "min_samples"),
        ({"alpha": 1.5}, ValueError, "alpha"),  # alpha: the calibration level
    ],
)
def test_bad_parameters(params: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PSIDetector({"x": np.arange(10.0)}, **params)


def test_zero_threshold_flags_any_difference() -> None:
    detector = PSIDetector({"x": np.arange(100.0)}, threshold=0, n_resamples=0)  # uncalibrated
    assert not detector.test({"x": np.arange(100.0)}).drifted
    assert detector.test({"x": np.arange(100.0) + 0.5}).drifted
