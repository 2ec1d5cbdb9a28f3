"""Small reference architectures for the factory form (``training.models:mlp``)."""

from __future__ import annotations

from torch import nn

__all__ = ["digits_cnn", "mlp"]


def mlp(in_features: int, n_classes: int = 2, hidden: tuple[int, ...] = (32, 16)) -> nn.Module:
    """A ReLU MLP over ``in_features`` tabular features; outputs ``n_classes`` logits
    (one value for ``n_classes=1``: regression)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def digits_cnn(n_classes: int = 10, channels: int = 16) -> nn.Module:
    """A two-convolution CNN for 1x8x8 images (scikit-learn's digits)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 16, 64), nn.ReLU(), nn.Linear(64, n_classes))
