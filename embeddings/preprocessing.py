"""Payloads to model inputs: tokenised text or numeric arrays of a configured shape."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embeddings._deps import require_torch
from embeddings.errors import PayloadError

__all__ = ["ArrayPreprocessor", "Batch", "Preprocessor", "TextPreprocessor"]


@dataclass
class Batch:
    """Model inputs for a batch: positional and keyword tensors, first axis = payloads."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(first.shape[0])

    @property
    def attention_mask(self) -> Any:
        """The text attention mask (1 = token, 0 = padding), or None for other inputs."""
        return self.kwargs.get("attention_mask")

    def _map(self, fn: Any) -> Batch:
        return Batch(
            args=tuple(fn(a) for a in self.args), kwargs={k: fn(v) for k, v in self.kwargs.items()}
        )

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (views, no copy)."""
        return self._map(lambda t: t[start:stop])

    def pin(self) -> Batch:
        """Copies in page-locked host memory, so host-to-GPU copies can be asynchronous."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: Any, *, non_blocking: bool = False) -> Batch:
        """The batch on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


class Preprocessor(Protocol):
    """Validates payloads, orders them by cost, and builds model inputs for a batch."""

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the model inputs (part of the embedder's fingerprint)."""
        ...

    def validate(self, payloads: Sequence[Any]) -> Sequence[Any] | np.ndarray:
        """Check every payload up front; raise :class:`PayloadError` naming the first bad one."""
        ...

    def lengths(self, items: Sequence[Any] | np.ndarray) -> np.ndarray | None:
        """A per-item cost to bucket by (token count or a proxy), or None when all are equal."""
        ...

    def prepare(self, items: Sequence[Any] | np.ndarray) -> Batch:
        """Model inputs for ``items`` (CPU tensors)."""
        ...


class TextPreprocessor:
    """Tokenises text payloads (``str`` or ``{"text": str}``) with a Hugging Face tokenizer.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        A fast (Rust) tokenizer: its batch encoding runs in parallel and releases the GIL, so
        it overlaps with the forward pass of the previous batch.
    max_length : int
        Longest token sequence fed to the model (special tokens included).
    truncation : bool, default True
        Cut longer texts to ``max_length`` tokens. With False a longer text raises
        :class:`~embeddings.errors.PayloadError`.
    lowercase : bool, default False
        Lower-case text before tokenising (models trained that way say so in their config).
    tokenizer_sha256 : str, optional
        Hash of the tokenizer's files, for the fingerprint.
    """

    kind = "text"

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int,
        truncation: bool = True,
        lowercase: bool = False,
        tokenizer_sha256: str | None = None,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = bool(truncation)
        self.lowercase = bool(lowercase)
        self.tokenizer_sha256 = tokenizer_sha256

    def __repr__(self) -> str:
        return (
            f"TextPreprocessor(tokenizer={type(self.tokenizer).__name__}, "
            f"max_length={self.max_length}, truncation={self.truncation}, "
            f"lowercase={self.lowercase})"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """Tokenizer identity and the tokenisation options."""
        return {
            "kind": self.kind,
            "tokenizer": type(self.tokenizer).__name__,
            "tokenizer_sha256": self.tokenizer_sha256,
            "max_length": self.max_length,
            "truncation": self.truncation,
            "lowercase": self.lowercase,
            "padding_side": getattr(self.tokenizer, "padding_side", "right"),
        }

    def validate(self, payloads: Sequence[Any]) -> list[str]:
        """Texts of ``payloads``; a payload that is neither text nor ``{"text": str}`` raises."""
        texts = []
        for index, payload in enumerate(payloads):
            text = payload.get("text") if isinstance(payload, Mapping) else payload
            if not isinstance(text, str):
                raise PayloadError(
                    f"payload {index}: expected a str or {{'text': str}}, got {_describe(payload)}",
                    index=index,
                )
            texts.append(text.lower() if self.lowercase else text)
        return texts

    def lengths(self, items: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Characters per text: a proxy for the token count, known before tokenising."""
        return np.fromiter((len(t) for t in items), dtype=np.int64, count=len(items))

    def prepare(self, items: Sequence[Any] | np.ndarray) -> Batch:
        """Token ids and attention mask, padded to the longest text of the batch."""
        encoded = self.tokenizer(
            list(items),
            padding="longest",
            truncation=self.truncation,
            max_length=self.max_length if self.truncation else None,
            return_tensors="pt",
        )
        kwargs = {k: v for k, v in encoded.items() if hasattr(v, "shape")}
        if not self.truncation and kwargs["input_ids"].shape[1] > self.max_length:
            lengths = kwargs["attention_mask"].sum(dim=1)
            index = int(lengths.argmax())
            raise PayloadError(
                f"text of {int(lengths[index])} tokens is longer than max_length="
                f"{self.max_length} and truncation is off",
                index=None,
            )
        return Batch(kwargs=kwargs)


class ArrayPreprocessor:
    """Numeric array payloads of one configured shape and dtype.

    A payload is an array-like of ``shape``, or the same number of values flat (as the
    inference-log schema's ``{"array": [numbers]}`` carries them), or such a mapping. A
    whole batch may also be given as one array of shape ``(n, *shape)``.

    Parameters
    ----------
    shape : sequence of int
        Shape of one payload as the model expects it (without the batch axis).
    dtype : str, default "float32"
        Numeric dtype of the model input.
    """

    kind = "array"

    def __init__(self, shape: Sequence[int], *, dtype: str = "float32") -> None:
        dims = tuple(shape) if not isinstance(shape, int) else (shape,)
        if not dims or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
        ):
            raise ValueError(f"shape must be a non-empty sequence of positive ints, got {shape!r}")
        try:
            np_dtype = np.dtype(dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be a numeric numpy dtype name, got {dtype!r}") from exc
        if np_dtype.kind not in "iuf":
            raise ValueError(f"dtype must be numeric (int or float), got {dtype!r}")
        self.shape = dims
        self.dtype = np_dtype
        self._size = math.prod(dims)

    def __repr__(self) -> str:
        return f"ArrayPreprocessor(shape={self.shape}, dtype={self.dtype.name!r})"

    @property
    def settings(self) -> dict[str, Any]:
        """Shape and dtype."""
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype.name}

    def validate(self, payloads: Sequence[Any]) -> np.ndarray:
        """Stack ``payloads`` into one ``(n, *shape)`` array of the configured dtype."""
        if isinstance(payloads, np.ndarray) and payloads.shape[1:] == self.shape:
            return self._checked(payloads, None)
        out = np.empty((len(payloads), *self.shape), dtype=self.dtype)
        for index, payload in enumerate(payloads):
            value = payload.get("array") if isinstance(payload, Mapping) else payload
            if isinstance(value, (str, bytes)) or value is None:
                raise PayloadError(
                    f"payload {index}: expected a numeric array of shape {self.shape}, "
                    f"got {_describe(payload)}",
                    index=index,
                )
            try:
                array = np.asarray(value)
            except ValueError as exc:  # ragged nested lists
                raise PayloadError(
                    f"payload {index}: not a rectangular array ({exc})", index=index
                ) from None
            if array.dtype.kind not in "biuf":
                raise PayloadError(
                    f"payload {index}: expected numbers, got dtype {array.dtype}", index=index
                )
            if array.shape != self.shape:
                if array.ndim == 1 and array.size == self._size:
                    array = array.reshape(self.shape)
                else:
                    raise PayloadError(
                        f"payload {index}: expected shape {self.shape} (or {self._size} "
                        f"values flat), got shape {array.shape}",
                        index=index,
                    )
            out[index] = array
        return self._checked(out, payloads)

    def _checked(self, array: np.ndarray, payloads: Sequence[Any] | None) -> np.ndarray:
        array = np.asarray(array, dtype=self.dtype)
        if array.dtype.kind == "f":
            finite = np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
            if not finite.all():
                index = int(np.argmin(finite))
                raise PayloadError(f"payload {index}: contains NaN or infinite values", index=index)
        return array

    def lengths(self, items: Sequence[Any] | np.ndarray) -> None:
        """Every array costs the same: no bucketing."""
        return None

    def prepare(self, items: Sequence[Any] | np.ndarray) -> Batch:
        """One tensor ``(len(items), *shape)``."""
        torch = require_torch()
        return Batch(args=(torch.from_numpy(np.ascontiguousarray(items)),))


def _describe(payload: Any) -> str:
    if isinstance(payload, Mapping):
        return f"a mapping with keys {sorted(map(str, payload))[:5]}"
    return type(payload).__name__
