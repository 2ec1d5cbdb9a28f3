"""Prepared reference state is saved once and reloaded until its inputs change."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from monitor.evaluate import ModelEvaluator
from monitor.factory import model_schema
from monitor.reference import load_reference
from monitor.refstate import load_or_build
from monitor.report import WindowReport
from monitor.schema import Decoder
from monitor.settings import ModelSettings, parse_settings
from monitor.synthetic import SyntheticStream
from monitor.windows import ClosedWindow, CountWindows

STREAM = SyntheticStream(seed=2)


def model(tmp_path: Path, **over: object):  # type: ignore[no-untyped-def]
    ref = tmp_path / "ref.csv"
    if not ref.exists():
        STREAM.write_reference_csv(ref, 1000)
    return parse_settings({"models": [{**STREAM.settings_doc(ref, 100), **over}]},
                          env={}).models[0]


def builder(m, calls: list[int]):  # type: ignore[no-untyped-def]
    def build() -> ModelEvaluator:
        calls.append(1)
        kinds = {f.name: f.type for f in m.features}
        return ModelEvaluator(m, load_reference(m.reference.path, kinds))
    return build


def test_built_once_then_loaded(tmp_path: Path) -> None:
    cache, calls, m = tmp_path / "cache", list[int](), model(tmp_path)
    first = load_or_build(m, builder(m, calls), cache)
    second = load_or_build(m, builder(m, calls), cache)
    assert calls == [1]
    assert second is not first and second.detector_names == first.detector_names
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    [saved] = cache.iterdir()
    assert oct(saved.stat().st_mode & 0o777) == "0o600"


def test_changed_reference_or_settings_rebuild(tmp_path: Path) -> None:
    cache, calls = tmp_path / "cache", list[int]()
    m = model(tmp_path)
    load_or_build(m, builder(m, calls), cache)
    m2 = model(tmp_path, alpha=0.01)
    load_or_build(m2, builder(m2, calls), cache)
    assert len(calls) == 2
    with (tmp_path / "ref.csv").open("a") as fh:
        fh.write(",".join(["1"] * 5 + ["DE", "web"]) + "\n")
    load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 3


def test_corrupt_file_or_shared_directory_is_not_trusted(tmp_path: Path) -> None:
    cache, calls, m = tmp_path / "cache", list[int](), model(tmp_path)
    load_or_build(m, builder(m, calls), cache)
    [saved] = cache.iterdir()
    saved.write_bytes(b"not a pickle")
    load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 2
    os.chmod(cache, 0o777)
    load_or_build(m, builder(m, calls), cache)
    load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 4  # a world-writable directory is never read from


def comparable(report: WindowReport) -> tuple[Any, ...]:
    """Everything a report says except when it was made; NaN made comparable (NaN != NaN)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return "nan"
        if isinstance(x, (tuple, list)):
            return tuple(clean(v) for v in x)
        if isinstance(x, dict):
            return tuple(sorted((k, clean(v)) for k, v in x.items()))
        return x
    return clean(dataclasses.astuple(dataclasses.replace(report, evaluated_at=0.0)))


def windows(m: ModelSettings, n_windows: int) -> list[ClosedWindow]:
    """Count windows of decoded records; the second half of them drifted."""
    size = m.window.size  # type: ignore[union-attr]
    drifting = SyntheticStream(seed=7, drift_at=size * n_windows // 2, magnitude=1.0)
    decoder, w = Decoder({m.name: model_schema(m)}), CountWindows(m.name, size)
    closed: list[ClosedWindow] = []
    for offset, value in enumerate(drifting.encoded(size * n_windows)):
        closed += w.add(decoder.decode(value), ("t", 0), offset)
    return closed


def test_every_detector_kind_round_trips_through_the_cache(tmp_path: Path) -> None:
    # the binned distances (psi, kl, js) once held a mappingproxy, which pickle refuses
    kinds = ["ks", "chi2", "cvm", "anderson", "psi", "kl", "js", "wasserstein", "mmd", "mmd_agg",
             "c2st"]
    dets = [{"kind": k, **({"alpha": 0.01} if k == "anderson" else {})} for k in kinds]
    # windows of 500: distances (js, wasserstein) on 100 records exceed their threshold
    # even without drift
    m = model(tmp_path, detectors=dets, alpha=0.01, window={"kind": "count", "size": 500})
    cache, calls = tmp_path / "cache", list[int]()
    fresh = builder(m, calls)()  # built from the raw reference, never saved
    saved = load_or_build(m, builder(m, calls), cache)
    loaded = load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 2 and loaded is not saved  # the third came from the file
    assert [p.name.startswith(".tmp-") for p in cache.iterdir()] == [False]
    assert fresh.detector_names == loaded.detector_names == [*kinds, "model"]
    # The cached evaluator must test exactly like a fresh one: statistics, p-values,
    # drifted flags and per-feature results, window after window.
    drifted: set[tuple[str, bool]] = set()
    for window in windows(m, 4):
        got, want = loaded.evaluate(window), fresh.evaluate(window)
        assert comparable(got) == comparable(want), (window.index, got, want)
        assert [r.detector for r in got.results] == [*kinds, "model"]
        drifted |= {(r.detector, r.drifted) for r in got.results if r.detector != "model"}
    # the windows exercise both outcomes (so equal flags mean something): every kind flags
    # the drifted half and passes the quiet half (wasserstein too, now that distances are
    # calibrated to the window size)
    assert {k for k, d in drifted if d} == set(kinds)
    assert {k for k, d in drifted if not d} == set(kinds)


def test_state_that_cannot_be_pickled_is_used_unsaved(tmp_path: Path) -> None:
    m, cache = model(tmp_path), tmp_path / "cache"
    state = load_or_build(m, lambda: (lambda: None), cache)  # a lambda does not pickle
    assert callable(state)
    assert list(cache.iterdir()) == []  # no half-written temporary file left behind
