"""A small CNN trained here on scikit-learn's bundled digits: shift through its layers.

The image model's penultimate layer and its softmax outputs (black-box shift detection,
BBSD) are embedded by a TorchEmbedder loaded from a state dict, and tested with per-dimension
KS and Bonferroni.
"""

from __future__ import annotations

import embedding_test_nets as nets
import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.datasets import load_digits

from detectors import KSDetector
from embeddings import TorchEmbedder


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    order = np.random.default_rng(0).permutation(len(images))
    train, reference, current = order[:900], order[900:1350], order[1350:]
    return {
        "x_train": images[train],
        "y_train": data.target[train],
        "reference": images[reference],
        "current": images[current],
        "y_current": data.target[current],
    }


@pytest.fixture(scope="module")
def embedder(digits, tmp_path_factory: pytest.TempPathFactory) -> TorchEmbedder:
    torch.manual_seed(0)
    model = nets.digits_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    threads = torch.get_num_threads()
    # One thread: tiny kernels gain nothing from two, and on a busy machine OpenMP's
    # spinning threads made this 1 s of training take 7 s.
    torch.set_num_threads(1)
    try:
        for _epoch in range(12):
            for batch in torch.randperm(len(x)).split(64):
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("digits") / "cnn.pt"
    torch.save(model.state_dict(), path)
    return TorchEmbedder.from_state_dict(
        "embedding_test_nets:digits_cnn", path, shape=(1, 8, 8), device="cpu"
    )


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    return ndimage.rotate(images, degrees, axes=(2, 3), reshape=False, order=1).astype(np.float32)


def noisy(images: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (images + rng.normal(0.0, sigma, size=images.shape)).astype(np.float32)


def test_the_model_learned_digits(embedder, digits) -> None:
    probs = embedder.embed_layers(digits["current"])["@probabilities"]
    assert (probs.argmax(axis=1) == digits["y_current"]).mean() > 0.9


@pytest.mark.parametrize(
    ("shift", "make"),
    [
        ("none", lambda x: x),
        ("rotation 30°", lambda x: rotate(x, 30.0)),
        ("gaussian noise 0.4", lambda x: noisy(x, 0.4)),
    ],
)
def test_shift_detected_through_penultimate_layer_and_bbsd(embedder, digits, shift, make) -> None:
    assert embedder.layers == ("head:input", "@probabilities")
    reference = embedder.embed_layers(digits["reference"])
    current = embedder.embed_layers(make(digits["current"]))
    results = {
        layer: KSDetector(columns(reference[layer]), alpha=0.05, correction="bonferroni").test(
            columns(current[layer])
        )
        for layer in embedder.layers
    }
    for layer, result in results.items():
        if shift == "none":
            assert not result.drifted, (layer, result.p_value)
        else:
            assert result.drifted and result.p_value < 1e-3, (layer, result.p_value)


def test_flat_array_payloads_from_inference_logs(embedder, digits) -> None:
    images = digits["current"][:3]
    records = [{"array": image.ravel().tolist()} for image in images]
    np.testing.assert_allclose(embedder.embed(records), embedder.embed(images), rtol=1e-6)
    assert embedder.embed(images).shape == (3, 32 + 10)


def columns(x: np.ndarray) -> dict[str, np.ndarray]:
    return {f"d{i}": x[:, i] for i in range(x.shape[1])}
