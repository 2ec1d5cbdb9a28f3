"""Model loading from local files only: TorchScript, factory + state dict, transformers, ST.

Nothing here downloads: Hugging Face folders are read with ``local_files_only=True`` and
``trust_remote_code`` is never set; state dicts are read with ``torch.load(weights_only=True)``
or safetensors, so a weights file cannot run code. TorchScript files carry their own
(restricted) program; load only files you trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings._deps import require_safetensors_torch, require_torch, require_transformers
from embeddings.errors import ModelLoadError
from embeddings.fingerprint import sha256_files

__all__ = [
    "KINDS",
    "LoadedModel",
    "load_model",
    "load_sentence_transformers",
    "load_state_dict_model",
    "load_torchscript",
    "load_transformers",
    "read_classifier_head",
    "resolve_factory",
]

KINDS = ("torchscript", "state_dict", "transformers", "sentence-transformers")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_SHOWN = 10  # keys listed in a state-dict mismatch message
# A sentence-transformers classifier's linear head (training.text.SentenceClassifier):
# safetensors "weight" (classes, dim) and "bias" (classes,) over the sentence embedding.
HEAD_WEIGHTS = "classifier_head.safetensors"
HEAD_CONFIG = "classifier_head.json"


@dataclass(frozen=True)
class LoadedModel:
    """A model in evaluation mode on the CPU, with what is needed to fingerprint and feed it.

    Attributes
    ----------
    module : torch.nn.Module
        The model (a ``ScriptModule`` for TorchScript files).
    kind : str
        One of :data:`KINDS`.
    source : str
        Where it came from: the factory string for state-dict models, the file or folder
        name otherwise (informational; the cache key uses the weights' content instead).
    weight_files : tuple of pathlib.Path
        The files whose bytes define the weights (hashed by :attr:`weights_sha256`).
    tokenizer : object or None
        The Hugging Face tokenizer of a text model.
    tokenizer_files : tuple of pathlib.Path
        The tokenizer's files (vocabulary, merges, settings), hashed into the
        preprocessing fingerprint.
    pooling : str or None
        Token pooling the model was trained with (sentence-transformers' Pooling module).
    normalize : bool
        Whether the model L2-normalises its sentence embeddings.
    max_seq_length : int or None
        Longest token sequence the model was configured for.
    lowercase : bool
        Whether text is lower-cased before tokenising (sentence-transformers' setting).
    classifier : bool
        Whether the model ends in a classification head (logits), so that
        ``"@penultimate"`` and ``"@probabilities"`` are meaningful defaults.
    """

    module: Any
    kind: str
    source: str
    weight_files: tuple[Path, ...]
    tokenizer: Any = None
    tokenizer_files: tuple[Path, ...] = ()
    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None
    lowercase: bool = False
    classifier: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the weight files' bytes (streamed; remembered per file version)."""
        return sha256_files(self.weight_files)

    @functools.cached_property
    def tokenizer_sha256(self) -> str | None:
        """SHA-256 of the tokenizer's files, or None for models without a tokenizer."""
        return sha256_files(self.tokenizer_files) if self.tokenizer_files else None

    def describe(self) -> dict[str, Any]:
        """What identifies the model's function: kind, factory, and the weights' hash."""
        info: dict[str, Any] = {"kind": self.kind, "weights_sha256": self.weights_sha256}
        if self.kind == "state_dict":
            info["factory"] = self.source
            info["factory_kwargs"] = dict(self.extra.get("factory_kwargs", {}))
        return info


def load_model(
    source: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model, choosing the loader from what ``source`` is.

    * ``weights`` given: ``source`` is a factory ``"package.module:function"`` and
      ``weights`` its state dict (:func:`load_state_dict_model`).
    * a folder with ``modules.json``: a sentence-transformers model
      (:func:`load_sentence_transformers`).
    * a folder with ``config.json``: a Hugging Face transformers model
      (:func:`load_transformers`).
    * a file: TorchScript (:func:`load_torchscript`).
    """
    if weights is not None:
        return load_state_dict_model(str(source), weights, factory_kwargs=factory_kwargs)
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        if (path / "modules.json").is_file():
            return load_sentence_transformers(path)
        if (path / "config.json").is_file():
            return load_transformers(path)
        raise ModelLoadError(
            f"model folder {str(path)!r} has neither modules.json (sentence-transformers) "
            "nor config.json (Hugging Face transformers)"
        )
    return load_torchscript(path)


def load_torchscript(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a TorchScript file (``torch.jit.save``) onto the CPU, in evaluation mode.

    TorchScript modules run as compiled graphs: forward hooks on their submodules never fire,
    so only the model's output (``"@output"``, ``"@probabilities"``) can be embedded.
    """
    file = _existing_file(path, "TorchScript file")
    torch = require_torch()
    with warnings.catch_warnings():
        # torch >= 2.9 deprecates TorchScript in favour of torch.export; deployed models still
        # ship as TorchScript, and the warning is not the user's to act on here.
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
        try:
            module = torch.jit.load(str(file), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"cannot load TorchScript file {str(file)!r}: {exc}") from exc
    module.eval()
    return LoadedModel(module=module, kind="torchscript", source=file.name, weight_files=(file,))


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``"package.module:function"`` (attribute paths allowed after the colon)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ModelLoadError(f"factory {spec!r} must look like 'package.module:function'")
    module_name, attribute = spec.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"factory {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ModelLoadError(
                f"factory {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ModelLoadError(f"factory {spec!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def load_state_dict_model(
    factory: str,
    weights: str | os.PathLike[str],
    *,
    factory_kwargs: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> LoadedModel:
    """Build a module with a user factory and load a state dict into it.

    Parameters
    ----------
    factory : str
        ``"package.module:function"``; called with ``factory_kwargs``, it must return a
        ``torch.nn.Module``.
    weights : path
        ``*.safetensors`` (read with safetensors) or a ``torch.save``'d state dict (read with
        ``torch.load(weights_only=True)``). A checkpoint holding the state dict under a
        ``"state_dict"`` key is accepted too.
    factory_kwargs : mapping, optional
        Keyword arguments of the factory (part of the fingerprint).
    strict : bool, default True
        Require the keys to match exactly. Shapes must always match.
    """
    build = resolve_factory(factory)
    file = _existing_file(weights, "state dict")
    torch = require_torch()
    kwargs = dict(factory_kwargs or {})
    module = build(**kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"factory {factory!r} returned a {type(module).__name__}, not a torch.nn.Module"
        )
    state = _read_state_dict(file)
    _check_state_dict_fits(module, state, file, factory, strict)
    module.load_state_dict(state, strict=strict)
    module.eval()
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return LoadedModel(
        module=module,
        kind="state_dict",
        source=factory,
        weight_files=(file,),
        classifier=bool(linears) and linears[-1].out_features >= 2,
        extra={"factory_kwargs": kwargs},
    )


def load_transformers(path: str | os.PathLike[str], *, task: str = "auto") -> LoadedModel:
    """Load a Hugging Face transformers model folder and its tokenizer, offline.

    Parameters
    ----------
    path : path
        Folder with ``config.json``, the weights (``*.safetensors`` or ``*.bin``) and the
        tokenizer files.
    task : {"auto", "base", "sequence-classification"}
        ``"auto"`` loads a sequence classifier (``AutoModelForSequenceClassification``)
        when ``config.json`` names one in ``architectures``, the bare encoder
        (``AutoModel``) otherwise.
    """
    if task not in ("auto", "base", "sequence-classification"):
        raise ValueError(f"task must be 'auto', 'base' or 'sequence-classification', got {task!r}")
    folder = _existing_dir(path, "Hugging Face model folder", "config.json")
    weight_files = _weight_files(folder)
    transformers = require_transformers()
    try:
        with _quiet_transformers(transformers):
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            architectures = getattr(config, "architectures", None) or []
            if task == "auto":
                classify = any(a.endswith("ForSequenceClassification") for a in architectures)
            else:
                classify = task == "sequence-classification"
            auto = (
                transformers.AutoModelForSequenceClassification
                if classify
                else transformers.AutoModel
            )
            module = auto.from_pretrained(str(folder), local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot load the Hugging Face model in {str(folder)!r}: {exc}"
        ) from exc
    module.eval()
    return LoadedModel(
        module=module,
        kind="transformers",
        source=folder.name,
        weight_files=(*weight_files, folder / "config.json"),
        tokenizer=tokenizer,
        tokenizer_files=tuple(folder / n for n in _TOKENIZER_FILES if (folder / n).is_file()),
        max_seq_length=_model_max_length(tokenizer, config),
        classifier=classify,
    )


def load_sentence_transformers(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a sentence-transformers folder without sentence-transformers.

    ``modules.json`` lists the pipeline; supported: ``Transformer`` (loaded with
    :func:`load_transformers`), ``Pooling`` (cls, mean or max) and ``Normalize``. The token
    limit and lower-casing come from ``sentence_bert_config.json``. Other modules
    (``Dense``, ...) raise :class:`~embeddings.errors.ModelLoadError`.
    """
    folder = _existing_dir(path, "sentence-transformers folder", "modules.json")
    try:
        modules = json.loads((folder / "modules.json").read_text())
        ordered = sorted(modules, key=lambda m: int(m.get("idx", 0)))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{str(folder / 'modules.json')!r} is not valid: {exc}") from exc
    transformer_dir: Path | None = None
    pooling: str | None = None
    normalize = False
    for entry in ordered:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer" and transformer_dir is None:
            transformer_dir = folder / str(entry.get("path", ""))
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling_mode(folder / str(entry.get("path", "")) / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelLoadError(
                f"{str(folder)!r}: unsupported sentence-transformers module {entry.get('type')!r}"
                " (supported: one Transformer, one Pooling, Normalize)"
            )
    if transformer_dir is None:
        raise ModelLoadError(f"{str(folder / 'modules.json')!r} lists no Transformer module")
    settings = _read_json(transformer_dir / "sentence_bert_config.json")
    base = load_transformers(transformer_dir, task="base")
    max_seq_length = settings.get("max_seq_length", base.max_seq_length)
    # a classifier head beside the pipeline (not run here: the sentence embedding, its
    # input, is what drift is measured on) still changes the model: fingerprint it
    head = folder / HEAD_WEIGHTS
    return dataclasses.replace(
        base,
        kind="sentence-transformers",
        source=folder.name,
        weight_files=(*base.weight_files, head) if head.is_file() else base.weight_files,
        extra={"classifier_head": head} if head.is_file() else {},
        pooling=pooling or "mean",
        normalize=normalize,
        max_seq_length=int(max_seq_length) if max_seq_length else base.max_seq_length,
        lowercase=bool(settings.get("do_lower_case", False)),
    )


def read_classifier_head(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The linear head of a sentence-transformers classifier (``classifier_head.safetensors``
    in ``folder``: tensors ``weight`` and ``bias``), or None when the folder has none."""
    file = Path(folder) / HEAD_WEIGHTS
    if not file.is_file():
        return None
    state = dict(_read_state_dict(file))
    if set(state) != {"weight", "bias"}:
        raise ModelLoadError(f"{str(file)!r} must hold exactly the tensors 'weight' and "
                             f"'bias', found {sorted(state)}")
    return state


# --- helpers -----------------------------------------------------------------------------


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise ModelLoadError(f"{what} {str(file)!r} does not exist")
    if not file.is_file():
        raise ModelLoadError(f"{what} {str(file)!r} is not a file")
    return file


def _existing_dir(path: str | os.PathLike[str], what: str, marker: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise ModelLoadError(f"{what} {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"{what} {str(folder)!r} is not a folder")
    if not (folder / marker).is_file():
        raise ModelLoadError(f"{what} {str(folder)!r} has no {marker}")
    return folder


def _weight_files(folder: Path) -> list[Path]:
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not files:
        raise ModelLoadError(f"no weight files ({', '.join(_WEIGHT_PATTERNS)}) in {str(folder)!r}")
    return files


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelLoadError(f"{str(path)!r} must hold a JSON object")
    return value


def _pooling_mode(config_path: Path) -> str:
    config = _read_json(config_path)
    if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers releases
        modes = {config["pooling_mode"].removesuffix("_token").removesuffix("_tokens")}
    else:
        modes = {
            mode
            for mode, key in (
                ("cls", "pooling_mode_cls_token"),
                ("mean", "pooling_mode_mean_tokens"),
                ("max", "pooling_mode_max_tokens"),
                ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
                ("weightedmean", "pooling_mode_weightedmean_tokens"),
                ("lasttoken", "pooling_mode_lasttoken"),
            )
            if config.get(key)
        }
    if len(modes) != 1 or not modes <= {"cls", "mean", "max"}:
        raise ModelLoadError(
            f"{str(config_path)!r}: pooling {sorted(modes)} is not supported "
            "(exactly one of cls, mean, max)"
        )
    return modes.pop()


def _model_max_length(tokenizer: Any, config: Any) -> int | None:
    limits = [
        value
        for value in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(value, int) and 0 < value < 1_000_000
    ]
    return min(limits) if limits else None


def _read_state_dict(file: Path) -> Mapping[str, Any]:
    torch = require_torch()
    try:
        if file.suffix == ".safetensors":
            state: Any = require_safetensors_torch().load_file(str(file), device="cpu")
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as exc:  # pickle, zip and safetensors errors share no base class
        raise ModelLoadError(
            f"cannot read state dict {str(file)!r} (weights-only loading): {exc}"
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(
            f"{str(file)!r} does not hold a state dict (a mapping of names to tensors)"
        )
    return state


def _check_state_dict_fits(
    module: Any, state: Mapping[str, Any], file: Path, factory: str, strict: bool
) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: module {tuple(expected[k].shape)} vs file {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing keys {_first(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_first(mismatched)}")
    if problems:
        raise ModelLoadError(
            f"state dict {str(file)!r} does not fit the module built by {factory!r}: "
            + "; ".join(problems)
        )


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return f"[{shown}{', ...' if len(items) > _SHOWN else ''}] ({len(items)} in total)"


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """Hide transformers' weight-loading progress bar (it would spam the daemon's log)."""
    logging_utils = transformers.utils.logging
    enabled = logging_utils.is_progress_bar_enabled()
    logging_utils.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging_utils.enable_progress_bar()
