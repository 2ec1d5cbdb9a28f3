"""Small seeded CPU fixtures for the training tests: a concept that flips at a known row."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# training_test_nets.py holds the factories state-dict loading resolves by name.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import training_test_nets as nets  # noqa: E402
from training_test_nets import concept  # noqa: E402

from training import LabelledRows, TrainConfig, fit, split_by_time  # noqa: E402

# two shared cores: one intra-op thread is faster than two fighting each other
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference() -> LabelledRows:
    return concept(600, flipped=False, seed=1)


@pytest.fixture(scope="session")
def drifted() -> LabelledRows:
    return concept(800, flipped=True, seed=2)


@pytest.fixture(scope="session")
def champion(reference: LabelledRows) -> torch.nn.Module:
    """An MLP trained on the pre-drift concept (about 97% accurate on it)."""
    torch.manual_seed(0)
    split = split_by_time(LabelledRows(reference.x, reference.y, np.arange(600.0)))
    return fit(nets.mlp4(), split, TrainConfig(epochs=15, lr_grid=(1e-2,))).model
