"""Columnar windows (monitor.columns): the same columns, counts and tests as record windows."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp

from detectors.chisquare import ChiSquareDetector
from detectors.ks import KSDetector
from monitor import columns
from monitor.columns import INITIAL_CAPACITY, ColumnBuffer, ColumnLayout
from monitor.components import FeatureSummaries
from monitor.errors import RecordError
from monitor.schema import Decoder, InferenceRecord, ModelSchema, TimeBounds
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


# --- packed rows (the native decoder) against feature dicts (the Python decoder) ---------

# The kinds interleave, so the decoder's numeric-first order differs from the schema's.
MIXED = {"a": "numeric", "c": "categorical", "b": "numeric", "d": "categorical",
         "e": "numeric", "f": "categorical"}
MIXED_NUMERIC = tuple(n for n, k in MIXED.items() if k == "numeric")
MIXED_CATEGORICAL = tuple(n for n, k in MIXED.items() if k != "numeric")
# JSON 7 and "7", true and "true" are one category each (both decoders store text)
CATEGORIES: list[Any] = ["x", "y", "7", 7, True, "true", False, "ü", "", "n0", "n1"]


def documents(n: int, seed: int, pool: int = len(CATEGORIES)) -> list[bytes]:
    """Encoded records of model "m": numeric values as floats, JSON integers and -0.0;
    categories as strings, integers and booleans, new ones arriving mid-stream."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        numeric: list[Any] = [float(rng.normal()), int(rng.integers(-5, 5)), -0.0, 1e300]
        features: dict[str, Any] = {
            name: numeric[int(rng.integers(len(numeric)))] if kind == "numeric"
            else CATEGORIES[int(rng.integers(min(pool, 3 + i // 7)))]  # the pool grows
            for name, kind in MIXED.items()}
        out.append(json.dumps({"model": "m", "request_id": f"r{i}", "timestamp": 1.7e9 + i,
                               "features": features, "prediction": int(rng.integers(2))}
                              ).encode())
    return out


def decoded(values: list[bytes], native: bool) -> list[InferenceRecord]:
    decoder = Decoder({"m": ModelSchema(MIXED)}, native=native)  # type: ignore[arg-type]
    return [decoder.decode(v) for v in values]


def same_columns(a: ClosedWindow, b: ClosedWindow) -> None:
    ca, cb = a.columns, b.columns
    assert ca is not None and cb is not None
    assert ca.numeric.tobytes() == cb.numeric.tobytes()  # bit for bit: -0.0 stays -0.0
    assert np.array_equal(ca.codes, cb.codes) and ca.codes.dtype == cb.codes.dtype
    assert ca.categories == cb.categories
    assert ca.predictions == cb.predictions
    assert (a.n, a.start, a.end, a.offsets) == (b.n, b.start, b.end, b.offsets)


@pytest.fixture
def packed_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records each batch sealed from packed rows held (the path is taken)."""
    sizes: list[int] = []
    seal = ColumnBuffer._seal_packed

    def spy(self: ColumnBuffer, records: list[Any], *args: Any) -> None:
        sizes.append(len(records))
        seal(self, records, *args)

    monkeypatch.setattr(ColumnBuffer, "_seal_packed", spy)
    return sizes


def test_packed_rows_hold_the_same_features() -> None:
    values = documents(300, seed=11)
    for native, python in zip(decoded(values, True), decoded(values, False), strict=True):
        assert native.row is not None and python.row is None
        assert native.features == python.features
        assert list(native.features) == list(MIXED)  # the schema's order, not numeric-first
        fmt = native.row_format
        assert fmt is not None and (fmt.numeric, fmt.categorical) == (MIXED_NUMERIC,
                                                                       MIXED_CATEGORICAL)
        unpacked = struct.unpack(f"<{len(fmt.numeric)}d{len(fmt.categorical)}i", native.row)
        assert unpacked[:3] == tuple(python.features[n] for n in MIXED_NUMERIC)
        assert [fmt.ids.names[i] for i in unpacked[3:]] == [python.features[n]
                                                            for n in MIXED_CATEGORICAL]


@pytest.mark.parametrize("seed", range(4))
def test_windows_from_packed_rows_equal_windows_from_dicts(
        seed: int, packed_batches: list[int]) -> None:
    values = documents(700, seed=seed)
    reference = decoded(documents(200, seed=100 + seed, pool=4), native=False)
    categories = {n: list(dict.fromkeys(r.features[n] for r in reference))
                  for n in MIXED_CATEGORICAL}
    layout = ColumnLayout.of(MIXED, categories=categories)
    native = fill(CountWindows("m", 250, layout=layout), decoded(values, True), seed=seed)
    assert sum(packed_batches) == 700  # every batch (the open third window's too)
    python = fill(CountWindows("m", 250, layout=layout), decoded(values, False), seed=seed)
    assert sum(packed_batches) == 700  # the Python decoder's records take the dict path
    assert [w.n for w in native] == [250, 250]
    ks = KSDetector({n: np.array([r.features[n] for r in reference]) for n in MIXED_NUMERIC})
    chi2 = ChiSquareDetector({n: np.array([r.features[n] for r in reference], dtype=object)
                              for n in MIXED_CATEGORICAL})
    for a, b in zip(native, python, strict=True):
        same_columns(a, b)
        assert a.columns is not None
        # the reference's categories keep their codes; the window's new ones follow
        assert a.columns.categories[:len(layout.codes.names)] == layout.codes.names
        assert len(a.columns.categories) > len(layout.codes.names)
        assert report(a, ks, chi2) == report(b, ks, chi2)
    # windows grow copies: the reference's table is as it was
    assert layout.codes.names == list(dict.fromkeys(c for n in MIXED_CATEGORICAL
                                                    for c in categories[n]))


def report(w: ClosedWindow, ks: KSDetector, chi2: ChiSquareDetector) -> Any:
    assert w.columns is not None
    coded = {n: w.columns.coded(n) for n in MIXED_CATEGORICAL}
    return (ks.test(w.feature_columns(MIXED_NUMERIC, {n: True for n in MIXED_NUMERIC})),
            chi2.test_codes({n: c for n, (c, _) in coded.items()},
                            {n: k for n, (_, k) in coded.items()}))


def test_batches_mixing_packed_and_plain_records_equal_the_dict_path(
        packed_batches: list[int]) -> None:
    values = documents(600, seed=21)
    native, python = decoded(values, True), decoded(values, False)
    # stretches of each kind (batches all packed, mixed, all plain), then a shuffled tail
    pick = [bool((i // 40) % 3) for i in range(len(values))]
    order = [*range(500), *np.random.default_rng(22).permutation(range(500, 600)).tolist()]
    mixed = [(native if pick[i] else python)[i] for i in order]
    plain = [python[i] for i in order]
    layout = ColumnLayout.of(MIXED, categories={"c": ["y", "x"]})
    [a] = fill(CountWindows("m", 600, layout=layout), mixed, seed=23)
    assert packed_batches and sum(packed_batches) < sum(pick)  # both paths ran
    [b] = fill(CountWindows("m", 600, layout=layout), plain, seed=23)
    same_columns(a, b)


def test_time_windows_grow_their_buffers_from_packed_rows(packed_batches: list[int]) -> None:
    values = documents(3 * INITIAL_CAPACITY, seed=31)
    layout = ColumnLayout.of(MIXED)
    native = fill(TimeWindows("m", 1500, layout=layout), decoded(values, True), seed=32)
    python = fill(TimeWindows("m", 1500, layout=layout), decoded(values, False), seed=32)
    assert len(native) == 2 and max(w.n for w in native) > INITIAL_CAPACITY
    assert sum(packed_batches) >= sum(w.n for w in native)
    for a, b in zip(native, python, strict=True):
        same_columns(a, b)


def test_a_full_table_starts_a_fresh_format(monkeypatch: pytest.MonkeyPatch,
                                            packed_batches: list[int]) -> None:
    monkeypatch.setattr(columns, "MAX_TABLE_CATEGORIES", 6)
    values = documents(400, seed=41)
    native = decoded(values, True)
    formats = list(dict.fromkeys(r.row_format for r in native))
    assert len(formats) > 2 and all(len(f.ids.names) <= 6 for f in formats if f)
    layout = ColumnLayout.of(MIXED, categories={"d": ["n1"]})
    a = fill(CountWindows("m", 150, layout=layout), native, seed=42)
    b = fill(CountWindows("m", 150, layout=layout), decoded(values, False), seed=42)
    assert packed_batches  # batches within one format still take the packed path
    for x, y in zip(a, b, strict=True):
        same_columns(x, y)


def test_a_table_bounds_its_text_and_skips_rejected_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns, "MAX_TABLE_CHARS", 10)
    decoder = Decoder({"m": ModelSchema(MIXED)},  # type: ignore[arg-type]
                      time_bounds=TimeBounds(max_future_seconds=0, clock=lambda: 2e9))
    doc = {"model": "m", "request_id": "r", "timestamp": 1.7e9, "prediction": 0,
           "features": {"a": 1, "b": 2, "e": 3, "c": "abc", "d": "abc", "f": "de"}}
    first = decoder.decode(json.dumps(doc).encode())
    assert first.row_format is not None and first.row_format.ids.names == ["abc", "de"]
    # a record the decoder rejects (from the future) adds nothing to the table
    with pytest.raises(RecordError, match=r"ahead of now"):
        decoder.decode(json.dumps({**doc, "timestamp": 3e9, "features": {
            **doc["features"], "c": "zzz"}}).encode())
    assert first.row_format.ids.names == ["abc", "de"]
    # more text than an empty table holds: a plain record (the dict path), still accepted
    big = decoder.decode(json.dumps({**doc, "features": {**doc["features"],
                                                         "c": "x" * 11}}).encode())
    assert big.row is None and big.row_format is None and big.features["c"] == "x" * 11
    nxt = decoder.decode(json.dumps(doc).encode())
    assert nxt.row_format is not None and nxt.row_format is not first.row_format
    assert nxt.row_format.ids.names == ["abc", "de"]


def test_hand_built_records_keep_the_dict_path_semantics() -> None:
    """Records built in code (no packed row): numeric bools and ints become floats, and a
    category given as an int is its own category, apart from its text."""
    recs = [InferenceRecord("m", "1", str(i), float(i),
                            {"x": [True, 3, 2.5][i % 3], "c": [7, "7", "k"][i % 3],
                             "y": 0, "d": False}, 0) for i in range(9)]
    [w] = fill(CountWindows("m", 9, layout=ColumnLayout.of(KINDS)), recs, seed=51)
    assert w.columns is not None
    assert w.columns.number("x").tolist() == [1.0, 3.0, 2.5] * 3
    codes, names = w.columns.coded("c")
    # codes in the order met: record by record, feature by feature (c then d)
    assert names == [7, False, "7", "k"] and codes.tolist() == [0, 2, 3] * 3
