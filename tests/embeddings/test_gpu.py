"""The CUDA path: the same code as the CPU tests, on a GPU (run on the GPU machine)."""

from __future__ import annotations

import embedding_test_nets as nets
import numpy as np
import pytest
import torch

from embeddings import LoadedModel, TorchEmbedder
from embeddings.preprocessing import ArrayPreprocessor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_minilm_on_cuda_in_bf16_matches_cpu_fp32(minilm_path) -> None:
    texts = [f"sentence {i} about {'rain' if i % 2 else 'football'} and more" for i in range(50)]
    cpu = TorchEmbedder.from_sentence_transformers(minilm_path, device="cpu", precision="fp32")
    cpu_vectors = cpu.embed(texts)
    gpu = TorchEmbedder.from_sentence_transformers(minilm_path, device="cuda")
    assert gpu.device.type == "cuda" and gpu.precision in ("bf16", "fp16")
    vectors = gpu.embed(texts)
    cosine = (vectors * cpu_vectors).sum(axis=1)  # both L2-normalised
    assert vectors.dtype == np.float32 and cosine.min() > 0.99
    fp32 = TorchEmbedder.from_sentence_transformers(minilm_path, device="cuda:0", precision="fp32")
    np.testing.assert_allclose(fp32.embed(texts), cpu_vectors, atol=1e-4)


def test_cuda_batches_are_pinned() -> None:
    embedder = TorchEmbedder(
        LoadedModel(nets.mlp(), "state_dict", "t", (), classifier=True),
        ArrayPreprocessor((6,)),
        device="cuda",
        precision="fp32",
    )
    batch = embedder._prepare(np.zeros((4, 6), dtype=np.float32))
    assert batch.args[0].is_pinned()
    x = np.random.default_rng(0).normal(size=(100, 6)).astype(np.float32)
    cpu = TorchEmbedder(
        LoadedModel(nets.mlp(), "state_dict", "t", (), classifier=True),
        ArrayPreprocessor((6,)),
        device="cpu",
    )
    np.testing.assert_allclose(embedder.embed(x), cpu.embed(x), atol=1e-5)


class Hungry(torch.nn.Module):
    """Allocates 4 GiB per row: a batch of 64 cannot fit on any current GPU, 8 fits on 40 GB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty((x.shape[0], 2**30), device=x.device)
        return x * 2 + scratch[:, :1] * 0


def test_real_cuda_out_of_memory_halves_the_batch() -> None:
    model = LoadedModel(Hungry(), "state_dict", "t", ())
    embedder = TorchEmbedder(
        model,
        ArrayPreprocessor((3,)),
        device="cuda",
        precision="fp32",
        layers=["@output"],
        max_batch_size=64,
        min_batch_size=4,
    )
    x = np.ones((64, 3), dtype=np.float32)
    np.testing.assert_allclose(embedder.embed(x), 2 * x)
    assert 4 <= embedder._runner.batch_size <= 32
