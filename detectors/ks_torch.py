"""Kolmogorov-Smirnov statistics of many features at once with torch (CPU or CUDA)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import PerFeatureTest
from ._common import check_options
from .backend import check_device, require_torch, resolve_device

# Private helper of ks.py, reused on purpose: the p-values (exact or asymptotic, scipy's
# ks_2samp rules) then come from exactly the code KSDetector runs.
from .ks import _ks_2samp_p_values

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

__all__ = ["TorchKSDetector", "ks_statistics_torch"]


def ks_statistics_torch(sorted_reference: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Two-sample KS distances of ``d`` features at once.

    Parameters
    ----------
    sorted_reference : torch.Tensor, shape (d, n)
        Floating point; each row sorted ascending (``torch.sort(x, dim=1).values``).
        No NaN.
    current : torch.Tensor, shape (d, m)
        Same dtype and device; any order. No NaN.

    Returns
    -------
    torch.Tensor, shape (d,), float64
        :math:`D_k = \\sup_x |F_{1,k}(x) - F_{2,k}(x)|` for each row ``k``, on the
        inputs' device.

    Raises
    ------
    ValueError
        Shapes, dtypes or devices do not match, a side is empty, or a value is NaN.
    TypeError
        An input is not a floating-point tensor.

    Notes
    -----
    As in :class:`~detectors.ks.KSDetector`: :math:`F_1 - F_2` rises only at
    reference points and falls only at current points, so

    .. math:: D = \\max\\Big(\\max_i \\big[F_1(x_i) - F_2(x_i)\\big],\\
              \\min\\big(1, \\max(0, -\\min_j [F_1(y_j) - F_2(y_j)])\\big)\\Big),

    with the right-continuous ECDFs counted by ``torch.searchsorted(..., right=True)``
    on the sorted rows (ties handled), all features in one batched call. Counts are
    divided by the sample sizes in float64, in the same order of operations as the numpy
    detector, so the distances are bit-identical to it.
    """
    torch = require_torch("ks_statistics_torch")
    for name, tensor in (("sorted_reference", sorted_reference), ("current", current)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if tensor.ndim != 2 or tensor.shape[1] == 0:
            raise ValueError(
                f"{name} must have shape (features, values) with values >= 1, "
                f"got {tuple(tensor.shape)}"
            )
    if sorted_reference.shape[0] != current.shape[0]:
        raise ValueError(
            f"sorted_reference has {sorted_reference.shape[0]} features, "
            f"current has {current.shape[0]}"
        )
    if sorted_reference.dtype != current.dtype or sorted_reference.device != current.device:
        raise ValueError(
            "sorted_reference and current must share dtype and device, got "
            f"{sorted_reference.dtype}/{sorted_reference.device} and "
            f"{current.dtype}/{current.device}"
        )
    if bool(torch.isnan(sorted_reference).any()) or bool(torch.isnan(current).any()):
        raise ValueError("sorted_reference and current must not contain NaN")
    n, m = sorted_reference.shape[1], current.shape[1]
    f64 = torch.float64
    ref = sorted_reference.contiguous()
    cur = torch.sort(current, dim=1).values.contiguous()
    ref_ecdf = torch.searchsorted(ref, ref, right=True).to(f64) / n
    # F1 - F2 at the reference points, where it rises, and at the current points, where it falls
    rise = ref_ecdf - torch.searchsorted(cur, ref, right=True).to(f64) / m
    fall = (
        torch.searchsorted(ref, cur, right=True).to(f64) / n
        - torch.searchsorted(cur, cur, right=True).to(f64) / m
    )
    max_s = rise.amax(dim=1)
    min_s = (-fall.amin(dim=1)).clamp(min=0.0).clamp(max=1.0)
    return torch.where(min_s > max_s, min_s, max_s)


class TorchKSDetector(PerFeatureTest):
    """:class:`~detectors.ks.KSDetector` with its statistics computed by torch.

    Same parameters, validation, p-values and results as
    :class:`~detectors.ks.KSDetector` (the results compare equal); the distances of all
    features with the same reference and window sizes are computed in one batched torch
    call (:func:`ks_statistics_torch`) on ``device``, and the p-values by the same
    exact/asymptotic code as :class:`~detectors.ks.KSDetector`, on the CPU.

    Parameters
    ----------
    reference : Mapping[str, numpy.ndarray]
        Feature name -> 1-D numeric array (NaN and inf rejected). Each column is
        sorted once, here, and kept on ``device``; the caller's arrays are not modified.
    alpha : float, default 0.05
    correction : {"bonferroni", "benjamini-hochberg", "none"}, default "bonferroni"
    min_samples : int, default 2
        As for :class:`~detectors.ks.KSDetector`.
    device : {"cpu", "cuda", "cuda:N", "auto"}, default "cpu"
        Resolved here by :func:`detectors.backend.resolve_device`: an unavailable CUDA
        device raises :class:`~detectors.backend.DeviceUnavailableError`, never a silent
        fallback.

    Notes
    -----
    Values are float64 on every device (comparisons are exact, so CUDA gives the same
    distances as the CPU). Features are grouped by (reference size, window size); one
    group -- the usual case of equal-length columns -- is one ``(d, n)`` tensor.
    """

    name = "ks"

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        *,
        alpha: float = 0.05,
        correction: str = "bonferroni",
        min_samples: int = 2,
        device: str = "cpu",
    ) -> None:
        self.alpha, self.correction, self.min_samples = check_options(
            alpha, correction, min_samples
        )
        check_device(device)
        columns = self._reference(reference)
        torch = require_torch("TorchKSDetector")
        self._torch = torch
        self._device = resolve_device(device)
        self.device = str(self._device)
        # reference size -> (features, sorted (len(features), size) float64 tensor)
        self._groups: dict[int, tuple[tuple[str, ...], Any]] = {}
        for size in dict.fromkeys(self._sizes.values()):
            names = tuple(f for f in self.features if self._sizes[f] == size)
            stacked = np.stack([columns[f].astype(np.float64) for f in names])  # a copy
            tensor = torch.from_numpy(stacked).to(self._device)
            self._groups[size] = (names, torch.sort(tensor, dim=1).values)

    def __repr__(self) -> str:
        return (
            f"TorchKSDetector(features={list(self.features)!r}, alpha={self.alpha}, "
            f"correction={self.correction!r}, min_samples={self.min_samples}, "
            f"device={self.device!r})"
        )

    def _statistics(
        self, columns: dict[str, np.ndarray], n_ref: list[int], n_cur: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        distance: dict[str, float] = {}
        for names, sorted_ref in self._groups.values():
            for size in dict.fromkeys(columns[f].size for f in names):
                rows = [i for i, f in enumerate(names) if columns[f].size == size]
                ref = sorted_ref if len(rows) == len(names) else sorted_ref[rows]
                cur = np.stack([columns[names[i]].astype(np.float64) for i in rows])
                cur_t = torch.from_numpy(cur).to(self._device)
                values = ks_statistics_torch(ref, cur_t).cpu().numpy()
                distance.update({names[i]: float(v) for i, v in zip(rows, values, strict=True)})
        distances = np.array([distance[f] for f in self.features])
        return _ks_2samp_p_values(np.array(n_ref), np.array(n_cur), distances)
