"""The :class:`~embeddings.base.Embedder` over a PyTorch model: hooks, batching, precision."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from embeddings._deps import require_torch
from embeddings.batching import BatchRunner
from embeddings.device import autocast, resolve_device, resolve_precision
from embeddings.fingerprint import sha256_json
from embeddings.hooks import (
    OUTPUT,
    PENULTIMATE,
    POOLINGS,
    PROBABILITIES,
    LayerCapture,
    model_output,
    pool,
    resolve_layers,
    unhookable,
)
from embeddings.loading import (
    LoadedModel,
    load_sentence_transformers,
    load_state_dict_model,
    load_torchscript,
    load_transformers,
)
from embeddings.preprocessing import ArrayPreprocessor, Batch, Preprocessor, TextPreprocessor

__all__ = ["TorchEmbedder", "default_layers"]

_FORMAT = 1  # bump when the meaning of an embedding changes without its settings changing


def default_layers(model: LoadedModel) -> tuple[str, ...]:
    """What to embed when no layers are named.

    A classifier: its penultimate layer and its output probabilities (BBSD). A text encoder
    (sentence-transformers, a bare transformers encoder): its pooled output, the sentence
    embedding. TorchScript and anything else: the model's output.
    """
    if model.classifier and not unhookable(model.module):
        return (PENULTIMATE, PROBABILITIES)
    return (OUTPUT,)


class TorchEmbedder:
    """Embeds payloads with a PyTorch model: one forward pass per batch, named layers pooled.

    Parameters
    ----------
    model : LoadedModel
        From :mod:`embeddings.loading` (or one of the ``from_*`` constructors).
    preprocessor : TextPreprocessor or ArrayPreprocessor
        Turns payloads into model inputs.
    layers : sequence of str, optional
        Layers to embed (see :mod:`embeddings.hooks` for the names); default
        :func:`default_layers`. Several layers come out side by side in :meth:`embed` and
        separately in :meth:`embed_layers`.
    pooling : {"mean", "cls", "max", "flatten"}, optional
        How sequence and spatial outputs are reduced to one vector per payload; default the
        model's own pooling (sentence-transformers) or ``"mean"``.
    normalize : bool, optional
        L2-normalise each vector (not the probabilities); default the model's setting.
    device : str, default "auto"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; CUDA asked for and missing raises
        :class:`~embeddings.errors.DeviceError`.
    precision : {"auto", "fp32", "bf16", "fp16"}, default "auto"
        Autocast dtype; ``"auto"`` is bf16 (fp16 where unsupported) on CUDA, and on the CPU
        bf16 where it has native bf16 (AMX, AVX-512 BF16), else fp32.
    max_batch_size, min_batch_size : int, default 64 and 1
        Starting batch size, and the floor of the out-of-memory back-off.
    prefetch : int, default 2
        Batches prepared (tokenised, pinned) ahead, in a worker thread.
    version : str, optional
        The deployed model's version, recorded in the fingerprint.

    The model's module is moved to ``device`` in place: give each embedder its own
    :class:`LoadedModel` when devices differ.

    Notes
    -----
    Each batch runs under ``torch.inference_mode()`` and, on CUDA, with pinned host memory
    and non-blocking copies. Text is bucketed by length (longest first) so padding is spent
    only among texts of similar length; rows come back in the caller's order.

    Mean pooling over a sequence :math:`h_1, \\dots, h_T` with attention mask
    :math:`m_t \\in \\{0, 1\\}` is :math:`\\sum_t m_t h_t / \\max(1, \\sum_t m_t)`, the pooling
    sentence-transformers applies, so a sentence-transformers folder gives the vectors of
    ``SentenceTransformer.encode``.

    Examples
    --------
    >>> embedder = TorchEmbedder.from_sentence_transformers(
    ...     "path/to/all-MiniLM-L6-v2", device="cpu")  # doctest: +SKIP
    >>> embedder.embed(["a sentence", {"text": "another"}]).shape  # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        model: LoadedModel,
        preprocessor: Preprocessor,
        *,
        layers: Sequence[str] | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        device: str = "auto",
        precision: str = "auto",
        max_batch_size: int = 64,
        min_batch_size: int = 1,
        prefetch: int = 2,
        version: str | None = None,
    ) -> None:
        require_torch()
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.model = model
        self.preprocessor = preprocessor
        self.layers = resolve_layers(
            model.module,
            layers if layers is not None else default_layers(model),
            hookable=not unhookable(model.module),
        )
        self.pooling = pooling or model.pooling or "mean"
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.normalize = model.normalize if normalize is None else bool(normalize)
        self.version = version
        self._runner = BatchRunner(
            max_batch_size=max_batch_size,
            min_batch_size=min_batch_size,
            prefetch=prefetch,
            on_out_of_memory=self._release_cached_memory,
        )
        self._module = model.module.to(self.device).eval()
        self._cuda = self.device.type == "cuda"
        self._lock = threading.Lock()  # one forward pass at a time: hooks are per module
        self._fingerprint: str | None = None
        self.dims: dict[str, int] = {}  # width of each layer, known after the first call

    def __repr__(self) -> str:
        return (
            f"TorchEmbedder(model={self.model.kind}:{self.model.source}, layers={self.layers}, "
            f"pooling={self.pooling!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, preprocessor={self.preprocessor!r})"
        )

    # --- constructors ----------------------------------------------------------------------

    @classmethod
    def from_sentence_transformers(
        cls, path: str | os.PathLike[str], *, max_length: int | None = None, **options: Any
    ) -> TorchEmbedder:
        """A sentence-transformers folder: its tokenizer, token limit, pooling, normalisation."""
        model = load_sentence_transformers(path)
        return cls(model, _text_preprocessor(model, max_length, True), **options)

    @classmethod
    def from_transformers(
        cls,
        path: str | os.PathLike[str],
        *,
        task: str = "auto",
        max_length: int | None = None,
        truncation: bool = True,
        **options: Any,
    ) -> TorchEmbedder:
        """A Hugging Face model folder with its tokenizer (text payloads)."""
        model = load_transformers(path, task=task)
        return cls(model, _text_preprocessor(model, max_length, truncation), **options)

    @classmethod
    def from_torchscript(
        cls,
        path: str | os.PathLike[str],
        *,
        shape: Sequence[int],
        dtype: str = "float32",
        **options: Any,
    ) -> TorchEmbedder:
        """A TorchScript file fed numeric arrays of ``shape``."""
        return cls(load_torchscript(path), ArrayPreprocessor(shape, dtype=dtype), **options)

    @classmethod
    def from_state_dict(
        cls,
        factory: str,
        weights: str | os.PathLike[str],
        *,
        shape: Sequence[int],
        dtype: str = "float32",
        factory_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TorchEmbedder:
        """A module built by ``factory`` with the state dict ``weights``, fed arrays."""
        model = load_state_dict_model(factory, weights, factory_kwargs=factory_kwargs)
        return cls(model, ArrayPreprocessor(shape, dtype=dtype), **options)

    # --- the Embedder seam -----------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The precision in effect: ``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        if self.autocast_dtype is None:
            return "fp32"
        return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(self.autocast_dtype)]

    def describe(self) -> dict[str, Any]:
        """Everything that determines the vectors: model hash, layers, preprocessing, ..."""
        return {
            "format": _FORMAT,
            "model": self.model.describe(),
            "version": self.version,
            "layers": list(self.layers),
            "pooling": self.pooling,
            "normalize": self.normalize,
            "precision": self.precision,
            "preprocessing": self.preprocessor.settings,
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :meth:`describe`: changes with the weights' bytes, layers, settings."""
        if self._fingerprint is None:
            self._fingerprint = sha256_json(self.describe())
        return self._fingerprint

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """``(n, d)`` float32: the layers' vectors side by side, in :attr:`layers` order."""
        outputs = self.embed_layers(payloads)
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        return np.hstack(list(outputs.values()))

    def embed_layers(
        self,
        payloads: Sequence[Any],
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Layer name -> ``(n, d_layer)`` float32, rows in the order of ``payloads``.

        Raises
        ------
        PayloadError
            A payload does not fit the preprocessor (checked before any forward pass).
        EmbeddingOutOfMemoryError
            The device ran out of memory at ``min_batch_size``.
        """
        if len(payloads) == 0:
            raise ValueError("payloads must not be empty")
        items = self.preprocessor.validate(payloads)
        with self._lock:
            outputs = self._runner.run(
                items,
                prepare=self._prepare,
                forward=self._forward,
                lengths=self.preprocessor.lengths(items),
                on_progress=on_progress,
            )
        self.dims = {layer: outputs[layer].shape[1] for layer in self.layers}
        return {layer: outputs[layer] for layer in self.layers}

    # --- one batch -------------------------------------------------------------------------

    def _prepare(self, items: Any) -> Batch:
        batch = self.preprocessor.prepare(items)
        return batch.pin() if self._cuda else batch

    def _forward(self, batch: Batch) -> dict[str, np.ndarray]:
        torch = require_torch()
        batch = batch.to(self.device, non_blocking=self._cuda)
        mask = batch.attention_mask
        result: dict[str, np.ndarray] = {}
        with (
            torch.inference_mode(),
            autocast(self.device, self.autocast_dtype),
            LayerCapture(self._module, self.layers) as capture,
        ):
            output = self._module(*batch.args, **batch.kwargs)
            for layer in self.layers:
                raw = model_output(output, layer) if layer.startswith("@") else capture.take(layer)
                vectors = pool(raw, mask, self.pooling)
                if self.normalize and layer != PROBABILITIES:
                    vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=1)
                # .cpu() synchronises with the stream, so the non-blocking copies are complete.
                result[layer] = vectors.float().cpu().numpy()
        return result

    def _release_cached_memory(self) -> None:
        if self._cuda:
            require_torch().cuda.empty_cache()


def _text_preprocessor(
    model: LoadedModel, max_length: int | None, truncation: bool
) -> TextPreprocessor:
    limit = max_length or model.max_seq_length or 512
    if model.max_seq_length and limit > model.max_seq_length:
        raise ValueError(
            f"max_length={limit} exceeds the model's limit of {model.max_seq_length} tokens"
        )
    return TextPreprocessor(
        model.tokenizer,
        max_length=limit,
        truncation=truncation,
        lowercase=model.lowercase,
        tokenizer_sha256=model.tokenizer_sha256,
    )
