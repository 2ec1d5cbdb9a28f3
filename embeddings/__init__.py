"""Payloads to vectors: model loading, layer hooks, batching, reduction, a reference cache.

This package holds no window, detector or metrics knowledge; it returns ``(n, d)`` float32
arrays. PyTorch (and transformers, for text models) are imported only when a model is
loaded; without them that raises ImportError with ``pip install 'driftline[embeddings]'``.

* :mod:`~embeddings.loading`: TorchScript, factory + state dict, transformers and
  sentence-transformers folders, from local files only.
* :mod:`~embeddings.hooks`: named layers captured in one forward pass, pooled.
* :mod:`~embeddings.preprocessing`: tokenised text, numeric arrays of a fixed shape.
* :mod:`~embeddings.batching`: length buckets, prefetching, OOM back-off, micro-batching.
* :mod:`~embeddings.embedder`: :class:`TorchEmbedder`, the :class:`Embedder` over all that.
* :mod:`~embeddings.reduction`: PCA fitted on held-out data, random projection.
* :mod:`~embeddings.cache`: reference embeddings cached on disk by fingerprint.
"""

from __future__ import annotations

from embeddings.base import Embedder
from embeddings.batching import BatchRunner, MicroBatcher
from embeddings.cache import ReferenceCache
from embeddings.device import resolve_device, resolve_precision
from embeddings.embedder import TorchEmbedder, default_layers
from embeddings.errors import (
    DeviceError,
    EmbeddingError,
    EmbeddingOutOfMemoryError,
    LayerError,
    ModelLoadError,
    PayloadError,
)
from embeddings.hooks import OUTPUT, PENULTIMATE, PROBABILITIES
from embeddings.loading import (
    LoadedModel,
    load_model,
    load_sentence_transformers,
    load_state_dict_model,
    load_torchscript,
    load_transformers,
)
from embeddings.preprocessing import ArrayPreprocessor, TextPreprocessor
from embeddings.progress import Progress
from embeddings.reduction import (
    NoReduction,
    PCAReducer,
    RandomProjection,
    ReducedEmbedder,
    Reducer,
    split_reference,
)

__all__ = [
    "OUTPUT",
    "PENULTIMATE",
    "PROBABILITIES",
    "ArrayPreprocessor",
    "BatchRunner",
    "DeviceError",
    "Embedder",
    "EmbeddingError",
    "EmbeddingOutOfMemoryError",
    "LayerError",
    "LoadedModel",
    "MicroBatcher",
    "ModelLoadError",
    "NoReduction",
    "PCAReducer",
    "PayloadError",
    "Progress",
    "RandomProjection",
    "ReducedEmbedder",
    "Reducer",
    "ReferenceCache",
    "TextPreprocessor",
    "TorchEmbedder",
    "default_layers",
    "load_model",
    "load_sentence_transformers",
    "load_state_dict_model",
    "load_torchscript",
    "load_transformers",
    "resolve_device",
    "resolve_precision",
    "split_reference",
]
