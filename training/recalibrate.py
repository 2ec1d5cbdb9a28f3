"""Label-shift correction without training: add log w to the logits (BBSE weights)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.loop import clone_model
from training.strategies import head_name
from training.text import model_inputs

__all__ = ["PriorCorrected", "recalibrate"]


class PriorCorrected(nn.Module):
    """``base(x) + log w``: the Bayes-optimal correction when only p(y) changed."""

    def __init__(self, base: nn.Module, log_weights: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("log_weights", log_weights.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.log_weights  # type: ignore[no-any-return]


def _log_weights(weights: np.ndarray) -> torch.Tensor:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) < 2 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be a finite 1-d array of >= 2 class weights, got {w!r}")
    # a class estimated absent (w <= 0) keeps a tiny prior: log 0 would make it unreachable
    return torch.as_tensor(np.log(np.clip(w, 1e-6, None)), dtype=torch.float32)


def recalibrate(model: nn.Module, weights: np.ndarray, probe: np.ndarray) -> nn.Module:
    """A challenger whose logits are ``model``'s plus ``log weights``; ``model`` untouched.

    When the output is the last Linear layer's (checked on ``probe`` inputs), the shift is
    folded into its bias: same architecture, loadable by the same factory. Otherwise the
    model is wrapped in :class:`PriorCorrected`.
    """
    log_w = _log_weights(weights)
    challenger = clone_model(model).cpu().eval()
    x = model_inputs(challenger, probe[:16])  # texts: tokenised by the model's tokenizer
    with torch.no_grad():
        before = challenger(x)
        if before.shape[-1] != len(log_w):
            raise ValueError(f"weights has {len(log_w)} classes, the model outputs "
                             f"{before.shape[-1]}")
        head = dict(challenger.named_modules())[head_name(challenger)]
        if isinstance(head, nn.Linear) and head.bias is not None:
            head.bias.add_(log_w)
            if torch.allclose(challenger(x), before + log_w, atol=1e-4):
                return challenger
            head.bias.sub_(log_w)  # the head is not the output: wrap instead
    return PriorCorrected(challenger, log_w).eval()
