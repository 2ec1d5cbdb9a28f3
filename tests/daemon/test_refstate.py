"""Prepared reference state is saved once and reloaded until its inputs change."""

from __future__ import annotations

import os
from pathlib import Path

from monitor.evaluate import ModelEvaluator
from monitor.reference import load_reference
from monitor.refstate import load_or_build
from monitor.settings import parse_settings
from monitor.synthetic import SyntheticStream

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
    cache, calls, m = tmp_path / "cache", [], model(tmp_path)
    first = load_or_build(m, builder(m, calls), cache)
    second = load_or_build(m, builder(m, calls), cache)
    assert calls == [1]
    assert second is not first and second.detector_names == first.detector_names
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    [saved] = cache.iterdir()
    assert oct(saved.stat().st_mode & 0o777) == "0o600"


def test_changed_reference_or_settings_rebuild(tmp_path: Path) -> None:
    cache, calls = tmp_path / "cache", []
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
    cache, calls, m = tmp_path / "cache", [], model(tmp_path)
    load_or_build(m, builder(m, calls), cache)
    [saved] = cache.iterdir()
    saved.write_bytes(b"not a pickle")
    load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 2
    os.chmod(cache, 0o777)
    load_or_build(m, builder(m, calls), cache)
    load_or_build(m, builder(m, calls), cache)
    assert len(calls) == 4  # a world-writable directory is never read from


def test_every_detector_kind_round_trips_through_the_cache(tmp_path: Path) -> None:
    # the binned distances (psi, kl, js) once held a mappingproxy, which pickle refuses
    kinds = ["ks", "chi2", "cvm", "anderson", "psi", "kl", "js", "wasserstein", "mmd", "c2st"]
    dets = [{"kind": k, **({"alpha": 0.01} if k == "anderson" else {})} for k in kinds]
    m = model(tmp_path, detectors=dets, alpha=0.01)
    cache, calls = tmp_path / "cache", []
    first = load_or_build(m, builder(m, calls), cache)
    second = load_or_build(m, builder(m, calls), cache)
    assert calls == [1] and second.detector_names == first.detector_names == kinds
    assert [p.name.startswith(".tmp-") for p in cache.iterdir()] == [False]


def test_state_that_cannot_be_pickled_is_used_unsaved(tmp_path: Path) -> None:
    m, cache = model(tmp_path), tmp_path / "cache"
    state = load_or_build(m, lambda: (lambda: None), cache)  # a lambda does not pickle
    assert callable(state)
    assert list(cache.iterdir()) == []  # no half-written temporary file left behind
