"""Data-parallel fine-tuning: N local processes, gloo on the CPU, NCCL on CUDA.

:func:`fit_distributed` spawns the processes itself (``torch.multiprocessing``); a script
started by ``torchrun`` can instead call :func:`init_from_torchrun` and then
:func:`training.loop.fit` directly. The rendezvous is a file in a private temporary
folder, so concurrent jobs never race for a port.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.config import TrainConfig
from training.data import DataSplit
from training.errors import TrainingDivergedError, TrainingError
from training.loop import FitResult, fit, torch_device

__all__ = ["fit_distributed", "init_from_torchrun"]


def _backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def init_from_torchrun(device: str = "cpu") -> tuple[int, int]:
    """Join the group ``torchrun`` set up (its RANK/WORLD_SIZE/MASTER_* variables)."""
    if not dist.is_initialized():
        dist.init_process_group(_backend(device))
    return dist.get_rank(), dist.get_world_size()


def _worker(rank: int, world: int, store: str, model: nn.Module, split: DataSplit,
            config: TrainConfig, out: str) -> None:
    torch.set_num_threads(1)  # N processes on N cores: one thread each
    device = config.device
    if device.startswith("cuda"):
        device = f"cuda:{rank}"
        torch.cuda.set_device(rank)
    dist.init_process_group(_backend(device), init_method=f"file://{store}", rank=rank,
                            world_size=world)
    try:
        result: Any
        try:
            result = fit(model, split, config.replace(device=device))
        except TrainingDivergedError as exc:
            result = ("diverged", str(exc), exc.step, exc.reason)
        if rank == 0:
            with open(out, "wb") as fh:
                pickle.dump(result, fh)
    finally:
        dist.destroy_process_group()


def fit_distributed(model: nn.Module, split: DataSplit, config: TrainConfig | None = None, *,
                    nproc: int = 2, start_method: str = "spawn") -> FitResult:
    """:func:`~training.loop.fit` in ``nproc`` data-parallel processes; rank 0's result.

    ``config.batch_size`` is per process, so the global batch is ``nproc`` times larger;
    ``config.lr_scaling`` says how the rate follows (``"none"`` reproduces one process
    with ``batch_size * nproc``). ``start_method="fork"`` skips re-importing torch in
    each process (seconds on a small machine) where the platform allows it; "spawn" is
    the safe default (a forked CUDA context is unusable).
    """
    cfg = config or TrainConfig()
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc!r}")
    torch_device(cfg.device)  # CUDA asked for and missing: fail here, not in N children
    if nproc == 1:
        return fit(model, split, cfg)
    if cfg.device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise TrainingError(f"nproc={nproc} CUDA processes need {nproc} GPUs, "
                            f"found {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory(prefix="driftline-ddp-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "result.pkl")
        try:
            mp.start_processes(_worker, args=(nproc, store, model.cpu(), split, cfg, out),
                               nprocs=nproc, join=True, start_method=start_method)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            # a process raised or died: nothing was trained
            raise TrainingError(f"data-parallel run failed: {exc}") from exc
        # rank 0 wrote the file itself, in this private folder: unpickling it is safe
        result = pickle.loads(Path(out).read_bytes())  # noqa: S301
    if isinstance(result, tuple) and result[0] == "diverged":
        raise TrainingDivergedError(result[1], step=result[2], reason=result[3])
    if not isinstance(result, FitResult):
        raise TrainingError(f"data-parallel run returned {type(result).__name__}")
    return result
