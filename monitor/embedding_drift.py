"""Drift in a deployed model's own feature space: embed each window, test the vectors.

At start-up the model's reference inputs are embedded once (cached on disk by the
embedder's fingerprint and the reference file's hash). The hidden-layer vectors are split:
one part fits the reduction (PCA), the other is the reference the tests use, because a
reduction fitted on the tested sample makes unshifted windows look shifted. Each window's
inputs are embedded in batches and tested with

* ``embedding_mmd``: kernel MMD over the reduced vectors (one multivariate test; ``test``:
  ``mmd``, the median bandwidth, or ``mmd_agg``, five bandwidths with the level corrected);
* ``embedding_ks``: KS per reduced dimension, Bonferroni-corrected;
* ``bbsd``: KS per class on the softmax outputs (black-box shift detection), if enabled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors import DriftResult, KSDetector, MMDAggDetector, MMDDetector
from monitor.components import BaseComponent
from monitor.errors import ReferenceDataError
from monitor.reference import json_lines
from monitor.settings import EmbeddingSettings
from monitor.windows import ClosedWindow


def _payloads(path: Path) -> tuple[list[Any], str]:
    """Reference inputs from JSONL (inference records or payload objects), and the hash."""
    if not path.is_file():
        raise ReferenceDataError(f"{path}: embedding reference file not found")
    raw = path.read_bytes()
    out: list[Any] = []
    for _i, doc in json_lines(path, raw.decode("utf-8").splitlines()):
        payload = doc.get("input", doc) if isinstance(doc, dict) else doc
        if isinstance(payload, dict) and "text" in payload:
            payload = payload["text"]
        elif isinstance(payload, dict) and "array" in payload:
            payload = payload["array"]
        out.append(payload)
    if len(out) < 4:
        raise ReferenceDataError(f"{path}: needs at least 4 reference inputs, found {len(out)}")
    return out, hashlib.sha256(raw).hexdigest()


def build_embedder(cfg: EmbeddingSettings) -> Any:
    """The configured model as a :class:`embeddings.TorchEmbedder`."""
    from embeddings import PROBABILITIES, TorchEmbedder

    m = cfg.model
    options: dict[str, Any] = {"device": cfg.device, "precision": cfg.precision,
                               "max_batch_size": cfg.batch_size,
                               "layers": list(cfg.layers) if cfg.layers else None}
    if m.kind == "sentence-transformers":
        emb = TorchEmbedder.from_sentence_transformers(m.path, max_length=m.max_length,
                                                       **options)
    elif m.kind == "transformers":
        emb = TorchEmbedder.from_transformers(m.path, max_length=m.max_length, **options)
    elif m.kind == "torchscript":
        emb = TorchEmbedder.from_torchscript(m.path, shape=m.shape or (), dtype=m.dtype,
                                             **options)
    else:
        assert m.factory is not None
        emb = TorchEmbedder.from_state_dict(m.factory, m.path, shape=m.shape or (),
                                            dtype=m.dtype, **options)
    if cfg.bbsd and PROBABILITIES not in emb.layers:
        options["layers"] = [*emb.layers, PROBABILITIES]
        emb = TorchEmbedder(emb.model, emb.preprocessor, **options)
    return emb


class EmbeddingDrift(BaseComponent):
    """One model's embedding detectors, built from its reference inputs: a component
    (:mod:`monitor.components`) over the window records' ``raw_input``."""

    def __init__(self, cfg: EmbeddingSettings, alpha: float, cache_dir: Path | None,
                 on_embedded: Callable[[int, float], None] | None = None) -> None:
        from embeddings import (
            PROBABILITIES,
            NoReduction,
            PCAReducer,
            RandomProjection,
            ReferenceCache,
            split_reference,
        )

        self.cfg = cfg
        self.on_embedded = on_embedded
        self.embedder = build_embedder(cfg)
        payloads, data_hash = _payloads(cfg.reference.path)
        if cache_dir is not None:
            cache = ReferenceCache(cache_dir / "embeddings")
            vectors = cache.get_or_compute(self.embedder, payloads, data_sha256=data_hash)
        else:
            vectors = self.embedder.embed(payloads)
        # The cached array holds the layers side by side; one embedding tells the widths.
        widths = self.embedder.embed_layers(payloads[:1])
        self.layers = list(widths)
        self.prob_layer = PROBABILITIES if PROBABILITIES in widths else None
        hidden_cols = sum(v.shape[1] for k, v in widths.items() if k != PROBABILITIES)
        hidden, probs = vectors[:, :hidden_cols], vectors[:, hidden_cols:]
        r = cfg.reduction
        fit, test = split_reference(hidden, r.fit_fraction, seed=0)
        if r.kind == "pca":
            self.reducer: Any = PCAReducer.fit(fit, min(r.components, *fit.shape))
        elif r.kind == "random":
            self.reducer, test = RandomProjection(r.components, seed=0), hidden
        else:
            self.reducer, test = NoReduction(), hidden
        ref = self.reducer.transform(test).astype(np.float64)
        mmd_test = MMDAggDetector if cfg.test == "mmd_agg" else MMDDetector
        self.mmd: MMDDetector | MMDAggDetector = mmd_test(
            ref, alpha=alpha, n_permutations=cfg.n_permutations, backend=cfg.mmd_backend,
            device=cfg.mmd_device, feature="embedding")
        self.ks = KSDetector({f"dim_{i}": ref[:, i] for i in range(ref.shape[1])},
                             alpha=alpha, correction="bonferroni")
        # BBSD whenever the softmax is captured (a classifier's default layers include it).
        self.bbsd = (KSDetector({f"class_{i}": probs[:, i] for i in range(probs.shape[1])},
                                alpha=alpha, correction="bonferroni")
                     if self.prob_layer is not None else None)
        n = ref.shape[0]
        dims = tuple(f"dim_{i}" for i in range(ref.shape[1]))
        self._untested = {
            "embedding_mmd": (("embedding",), (n,), alpha, "none"),
            "embedding_ks": (dims, (n,) * len(dims), alpha, "bonferroni"),
        }
        if self.bbsd is not None:
            classes = tuple(f"class_{i}" for i in range(probs.shape[1]))
            self._untested["bbsd"] = (classes, (len(probs),) * len(classes), alpha,
                                      "bonferroni")

    @property
    def detector_names(self) -> list[str]:
        return self.names

    def test(self, window: ClosedWindow) -> list[DriftResult]:
        return self.test_inputs(window.raw_inputs())

    def test_inputs(self, inputs: Sequence[Any]) -> list[DriftResult]:
        t0 = time.perf_counter()
        out = self.embedder.embed_layers([list(x) if isinstance(x, tuple) else x
                                          for x in inputs])
        if self.on_embedded is not None:
            self.on_embedded(len(inputs), time.perf_counter() - t0)
        hidden = np.concatenate([v for k, v in out.items() if k != self.prob_layer], axis=1)
        z = self.reducer.transform(hidden).astype(np.float64)
        results = [
            dataclasses.replace(self.mmd.test(z), detector="embedding_mmd"),
            dataclasses.replace(self.ks.test({f"dim_{i}": z[:, i] for i in range(z.shape[1])}),
                                detector="embedding_ks"),
        ]
        if self.bbsd is not None and self.prob_layer is not None:
            p = out[self.prob_layer]
            results.append(dataclasses.replace(
                self.bbsd.test({f"class_{i}": p[:, i] for i in range(p.shape[1])}),
                detector="bbsd"))
        return results
