"""Reference-embedding cache: computed once, invalidated by any change of what went into it."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import embedding_test_nets as nets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embeddings import (
    PCAReducer,
    Progress,
    RandomProjection,
    ReducedEmbedder,
    ReferenceCache,
    TorchEmbedder,
)
from embeddings.fingerprint import sha256_files, sha256_payloads


class Counting:
    """A fake embedder that counts what it embeds."""

    def __init__(self, fingerprint: str = "fake-v1") -> None:
        self.fingerprint = fingerprint
        self.embedded = 0

    def embed(self, payloads):
        self.embedded += len(payloads)
        return np.array([[len(str(p)), 1.0] for p in payloads], dtype=np.float32)


TEXTS = [f"sentence number {i} about the weather" for i in range(12)]


def test_computed_once_then_read_back(tmp_path: Path) -> None:
    embedder = Counting()
    cache = ReferenceCache(tmp_path / "cache", chunk_size=5, progress=False)
    first = cache.get_or_compute(embedder, TEXTS)
    second = cache.get_or_compute(embedder, TEXTS)
    np.testing.assert_array_equal(first, second)
    assert embedder.embedded == 12 and (cache.hits, cache.misses) == (1, 1)
    again = ReferenceCache(tmp_path / "cache", progress=False).get_or_compute(embedder, TEXTS)
    np.testing.assert_array_equal(again, first)
    assert embedder.embedded == 12  # a new process reads the same files
    key = cache.key(embedder, TEXTS)
    array_path, meta_path = cache.paths(key)
    meta = json.loads(meta_path.read_text())
    assert meta["fingerprint"] == "fake-v1" and meta["shape"] == [12, 2]
    assert meta["data_sha256"] == sha256_payloads(TEXTS) and meta["key"] == key
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [array_path.name, meta_path.name]
    )  # no temporary files left behind


def test_fingerprint_and_data_changes_miss(tmp_path: Path) -> None:
    cache = ReferenceCache(tmp_path, progress=False)
    cache.get_or_compute(Counting("a"), TEXTS)
    cache.get_or_compute(Counting("b"), TEXTS)
    cache.get_or_compute(Counting("a"), [*TEXTS[:-1], "changed"])
    cache.get_or_compute(Counting("a"), TEXTS[::-1])  # order is part of the data
    cache.get_or_compute(Counting("a"), TEXTS, data_sha256="file-hash-1")
    assert (cache.hits, cache.misses) == (0, 5)
    cache.get_or_compute(Counting("a"), TEXTS, data_sha256="file-hash-1")
    assert cache.hits == 1


def test_a_damaged_entry_is_recomputed(tmp_path: Path, caplog) -> None:
    embedder = Counting()
    cache = ReferenceCache(tmp_path, progress=False)
    cache.get_or_compute(embedder, TEXTS)
    array_path, _ = cache.paths(cache.key(embedder, TEXTS))
    np.save(array_path, np.zeros((12, 2), dtype=np.float32))  # not what the metadata says
    cache.get_or_compute(embedder, TEXTS)
    assert "does not match its metadata" in caplog.text
    array_path.write_bytes(b"garbage")
    cache.get_or_compute(embedder, TEXTS)
    assert "unreadable" in caplog.text
    assert embedder.embedded == 36 and cache.misses == 3
    np.testing.assert_array_equal(cache.get_or_compute(embedder, TEXTS)[:, 1], 1.0)
    assert cache.hits == 1


@pytest.fixture
def model_copy(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


def test_every_ingredient_of_a_real_embedder_invalidates(tmp_path: Path, model_copy: Path) -> None:
    cache = ReferenceCache(tmp_path / "cache", progress=False)

    def run(**options) -> np.ndarray:
        embedder = TorchEmbedder.from_transformers(model_copy, device="cpu", **options)
        return cache.get_or_compute(embedder, TEXTS)

    base = run(max_length=32)
    np.testing.assert_array_equal(run(max_length=32), base)
    assert (cache.hits, cache.misses) == (1, 1)

    run(max_length=16)  # preprocessing
    run(max_length=32, layers=["encoder.layer.0"])  # layer
    run(max_length=32, pooling="cls")  # pooling
    assert (cache.hits, cache.misses) == (1, 4)

    special = model_copy / "special_tokens_map.json"  # tokenizer files
    special.write_text(special.read_text() + "\n")
    run(max_length=32)
    assert cache.misses == 5

    weights = model_copy / "model.safetensors"  # the weights' bytes
    state = load_file(str(weights))
    state["pooler.dense.bias"] = state["pooler.dense.bias"] + 1.0
    save_file(state, str(weights), metadata={"format": "pt"})
    run(max_length=32)
    assert cache.misses == 6

    hits = cache.hits
    np.testing.assert_array_equal(run(max_length=32), run(max_length=32))
    assert (cache.hits, cache.misses) == (hits + 2, 6)  # and now it is stable again


def test_reduction_settings_invalidate(tmp_path: Path) -> None:
    cache = ReferenceCache(tmp_path, progress=False)
    inner = Counting()
    x = np.random.default_rng(0).normal(size=(20, 2))
    for reducer in (
        RandomProjection(2, seed=0),
        RandomProjection(2, seed=1),
        PCAReducer.fit(x, 1),
        PCAReducer.fit(x[:10], 1),
        RandomProjection(2, seed=0),
    ):
        cache.get_or_compute(ReducedEmbedder(inner, reducer), TEXTS)
    assert (cache.hits, cache.misses) == (1, 4)


def test_weights_are_hashed_by_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt"
    for path in (a, b):
        path.parent.mkdir()
        torch.save(nets.mlp().state_dict(), path)
    assert sha256_files([a]) == sha256_files([b])  # location does not matter
    embedder = TorchEmbedder.from_state_dict("embedding_test_nets:mlp", a, shape=(6,), device="cpu")
    fingerprint = embedder.fingerprint
    torch.save(nets.mlp(hidden=8, n_out=3).state_dict() | {"0.bias": torch.ones(8)}, a)
    assert sha256_files([a]) != sha256_files([b])
    changed = TorchEmbedder.from_state_dict("embedding_test_nets:mlp", a, shape=(6,), device="cpu")
    assert changed.fingerprint != fingerprint
    other_version = TorchEmbedder.from_state_dict(
        "embedding_test_nets:mlp", b, shape=(6,), device="cpu", version="2"
    )
    assert other_version.fingerprint != fingerprint


def test_progress_is_throttled_on_non_tty_streams() -> None:
    clock = iter(range(0, 1000, 10))  # every update is 10 s later
    stream = io.StringIO()
    with Progress(100, "embedding reference", stream=stream, clock=lambda: next(clock)) as p:
        for _ in range(10):
            p.update(10)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 30, 60, 90 s, and the closing line; not 10
    assert lines[-1].startswith("embedding reference: 100/100 (100%)")


def test_a_short_run_prints_nothing_and_disabled_prints_nothing() -> None:
    stream = io.StringIO()
    with Progress(100, "quick", stream=stream) as p:
        p.update(100)
    with Progress(100, "off", stream=stream, enabled=False, interval_s=0.0) as p:
        p.update(100)
    assert stream.getvalue() == ""


def test_progress_uses_tqdm_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(4, "embedding reference", stream=stream) as p:
        p.update(4)
    assert "embedding reference:   0%|" in stream.getvalue()  # a tqdm bar


def test_cache_reports_progress_of_long_runs(tmp_path: Path) -> None:
    stream = io.StringIO()
    cache = ReferenceCache(tmp_path, chunk_size=3, stream=stream)
    cache.get_or_compute(Counting(), TEXTS)
    assert stream.getvalue() == ""  # a fast run in a log: silent
    with pytest.raises(ValueError, match="chunk_size"):
        ReferenceCache(tmp_path, chunk_size=0)
