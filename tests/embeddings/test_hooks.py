"""Layer capture by name in one forward pass, pooling, and the default layers."""

from __future__ import annotations

from pathlib import Path

import embedding_test_nets as nets
import numpy as np
import pytest
import torch
from torch import nn

from embeddings import LayerError, LoadedModel, TorchEmbedder, default_layers
from embeddings.hooks import LayerCapture, model_output, pool, resolve_layers
from embeddings.preprocessing import ArrayPreprocessor


class CountingCNN(nets.DigitsCNN):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def array_embedder(module: nn.Module, shape: tuple[int, ...], **options) -> TorchEmbedder:
    model = LoadedModel(
        module=module.eval(), kind="state_dict", source="test", weight_files=(), classifier=True
    )
    return TorchEmbedder(model, ArrayPreprocessor(shape), device="cpu", **options)


IMAGES = np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32)


def test_named_layers_are_captured_in_a_single_forward_pass() -> None:
    module = CountingCNN()
    embedder = array_embedder(
        module, (1, 8, 8), layers=["features.2", "hidden.1", "head"], max_batch_size=64
    )
    layers = embedder.embed_layers(IMAGES)
    assert module.calls == 1
    x = torch.from_numpy(IMAGES)
    with torch.no_grad():
        conv = module.features[:3](x)
        hidden = module.hidden[:2](module.features(x))
        logits = module(x)
    np.testing.assert_allclose(
        layers["features.2"], conv.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6
    )  # (n, c, h, w) -> global average pool
    np.testing.assert_allclose(layers["hidden.1"], hidden.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers["head"], logits.numpy(), rtol=1e-5, atol=1e-6)
    assert embedder.dims == {"features.2": 32, "hidden.1": 32, "head": 10}


def test_hooks_are_removed_after_each_call() -> None:
    module = nets.DigitsCNN()
    embedder = array_embedder(module, (1, 8, 8), layers=["features.0"])
    embedder.embed(IMAGES)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_unknown_layer_lists_valid_names_with_a_suggestion() -> None:
    with pytest.raises(LayerError) as info:
        resolve_layers(nets.DigitsCNN(), ["hiden.1"])
    message = str(info.value)
    assert "'hiden.1' not found" in message and "Did you mean 'hidden.1'" in message
    assert "Valid names (11 in total" in message
    assert "features, features.0, features.1" in message and "head" in message


def test_long_layer_lists_are_cut_with_a_total(minilm) -> None:
    with pytest.raises(LayerError) as info:
        resolve_layers(minilm.model.module, ["encoder.layer.9"])
    message = str(info.value)
    total = len([n for n, _ in minilm.model.module.named_modules() if n])
    assert f"({total} in total" in message and message.endswith(", ...")


def test_penultimate_is_the_input_of_the_last_linear_and_probabilities_sum_to_one() -> None:
    module = nets.DigitsCNN()
    embedder = array_embedder(module, (1, 8, 8))
    assert embedder.layers == ("head:input", "@probabilities")
    layers = embedder.embed_layers(IMAGES)
    x = torch.from_numpy(IMAGES)
    with torch.no_grad():
        penultimate = module.hidden(module.features(x))
        probs = torch.softmax(module(x), dim=1)
    np.testing.assert_allclose(layers["head:input"], penultimate.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers["@probabilities"], probs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers["@probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_probabilities_need_two_dimensional_logits() -> None:
    embedder = array_embedder(
        nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 8, 8), layers=["@probabilities"]
    )
    with pytest.raises(LayerError, match=r"needs 2-D logits .* got shape \(7, 2, 6, 6\)"):
        embedder.embed(IMAGES)


def test_penultimate_needs_a_linear_head() -> None:
    with pytest.raises(LayerError, match=r"needs a model with a torch\.nn\.Linear head"):
        resolve_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), ["@penultimate"])


def test_default_layers() -> None:
    classifier = LoadedModel(
        module=nets.mlp(), kind="state_dict", source="x", weight_files=(), classifier=True
    )
    encoder = LoadedModel(module=nets.mlp(), kind="transformers", source="x", weight_files=())
    assert default_layers(classifier) == ("@penultimate", "@probabilities")
    assert default_layers(encoder) == ("@output",)


def test_a_layer_that_never_runs_is_reported() -> None:
    module = nets.DigitsCNN()
    module.unused = nn.Linear(2, 2)
    embedder = array_embedder(module, (1, 8, 8), layers=["unused"])
    with pytest.raises(LayerError, match="did not run in the forward pass"):
        embedder.embed(IMAGES)


def test_duplicate_and_empty_layer_lists_are_misuse() -> None:
    with pytest.raises(ValueError, match="distinct"):
        resolve_layers(nets.mlp(), ["@penultimate", "2:input"])
    with pytest.raises(ValueError, match="non-empty"):
        resolve_layers(nets.mlp(), [])
    with pytest.raises(ValueError, match="non-empty"):
        resolve_layers(nets.mlp(), "head")


def test_text_pooling_mean_cls_max_over_the_attention_mask() -> None:
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(pool(x, mask, "mean")[0].numpy(), x[0, :2].mean(0).numpy())
    np.testing.assert_allclose(pool(x, mask, "mean")[1].numpy(), x[1].mean(0).numpy())
    np.testing.assert_allclose(pool(x, mask, "cls").numpy(), x[:, 0].numpy())
    np.testing.assert_allclose(pool(x, mask, "max")[0].numpy(), x[0, 1].numpy())
    assert pool(x, mask, "flatten").shape == (2, 12)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(x, mask, "median")


def test_spatial_pooling_and_flatten() -> None:
    x = torch.randn(3, 4, 5, 6)
    np.testing.assert_allclose(pool(x, None, "mean").numpy(), x.mean(dim=(2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(pool(x, None, "max").numpy(), x.amax(dim=(2, 3)).numpy())
    assert pool(x, None, "flatten").shape == (3, 120)
    assert pool(torch.ones(3), None, "mean").shape == (3, 1)
    with pytest.raises(ValueError, match="cls"):
        pool(x, None, "cls")


def test_model_output_of_huggingface_style_outputs() -> None:
    logits = torch.tensor([[0.0, 1.0]])
    assert model_output({"logits": logits, "hidden": torch.zeros(1)}, "@output") is logits
    assert model_output((logits, torch.zeros(1)), "@output") is logits
    with pytest.raises(LayerError, match="holding no tensor"):
        model_output("text", "@output")


def test_text_model_hidden_layer_mean_pooled(tiny_bert_dir: Path) -> None:
    embedder = TorchEmbedder.from_transformers(
        tiny_bert_dir, layers=["encoder.layer.0", "@output"], device="cpu"
    )
    texts = ["a short one", "a noticeably longer sentence with many more tokens in it"]
    layers = embedder.embed_layers(texts)
    tokenizer, module = embedder.model.tokenizer, embedder.model.module
    for i, text in enumerate(texts):  # one at a time: no padding at all
        with torch.no_grad():
            out = module(**tokenizer([text], return_tensors="pt"), output_hidden_states=True)
        np.testing.assert_allclose(
            layers["encoder.layer.0"][i],
            out.hidden_states[1][0].mean(0).numpy(),
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            layers["@output"][i], out.last_hidden_state[0].mean(0).numpy(), rtol=1e-4, atol=1e-5
        )


def test_torchscript_layers_cannot_be_hooked(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(nets.mlp())
    with pytest.raises(LayerError, match="TorchScript"):
        resolve_layers(scripted, ["0"], hookable=False)
    assert resolve_layers(scripted, ["@output", "@probabilities"], hookable=False) == (
        "@output",
        "@probabilities",
    )


def test_layer_capture_input_hook() -> None:
    module = nets.mlp()
    x = torch.randn(4, 6)
    with torch.no_grad(), LayerCapture(module, ["2:input", "0"]) as capture:
        module(x)
        np.testing.assert_allclose(
            capture.take("2:input").numpy(), torch.relu(module[0](x)).numpy(), rtol=1e-6
        )
        np.testing.assert_allclose(capture.take("0").numpy(), module[0](x).numpy(), rtol=1e-6)
