"""Model files: read with :mod:`embeddings`' loaders (local, safe), written in the same form."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embeddings.loading import load_state_dict_model, load_torchscript
from training.recalibrate import PriorCorrected
from training.text import TEXT_KINDS, TextClassifier, load_text_model

__all__ = ["KINDS", "ModelSpec", "load_weights", "save_weights"]

KINDS = ("state_dict", "torchscript", "transformers", "sentence_transformers")
# text models are folders (training/text.py documents their layout)
_FILES = {"state_dict": "weights.pt", "torchscript": "model.pt", "transformers": "model",
          "sentence_transformers": "model"}


@dataclass(frozen=True)
class ModelSpec:
    """How a model is built and stored.

    ``kind="state_dict"``: ``factory`` (``"package.module:function"``) called with
    ``factory_kwargs`` builds the module, the weights are a ``torch.save``'d state dict
    read with ``weights_only=True``. ``kind="torchscript"``: one TorchScript file.
    ``wrapper="prior_corrected"`` marks a recalibrated challenger whose head could not
    absorb the shift (its state dict holds ``base.*`` and ``log_weights``).
    ``kind="transformers"`` / ``"sentence_transformers"``: a text classifier folder
    (:mod:`training.text`); ``max_length`` is its token limit (None: the model's own, 128
    if it names none; never beyond the model's).
    """

    kind: str = "state_dict"
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    wrapper: str | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "state_dict" and not self.factory:
            raise ValueError("kind 'state_dict' needs factory ('package.module:function')")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 tokens, got {self.max_length!r}")

    @property
    def text(self) -> bool:
        """Whether the model reads raw text (a tokenised path)."""
        return self.kind in TEXT_KINDS

    @property
    def filename(self) -> str:
        """The weights file's name inside a registry version."""
        return _FILES[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_weights(spec: ModelSpec, path: str | os.PathLike[str]) -> nn.Module:
    """Load the model at ``path``; a missing or corrupt file raises ``ModelLoadError``."""
    if spec.kind == "torchscript":
        return load_torchscript(path).module  # type: ignore[no-any-return]
    if spec.text:
        return load_text_model(spec.kind, path, spec.max_length)
    assert spec.factory is not None
    if spec.wrapper == "prior_corrected":
        from embeddings.loading import _read_state_dict, resolve_factory

        state = dict(_read_state_dict(Path(path)))
        base = resolve_factory(spec.factory)(**spec.factory_kwargs)
        module = PriorCorrected(base, state["log_weights"])
        module.load_state_dict(state)
        return module.eval()
    loaded = load_state_dict_model(spec.factory, path, factory_kwargs=spec.factory_kwargs)
    return loaded.module  # type: ignore[no-any-return]


def save_weights(module: nn.Module, spec: ModelSpec, folder: Path) -> Path:
    """Write ``module`` into ``folder`` in ``spec``'s form; returns the file."""
    path = folder / spec.filename
    if spec.text:
        if not isinstance(module, TextClassifier):
            raise ValueError(f"kind {spec.kind!r} stores a training.text.TextClassifier, got "
                             f"{type(module).__name__}")
        module.save(path)
    elif spec.kind == "torchscript":
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates TorchScript; a model deployed as TorchScript is still
            # stored as one (embeddings/loading.py reads it the same way)
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated",
                                    category=FutureWarning)
            scripted = (module if isinstance(module, torch.jit.ScriptModule)
                        else torch.jit.script(module))
            torch.jit.save(scripted, str(path))
    else:
        torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                   path)
    return path
