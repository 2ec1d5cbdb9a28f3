"""Factories the tests' state-dict models are built with (resolved by name)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training import LabelledRows, TrainConfig
from training.models import mlp


def mlp4() -> nn.Module:
    """The toy concept's MLP: 4 features, 2 classes."""
    return mlp(4, 2, hidden=(32, 32))


class Scaled(nn.Module):
    """Output is not the last Linear's: recalibration must wrap, not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(4, 2, hidden=(8,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.body(x)


def concept(n: int, *, flipped: bool, seed: int) -> LabelledRows:
    """4 features, y = [x0 + x1 > 0]. After the drift ("flipped") the inputs move to a
    new region (x2 around 3) where the concept is y = [x0 > 0]: the old model is wrong
    there a quarter of the time, and a model can learn both regions (replay keeps the
    old one)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    if flipped:
        x[:, 2] += 3.0
    y = ((x[:, 0] if flipped else x[:, 0] + x[:, 1]) > 0).astype(np.int64)
    return LabelledRows(x, y, np.arange(n, dtype=np.float64))


def quick(**changes: object) -> TrainConfig:
    """A fast configuration: few epochs, one rate."""
    base = TrainConfig(epochs=8, lr_grid=(1e-2,), batch_size=64)
    return base.replace(**changes)
