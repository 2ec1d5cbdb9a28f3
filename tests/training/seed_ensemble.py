"""Many copies of one recipe trained at once, each with its own seed (for the gate's
calibration test).

Each model is built from its own seed exactly as ``training.fit`` builds it
(``torch.manual_seed(seed)`` then the factory), sees the training rows in its own seeded
order, and is trained with ``training``'s recipe: AdamW, linear warm-up then cosine decay
(``training.loop._lr_factor``), per-model gradient clipping, and the best validation epoch's
weights restored. The models are stacked (``torch.func.stack_module_state``) and run under
``vmap``, so hundreds of them train in the time one would take in a Python loop. AdamW and
the cross-entropy are elementwise / per model, so stacking does not couple them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from training.data import DataSplit
from training.loop import _lr_factor


def train_seeds(factory: Callable[[], nn.Module], split: DataSplit, seeds: list[int], *,
                epochs: int, lr: float, batch_size: int, weight_decay: float = 0.01,
                warmup_share: float = 0.1, clip_norm: float = 1.0
                ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Train one model per seed; returns the architecture and the stacked best weights."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(factory())
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    m = len(seeds)

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))  # type: ignore[no-any-return]

    many = vmap(forward)  # (models, batch, ...) with per-model weights
    x = torch.as_tensor(split.train.x, dtype=torch.float32)
    y = torch.as_tensor(split.train.y, dtype=torch.int64)
    xv = torch.as_tensor(split.validation.x, dtype=torch.float32)
    yv = torch.as_tensor(split.validation.y, dtype=torch.int64)
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
    steps = math.ceil(len(x) / batch_size)
    total, warmup = steps * epochs, round(steps * epochs * warmup_share)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    best_loss = torch.full((m,), math.inf)
    best = {k: v.detach().clone() for k, v in params.items()}
    step = 0
    for _epoch in range(epochs):
        order = torch.stack([torch.randperm(len(x), generator=g) for g in gens])  # (m, n)
        for b in range(steps):
            idx = order[:, b * batch_size:(b + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(step, total, warmup)
            out = many(params, buffers, x[idx])  # (m, batch, classes)
            # per-model mean loss, summed: each model's gradient is its own mean loss's
            loss = nn.functional.cross_entropy(out.flatten(0, 1), y[idx].flatten(),
                                               reduction="sum") / idx.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # clip each model's gradient norm on its own
                norms = torch.sqrt(sum((p.grad.flatten(1) ** 2).sum(1)
                                       for p in params.values() if p.grad is not None))
                scale = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
                for p in params.values():
                    if p.grad is not None:
                        p.grad.mul_(scale.view(-1, *([1] * (p.grad.ndim - 1))))
            opt.step()
            step += 1
        with torch.no_grad():
            out = many(params, buffers, xv.expand(m, *xv.shape))
            val = nn.functional.cross_entropy(out.flatten(0, 1), yv.repeat(m),
                                              reduction="none").view(m, -1).mean(1)
            improved = val < best_loss - 1e-4
            best_loss = torch.where(improved, val, best_loss)
            for k, v in params.items():
                keep = improved.view(-1, *([1] * (v.ndim - 1)))
                best[k] = torch.where(keep, v.detach(), best[k])
    return base, {**best, **buffers}


def predict_seeds(base: nn.Module, weights: dict[str, torch.Tensor],
                  x: torch.Tensor) -> torch.Tensor:
    """Logits of every stacked model on the same rows: (models, rows, classes)."""
    m = next(iter(weights.values())).shape[0]

    def forward(w: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, w, (xb,))  # type: ignore[no-any-return]

    with torch.no_grad():
        return vmap(forward)(weights, x.expand(m, *x.shape))
