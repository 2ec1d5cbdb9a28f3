"""ChiSquareDetector: pooling of rare categories (``min_expected``).

The pooling rule, restated independently of detectors/chisquare.py: with row totals
R0, R1, grand total N and column totals C_j of the 2 x k table, column j is *rare* when
min(R0, R1) * C_j / N < min_expected. All rare columns go into one pooled column; while
that is itself rare, the kept column with the smallest total (ties: the first in table
order) is folded into it, but one kept column is always left. The kept columns (in table
order) and then the pooled column form the tested table. min_expected=0 tests the raw
table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from detectors import ChiSquareDetector

ALPHA = 0.05


def pooled_table(table: np.ndarray, min_expected: float) -> np.ndarray:
    """The table the detector should test: a plain loop over the rule in the docstring."""
    table = np.asarray(table, dtype=np.float64)
    if min_expected == 0:
        return table
    smallest_row, grand = table.sum(axis=1).min(), table.sum()
    totals = table.sum(axis=0)
    columns = list(range(table.shape[1]))
    rare = [j for j in columns if smallest_row * totals[j] / grand < min_expected]
    if not rare:
        return table
    kept = [j for j in columns if j not in rare]
    pool = table[:, rare].sum(axis=1)
    while len(kept) > 1 and smallest_row * pool.sum() / grand < min_expected:
        smallest = min(kept, key=lambda j: (totals[j], j))
        kept.remove(smallest)
        pool = pool + table[:, smallest]
    return np.column_stack([table[:, kept], pool])


def detector_table_order(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """The 2 x k table of two int columns, columns in the detector's order.

    Reference categories sorted, then the window's unseen ones sorted (the detector counts
    int columns with np.unique). The order matters only for ties in the folding.
    """
    seen = np.unique(ref)
    unseen = np.setdiff1d(np.unique(cur), seen)
    categories = np.concatenate([seen, unseen])
    return np.array(
        [[np.sum(ref == c) for c in categories], [np.sum(cur == c) for c in categories]]
    )


def expand(counts: np.ndarray) -> np.ndarray:
    """An int column with ``counts[c]`` copies of category ``c`` (shuffled order)."""
    return np.random.default_rng(0).permutation(np.repeat(np.arange(counts.size), counts))


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of a reference and a window over shared category codes, many shapes."""
    rng = np.random.default_rng(seed)
    scenario = seed % 5
    k = int(rng.integers(2, 40))
    n0, n1 = [(2000, 200), (200, 2000), (300, 300), (50, 5000), (5000, 60)][seed // 5 % 5]
    if scenario == 0:  # Zipf-like: a long tail of rare categories
        p = 1.0 / np.arange(1, k + 1) ** rng.uniform(0.5, 2.5)
        p /= p.sum()
        return rng.multinomial(n0, p), rng.multinomial(n1, p)
    if scenario == 1:  # categories seen only in the window, some rare, some frequent
        p = rng.dirichlet(np.ones(k))
        ref = rng.multinomial(n0, p)
        q = np.concatenate([p, rng.dirichlet(np.ones(3)) * rng.choice([0.001, 0.05, 0.3])])
        cur = rng.multinomial(n1, q / q.sum())
        return np.concatenate([ref, np.zeros(3, dtype=int)]), cur
    if scenario == 2:  # one dominant category
        p = np.concatenate([[0.97], rng.dirichlet(np.ones(k - 1)) * 0.03])
        return rng.multinomial(n0, p), rng.multinomial(n1, rng.permutation(p))
    if scenario == 3:  # ties: many columns with equal totals 2 b + 1 (splits that differ)
        base = rng.choice([1, 2, 3, 8, 20, 60], size=k)
        split = rng.integers(0, 2, size=k)
        return base + split, base + 1 - split
    # Tiny counts everywhere, including columns present on one side only.
    ref = rng.integers(0, 4, size=k)
    cur = rng.integers(0, 4, size=k)
    cur[(ref == 0) & (cur == 0)] = 1
    ref[0] += 1
    return ref, cur


@pytest.mark.parametrize("seed", range(120))
def test_parity_with_chi2_contingency_on_the_pooled_table(seed: int) -> None:
    ref_counts, cur_counts = random_case(seed)
    keep = (ref_counts + cur_counts) > 0
    ref, cur = expand(ref_counts * keep), expand(cur_counts * keep)
    table = detector_table_order(ref, cur)
    assert table.shape[1] >= 2 and (table.sum(axis=0) > 0).all()
    for min_expected in (5.0, 0.0, 1.0, 2.5, 10.0):
        feature = (
            ChiSquareDetector({"c": ref}, correction="none", min_expected=min_expected)
            .test({"c": cur})
            .features[0]
        )
        pooled = pooled_table(table, min_expected)
        assert feature.p_value is not None
        if pooled.shape[1] < 2:  # nothing left to pool into: the raw table's exact test
            raw = stats.chi2_contingency(table, correction=False)
            np.testing.assert_allclose(feature.statistic, raw.statistic, rtol=1e-9)
            if table.shape[1] == 2:
                want = stats.fisher_exact(table.astype(int)).pvalue
                np.testing.assert_allclose(feature.p_value, want, rtol=1e-9)
            assert 1 / 5000 <= feature.p_value <= 1  # Monte Carlo: test_chisquare_exact
            continue
        expected = stats.chi2_contingency(pooled, correction=False)
        np.testing.assert_allclose(feature.statistic, expected.statistic, rtol=1e-9, atol=1e-12)
        want = expected.pvalue
        if min_expected > 0 and pooled.shape[1] == 2 and expected.expected_freq.min() < 5:
            want = stats.fisher_exact(pooled.astype(int)).pvalue  # small 2 x 2: exact test
        np.testing.assert_allclose(feature.p_value, want, rtol=1e-9, atol=1e-300)
        if min_expected == 0:
            assert pooled.shape == table.shape
        # The rule's promise: every tested column meets min_expected, except the pool when
        # it is one of just two columns (or the only one).
        smallest = pooled.sum(axis=1).min() * pooled.sum(axis=0) / pooled.sum()
        if min_expected > 0 and pooled.shape[1] > 2:
            assert (smallest >= min_expected).all()


def test_the_cases_exercise_every_branch_of_the_rule() -> None:
    # Guards the parity test against testing only trivial tables.
    pooled_some = folded = stopped_at_two = all_rare = untouched = 0
    for seed in range(120):
        ref_counts, cur_counts = random_case(seed)
        keep = (ref_counts + cur_counts) > 0
        table = detector_table_order(expand(ref_counts * keep), expand(cur_counts * keep))
        pooled = pooled_table(table, 5.0)
        smallest_row, grand = table.sum(axis=1).min(), table.sum()
        n_rare = int(np.sum(smallest_row * table.sum(axis=0) / grand < 5.0))
        if n_rare == 0:
            untouched += 1
        elif pooled.shape[1] == 1:
            all_rare += 1
        else:
            pooled_some += 1
            folded += pooled.shape[1] < table.shape[1] - n_rare + 1
            stopped_at_two += (
                pooled.shape[1] == 2 and smallest_row * pooled[:, -1].sum() / grand < 5
            )
    assert min(untouched, pooled_some, folded, stopped_at_two, all_rare) >= 2, (
        untouched,
        pooled_some,
        folded,
        stopped_at_two,
        all_rare,
    )


def test_pooling_is_decided_from_the_margins_only() -> None:
    # Two windows with the same margins but different splits pool the same columns.
    ref = expand(np.array([500, 400, 3, 2, 95]))
    first = expand(np.array([50, 40, 1, 0, 9]))
    second = expand(np.array([50, 40, 0, 1, 9]))
    for cur in (first, second):
        table = detector_table_order(ref, cur)
        feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
        # Columns 2 and 3 are rare (100 * 4 / 1100 = 0.36); their pool (C = 6) too, so
        # column 4 (C = 104, the smallest kept) is folded in: 0 | 1 | 2+3+4.
        expected = stats.chi2_contingency(
            np.column_stack([table[:, :2], table[:, 2:].sum(axis=1)]), correction=False
        )
        assert feature.statistic == pytest.approx(expected.statistic, rel=1e-12)
        assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_ties_in_the_folding_go_to_the_first_column_in_table_order() -> None:
    # C = (200, 14, 14, 2), min(R) = 110, N = 232: column 3 is rare (0.95) and so is its
    # pool; columns 1 and 2 tie (6.6 each) and the first, column 1, is folded in.
    ref = expand(np.array([100, 10, 6, 2]))
    cur = expand(np.array([100, 4, 8, 0]))
    feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    first = stats.chi2_contingency(np.array([[100, 6, 12], [100, 8, 4]]), correction=False)
    other = stats.chi2_contingency(np.array([[100, 10, 8], [100, 4, 8]]), correction=False)
    assert abs(first.statistic - other.statistic) > 1
    assert feature.statistic == pytest.approx(first.statistic, rel=1e-12)


# --- calibration ------------------------------------------------------------------------------

TRIALS = 1000
# Rejection counts consistent (99%) with a true rate of ALPHA over TRIALS trials: [33, 69].
LOW, HIGH = stats.binom.ppf([0.005, 0.995], TRIALS, ALPHA)
LEVELS = 50
ZIPF = 1.0 / np.arange(1, LEVELS + 1) ** 2.0
ZIPF /= ZIPF.sum()


def zipf_rejections(min_expected: float) -> int:
    """Same-distribution trials (fresh reference of 2000, window of 200) flagged drifted."""
    rng = np.random.default_rng(20240611)
    refs = rng.choice(LEVELS, size=(TRIALS, 2000), p=ZIPF)
    windows = rng.choice(LEVELS, size=(TRIALS, 200), p=ZIPF)
    return sum(
        ChiSquareDetector({"c": ref}, alpha=ALPHA, correction="none", min_expected=min_expected)
        .test({"c": window})
        .drifted
        for ref, window in zip(refs, windows, strict=True)
    )


def test_pooled_rejection_rate_is_alpha_with_many_rare_categories() -> None:
    # Zipf(2) over 50 categories: 39 of them have expected window counts below 1.
    assert LOW <= zipf_rejections(5.0) <= HIGH  # measured: 51 / 1000


def test_unpooled_rejection_rate_is_inflated_with_many_rare_categories() -> None:
    # The same trials without pooling: the chi-square approximation fails, and the test
    # flags about 12% of same-distribution windows at alpha = 5%.
    assert zipf_rejections(0.0) > HIGH  # measured: 123 / 1000


def test_binary_feature_with_a_rare_level_stays_testable() -> None:
    # A 2 x 2 table is never pooled away: a rare level going from 1% to 10% is detected
    # (pooling it into the other level would leave nothing to test, p = 1).
    rng = np.random.default_rng(4)
    ref = (rng.random(2000) < 0.01).astype(int)
    cur = (rng.random(200) < 0.10).astype(int)
    table = detector_table_order(ref, cur)
    assert table.sum(axis=1).min() * table.sum(axis=0).min() / table.sum() < 5  # rare
    feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    expected = stats.chi2_contingency(table, correction=False)
    assert feature.drifted and feature.p_value is not None and feature.p_value < 1e-6
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-12)
    # small expected count in a 2 x 2 table: Fisher's exact p-value, not the chi-square one
    assert feature.p_value == pytest.approx(stats.fisher_exact(table).pvalue, rel=1e-12)


def test_window_too_small_for_any_category_gets_the_exact_test() -> None:
    # Window of 10 against 20: min(R) C_j / N < 5 for every column, nothing left to pool
    # into; the raw table is tested exactly (tests/detectors/test_chisquare_exact.py).
    ref = np.array([0] * 8 + [1] * 6 + [2] * 6)
    cur = np.array([0] * 3 + [1] * 2 + [2] * 5)
    feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    raw_table = np.array([[8, 6, 6], [3, 2, 5]])
    want = stats.chi2_contingency(raw_table, correction=False).statistic
    assert feature.statistic == pytest.approx(want)
    assert feature.p_value is not None and 0.2 < feature.p_value < 1 and not feature.drifted
    raw = ChiSquareDetector({"c": ref}, min_expected=0).test({"c": cur}).features[0]
    assert raw.statistic > 0 and raw.p_value is not None and raw.p_value < 1


# --- unseen categories --------------------------------------------------------------------------


def test_frequent_unseen_category_is_detected() -> None:
    rng = np.random.default_rng(11)
    levels = np.array(["a", "b", "c"])
    ref = rng.choice(levels, size=2000, p=[0.5, 0.3, 0.2])
    cur = np.concatenate([rng.choice(levels, size=140, p=[0.5, 0.3, 0.2]), ["new"] * 60])
    feature = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    # 200 * 60 / 2200 = 5.45 >= 5: "new" keeps a column of its own, no pooling at all.
    columns = [*levels, "new"]
    table = np.array([[np.sum(ref == c) for c in columns], [np.sum(cur == c) for c in columns]])
    expected = stats.chi2_contingency(table, correction=False)
    assert expected.dof == 3
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert feature.drifted and feature.p_value is not None and feature.p_value < 1e-50


def test_single_rare_unseen_value_does_not_cause_drift() -> None:
    rng = np.random.default_rng(12)
    levels = np.array(["a", "b", "c", "d"])
    p = [0.4, 0.3, 0.2, 0.1]
    ref = rng.choice(levels, size=20000, p=p).astype(object)
    cur = rng.choice(levels, size=1000, p=p).astype(object)
    cur[0] = "never-seen"
    pooled = ChiSquareDetector({"c": ref}).test({"c": cur}).features[0]
    assert not pooled.drifted and pooled.p_value is not None and pooled.p_value > 0.1
    # Without pooling the one value alone is an X^2 term of about (1 - 1000/21000)^2 /
    # (1000/21000) = 19 on one extra degree of freedom: a false alarm.
    raw = ChiSquareDetector({"c": ref}, min_expected=0).test({"c": cur}).features[0]
    assert raw.drifted and raw.statistic > pooled.statistic + 15


# --- parameter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1.0, -1e-12, math.nan, math.inf, -math.inf, np.float64("nan")])
def test_bad_min_expected_raises_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="min_expected"):
        ChiSquareDetector({"c": np.array([1, 2])}, min_expected=bad)


@pytest.mark.parametrize("bad", ["5", None, True, [5.0]])
def test_non_numeric_min_expected_raises_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="min_expected"):
        ChiSquareDetector({"c": np.array([1, 2])}, min_expected=bad)  # type: ignore[arg-type]


def test_min_expected_default_accepted_values_and_repr() -> None:
    ref = {"c": np.array([1, 2, 2])}
    assert ChiSquareDetector(ref).min_expected == 5.0
    assert ChiSquareDetector(ref, min_expected=0).min_expected == 0.0
    assert ChiSquareDetector(ref, min_expected=np.int64(3)).min_expected == 3.0
    assert isinstance(ChiSquareDetector(ref, min_expected=np.int64(3)).min_expected, float)
    assert "min_expected=2.5" in repr(ChiSquareDetector(ref, min_expected=2.5))
