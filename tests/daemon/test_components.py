"""The registry drives the detectors' settings; evaluators are lists of components.

Regression tests for settings that used to be accepted and ignored: detector keys a kind
does not use (``{kind: c2st, device: cuda}`` ran on the CPU), ``TimeWindow.min_records``
(never read) and the embedding MMD's device (never passed on).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.registry import CONFIGURABLE, INPUTS, KINDS, SPECS
from monitor.components import Component
from monitor.errors import ConfigError
from monitor.evaluate import ModelEvaluator
from monitor.schema import InferenceRecord
from monitor.settings import parse_settings
from monitor.windows import ClosedWindow

ALL_KEYS = sorted({k for kind in CONFIGURABLE for k in SPECS[kind].keys})
VALUES: dict[str, Any] = {"features": ["x"], "alpha": 0.01, "correction": "none",
                          "threshold": 0.2, "min_expected": 1, "n_permutations": 500,
                          "backend": "torch", "device": "cpu", "max_n": 100}


def model_doc(**over: object) -> dict:
    doc = {"name": "m", "reference": {"path": "unused.csv"},
           "features": [{"name": "x", "type": "numeric"}, {"name": "y", "type": "numeric"},
                        {"name": "c", "type": "categorical"}],
           "window": {"kind": "count", "size": 100}, "alpha": 0.01}
    doc.update(over)
    return doc


def parse(**over: object):  # type: ignore[no-untyped-def]
    return parse_settings({"models": [model_doc(**over)]}, env={})


def test_registry_describes_every_stored_kind_once() -> None:
    stored = {"ks", "chi2", "cvm", "anderson", "psi", "kl", "js", "wasserstein", "mmd", "mmd_agg",
              "c2st", "prediction_chi2", "prediction_ks", "label_shift", "performance",
              "label_chi2", "ddm", "adwin", "page_hinkley", "embedding_mmd", "embedding_ks",
              "bbsd"}
    assert set(SPECS) == stored
    assert set(CONFIGURABLE) == set(KINDS) | {"mmd", "mmd_agg", "c2st"}
    for kind, info in SPECS.items():
        assert info.input in INPUTS, kind
        assert bool(info.keys) == (kind in CONFIGURABLE), kind
        assert all(k in VALUES for k in info.keys), kind
    assert all(KINDS[k] is SPECS[k] for k in KINDS)


@pytest.mark.parametrize("kind", CONFIGURABLE)
def test_each_kind_takes_exactly_its_registry_keys(kind: str) -> None:
    accepted = SPECS[kind].keys
    for key in ALL_KEYS:
        det = {"kind": kind, key: VALUES[key]}
        if key in accepted:
            if key == "features":
                det["features"] = ["c"] if kind == "chi2" else ["x"]
            parse(detectors=[det])
            continue
        with pytest.raises(ConfigError) as info:
            parse(detectors=[det])
        message = str(info.value)
        assert f"{kind} does not take '{key}'" in message, message
        assert f"it takes: {', '.join(sorted(['kind', *accepted]))}" in message


@pytest.mark.parametrize(("det", "message"), [
    ({"kind": "c2st", "device": "cuda"},
     r"models\[0\]\.detectors\[0\]: .*c2st does not take 'device' \(it takes: alpha, "
     r"features, kind, max_n\)"),
    ({"kind": "ks", "n_permutations": 5}, "ks does not take 'n_permutations'"),
    ({"kind": "c2st", "backend": "torch"}, "c2st does not take 'backend'"),
    ({"kind": "js", "max_n": 100}, "js does not take 'max_n'"),
    ({"kind": "mmd", "correction": "none"}, "mmd does not take 'correction'"),
    ({"kind": "mmd", "device": "cuda"}, "mmd on backend 'numpy' runs on cpu only, not device "
     "'cuda'; it needs backend 'torch'"),
    ({"kind": "mmd", "device": "auto", "backend": "numpy"}, "not device 'auto'"),
])
def test_keys_a_kind_does_not_use_are_config_errors(det: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(detectors=[det])


def test_unknown_kind_lists_the_configurable_ones() -> None:
    with pytest.raises(ConfigError, match=r"detectors\[0\]\.kind: .*unknown detector kind "
                       r"'energy'; valid kinds: ks, chi2, .*mmd, mmd_agg, c2st"):
        parse(detectors=[{"kind": "energy"}])


def test_torch_mmd_takes_a_device() -> None:
    s = parse(detectors=[{"kind": "mmd", "backend": "torch", "device": "cuda:1"}])
    assert s.models[0].detectors[0].device == "cuda:1"


# --- TimeWindow.min_records ---------------------------------------------------------------------

def _reference(n: int = 500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=n), "y": rng.normal(size=n),
            "c": np.asarray(rng.choice(["a", "b"], n), dtype=object),
            "prediction": np.asarray(rng.choice(["0", "1"], n), dtype=object)}


def _time_window(n: int, seed: int = 1) -> ClosedWindow:
    rng = np.random.default_rng(seed)
    records = tuple(InferenceRecord("m", "", str(i), 60.0 + i / 1000,
                                    {"x": float(rng.normal(3.0)), "y": float(rng.normal(3.0)),
                                     "c": "b"}, "1") for i in range(n))
    return ClosedWindow("m", 1, 60.0, 120.0, records, {("t", 0): (0, n - 1)})


def _time_evaluator(min_records: int) -> ModelEvaluator:
    s = parse(window={"kind": "time", "seconds": 60, "min_records": min_records},
              detectors=[{"kind": "ks"}, {"kind": "chi2"}, {"kind": "psi"},
                         {"kind": "mmd", "n_permutations": 200, "max_n": 200},
                         {"kind": "c2st"}],
              prediction_drift={"label_shift": False})
    return ModelEvaluator(s.models[0], _reference())


def test_time_window_below_min_records_is_not_tested() -> None:
    ev = _time_evaluator(min_records=50)
    small = ev.evaluate(_time_window(30))
    assert [r.detector for r in small.results] == ev.detector_names == [
        "ks", "chi2", "psi", "mmd", "c2st", "prediction_chi2", "model"]  # + the verdict
    assert small.n_records == 30
    for r in small.results:
        assert r.insufficient_data and not r.drifted and r.p_value is None, r
        assert math.isnan(r.statistic) and r.n_current == 30 and r.n_reference == 500
        assert all(f.p_value is None and not f.drifted for f in r.features)
    ks = small.results[0]
    assert [f.feature for f in ks.features] == ["x", "y"] and ks.threshold == 0.01
    assert small.results[2].threshold == KINDS["psi"].cls({"x": _reference()["x"]}).threshold


def test_time_window_at_min_records_is_tested() -> None:
    ev = _time_evaluator(min_records=50)
    full = ev.evaluate(_time_window(60))
    assert not any(r.insufficient_data for r in full.results)
    assert all(r.drifted for r in full.results[:5])  # every feature shifted by 3 sd
    # the same window without the floor gives the same results: the floor only skips
    same = _time_evaluator(min_records=1).evaluate(_time_window(60))
    assert [(r.detector, r.statistic, r.p_value) for r in full.results] == [
        (r.detector, r.statistic, r.p_value) for r in same.results]


def test_components_share_one_calling_convention() -> None:
    ev = _time_evaluator(min_records=2)
    for c in ev.components:
        assert isinstance(c, Component)
        window = _time_window(20)
        assert [r.detector for r in c.test(window)] == c.names
        assert [r.detector for r in c.insufficient(1)] == c.names
        assert c.state() == {}


# --- the embedding MMD's device -------------------------------------------------------------------

def _embedding_doc(tmp_path: Path, **over: object) -> dict:
    ref = tmp_path / "inputs.jsonl"
    rng = np.random.default_rng(0)
    ref.write_text("".join(json.dumps({"array": rng.normal(size=4).tolist()}) + "\n"
                           for _ in range(60)))
    return {"model": {"kind": "torchscript", "path": str(tmp_path / "m.pt"), "shape": [4]},
            "reference": {"path": str(ref)}, "reduction": {"kind": "none"},
            "n_permutations": 100, **over}


@pytest.mark.parametrize(("over", "message"), [
    ({"mmd_device": "cuda"}, "embedding_mmd on backend 'numpy' runs on cpu only, not device "
     "'cuda'; it needs backend 'torch'"),
    ({"mmd_device": "cuda:0", "mmd_backend": "numpy"}, "not device 'cuda:0'"),
    ({"mmd_device": "gpu", "mmd_backend": "torch"}, r"embedding\.mmd_device"),
])
def test_embedding_mmd_device_must_fit_its_backend(tmp_path: Path, over: dict,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(embedding=_embedding_doc(tmp_path, **over))


class _FakeEmbedder:
    """Identity 'model': the payload arrays are the hidden layer."""

    def embed(self, payloads: list[Any]) -> np.ndarray:
        return np.asarray(payloads, dtype=np.float32)

    def embed_layers(self, payloads: list[Any]) -> dict[str, np.ndarray]:
        return {"hidden": self.embed(payloads)}


@pytest.mark.parametrize(("over", "device"), [
    ({}, "cpu"),
    ({"mmd_backend": "torch", "mmd_device": "cpu"}, "cpu"),
    ({"mmd_backend": "torch", "mmd_device": "cuda:3"}, "cuda:3"),
])
def test_embedding_mmd_runs_on_the_configured_device(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     over: dict, device: str) -> None:
    import monitor.embedding_drift as ed

    seen: list[dict[str, Any]] = []
    real = ed.MMDDetector

    def recording(reference: np.ndarray, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(reference, **{**kwargs, "device": "cpu"})  # no GPU needed here

    monkeypatch.setattr(ed, "build_embedder", lambda cfg: _FakeEmbedder())
    monkeypatch.setattr(ed, "MMDDetector", recording)
    cfg = parse(embedding=_embedding_doc(tmp_path, **over)).models[0].embedding
    assert cfg is not None
    drift = ed.EmbeddingDrift(cfg, 0.05, None)
    assert seen == [{"alpha": 0.05, "n_permutations": 100,
                     "backend": over.get("mmd_backend", "numpy"), "device": device,
                     "feature": "embedding"}]
    assert drift.names == ["embedding_mmd", "embedding_ks"]
    rng = np.random.default_rng(1)
    records = tuple(InferenceRecord("m", "", str(i), float(i), {"x": 0.0, "y": 0.0, "c": "a"},
                                    None, raw_input=tuple(rng.normal(2.0, size=4)))
                    for i in range(40))
    window = ClosedWindow("m", 0, 0.0, 1.0, records, {})
    results = drift.test(window)
    assert [r.detector for r in results] == drift.names
    assert all(r.drifted for r in results)
    assert [r.insufficient_data for r in drift.insufficient(1)] == [True, True]
