"""CramerVonMisesDetector and AndersonDarlingDetector: parity with scipy where scipy is right.

Without ties both equal scipy (statistic and p-value). With ties scipy is wrong: its CvM
statistic mixes pooled midranks with within-sample ranks (two identical constant columns
of 500 and 200 rows get p = 2e-8), and both its CvM and AD p-values assume continuous
data (AD rejects 8-15% of unshifted integer windows at 5%). So on tied data the detectors
compute the tie-aware statistic (CvM: Anderson's, from the ECDFs at the distinct values;
AD: scipy's midrank statistic, which is right) with a permutation p-value; these tests
check the statistics against direct formulas and leave the p-values' validity to
``test_calibration.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors import AndersonDarlingDetector, CramerVonMisesDetector
from detectors import cvm as cvm_module

# Up to (20, 5) the exact CvM null distribution is used, the asymptotic one from (20, 21).
SIZES = [
    (2, 2),
    (2, 3),
    (3, 2),
    (5, 9),
    (20, 5),
    (20, 21),
    (21, 3),
    (37, 91),
    (100, 100),
    (1000, 100),
    (100, 1000),
    (5000, 2000),
]
FLAVOURS = [
    "normal",
    "shifted",
    "ties",
    "integers",
    "equal-constant",
    "different-constant",
    "heavy-tail",
    "far-apart",
]


def make_column(rng: np.random.Generator, n: int, flavour: str, side: int) -> np.ndarray:
    """``side`` 0 is the reference, 1 the current window."""
    if flavour == "normal":
        return rng.normal(size=n)
    if flavour == "shifted":
        return rng.normal(0.4 * side, size=n)
    if flavour == "ties":
        return np.round(rng.normal(size=n), 1)
    if flavour == "integers":
        return rng.integers(0, 4, size=n)
    if flavour == "equal-constant":
        return np.full(n, 3.25)
    if flavour == "different-constant":
        return np.full(n, 3.25 + side)
    if flavour == "heavy-tail":
        return rng.standard_cauchy(size=n) * 1e6
    return rng.normal(10.0 * side, size=n)  # tiny p-values: AD floors at 0.001


def scipy_cvm(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    result = stats.cramervonmises_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def scipy_anderson(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float] | None:
    """anderson_ksamp's statistic and p-value; None where it raises (one distinct value)."""
    if np.unique(np.concatenate([ref, cur])).size < 2:
        return None
    with warnings.catch_warnings():
        # "p-value capped: true value larger than 0.25" / "floored: ... smaller than 0.001"
        warnings.filterwarnings("ignore", message="p-value (capped|floored)", category=UserWarning)
        result = stats.anderson_ksamp([ref, cur], variant="midrank")
    return float(result.statistic), float(result.pvalue)


def has_ties(x: np.ndarray, y: np.ndarray) -> bool:
    pooled = np.concatenate([x, y])
    return np.unique(pooled).size < pooled.size


def tie_aware_cvm(x: np.ndarray, y: np.ndarray) -> float:
    """Anderson (1962): n m / N**2 * sum over the pooled values of (F_x - F_y)**2."""
    pooled = np.concatenate([x, y])
    f = np.searchsorted(np.sort(x), pooled, side="right") / x.size
    g = np.searchsorted(np.sort(y), pooled, side="right") / y.size
    n, m = x.size, y.size
    return float(n * m / (n + m) ** 2 * np.sum((f - g) ** 2))


def assert_close(got: tuple[float, float | None], want: tuple[float, float] | None) -> None:
    assert got[1] is not None and want is not None
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(48))
def test_parity_with_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n1, n2 = SIZES[seed % len(SIZES)]
    # Several flavours per detector, so the vectorised p-value paths see mixed features.
    flavours = [FLAVOURS[(seed + i) % len(FLAVOURS)] for i in range(3)]
    ref = {f"{i}-{fl}": make_column(rng, n1, fl, 0) for i, fl in enumerate(flavours)}
    cur = {f"{i}-{fl}": make_column(rng, n2, fl, 1) for i, fl in enumerate(flavours)}
    cvm = CramerVonMisesDetector(ref, correction="none").test(cur)
    ad = AndersonDarlingDetector(ref, correction="none").test(cur)
    for c, a in zip(cvm.features, ad.features, strict=True):
        x, y = ref[c.feature], cur[c.feature]
        want = scipy_anderson(x, y)
        if has_ties(x, y):  # scipy is wrong here: see the module docstring
            assert c.statistic == pytest.approx(tie_aware_cvm(x, y), rel=1e-9, abs=1e-12)
            assert 0 < c.p_value <= 1 and 0 < a.p_value <= 1
            if want is not None:
                assert a.statistic == pytest.approx(want[0], rel=1e-9, abs=1e-12)
            continue
        assert_close((c.statistic, c.p_value), scipy_cvm(x, y))
        if want is not None:
            assert_close((a.statistic, a.p_value), want)
        assert (c.n_reference, c.n_current, a.n_reference, a.n_current) == (n1, n2, n1, n2)


# database=None: keep failing examples out of a .hypothesis/ folder in the working tree
@settings(max_examples=60, deadline=None, database=None)
@given(
    ref=st.lists(st.integers(-3, 3), min_size=2, max_size=45),
    cur=st.lists(st.integers(-3, 3), min_size=2, max_size=45),
    scale=st.sampled_from([1.0, 0.1, 1e-300, 1e300]),
)
def test_parity_property_small_samples_with_ties(
    ref: list[int], cur: list[int], scale: float
) -> None:
    # Integers always tie here: the statistics are checked (AD's against scipy, which
    # computes the midrank statistic right; CvM's against Anderson's formula), the
    # p-values are permutation ones (scipy's assume continuous data).
    x, y = np.array(ref) * scale, np.array(cur) * scale
    c = CramerVonMisesDetector({"x": x}).test({"x": y}).features[0]
    assert c.statistic == pytest.approx(tie_aware_cvm(x, y), rel=1e-9, abs=1e-12)
    assert c.p_value is not None and 0 < c.p_value <= 1
    a = AndersonDarlingDetector({"x": x}).test({"x": y}).features[0]
    want = scipy_anderson(x, y)
    if want is not None:
        assert a.statistic == pytest.approx(want[0], rel=1e-9, abs=1e-12)
    assert a.p_value is not None and 0 < a.p_value <= 1


def test_anderson_p_value_is_capped_and_floored_like_scipy() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=300)
    detector = AndersonDarlingDetector({"x": ref}, correction="none")
    # ref + 1e-9: the same sample without ties (tied samples get permutation p-values)
    same = detector.test({"x": ref + 1e-9}).features[0]
    far = detector.test({"x": ref + 5}).features[0]
    assert same.p_value == 0.25 and far.p_value == 0.001
    for feature, x in ((same, ref + 1e-9), (far, ref + 5)):
        assert_close((feature.statistic, feature.p_value), scipy_anderson(ref, x))
    # the detector never warns (pytest turns warnings into errors here anyway)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector.test({"x": ref + 5})


def test_anderson_single_distinct_value() -> None:
    # scipy raises; the detector reports "no difference": A2akN = 0, and p = 1 (every
    # permutation of a constant sample is the same sample)
    feature = (
        AndersonDarlingDetector({"x": np.full(6, 1.5)}).test({"x": np.full(4, 1.5)}).features[0]
    )
    sigma = np.sqrt(cvm_module._ad_variance(6, 4))
    assert feature.statistic == pytest.approx(-1 / sigma) and feature.p_value == 1.0
    assert not feature.drifted
    with pytest.raises(ValueError, match="distinct"):
        stats.anderson_ksamp([np.full(6, 1.5), np.full(4, 1.5)], variant="midrank")


def test_anderson_variance_matches_scipy_for_identical_samples() -> None:
    # For identical samples A2akN = 0, so scipy's statistic is -1 / sigma_N.
    for n in (2, 3, 10, 1000):
        x = np.arange(float(n))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="p-value capped", category=UserWarning)
            statistic = stats.anderson_ksamp([x, x], variant="midrank").statistic
        assert -1 / np.sqrt(cvm_module._ad_variance(n, n)) == pytest.approx(statistic, rel=1e-12)


def test_cvm_exact_and_asymptotic_switch_at_scipys_threshold() -> None:
    rng = np.random.default_rng(2)
    for n1, n2, method in ((20, 20, "exact"), (21, 20, "asymptotic"), (20, 21, "asymptotic")):
        x, y = rng.normal(size=n1), rng.normal(0.5, size=n2)
        feature = CramerVonMisesDetector({"x": x}).test({"x": y}).features[0]
        want = stats.cramervonmises_2samp(x, y, method=method)
        assert_close((feature.statistic, feature.p_value), (want.statistic, want.pvalue))


def test_vectorised_cvm_series_matches_scipy() -> None:
    from scipy.stats._hypotests import _cdf_cvm_inf  # private: compared, not used

    x = np.array([0.003, 0.01, 0.05, 0.1, 0.461, 1.0, 2.0, 3.5])
    np.testing.assert_allclose(cvm_module._cdf_cvm_inf(x), _cdf_cvm_inf(x), rtol=1e-14)


@pytest.mark.parametrize("cls", [CramerVonMisesDetector, AndersonDarlingDetector])
def test_min_samples_at_least_two(cls) -> None:
    with pytest.raises(ValueError, match="min_samples"):
        cls({"x": np.arange(5.0)}, min_samples=1)
    detector = cls({"x": np.arange(5.0)})
    assert detector.test({"x": np.array([1.0])}).insufficient_data
    assert not detector.test({"x": np.array([1.0, 2.0])}).insufficient_data
    with pytest.raises(ValueError, match="'x'"):
        cls({"x": np.array([1.0])})  # InsufficientDataError


@pytest.mark.parametrize("cls", [CramerVonMisesDetector, AndersonDarlingDetector])
def test_options_and_correction(cls) -> None:
    rng = np.random.default_rng(3)
    ref = {f"f{i}": rng.normal(size=200) for i in range(4)}
    cur = {f"f{i}": rng.normal(0.25 * i, size=200) for i in range(4)}
    raw = cls(ref, correction="none").test(cur)
    bonferroni = cls(ref).test(cur)
    assert bonferroni.correction == "bonferroni" and bonferroni.threshold == 0.05
    for r, b in zip(raw.features, bonferroni.features, strict=True):
        assert r.p_value == b.p_value and b.adjusted_p_value == min(1.0, 4 * r.p_value)
    with pytest.raises(ValueError, match="alpha"):
        cls(ref, alpha=1.5)
    if cls is AndersonDarlingDetector:  # p-values capped at 0.25: a larger alpha flags all
        assert cls(ref, alpha=0.25).alpha == 0.25
        with pytest.raises(ValueError, match=r"alpha must be <= 0\.25"):
            cls(ref, alpha=0.3)
    else:
        assert cls(ref, alpha=0.3).alpha == 0.3
    with pytest.raises(ValueError, match="correction"):
        cls(ref, correction="holm")
    with pytest.raises(TypeError, match="'f0'"):
        cls({**ref, "f0": np.array(["a", "b"])})


def test_int_and_float32_columns_match_float64() -> None:
    rng = np.random.default_rng(7)
    ref, cur = rng.integers(0, 20, 300), rng.integers(0, 21, 250)
    for cls in (CramerVonMisesDetector, AndersonDarlingDetector):
        a = cls({"x": ref}).test({"x": cur})
        b = cls({"x": ref.astype(np.float32)}).test({"x": cur.astype(np.float64)})
        assert a == b
