"""Which parameters train, and at which rate: head, gradual, full, LoRA."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from training.config import TrainConfig

__all__ = ["Prepared", "count_trainable", "head_name", "layer_groups", "prepare"]

_NUMBERED = re.compile(r"^(.*?\.?\d+)(?:\.|$)")


@dataclass
class Prepared:
    """A model ready to train: its parameter groups and how to unwrap it afterwards.

    ``groups``: optimiser groups with a ``depth`` (0 = the head); ``unfreeze_epoch[d]`` is the
    epoch from which depth ``d`` learns (gradual unfreezing; 0 for every depth otherwise).
    """

    model: nn.Module
    groups: list[dict[str, Any]]
    unfreeze_epoch: list[int]
    lora: bool = False

    def unwrap(self) -> nn.Module:
        """The trained model as the original architecture (LoRA merged into the weights)."""
        if self.lora:
            return self.model.merge_and_unload()  # type: ignore[operator, no-any-return]
        return self.model


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in registration (roughly forward) order."""
    return [(name, m) for name, m in model.named_modules()
            if name and any(True for _ in m.parameters(recurse=False))]


def head_name(model: nn.Module) -> str:
    """Name of the output layer: the last module with parameters of its own."""
    leaves = _leaf_modules(model)
    if not leaves:
        raise ValueError("the model has no parameters to train")
    return leaves[-1][0]


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter-owning modules grouped into depths, top (head) first.

    Modules under a numbered container (``encoder.layer.3.*``, ``features.0``) form one
    group per number; other nested modules one group per parent (a transformer's
    ``embeddings.word_embeddings``, ``position_embeddings`` and ``LayerNorm`` unfreeze
    together); top-level ones are their own group.
    """
    keys: list[str] = []
    members: dict[str, list[str]] = {}
    for name, _m in _leaf_modules(model):
        match = _NUMBERED.match(name)
        key = match.group(1) if match else name.rpartition(".")[0] or name
        if key not in members:
            keys.append(key)
            members[key] = []
        members[key].append(name)
    head = head_name(model)
    # the head stands alone at depth 0 even inside a numbered container
    groups = [[n for n in members[k] if n != head] for k in reversed(keys)]
    return [[head], *[g for g in groups if g]]


def _params(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    mods = dict(model.named_modules())
    return [p for n in names for p in mods[n].parameters(recurse=False)]


def prepare(model: nn.Module, config: TrainConfig, lr: float) -> Prepared:
    """Set ``requires_grad`` and build optimiser groups for ``config.strategy``."""
    head = head_name(model)
    if config.strategy == "full":
        return Prepared(model, [{"params": list(model.parameters()), "lr": lr, "depth": 0}], [0])
    if config.strategy == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        params = _params(model, [head])
        for p in params:
            p.requires_grad_(True)
        return Prepared(model, [{"params": params, "lr": lr, "depth": 0}], [0])
    if config.strategy == "gradual":
        # Frozen depths keep requires_grad and get a zero rate until their epoch (the loop
        # applies the schedule): DDP fixes its gradient hooks at wrap time, so toggling
        # requires_grad mid-run would desynchronise the processes.
        groups = [{"params": _params(model, names), "lr": lr * config.layer_decay ** d,
                   "depth": d} for d, names in enumerate(layer_groups(model))]
        unfreeze = [d * config.unfreeze_every for d in range(len(groups))]
        return Prepared(model, groups, unfreeze)
    return _prepare_lora(model, config, lr, head)


def _prepare_lora(model: nn.Module, config: TrainConfig, lr: float, head: str) -> Prepared:
    try:
        import peft
    except ImportError as exc:
        raise ImportError("strategy 'lora' needs peft: pip install 'driftline[training]'") from exc
    if config.lora_targets is not None:
        targets = _named_targets(model, config.lora_targets, head)
    else:
        targets = [n for n, m in model.named_modules()
                   if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and n != head]
    if not targets:
        raise ValueError("strategy 'lora' found no Linear/Conv modules to adapt besides the "
                         "head; set lora_targets")
    lora_config = peft.LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
        # a string is a full-match regex for peft: exact names, never suffix matches
        target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$",
        modules_to_save=[head])
    wrapped = peft.get_peft_model(model, lora_config)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    return Prepared(wrapped, [{"params": params, "lr": lr, "depth": 0}], [0], lora=True)


def _named_targets(model: nn.Module, wanted: tuple[str, ...], head: str) -> list[str]:
    """Module names for ``lora_targets``: a full name, or a last name part (``query``,
    ``value``) matching that part in every layer, as in a transformer's attention."""
    names = [n for n, _m in model.named_modules() if n and n != head]
    out: list[str] = []
    for target in wanted:
        found = [n for n in names if n == target or n.endswith("." + target)]
        if not found:
            raise ValueError(f"lora_targets: no module named {target!r} (or ending in "
                             f"'.{target}') besides the head {head!r}")
        out += [n for n in found if n not in out]
    return out


def count_trainable(model: nn.Module) -> int:
    """Parameters that receive gradients."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


