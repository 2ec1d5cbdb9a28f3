"""ChiSquareDetector: parity with scipy.stats.chi2_contingency(correction=False).

The parity tests on raw tables disable the pooling of rare categories (``min_expected=0``);
the pooling rule itself is tested in test_chisquare_pooling.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from detectors import ChiSquareDetector

SIZES = [
    (1, 1),
    (1, 5),
    (2, 3),
    (3, 2),
    (10, 10),
    (10, 100),
    (100, 10),
    (100, 100),
    (1000, 1000),
    (1000, 50),
    (5000, 5000),
    (5000, 700),
]
KINDS = ["str", "int", "bool", "object", "bytes"]


def make_column(rng: np.random.Generator, n: int, kind: str, levels: int, side: int) -> np.ndarray:
    """``n`` draws; the current side (1) uses shifted weights and one extra, unseen level."""
    k = levels + side
    weights = rng.dirichlet(np.ones(k))
    codes = rng.choice(k, size=n, p=weights)
    if kind == "str":
        return np.array([f"level-{c}" for c in codes])
    if kind == "int":
        return codes * 7 - 3
    if kind == "bool":
        return codes % 2 == 0
    if kind == "bytes":
        return np.array([b"b%d" % c for c in codes])
    # Mixed, unorderable hashables: str, int, None and tuples.
    values = np.empty(n, dtype=object)
    values[:] = [
        (None if c == 0 else ("t", int(c)) if c % 3 == 1 else f"s{c}" if c % 3 else int(c))
        for c in codes
    ]
    return values


def scipy_chi2(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """The reference answer: build the 2 x k table by hand and ask scipy."""
    a, b = Counter(ref.tolist()), Counter(cur.tolist())
    categories = list(dict.fromkeys([*a, *b]))
    table = np.array([[a[c] for c in categories], [b[c] for c in categories]])
    result = stats.chi2_contingency(table, correction=False)
    return result.statistic, result.pvalue


@pytest.mark.parametrize("seed", range(50))
def test_parity_with_chi2_contingency_without_pooling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    kinds = [KINDS[(seed + i) % len(KINDS)] for i in range(3)]
    levels = [1, 2, 5, 12][seed % 4]
    ref = {f"{i}-{kind}": make_column(rng, n1, kind, levels, 0) for i, kind in enumerate(kinds)}
    cur = {f"{i}-{kind}": make_column(rng, n2, kind, levels, 1) for i, kind in enumerate(kinds)}
    result = ChiSquareDetector(ref, correction="none", min_expected=0).test(cur)
    for feature in result.features:
        statistic, p_value = scipy_chi2(ref[feature.feature], cur[feature.feature])
        np.testing.assert_allclose(feature.statistic, statistic, rtol=1e-9, atol=1e-12)
        assert feature.p_value is not None
        np.testing.assert_allclose(feature.p_value, p_value, rtol=1e-9, atol=1e-12)
        assert (feature.n_reference, feature.n_current) == (n1, n2)


def test_unseen_and_vanished_categories() -> None:
    ref = np.array(["a"] * 30 + ["b"] * 20 + ["gone"] * 5)
    cur = np.array(["a"] * 25 + ["b"] * 25 + ["new"] * 4, dtype=object)
    # Unpooled: union a, b, gone, new -> 4 columns, 3 degrees of freedom.
    raw = ChiSquareDetector({"c": ref}, min_expected=0).test({"c": cur}).features[0]
    table = np.array([[30, 20, 5, 0], [25, 25, 0, 4]])
    expected = stats.chi2_contingency(table, correction=False)
    assert expected.dof == 3 and raw.p_value is not None
    np.testing.assert_allclose(
        [raw.statistic, raw.p_value], [expected.statistic, expected.pvalue], rtol=1e-12, atol=0
    )
    # Pooled (default min_expected=5): R = (55, 54), N = 109, smallest expected count
    # 54 C_j / 109. "gone" (C = 5) and "new" (C = 4) are rare; their pool (C = 9, 4.46) is
    # still rare, so the smaller kept column, "b" (C = 45), is folded in: a | b+gone+new.
    pooled = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    expected = stats.chi2_contingency(np.array([[30, 25], [25, 29]]), correction=False)
    assert expected.dof == 1 and pooled.p_value is not None
    np.testing.assert_allclose(
        [pooled.statistic, pooled.p_value],
        [expected.statistic, expected.pvalue],
        rtol=1e-12,
        atol=0,
    )
    assert pooled.statistic < raw.statistic


def test_single_category_gives_zero_statistic_and_p_one() -> None:
    feature = (
        ChiSquareDetector({"c": np.array(["a"] * 10)}).test({"c": np.array(["a"] * 3)}).features[0]
    )
    assert (feature.statistic, feature.p_value, feature.drifted) == (0.0, 1.0, False)


def test_disjoint_constant_columns_drift() -> None:
    feature = (
        ChiSquareDetector({"c": np.array(["a"] * 100)})
        .test({"c": np.array(["b"] * 100)})
        .features[0]
    )
    assert feature.statistic == pytest.approx(200.0) and feature.drifted


def test_str_and_object_columns_share_categories() -> None:
    ref = np.array(["x", "y", "y", "z"] * 25)
    detector = ChiSquareDetector({"c": ref})
    as_str = detector.test({"c": ref[::-1].copy()})
    as_object = detector.test({"c": ref[::-1].astype(object)})
    assert as_str == as_object
    assert as_str.features[0].statistic == 0.0
