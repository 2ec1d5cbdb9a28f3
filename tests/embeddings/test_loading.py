"""Model loading from local files: every kind, and a clear error for every way it fails."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import embedding_test_nets as nets
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embeddings import (
    ArrayPreprocessor,
    ModelLoadError,
    TorchEmbedder,
    load_model,
    load_sentence_transformers,
    load_state_dict_model,
    load_torchscript,
    load_transformers,
)
from embeddings.loading import resolve_factory

FACTORY = "embedding_test_nets:mlp"


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; still deployed
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture
def mlp_weights(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    module = nets.mlp()
    torch.nn.init.normal_(module[0].weight)  # differs from the factory's fresh initialisation
    path = tmp_path / "mlp.pt"
    torch.save(module.state_dict(), path)
    return module, path


def outputs(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy()


X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))


def test_torchscript_file_loads_and_gives_the_same_outputs(tmp_path: Path) -> None:
    module = nets.mlp().eval()
    model = load_torchscript(save_torchscript(module, tmp_path / "m.pt"))
    assert model.kind == "torchscript" and model.weight_files == (tmp_path / "m.pt",)
    np.testing.assert_allclose(outputs(model.module, X), outputs(module, X), rtol=1e-6)


def test_torchscript_embedder_returns_the_model_output(tmp_path: Path) -> None:
    module = nets.mlp().eval()
    embedder = TorchEmbedder.from_torchscript(
        save_torchscript(module, tmp_path / "m.pt"), shape=(6,), device="cpu"
    )
    assert embedder.layers == ("@output",)
    np.testing.assert_allclose(embedder.embed(X.numpy()), outputs(module, X), rtol=1e-5)


def test_state_dict_from_torch_save_is_loaded_weights_only(mlp_weights) -> None:
    module, path = mlp_weights
    model = load_state_dict_model(FACTORY, path)
    assert model.kind == "state_dict" and model.classifier
    np.testing.assert_allclose(outputs(model.module, X), outputs(module.eval(), X), rtol=1e-6)


def test_state_dict_from_safetensors(tmp_path: Path) -> None:
    module = nets.mlp()
    torch.nn.init.normal_(module[2].weight)
    save_file(module.state_dict(), str(tmp_path / "mlp.safetensors"))
    model = load_state_dict_model(FACTORY, tmp_path / "mlp.safetensors")
    np.testing.assert_allclose(outputs(model.module, X), outputs(module.eval(), X), rtol=1e-6)


def test_checkpoint_with_a_state_dict_key_and_factory_kwargs(tmp_path: Path) -> None:
    module = nets.mlp(hidden=4)
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    model = load_state_dict_model(FACTORY, tmp_path / "ckpt.pt", factory_kwargs={"hidden": 4})
    assert model.describe()["factory_kwargs"] == {"hidden": 4}
    np.testing.assert_allclose(outputs(model.module, X), outputs(module.eval(), X), rtol=1e-6)


def test_a_pickled_object_is_refused_by_weights_only_loading(tmp_path: Path) -> None:
    torch.save({"weights": nets.DigitsCNN}, tmp_path / "evil.pt")  # a class: needs unpickling
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_state_dict_model(FACTORY, tmp_path / "evil.pt")


def test_a_state_dict_that_does_not_fit_names_keys_and_shapes(tmp_path: Path) -> None:
    state = nets.mlp(hidden=5).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["2.bias"]
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_model(FACTORY, tmp_path / "wrong.pt")
    message = str(info.value)
    assert "wrong.pt" in message and FACTORY in message
    assert "missing keys [2.bias]" in message
    assert "unexpected keys [extra.weight]" in message
    assert "0.weight: module (8, 6) vs file (5, 6)" in message


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="does not hold a state dict"):
        load_state_dict_model(FACTORY, tmp_path / "list.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"garbage\.safetensors"):
        load_state_dict_model(FACTORY, tmp_path / "garbage.safetensors")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("embedding_test_nets.mlp", "must look like 'package.module:function'"),
        ("a:b:c", "must look like"),
        (":mlp", "must look like"),
        ("no_such_module_xyz:mlp", "cannot import 'no_such_module_xyz'"),
        ("embedding_test_nets:nope", "has no attribute 'nope'"),
        ("embedding_test_nets:NOT_CALLABLE", "is a int, not a callable"),
    ],
)
def test_factory_strings_that_do_not_resolve(spec: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        resolve_factory(spec)


def test_factory_attribute_path_resolves() -> None:
    assert resolve_factory("embedding_test_nets:DigitsCNN.forward") is nets.DigitsCNN.forward


def test_factory_that_returns_no_module(mlp_weights) -> None:
    with pytest.raises(ModelLoadError, match=r"not a torch\.nn\.Module"):
        load_state_dict_model("embedding_test_nets:not_a_module", mlp_weights[1])


@pytest.mark.parametrize(
    "load", [load_torchscript, load_transformers, load_sentence_transformers, load_model]
)
def test_missing_model_path_is_named(tmp_path: Path, load) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        load(missing)


def test_missing_state_dict_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"state dict .*absent\.pt' does not exist"):
        load_state_dict_model(FACTORY, tmp_path / "absent.pt")


def test_not_torchscript(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelLoadError, match="cannot load TorchScript file"):
        load_torchscript(tmp_path / "x.pt")


def test_folder_without_config_or_weights(tmp_path: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_transformers(tmp_path)
    with pytest.raises(ModelLoadError, match=r"neither modules\.json"):
        load_model(tmp_path)
    shutil.copy(tiny_bert_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match=r"no weight files \(\*.safetensors"):
        load_transformers(tmp_path)


def test_transformers_folder_loads_encoder_and_tokenizer(tiny_bert_dir: Path) -> None:
    model = load_model(tiny_bert_dir)
    assert model.kind == "transformers" and not model.classifier
    assert type(model.module).__name__ == "BertModel"
    assert model.tokenizer is not None and model.tokenizer.is_fast
    assert {p.name for p in model.weight_files} == {"model.safetensors", "config.json"}
    assert "vocab.txt" in {p.name for p in model.tokenizer_files}
    assert model.max_seq_length == 64  # the position-embedding limit, below the tokenizer's


def test_transformers_classifier_is_recognised(tiny_bert_classifier_dir: Path) -> None:
    model = load_transformers(tiny_bert_classifier_dir)
    assert model.classifier and type(model.module).__name__ == "BertForSequenceClassification"
    base = load_transformers(tiny_bert_classifier_dir, task="base")
    assert not base.classifier and type(base.module).__name__ == "BertModel"
    with pytest.raises(ValueError, match="task must be"):
        load_transformers(tiny_bert_classifier_dir, task="generation")


def test_sentence_transformers_folder(minilm_path: Path) -> None:
    model = load_model(minilm_path)
    assert model.kind == "sentence-transformers"
    assert (model.pooling, model.normalize, model.max_seq_length) == ("mean", True, 256)
    assert not model.lowercase


def test_sentence_transformers_unsupported_module(tmp_path: Path, tiny_bert_dir: Path) -> None:
    folder = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="unsupported sentence-transformers module"):
        load_sentence_transformers(folder)


def test_sentence_transformers_pooling_config(tmp_path: Path, tiny_bert_dir: Path) -> None:
    folder = tmp_path / "st"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "1_Pooling").mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(
        '{"max_seq_length": 32, "do_lower_case": true}'
    )
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    model = load_sentence_transformers(folder)
    assert (model.pooling, model.normalize, model.max_seq_length, model.lowercase) == (
        "cls",
        False,
        32,
        True,
    )
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode": "lasttoken"}')
    with pytest.raises(ModelLoadError, match=r"pooling .* is not supported"):
        load_sentence_transformers(folder)


def test_state_dict_embedder_end_to_end(mlp_weights) -> None:
    module, path = mlp_weights
    embedder = TorchEmbedder.from_state_dict(FACTORY, path, shape=(6,), device="cpu")
    assert embedder.layers == ("2:input", "@probabilities")
    layers = embedder.embed_layers(X.numpy())
    with torch.no_grad():
        hidden = torch.relu(module[0](X)).numpy()
        probs = torch.softmax(module(X), dim=1).numpy()
    np.testing.assert_allclose(layers["2:input"], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers["@probabilities"], probs, rtol=1e-5, atol=1e-6)
    assert embedder.embed(X.numpy()).shape == (5, 8 + 3)
    assert isinstance(embedder.preprocessor, ArrayPreprocessor)
