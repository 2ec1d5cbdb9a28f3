"""Model factories the tests resolve as ``"embedding_test_nets:<name>"`` (importable module)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int = 6, hidden: int = 8, n_out: int = 3) -> nn.Module:
    """A small classifier: Linear -> ReLU -> Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digit images: two convolutions, a 32-unit penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.features(x)))


def digits_cnn() -> nn.Module:
    return DigitsCNN()


NOT_CALLABLE = 42


def not_a_module() -> object:
    return object()
