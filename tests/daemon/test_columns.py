"""Columnar windows (monitor.columns): the same columns, counts and tests as record windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from detectors.chisquare import ChiSquareDetector
from detectors.ks import KSDetector
from monitor.columns import INITIAL_CAPACITY, ColumnLayout
from monitor.components import FeatureSummaries
from monitor.schema import InferenceRecord
from monitor.windows import ClosedWindow, CountWindows, TimeWindows

KINDS = {"x": "numeric", "c": "categorical", "y": "numeric", "d": "categorical"}
NUMERIC = {n: k == "numeric" for n, k in KINDS.items()}


def records(n: int, seed: int, categories: int = 4, start: float = 0.0
            ) -> list[InferenceRecord]:
    rng = np.random.default_rng(seed)
    return [InferenceRecord("m", "1", str(i), start + i,
                            {"x": float(rng.normal()), "c": f"k{rng.integers(categories)}",
                             "y": float(rng.integers(3)), "d": f"z{rng.integers(2)}"},
                            int(rng.integers(2)), raw_input=f"text {i}")
            for i in range(n)]


def fill(windows: CountWindows | TimeWindows, recs: list[InferenceRecord], seed: int
         ) -> list[ClosedWindow]:
    """Adds ``recs`` in batches of random sizes, sealing after each (as the pipeline)."""
    rng = np.random.default_rng(seed)
    closed: list[ClosedWindow] = []
    i = 0
    while i < len(recs):
        k = int(rng.integers(1, 40))
        for off, r in enumerate(recs[i:i + k], start=i):
            closed += windows.add(r, ("t", 0), off)
        windows.seal()
        i += k
    return closed


def test_count_windows_keep_columns_equal_to_their_records() -> None:
    layout = ColumnLayout.of(KINDS, keep_inputs=True, categories={"c": ["k2", "k0"]})
    recs = records(250, seed=1, categories=6)
    closed = fill(CountWindows("m", 100, layout=layout), recs, seed=2)
    assert [w.n for w in closed] == [100, 100]
    for w, part in zip(closed, (recs[:100], recs[100:200]), strict=True):
        plain = ClosedWindow("m", w.index, w.start, w.end, tuple(part), w.offsets)
        assert w.records == () and (w.start, w.end) == (plain.start, plain.end)
        got, want = (x.feature_columns(tuple(KINDS), NUMERIC) for x in (w, plain))
        for name in KINDS:
            assert got[name].dtype == want[name].dtype
            assert np.array_equal(got[name], want[name])
            if NUMERIC[name]:
                assert got[name].flags.c_contiguous and got[name].base is not None  # a view
            else:
                assert w.category_counts(name) == plain.category_counts(name)
        assert w.predictions() == plain.predictions()
        assert w.raw_inputs() == plain.raw_inputs()
        assert w.offsets == {("t", 0): (part[0].timestamp, part[-1].timestamp)}
    # the reference's categories keep codes 0 and 1; new ones count on from there
    codes, names = closed[0].columns.coded("c")  # type: ignore[union-attr]
    assert names[:2] == ["k2", "k0"]
    assert [names[c] for c in codes] == [r.features["c"] for r in recs[:100]]
    # every window starts again from the reference's table
    assert layout.codes.names == ["k2", "k0"]


def test_time_windows_grow_their_buffers() -> None:
    layout = ColumnLayout.of(KINDS)
    n = 3 * INITIAL_CAPACITY + 7
    recs = records(n + 1, seed=3, start=0.0)
    recs[-1] = InferenceRecord("m", "1", "late", 1e6, recs[0].features, 0)  # closes it
    [w] = fill(TimeWindows("m", 1e5, layout=layout), recs, seed=4)
    assert w.n == n
    cols = w.feature_columns(("x", "d"), NUMERIC)
    assert np.array_equal(cols["x"], [r.features["x"] for r in recs[:n]])
    assert list(cols["d"]) == [r.features["d"] for r in recs[:n]]
    with pytest.raises(ValueError, match="model 'm', window 0: raw inputs were not kept"):
        w.raw_inputs()  # no embedding, no inputs


def test_chi_square_on_codes_equals_the_test_on_values() -> None:
    rng = np.random.default_rng(5)
    for trial in range(40):
        k_ref = int(rng.integers(1, 8))
        ref = np.array([f"r{i}" for i in rng.integers(k_ref, size=int(rng.integers(5, 300)))],
                       dtype=object)
        det = ChiSquareDetector({"f": ref}, min_expected=float(trial % 3) * 2.5)
        # a table seeded with the reference's categories, in an arbitrary order, plus
        # categories the window brings (several new ones, in a random order of arrival)
        categories = [*rng.permutation(det.categories("f")).tolist(), "zz", "n1", "n0"]
        pool = np.array([*categories, categories[0], categories[0]])
        current = pool[rng.integers(pool.size, size=int(rng.integers(1, 200)))]
        codes = np.array([categories.index(v) for v in current], dtype=np.int32)
        by_codes = det.test_codes({"f": codes}, {"f": categories})
        by_values = det.test({"f": current.astype(object)})
        assert by_codes == by_values, trial


def test_chi_square_codes_are_checked() -> None:
    det = ChiSquareDetector({"f": np.array(["a", "b", "a"], dtype=object)})
    with pytest.raises(ValueError, match=r"feature 'f': codes must lie in \[0, 2\)"):
        det.test_codes({"f": np.array([0, 2])}, {"f": ["a", "b"]})
    with pytest.raises(TypeError, match="feature 'f': codes must be a 1-D integer array"):
        det.test_codes({"f": np.array([0.0, 1.0])}, {"f": ["a", "b"]})
    with pytest.raises(KeyError, match="missing feature 'f'"):
        det.test_codes({}, {"f": ["a"]})


def test_ks_statistic_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(6)
    for _ in range(30):
        ref = rng.integers(0, 6, size=int(rng.integers(2, 80))).astype(float)
        cur = rng.integers(-1, 7, size=int(rng.integers(2, 80))).astype(float)
        result = KSDetector({"f": ref}, correction="none").test({"f": cur})
        want = ks_2samp(ref, cur)
        assert result.statistic == pytest.approx(want.statistic, abs=1e-12)
        assert result.features[0].p_value == pytest.approx(want.pvalue, rel=1e-9)


def test_summaries_of_a_columnar_window_equal_those_of_its_records() -> None:
    recs = records(300, seed=7, categories=30)
    reference = {"x": np.array([r.features["x"] for r in recs[::2]]),
                 "y": np.array([r.features["y"] for r in recs[::2]]),
                 "c": np.array([r.features["c"] for r in recs[::3]], dtype=object),
                 "d": np.array([r.features["d"] for r in recs[::3]], dtype=object)}
    summaries = FeatureSummaries(KINDS, reference)  # type: ignore[arg-type]
    [w] = fill(CountWindows("m", 300, layout=ColumnLayout.of(KINDS)), recs, seed=8)
    plain = ClosedWindow("m", 0, w.start, w.end, tuple(recs), w.offsets)
    assert summaries.summarize(w) == summaries.summarize(plain)
