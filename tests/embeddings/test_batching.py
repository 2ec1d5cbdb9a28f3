"""Batching: length buckets, prefetching, OOM back-off, micro-batching, device and precision."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import embedding_test_nets as nets
import numpy as np
import pytest
import torch
from torch import nn

from embeddings import (
    BatchRunner,
    DeviceError,
    EmbeddingOutOfMemoryError,
    LoadedModel,
    MicroBatcher,
    PayloadError,
    TorchEmbedder,
    resolve_device,
    resolve_precision,
)
from embeddings.batching import bucket_order, is_out_of_memory
from embeddings.preprocessing import ArrayPreprocessor, Batch


def prepare(items) -> Batch:
    return Batch(args=(torch.as_tensor(np.asarray(items, dtype=np.float32)).reshape(-1, 1),))


def double(batch: Batch) -> dict[str, np.ndarray]:
    return {"out": (batch.args[0] * 2).numpy()}


class FakeOOM:
    """forward that fails like CUDA would for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return double(batch)


def test_rows_come_back_in_the_callers_order_after_bucketing() -> None:
    items = list(range(23))
    lengths = np.random.default_rng(0).integers(1, 50, size=23)
    seen: list[list[int]] = []

    def record(batch: Batch) -> dict[str, np.ndarray]:
        seen.append([int(v) for v in batch.args[0].flatten()])
        return double(batch)

    out = BatchRunner(max_batch_size=5).run(items, prepare=prepare, forward=record, lengths=lengths)
    np.testing.assert_array_equal(out["out"][:, 0], np.arange(23) * 2)
    # every batch holds neighbours in the longest-first order
    order = [int(i) for i in bucket_order(lengths, 23)]
    assert [v for batch in seen for v in batch] == order
    assert [len(b) for b in seen] == [5, 5, 5, 5, 3]


def test_bucket_order_is_stable_longest_first() -> None:
    np.testing.assert_array_equal(bucket_order(np.array([1, 3, 3, 2]), 4), [1, 2, 3, 0])
    np.testing.assert_array_equal(bucket_order(None, 3), [0, 1, 2])
    with pytest.raises(ValueError, match="lengths has 2 entries for 3 items"):
        bucket_order(np.array([1, 2]), 3)


def test_out_of_memory_halves_the_batch_and_retries_the_same_rows() -> None:
    forward = FakeOOM(limit=8)
    runner = BatchRunner(max_batch_size=32)
    out = runner.run(list(range(70)), prepare=prepare, forward=forward)
    np.testing.assert_array_equal(out["out"][:, 0], np.arange(70) * 2)
    assert forward.sizes[:3] == [32, 16, 8]  # halved twice, then the rows went through
    assert runner.batch_size == 8 and max(forward.sizes[3:]) == 8
    runner.reset()
    assert runner.batch_size == 32


def test_out_of_memory_at_the_floor_raises_a_clear_error() -> None:
    forward = FakeOOM(limit=2)
    runner = BatchRunner(max_batch_size=16, min_batch_size=4)
    with pytest.raises(EmbeddingOutOfMemoryError) as info:
        runner.run(list(range(20)), prepare=prepare, forward=forward)
    assert info.value.batch_size == 4
    assert "batch size 4, the floor (min_batch_size=4)" in str(info.value)
    assert "Tried to allocate 2.00 GiB" in str(info.value)
    assert forward.sizes == [16, 8, 4]


def test_oom_through_the_embedder_with_a_model_that_fails_on_big_batches() -> None:
    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nets.mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return self.inner(x)

    model = LoadedModel(
        module=Flaky(), kind="state_dict", source="t", weight_files=(), classifier=True
    )
    embedder = TorchEmbedder(model, ArrayPreprocessor((6,)), device="cpu", max_batch_size=16)
    x = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    out = embedder.embed_layers(x)
    with torch.no_grad():
        expected = torch.softmax(model.module.inner(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(out["@probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert embedder._runner.batch_size == 4


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken(batch: Batch) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        BatchRunner(max_batch_size=8).run(list(range(20)), prepare=prepare, forward=broken)
    assert calls == [8]


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(MemoryError())


def test_preparation_runs_in_a_worker_and_overlaps_the_forward_pass() -> None:
    second_prepared = threading.Event()
    threads: set[str] = set()

    def slow_prepare(items) -> Batch:
        threads.add(threading.current_thread().name)
        if items[0] == 4:
            second_prepared.set()
        return prepare(items)

    def forward(batch: Batch) -> dict[str, np.ndarray]:
        if int(batch.args[0][0]) == 0:
            # Without overlap, batch 2 would be prepared only after this returns.
            assert second_prepared.wait(timeout=10), "next batch was not prepared meanwhile"
        return double(batch)

    progress: list[int] = []
    out = BatchRunner(max_batch_size=4, prefetch=1).run(
        list(range(10)), prepare=slow_prepare, forward=forward, on_progress=progress.append
    )
    np.testing.assert_array_equal(out["out"][:, 0], np.arange(10) * 2)
    assert threads == {"driftline-embed-prepare_0"}
    assert progress == [4, 4, 2]


def test_no_prefetch_prepares_in_the_calling_thread() -> None:
    names = []

    def record(items) -> Batch:
        names.append(threading.current_thread().name)
        return prepare(items)

    BatchRunner(max_batch_size=3, prefetch=0).run([1, 2, 3, 4], prepare=record, forward=double)
    assert set(names) == {threading.current_thread().name}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an int >= 1"),
        ({"min_batch_size": 0}, "min_batch_size must be an int >= 1"),
        ({"prefetch": -1}, "prefetch must be an int >= 0"),
        ({"max_batch_size": 4, "min_batch_size": 8}, "must not exceed"),
    ],
)
def test_runner_options_are_validated(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        BatchRunner(**options)


def test_text_batches_are_bucketed_and_equal_unbatched_results(tiny_bert_dir: Path) -> None:
    embedder = TorchEmbedder.from_transformers(tiny_bert_dir, device="cpu", max_batch_size=3)
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 30))) for _ in range(17)]
    shapes: list[tuple[int, ...]] = []
    original = embedder.preprocessor.prepare

    def spy(items):
        batch = original(items)
        shapes.append(tuple(batch.kwargs["input_ids"].shape))
        return batch

    embedder.preprocessor.prepare = spy  # type: ignore[method-assign]
    batched = embedder.embed(texts)
    embedder.preprocessor.prepare = original  # type: ignore[method-assign]
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)
    padded = sum(n * width for n, width in shapes)
    unbucketed = sum(
        len(texts[i : i + 3]) * max(len(t.split()) + 2 for t in texts[i : i + 3])
        for i in range(0, 17, 3)
    )
    assert padded < unbucketed  # bucketing wasted fewer padding tokens than arrival order


def test_cuda_without_cuda_is_an_error_not_a_fallback(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(device)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError):
        TorchEmbedder(
            LoadedModel(nets.mlp(), "state_dict", "t", ()), ArrayPreprocessor((6,)), device="cuda"
        )


def test_cuda_index_beyond_the_devices(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps", ""])
def test_unknown_device_strings(device: str) -> None:
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(device)
    with pytest.raises(TypeError):
        resolve_device(0)  # type: ignore[arg-type]


def test_precision(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu, cpu_flag_set=()) is None
    assert resolve_precision("fp32", cuda) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", cuda) is torch.float16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", cpu)


def test_bf16_autocast_through_the_same_code_on_cpu() -> None:
    model = LoadedModel(nets.mlp(), "state_dict", "t", (), classifier=True)
    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    fp32 = TorchEmbedder(model, ArrayPreprocessor((6,)), device="cpu", precision="fp32")
    bf16 = TorchEmbedder(model, ArrayPreprocessor((6,)), device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert fp32.fingerprint != bf16.fingerprint
    a, b = fp32.embed(x), bf16.embed(x)
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=0.05)


def test_micro_batcher_gathers_up_to_max_batch_size() -> None:
    calls: list[int] = []

    def embed(payloads):
        calls.append(len(payloads))
        return np.array([[p, -p] for p in payloads], dtype=np.float32)

    with MicroBatcher(embed, max_batch_size=4, max_wait_s=0.5) as batcher:
        out = batcher.embed(list(range(10)))
    np.testing.assert_array_equal(out[:, 0], np.arange(10))
    assert calls == [4, 4, 2] and batcher.batch_sizes == calls


def test_micro_batcher_runs_a_partial_batch_after_max_wait() -> None:
    with MicroBatcher(
        lambda p: np.ones((len(p), 3)), max_batch_size=64, max_wait_s=0.05
    ) as batcher:
        start = time.monotonic()
        row = batcher.submit("x").result(timeout=5)
        elapsed = time.monotonic() - start
    assert row.shape == (3,) and 0.04 <= elapsed < 2.0
    assert batcher.batch_sizes == [1]


def test_micro_batcher_isolates_a_bad_payload() -> None:
    def embed(payloads):
        for i, p in enumerate(payloads):
            if p == "bad":
                raise PayloadError(f"payload {i}: bad", index=i)
        return np.zeros((len(payloads), 2))

    with MicroBatcher(embed, max_batch_size=8, max_wait_s=0.2) as batcher:
        futures = [batcher.submit(p) for p in ["a", "bad", "c"]]
        assert isinstance(futures[1].exception(timeout=5), PayloadError)
        assert futures[0].result(timeout=5).shape == (2,)
        assert futures[2].result(timeout=5).shape == (2,)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("late")


def test_micro_batcher_options() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda p: p, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(lambda p: p, max_wait_s=-1)
