"""Capture named layers in one forward pass, and pool their outputs to ``(n, d)``.

Layer names are ``named_modules()`` names, plus:

* ``"name:input"``: the input of module ``name`` instead of its output;
* ``"@output"``: the model's own output (a transformers model's ``logits`` when it has
  them, else its ``last_hidden_state``);
* ``"@probabilities"``: the softmax of the model's 2-D output (the logits of a classifier),
  the input of black-box shift detection (BBSD);
* ``"@penultimate"``: the input of the model's last ``torch.nn.Linear`` in
  ``named_modules()`` order, the representation a classifier head reads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from embeddings._deps import require_torch
from embeddings.errors import LayerError

__all__ = [
    "OUTPUT",
    "PENULTIMATE",
    "POOLINGS",
    "PROBABILITIES",
    "LayerCapture",
    "model_output",
    "pool",
    "resolve_layers",
]

OUTPUT = "@output"
PROBABILITIES = "@probabilities"
PENULTIMATE = "@penultimate"
POOLINGS = ("mean", "cls", "max", "flatten")
_INPUT_SUFFIX = ":input"
_SHOWN = 25  # valid names listed when a layer is not found


def resolve_layers(module: Any, layers: Sequence[str], *, hookable: bool = True) -> tuple[str, ...]:
    """Check ``layers`` against ``module`` and resolve ``"@penultimate"`` to a concrete name.

    Raises
    ------
    LayerError
        A name that ``module.named_modules()`` does not know (the message lists the valid
        names, the closest first), or a hooked layer on a module whose submodules cannot be
        hooked (TorchScript).
    """
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty sequence of names, got {layers!r}")
    names = [name for name, _ in module.named_modules() if name]
    known = set(names)
    resolved: list[str] = []
    for layer in layers:
        if not isinstance(layer, str):
            raise TypeError(f"layer names must be str, got {layer!r}")
        if layer in (OUTPUT, PROBABILITIES):
            resolved.append(layer)
            continue
        if not hookable:
            raise LayerError(
                f"layer {layer!r}: this model is TorchScript, whose submodules cannot be "
                f"hooked; only {OUTPUT!r} and {PROBABILITIES!r} are available"
            )
        if layer == PENULTIMATE:
            resolved.append(_penultimate(module))
            continue
        name = layer.removesuffix(_INPUT_SUFFIX)
        if name not in known:
            raise LayerError(_not_found(layer, name, names))
        resolved.append(layer)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers must be distinct, got {list(layers)} (resolved: {resolved})")
    return tuple(resolved)


def _penultimate(module: Any) -> str:
    torch = require_torch()
    linears = [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears or not linears[-1]:
        raise LayerError(
            f"{PENULTIMATE!r} needs a model with a torch.nn.Linear head; "
            f"{type(module).__name__} has none: name a layer instead"
        )
    return linears[-1] + _INPUT_SUFFIX


def _not_found(layer: str, name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return (
        f"layer {layer!r} not found.{hint} Valid names ({len(names)} in total, "
        f"plus {OUTPUT!r}, {PROBABILITIES!r}, {PENULTIMATE!r} and 'name{_INPUT_SUFFIX}'): {shown}"
    )


class LayerCapture:
    """Forward hooks that keep the named layers' outputs (or inputs) of one forward pass.

    Use as a context manager: the hooks are removed on exit, whatever happens. Special
    names (``"@output"``, ``"@probabilities"``) are ignored here; :func:`model_output`
    handles them.
    """

    def __init__(self, module: Any, layers: Sequence[str]) -> None:
        self._module = module
        self._layers = [layer for layer in layers if not layer.startswith("@")]
        self._handles: list[Any] = []
        self.captured: dict[str, Any] = {}

    def __enter__(self) -> LayerCapture:
        modules = dict(self._module.named_modules())
        for layer in self._layers:
            if layer.endswith(_INPUT_SUFFIX):
                target = modules[layer.removesuffix(_INPUT_SUFFIX)]
                self._handles.append(target.register_forward_pre_hook(self._pre_hook(layer)))
            else:
                self._handles.append(modules[layer].register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self.captured[layer] = first_tensor(output, layer)

        return hook

    def _pre_hook(self, layer: str) -> Any:
        def hook(module: Any, inputs: Any) -> None:
            self.captured[layer] = first_tensor(inputs, layer)

        return hook

    def take(self, layer: str) -> Any:
        """The tensor captured for ``layer`` in the last forward pass (then forgotten)."""
        try:
            return self.captured.pop(layer)
        except KeyError:
            raise LayerError(
                f"layer {layer!r} did not run in the forward pass (a module the model "
                "defines but does not call)"
            ) from None


def first_tensor(value: Any, where: str) -> Any:
    """The first tensor in a module's output: itself, a tuple's first, a ModelOutput's first."""
    torch = require_torch()
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        for key in ("logits", "last_hidden_state"):
            if isinstance(value.get(key), torch.Tensor):
                return value[key]
        candidates: Iterator[Any] = iter(value.values())
    elif isinstance(value, (tuple, list)):
        candidates = iter(value)
    else:
        candidates = iter(())
    for item in candidates:
        if isinstance(item, torch.Tensor):
            return item
    raise LayerError(f"{where!r} produced a {type(value).__name__} holding no tensor")


def model_output(output: Any, layer: str) -> Any:
    """``"@output"`` or ``"@probabilities"`` from the model's return value."""
    torch = require_torch()
    tensor = first_tensor(output, OUTPUT)
    if layer == OUTPUT:
        return tensor
    if tensor.ndim != 2 or tensor.shape[1] < 2:
        raise LayerError(
            f"{PROBABILITIES!r} needs 2-D logits (n, classes >= 2) from the model, "
            f"got shape {tuple(tensor.shape)}; embed {OUTPUT!r} or a named layer instead"
        )
    return torch.softmax(tensor.float(), dim=1)


def pool(tensor: Any, attention_mask: Any | None, mode: str = "mean") -> Any:
    """Reduce a captured tensor to ``(n, d)`` float32.

    * 2-D ``(n, d)``: returned as is.
    * text (``attention_mask`` given), 3-D ``(n, tokens, d)``: ``"mean"`` over the tokens the
      mask keeps, ``"cls"`` the first token, ``"max"`` the maximum over kept tokens.
    * otherwise ``(n, channels, *spatial)``: ``"mean"`` or ``"max"`` over the spatial axes
      (global pooling), ``"flatten"`` keeps every value.
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    x = tensor.float()
    if x.ndim == 1:
        return x[:, None]
    if x.ndim == 2:
        return x
    if mode == "flatten":
        return x.flatten(1)
    if attention_mask is not None and x.ndim == 3 and x.shape[:2] == attention_mask.shape:
        mask = attention_mask.to(dtype=x.dtype)[:, :, None]
        if mode == "cls":
            return x[:, 0]
        if mode == "max":
            return x.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if mode == "cls":
        raise ValueError("pooling='cls' needs a token sequence (a text model's layer)")
    axes = tuple(range(2, x.ndim))
    return x.amax(dim=axes) if mode == "max" else x.mean(dim=axes)


def unhookable(module: Any) -> bool:
    """Whether ``module`` is TorchScript, whose submodules' hooks never fire."""
    torch = require_torch()
    return isinstance(module, torch.jit.ScriptModule)
