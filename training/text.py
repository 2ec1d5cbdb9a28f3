"""Text classifiers fine-tuned on raw text: Hugging Face sequence classifiers and
sentence-transformers encoders with a linear head.

Both are wrapped as modules whose input is one int64 tensor ``(batch, 2, max_length)``
(token ids, attention mask), so the training loop, data parallelism, the gate and
recalibration treat them like any tensor model. :meth:`TextClassifier.encode` tokenises
texts with the model's own tokenizer (padded to ``max_length``); ``forward`` trims each
batch to its longest text, so padding costs memory, not compute.

Registry form (``ModelSpec.filename`` is the folder ``model/``):

* ``transformers``: the ``save_pretrained`` folder of the sequence classifier and its
  tokenizer, loadable by ``AutoModelForSequenceClassification`` and by ``embeddings/``.
* ``sentence_transformers``: a sentence-transformers folder (``modules.json``: Transformer
  at the top level, ``1_Pooling``, ``2_Normalize`` when the model normalises) plus the
  head in ``classifier_head.safetensors`` (``weight`` (classes, dim), ``bias`` (classes,))
  and ``classifier_head.json``. The head maps the pooled (normalised) sentence embedding to
  logits. sentence-transformers itself ignores the two head files; ``embeddings/`` fingerprints
  them and embeds the sentence embedding (the head's input) for drift.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embeddings.errors import ModelLoadError
from embeddings.hooks import pool
from embeddings.loading import (
    HEAD_CONFIG,
    HEAD_WEIGHTS,
    load_sentence_transformers,
    load_transformers,
    read_classifier_head,
)

__all__ = ["TEXT_KINDS", "SentenceClassifier", "SequenceClassifier", "TextClassifier",
           "load_text_model", "model_inputs"]

TEXT_KINDS = ("transformers", "sentence_transformers")
DEFAULT_MAX_LENGTH = 128


class TextClassifier(nn.Module):
    """Base of the text wrappers: tokenising, and the ``(batch, 2, length)`` input."""

    kind = ""

    def __init__(self, tokenizer: Any, max_length: int, lowercase: bool = False) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 tokens, got {max_length!r}")
        self.tokenizer = tokenizer  # a plain attribute: not a module, not in the state dict
        self.max_length = int(max_length)
        self.lowercase = lowercase

    def encode(self, texts: Sequence[Any]) -> np.ndarray:
        """Token ids and attention masks of ``texts`` as int64 ``(n, 2, max_length)``."""
        items = []
        for i, t in enumerate(texts):
            if isinstance(t, dict):  # an inference record's {"text": ...}
                t = t.get("text")
            if not isinstance(t, str):
                raise TypeError(f"text input {i} is a {type(t).__name__}, not a string")
            items.append(t.lower() if self.lowercase else t)
        if not items:
            return np.zeros((0, 2, self.max_length), np.int64)
        enc = self.tokenizer(items, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="np")
        return np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != 2:
            raise ValueError(f"a text model takes (batch, 2, length) token ids and masks, got "
                             f"shape {tuple(x.shape)}; encode() the texts first")
        x = x.long()
        mask = x[:, 1]
        longest = max(int(mask.sum(dim=1).max()), 1) if len(x) else 1
        return self.logits(x[:, 0, :longest], mask[:, :longest])

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        raise NotImplementedError


class SequenceClassifier(TextClassifier):
    """A transformers ``...ForSequenceClassification`` model (its head is ``classifier``)."""

    kind = "transformers"

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int,
                 lowercase: bool = False) -> None:
        super().__init__(tokenizer, max_length, lowercase)
        self.model = model

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).logits  # type: ignore[no-any-return]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self.model.save_pretrained(str(folder))  # type: ignore[operator]
        self.tokenizer.save_pretrained(str(folder))


class SentenceClassifier(TextClassifier):
    """A sentence-transformers encoder (transformer, pooling, optional L2 normalisation)
    with a linear classifier ``head`` on the sentence embedding."""

    kind = "sentence_transformers"

    def __init__(self, encoder: nn.Module, head: nn.Linear, tokenizer: Any, max_length: int,
                 *, pooling: str = "mean", normalize: bool = False,
                 lowercase: bool = False) -> None:
        super().__init__(tokenizer, max_length, lowercase)
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize
        self.head = head  # registered last: strategies.head_name() finds it

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        vectors = pool(hidden, mask, self.pooling)
        return nn.functional.normalize(vectors, dim=1) if self.normalize else vectors

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids, mask))  # type: ignore[no-any-return]

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self.encoder.save_pretrained(str(folder))  # type: ignore[operator]
        self.tokenizer.save_pretrained(str(folder))
        modules = [{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (folder / "2_Normalize").mkdir(exist_ok=True)
        _write_json(folder / "modules.json", modules)
        _write_json(folder / "sentence_bert_config.json",
                    {"max_seq_length": self.max_length, "do_lower_case": self.lowercase})
        (folder / "1_Pooling").mkdir(exist_ok=True)
        dim = self.head.in_features
        _write_json(folder / "1_Pooling" / "config.json", {
            "word_embedding_dimension": dim,
            **{f"pooling_mode_{m}": self.pooling == m.split("_")[0]
               for m in ("cls_token", "mean_tokens", "max_tokens")}})
        save_file({"weight": self.head.weight.detach().cpu().contiguous(),
                   "bias": self.head.bias.detach().cpu().contiguous()},
                  str(folder / HEAD_WEIGHTS))
        _write_json(folder / HEAD_CONFIG, {
            "in_features": dim, "out_features": self.head.out_features,
            "input": "the pooled sentence embedding" + (", L2-normalised" if self.normalize
                                                         else "")})

    @classmethod
    def with_new_head(cls, folder: str | os.PathLike[str], n_classes: int, *,
                      max_length: int | None = None, seed: int = 0) -> SentenceClassifier:
        """A sentence-transformers folder with a freshly initialised head (to train with
        strategy ``head`` before deploying)."""
        loaded = load_sentence_transformers(folder)
        torch.manual_seed(seed)
        head = nn.Linear(int(loaded.module.config.hidden_size), n_classes)
        return cls(loaded.module, head, loaded.tokenizer,
                   _limit(max_length, loaded.max_seq_length), pooling=loaded.pooling or "mean",
                   normalize=loaded.normalize, lowercase=loaded.lowercase)


def _quiet() -> Any:
    """transformers' progress bars off while writing (they would spam the job's log)."""
    from embeddings._deps import require_transformers
    from embeddings.loading import _quiet_transformers

    return _quiet_transformers(require_transformers())


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _limit(asked: int | None, model_limit: int | None) -> int:
    """The token limit: the one asked for, never beyond what the model was built for."""
    limits = [v for v in (asked, model_limit) if v]
    return int(min(limits)) if limits else DEFAULT_MAX_LENGTH


def load_text_model(kind: str, folder: str | os.PathLike[str],
                    max_length: int | None = None) -> TextClassifier:
    """A registry or deployed folder as a :class:`TextClassifier` (local files only).

    Raises :class:`~embeddings.errors.ModelLoadError` when the folder is no classifier: a
    transformers folder whose ``config.json`` names no ``...ForSequenceClassification``,
    or a sentence-transformers folder without ``classifier_head.safetensors``.
    """
    if kind == "transformers":
        loaded = load_transformers(folder)
        if not loaded.classifier:
            raise ModelLoadError(
                f"{str(folder)!r} is not a sequence classifier (config.json 'architectures' "
                "names no ...ForSequenceClassification): nothing to fine-tune on labels")
        return SequenceClassifier(loaded.module, loaded.tokenizer,
                                  _limit(max_length, loaded.max_seq_length))
    if kind != "sentence_transformers":
        raise ValueError(f"kind must be one of {TEXT_KINDS}, got {kind!r}")
    loaded = load_sentence_transformers(folder)
    state = read_classifier_head(folder)
    if state is None:
        raise ModelLoadError(
            f"sentence-transformers folder {str(folder)!r} has no {HEAD_WEIGHTS}: a "
            "classifier needs a linear head on the sentence embedding (see "
            "training.text.SentenceClassifier.with_new_head)")
    weight, bias = state["weight"], state["bias"]
    dim = int(loaded.module.config.hidden_size)
    if weight.ndim != 2 or weight.shape[1] != dim or bias.shape != (weight.shape[0],):
        raise ModelLoadError(
            f"{str(Path(folder) / HEAD_WEIGHTS)!r}: head weight {tuple(weight.shape)} and bias "
            f"{tuple(bias.shape)} do not fit the encoder's {dim}-wide sentence embedding")
    head = nn.Linear(dim, int(weight.shape[0]))
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    model = SentenceClassifier(loaded.module, head, loaded.tokenizer,
                               _limit(max_length, loaded.max_seq_length),
                               pooling=loaded.pooling or "mean", normalize=loaded.normalize,
                               lowercase=loaded.lowercase)
    return model.eval()


def model_inputs(model: nn.Module, x: Any) -> torch.Tensor:
    """``x`` as the tensor ``model`` takes: texts tokenised by the model's own tokenizer,
    anything else as float32."""
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind in "OUS":
        encode = getattr(model, "encode", None)
        if encode is None:
            raise TypeError(f"the inputs are text but the model ({type(model).__name__}) has "
                            "no tokenizer: text needs a transformers or sentence-transformers "
                            "model")
        return torch.from_numpy(encode(arr.tolist()))
    # torch.tensor copies: inputs may be read-only views (pandas, memory maps)
    return torch.tensor(np.asarray(arr, dtype=np.float32))
