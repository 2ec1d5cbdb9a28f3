"""KLDetector and JSDetector: against hand-written numpy and scipy's jensenshannon."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from detectors import JSDetector, KLDetector

SIZES = [(1, 1), (2, 7), (5, 3), (30, 30), (100, 1000), (1000, 100), (2000, 2000)]


def draw(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """``side`` 0 is the reference, 1 the current window."""
    if flavour == "normal":
        return rng.normal(0.4 * side, size=n)
    if flavour == "ties":
        return np.round(rng.normal(size=n), 1)
    if flavour == "integers":
        return rng.integers(-2, 3 + side, size=n)
    if flavour == "constant":
        return np.full(n, 7.0 + side * (n % 2))
    if flavour == "wide":
        return rng.standard_cauchy(size=n)
    if flavour == "str":
        levels = np.array(["a", "b", "c", "d", "new"][: 4 + side])
        return rng.choice(levels, size=n, p=rng.dirichlet(np.ones(levels.size)))
    values = np.empty(n, dtype=object)  # "object": unorderable hashables
    values[:] = [(None, 1, "x", ("t", 2), 3.5)[k] for k in rng.integers(0, 3 + 2 * side, n)]
    return values


FLAVOURS = ["normal", "ties", "integers", "constant", "wide", "str", "object"]


def numpy_counts(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented binning, written independently: quantiles as the first ECDF value
    reaching each level (exact integer comparison), np.digitize for the bins."""
    if ref.dtype.kind in "iuf":
        ordered = np.sort(ref.astype(np.float64))
        n = ordered.size
        ecdf = np.searchsorted(ordered, ordered, side="right")
        # smallest x with F(x) >= j / bins
        levels = [ordered[np.argmax(ecdf * bins >= j * n)] for j in range(1, bins)]
        edges = np.unique(levels)
        if edges[0] == ordered[0]:
            edges = np.r_[np.nextafter(ordered[0], -np.inf), edges]
        # right=True: edges[i-1] < x <= edges[i] -> i
        index_r = np.digitize(ref.astype(np.float64), edges, right=True)
        index_c = np.digitize(cur.astype(np.float64), edges, right=True)
        size = edges.size + 1
        return np.bincount(index_r, minlength=size), np.bincount(index_c, minlength=size)
    ref_list, cur_list = ref.tolist(), cur.tolist()
    categories = list(dict.fromkeys(ref_list + cur_list))
    return (
        np.array([ref_list.count(c) for c in categories]),
        np.array([cur_list.count(c) for c in categories]),
    )


def numpy_kl(ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    def smooth(counts: np.ndarray) -> np.ndarray:
        p = np.where(counts > 0, counts / counts.sum(), epsilon)
        return p / p.sum()

    r, c = smooth(ref_counts), smooth(cur_counts)
    return max(float(np.sum(c * np.log(c / r))), 0.0)


@pytest.mark.parametrize("seed", range(35))
def test_kl_and_js_match_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    bins = [10, 3, 7, 25, 2][seed % 5]
    flavours = [FLAVOURS[(seed + i) % len(FLAVOURS)] for i in range(3)]
    ref = {f"{i}-{fl}": draw(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"{i}-{fl}": draw(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    kl = KLDetector(ref, bins=bins, n_resamples=0).test(cur)  # the threshold alone
    js = JSDetector(ref, bins=bins, n_resamples=0).test(cur)
    for k, j in zip(kl.features, js.features, strict=True):
        ref_counts, cur_counts = numpy_counts(ref[k.feature], cur[k.feature], bins)
        np.testing.assert_allclose(
            k.statistic, numpy_kl(ref_counts, cur_counts), rtol=1e-9, atol=1e-12
        )
        expected = jensenshannon(ref_counts, cur_counts, base=2)
        np.testing.assert_allclose(j.statistic, expected, rtol=1e-9, atol=1e-12)
        assert 0.0 <= j.statistic <= 1.0 and k.statistic >= 0.0
        assert k.p_value is None and j.p_value is None
        assert k.drifted == (k.statistic > 0.1) and j.drifted == (j.statistic > 0.1)
    assert (kl.detector, js.detector, kl.correction, js.correction) == ("kl", "js", "none", "none")


def test_known_values() -> None:
    ref = np.array(["a"] * 50 + ["b"] * 50)
    cur = np.array(["a"] * 25 + ["b"] * 75)
    kl = KLDetector({"c": ref}).test({"c": cur}).features[0].statistic
    assert kl == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    js = JSDetector({"c": ref}).test({"c": cur}).features[0].statistic
    m = np.array([0.375, 0.625])
    divergence = 0.5 * np.sum([0.5, 0.5] * np.log2([0.5, 0.5] / m)) + 0.5 * np.sum(
        [0.25, 0.75] * np.log2([0.25, 0.75] / m)
    )
    assert js == pytest.approx(math.sqrt(divergence), rel=1e-12)


def test_js_is_one_for_disjoint_supports_and_zero_for_equal() -> None:
    detector = JSDetector({"c": np.array(["a", "b"] * 10), "x": np.full(20, 1.0)})
    disjoint = detector.test({"c": np.array(["z"] * 5), "x": np.full(5, 100.0)})
    assert [f.statistic for f in disjoint.features] == [1.0, 1.0] and disjoint.drifted
    same = detector.test({"c": np.array(["b", "a"] * 3), "x": np.ones(7)})
    assert [f.statistic for f in same.features] == [0.0, 0.0] and not same.drifted


def test_js_is_symmetric_over_shared_categories() -> None:
    a = np.array(["x"] * 30 + ["y"] * 10 + ["z"] * 5)
    b = np.array(["x"] * 5 + ["y"] * 20 + ["z"] * 20)
    forward = JSDetector({"c": a}).test({"c": b}).features[0].statistic
    backward = JSDetector({"c": b}).test({"c": a}).features[0].statistic
    assert forward == pytest.approx(backward, rel=1e-12)


def test_kl_is_asymmetric_and_weighs_new_mass() -> None:
    ref = np.array(["a"] * 99 + ["b"])
    cur = np.array(["a"] * 50 + ["b"] * 50)
    forward = KLDetector({"c": ref}).test({"c": cur}).features[0].statistic
    backward = KLDetector({"c": cur}).test({"c": ref}).features[0].statistic
    assert forward > backward > 0


def test_kl_epsilon() -> None:
    ref, cur = np.array(["a"] * 100), np.array(["a"] * 90 + ["b"] * 10)
    for epsilon in (1e-6, 1e-4, 1e-2):
        got = KLDetector({"c": ref}, epsilon=epsilon).test({"c": cur}).features[0].statistic
        assert got == pytest.approx(numpy_kl(np.array([100, 0]), np.array([90, 10]), epsilon))
    with pytest.raises(ValueError, match="epsilon"):
        KLDetector({"c": ref}, epsilon=0)
    with pytest.raises(TypeError, match="epsilon"):
        JSDetector({"c": ref}, epsilon=1e-4)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", [KLDetector, JSDetector])
def test_thresholds_and_parameters(cls) -> None:
    ref = {"x": np.arange(100.0)}
    assert cls(ref).threshold == 0.1
    shifted = {"x": np.arange(100.0) + 30}
    statistic = cls(ref).test(shifted).statistic
    assert cls(ref, threshold=statistic).test(shifted).drifted is False
    assert cls(ref, threshold=statistic * 0.999).test(shifted).drifted is True
    for bad, error in (({"threshold": -1}, ValueError), ({"bins": 0}, ValueError)):
        with pytest.raises(error, match=next(iter(bad))):
            cls(ref, **bad)
    with pytest.raises(ValueError, match="feature_type"):
        cls(ref, feature_type="ordinal")
