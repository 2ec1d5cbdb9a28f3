"""Null calibration of every per-feature alarm: false-alarm rates on data without drift.

Each cell draws the reference and the windows from the same distribution and counts how
often a feature is flagged at ``ALPHA`` (one detector call tests many independent
features, ``correction="none"`` for the tests). A rate must lie inside the 99% binomial
interval of ``ALPHA`` over the cell's tests, or below it where the test is conservative
by construction (discrete data: KS and the permutation p-values on a few distinct
values; the constant column, which can never differ; Anderson-Darling's capped,
interpolated table; the distances, which must also exceed their practical threshold
and are corrected family-wise with the independent-feature max-T).

Seeded and cheap (about 20 s on one core). ``python -m tests.detectors.test_calibration``
prints the table of measured rates (the README's).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from detectors import (
    AndersonDarlingDetector,
    ChiSquareDetector,
    CramerVonMisesDetector,
    JSDetector,
    KSDetector,
    PSIDetector,
    WassersteinDetector,
)

ALPHA = 0.05
TESTS_PER_CELL = 1000  # 99% interval of 0.05: about [0.033, 0.069]

Draw = Callable[[np.random.Generator, int], np.ndarray]
NUMERIC: dict[str, Draw] = {
    "continuous": lambda rng, n: rng.normal(size=n),
    "heavy-tailed": lambda rng, n: rng.standard_t(1, size=n),
    "integer-ties": lambda rng, n: rng.poisson(3, size=n).astype(np.float64),
    "binary": lambda rng, n: (rng.random(n) < 0.1).astype(np.float64),
    "constant": lambda rng, n: np.full(n, 2.5),
}
_ZIPF_P = 1.0 / np.arange(1, 21) ** 1.3
CATEGORICAL: dict[str, Draw] = {
    "zipf": lambda rng, n: rng.choice(20, size=n, p=_ZIPF_P / _ZIPF_P.sum()).astype(str),
    "binary-rare": lambda rng, n: np.where(rng.random(n) < 0.1, "yes", "no"),
    # a 2 x 2 table with a 2% level: Fisher's exact test below 5 expected
    "binary-2%": lambda rng, n: np.where(rng.random(n) < 0.02, "yes", "no"),
}
# (reference size, window size): windows of 20, 50, 200, 2000, sizes unequal
SIZES = [(500, 20), (300, 50), (1000, 200), (3000, 2000)]
# conservative by construction (a rate below the interval is expected, not an error)
CONSERVATIVE = {"integer-ties", "binary", "constant", "binary-rare", "binary-2%"}


def interval(n: int, alpha: float = ALPHA) -> tuple[float, float]:
    low, high = stats.binom.interval(0.99, n, alpha)
    return low / n, high / n


@functools.cache
def null_rate(kind: str, data: str, n_ref: int, n_cur: int) -> tuple[float, int]:
    """Share of null features flagged, and the number of features tested."""
    cls = {"ks": KSDetector, "cvm": CramerVonMisesDetector, "anderson": AndersonDarlingDetector,
           "chi2": ChiSquareDetector}[kind]
    draw = {**NUMERIC, **CATEGORICAL}[data]
    rng = np.random.default_rng([sum(map(ord, kind + data)), n_ref, n_cur])
    features = 100
    flagged = tested = 0
    for _ in range(TESTS_PER_CELL // features):
        ref = {f"f{i}": draw(rng, n_ref) for i in range(features)}
        cur = {f"f{i}": draw(rng, n_cur) for i in range(features)}
        result = cls(ref, alpha=ALPHA, correction="none").test(cur)
        flagged += sum(f.drifted for f in result.features)
        tested += features
    return flagged / tested, tested


TEST_CELLS = [(kind, data, n_ref, n_cur)
              for kind in ("ks", "cvm", "anderson") for data in NUMERIC
              for n_ref, n_cur in SIZES] + [
              ("chi2", data, n_ref, n_cur) for data in CATEGORICAL for n_ref, n_cur in SIZES]


@pytest.mark.parametrize(("kind", "data", "n_ref", "n_cur"), TEST_CELLS)
def test_p_value_detectors_hold_alpha_on_the_null_grid(kind: str, data: str, n_ref: int,
                                                       n_cur: int) -> None:
    rate, n = null_rate(kind, data, n_ref, n_cur)
    low, high = interval(n)
    assert rate <= high, f"{kind} on {data} {n_ref}x{n_cur}: {rate:.3f} > {high:.3f}"
    if data not in CONSERVATIVE and kind != "anderson" and not (kind == "ks" and n_cur <= 50):
        assert rate >= low, f"{kind} on {data} {n_ref}x{n_cur}: {rate:.3f} < {low:.3f}"


def test_tied_constant_columns_are_not_drift() -> None:
    # The example: scipy gives p = 2e-8 for two identical constant columns.
    for cls in (CramerVonMisesDetector, AndersonDarlingDetector):
        result = cls({"x": np.full(500, 1.0)}).test({"x": np.full(200, 1.0)})
        assert result.p_value == 1.0 and not result.drifted


def test_tied_tests_keep_their_power() -> None:
    # integer data, mean shifted by 0.5 (Poisson 3 -> 3.5): both tests see it at 200
    rng = np.random.default_rng(3)
    ref = {f"f{i}": rng.poisson(3, 1000).astype(float) for i in range(20)}
    cur = {f"f{i}": rng.poisson(3.5, 200).astype(float) for i in range(20)}
    for cls in (CramerVonMisesDetector, AndersonDarlingDetector):
        result = cls(ref, correction="none").test(cur)
        assert np.mean([f.drifted for f in result.features]) > 0.6


# --- distances: calibrated to the window size ----------------------------------------------

DISTANCE_WINDOWS = (20, 50, 200, 2000, 5000)
DISTANCE_REFERENCE = 12_000  # above LARGE_REFERENCE: what choose() picks them for
DISTANCE_WINDOWS_PER_CELL = 200


@functools.cache
def distance_rate(kind: str, data: str, n_cur: int) -> tuple[float, int]:
    """Share of null windows (5 features each) in which the detector flags drift."""
    cls = {"wasserstein": WassersteinDetector, "psi": PSIDetector, "js": JSDetector}[kind]
    draw = {**NUMERIC, **CATEGORICAL}[data]
    rng = np.random.default_rng([sum(map(ord, kind + data)), n_cur])
    ref = {f"f{i}": draw(rng, DISTANCE_REFERENCE) for i in range(5)}
    detector = cls(ref, alpha=ALPHA)
    flagged = 0
    for _ in range(DISTANCE_WINDOWS_PER_CELL):
        flagged += detector.test({f: draw(rng, n_cur) for f in ref}).drifted
    return flagged / DISTANCE_WINDOWS_PER_CELL, DISTANCE_WINDOWS_PER_CELL


DISTANCE_CELLS = [("wasserstein", "continuous", m) for m in DISTANCE_WINDOWS] + [
    ("wasserstein", "integer-ties", m) for m in (20, 200)] + [
    ("psi", "continuous", m) for m in (1, 20, 200)] + [
    ("js", "zipf", m) for m in (20, 200)]


@pytest.mark.parametrize(("kind", "data", "n_cur"), DISTANCE_CELLS)
def test_distances_hold_alpha_at_every_window_size(kind: str, data: str, n_cur: int) -> None:
    rate, n = distance_rate(kind, data, n_cur)
    assert rate <= interval(n)[1], f"{kind} on {data} at {n_cur}: {rate:.3f}"


def test_distance_reports_its_null_quantile_and_keeps_power() -> None:
    rng = np.random.default_rng(5)
    detector = WassersteinDetector({"x": rng.normal(size=DISTANCE_REFERENCE)})
    small = detector.test({"x": rng.normal(size=300)})
    # at 300 values chance alone exceeds the 0.1 threshold: the null quantile says so
    assert small.null_quantile is not None and small.null_quantile > 0.1
    shifted = detector.test({"x": rng.normal(0.5, size=300)})  # a 0.5-sd shift
    assert shifted.drifted and shifted.features[0].statistic > shifted.null_quantile
    large = detector.test({"x": rng.normal(size=5000)})
    assert large.null_quantile == pytest.approx(0.1)  # the threshold governs at 5000
    assert not large.drifted


def table() -> str:
    lines = ["| detector | data | reference x window | tests | null rate | 99% interval |",
             "|---|---|---|---|---|---|"]
    for kind, data, n_ref, n_cur in TEST_CELLS:
        rate, n = null_rate(kind, data, n_ref, n_cur)
        low, high = interval(n)
        lines.append(f"| {kind} | {data} | {n_ref} x {n_cur} | {n} | {rate:.3f} | "
                     f"[{low:.3f}, {high:.3f}] |")
    for kind, data, n_cur in DISTANCE_CELLS:
        rate, n = distance_rate(kind, data, n_cur)
        low, high = interval(n)
        lines.append(f"| {kind} (5 features, per window) | {data} | {DISTANCE_REFERENCE} x "
                     f"{n_cur} | {n} | {rate:.3f} | [{low:.3f}, {high:.3f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")


# --- small samples and odd input ------------------------------------------------------------

def test_label_shift_class_flags_hold_alpha_at_small_windows() -> None:
    from detectors import BBSE
    rng = np.random.default_rng(8)
    classes = np.array(["a", "b", "c"])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        label = rng.choice(classes, size=n, p=[0.6, 0.3, 0.1])
        wrong = rng.random(n) < 0.2
        return label, np.where(wrong, rng.choice(classes, size=n), label)

    label, prediction = draw(2000)
    bbse = BBSE(label.astype(object), prediction.astype(object))
    for window in (20, 50):
        flagged = [any(f.drifted for f in bbse.test(draw(window)[1].astype(object)).features)
                   for _ in range(600)]
        assert np.mean(flagged) <= interval(600)[1], (window, np.mean(flagged))


def test_category_type_mismatch_is_an_error_naming_the_feature() -> None:
    ref = {"plan": np.array(["1", "2", "3"] * 50)}
    for cls in (ChiSquareDetector, PSIDetector, JSDetector):
        with pytest.raises(TypeError, match=r"'plan'.*number categories.*str"):
            cls(ref).test({"plan": np.array([1, 2, 3] * 20, dtype=object)})


def test_overflow_scale_input_is_rejected_and_mmd_centres() -> None:
    from detectors import ADWIN, MMDDetector
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(150, 2))
    y[:, 0] += 0.5  # a 0.5-sd shift: a common offset of 1e9 must not hide it
    assert MMDDetector(x + 1e9, n_permutations=200).test(y + 1e9).drifted
    with pytest.raises(ValueError, match="overflow-scale"):
        MMDDetector(x).test(np.full((50, 2), 1e308))
    with pytest.raises(ValueError, match="magnitude"):
        ADWIN().update(1e308)
    with pytest.raises(ValueError, match=r"'x'.*float range"):
        WassersteinDetector({"x": np.array([-1e308, 1e308, 0.0])})
