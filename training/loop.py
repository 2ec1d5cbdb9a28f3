"""The fine-tuning loop: warm-up + cosine schedule, clipping, early stopping, a rate grid.

Runs in one process or inside a ``torch.distributed`` group (``torchrun`` or
:func:`training.distributed.fit_distributed`): each process takes its slice of every global
batch and DDP averages the gradients, so the result matches one process up to float
rounding (the per-process loss is scaled so the average is the global batch's mean).
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from embeddings.device import autocast, resolve_device
from embeddings.errors import DeviceError
from training.config import TrainConfig
from training.data import DataSplit, LabelledRows
from training.errors import TrainingDeviceError, TrainingDivergedError
from training.strategies import Prepared, count_trainable, prepare
from training.text import model_inputs

__all__ = ["EpochLog", "FitResult", "fit", "predict", "set_seed", "torch_device"]

log = logging.getLogger("driftline.training")


@dataclass(frozen=True)
class EpochLog:
    """One epoch of one grid point."""

    lr: float
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float  # accuracy (classification) or mean absolute error (regression)
    seconds: float


@dataclass
class FitResult:
    """A trained challenger and how it was chosen.

    ``model`` is on the CPU in evaluation mode, in the original architecture.
    ``diverged`` lists grid points that stopped (lr, step, reason).
    """

    model: nn.Module
    lr: float
    best_epoch: int
    val_loss: float
    val_metric: float
    steps: int
    seed: int
    world_size: int
    trainable_parameters: int
    history: list[EpochLog] = field(default_factory=list)
    diverged: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Plain JSON (no model), for ``run.json`` and the job result."""
        return {"lr": self.lr, "best_epoch": self.best_epoch, "val_loss": self.val_loss,
                "val_metric": self.val_metric, "steps": self.steps, "seed": self.seed,
                "world_size": self.world_size,
                "trainable_parameters": self.trainable_parameters,
                "grid_val_loss": self.grid, "diverged": self.diverged,
                "epochs": [e.__dict__ for e in self.history]}


def set_seed(seed: int) -> None:
    """Seed torch (CPU and CUDA) and NumPy's legacy global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def torch_device(device: str) -> torch.device:
    """``embeddings``' explicit device rule, raised as :class:`TrainingDeviceError`."""
    try:
        return resolve_device(device)  # type: ignore[no-any-return]
    except DeviceError as exc:
        raise TrainingDeviceError(str(exc)) from None


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _tensors(model: nn.Module, rows: LabelledRows,
             task: str) -> tuple[torch.Tensor, torch.Tensor]:
    # texts are tokenised once here, by the model's own tokenizer (training.text)
    x = model_inputs(model, rows.x)
    y = torch.tensor(np.asarray(rows.y, dtype=np.int64 if task == "classification"
                                else np.float32))
    return x, y


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return lambda out, y: nn.functional.cross_entropy(out.float(), y, reduction="sum")
    return lambda out, y: nn.functional.mse_loss(out.float().reshape(-1), y, reduction="sum")


def predict(model: nn.Module, x: np.ndarray, *, device: str = "cpu",
            batch_size: int = 1024) -> np.ndarray:
    """Model outputs (logits, or regression values) for ``x`` as a float32 array."""
    dev = torch_device(device)
    model = model.to(dev).eval()
    outs = []
    if np.asarray(x[:1]).dtype.kind in "OUS":
        batch_size = min(batch_size, 128)  # text: attention memory grows with the batch
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = model_inputs(model, x[i:i + batch_size]).to(dev)
            outs.append(model(xb).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str,
              dev: torch.device, dtype: Any) -> tuple[float, float]:
    loss_fn = _loss_fn(task)
    model.eval()
    total, metric = 0.0, 0.0
    chunk = 128 if x.dtype == torch.int64 else 4096  # token ids: attention memory
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk].to(dev), y[i:i + chunk].to(dev)
            with autocast(dev, dtype):
                out = model(xb)
            total += float(loss_fn(out, yb))
            if task == "classification":
                metric += float((out.argmax(dim=1) == yb).sum())
            else:
                metric += float((out.float().reshape(-1) - yb).abs().sum())
    n = max(len(x), 1)
    return total / n, metric / n


def clone_model(model: nn.Module) -> nn.Module:
    """An independent copy; TorchScript through save/load (its deepcopy yields parameters
    that are not leaves, which no optimiser accepts)."""
    if isinstance(model, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates TorchScript; a deployed TorchScript model stays one
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated",
                                    category=FutureWarning)
            torch.jit.save(model, buffer)
            buffer.seek(0)
            return torch.jit.load(buffer, map_location="cpu")  # type: ignore[no-any-return]
    return copy.deepcopy(model)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 over the remaining steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(prep: Prepared, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": g["params"], "lr": g["lr"]} for g in prep.groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _scaled_lr(lr: float, config: TrainConfig, world: int) -> float:
    if config.lr_scaling == "linear":
        return lr * world
    if config.lr_scaling == "sqrt":
        return lr * math.sqrt(world)
    return lr


def _fit_one(base: nn.Module, data: tuple[torch.Tensor, ...], config: TrainConfig, lr: float,
             dev: torch.device, dtype: Any,
             on_epoch: Callable[[EpochLog], None] | None) -> tuple[Prepared, list[EpochLog],
                                                                  int, float, float, int]:
    rank, world = _world()
    set_seed(config.seed)
    prep = prepare(clone_model(base), config, _scaled_lr(lr, config, world))
    model = prep.model.to(dev)
    opt = _optimizer(prep, config)
    base_lrs = [g["lr"] for g in opt.param_groups]
    depths = [g["depth"] for g in prep.groups if g["params"]]
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    x, y, xv, yv = data
    loss_fn = _loss_fn(config.task)
    global_batch = config.batch_size * world
    steps_per_epoch = math.ceil(len(x) / global_batch)
    total = steps_per_epoch * config.epochs
    warmup = round(total * config.warmup_share)
    gen = torch.Generator().manual_seed(config.seed)  # same order in every process
    history: list[EpochLog] = []
    best = (math.inf, math.nan, -1)
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs, step = 0, 0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        train_model.train()
        perm = torch.randperm(len(x), generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            batch = perm[b * global_batch:(b + 1) * global_batch]
            mine = batch[rank * config.batch_size:(rank + 1) * config.batch_size]
            xb, yb = x[mine].to(dev), y[mine].to(dev)
            factor = _lr_factor(step, total, warmup)
            for g, lr0, depth in zip(opt.param_groups, base_lrs, depths, strict=True):
                g["lr"] = lr0 * factor if epoch >= prep.unfreeze_epoch[depth] else 0.0
            opt.zero_grad(set_to_none=True)
            with autocast(dev, dtype):
                out = train_model(xb)
            # DDP averages gradients over processes: scale each share so the average is
            # the mean over the global batch, whatever the shares' sizes.
            loss = loss_fn(out, yb) * (world / len(batch))
            loss.backward()
            for g, depth in zip(opt.param_groups, depths, strict=True):
                if epoch < prep.unfreeze_epoch[depth]:  # frozen depth: out of the clip norm
                    for p in g["params"]:
                        p.grad = None
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
            step_loss = loss.detach().reshape(1) / world
            if world > 1:
                dist.all_reduce(step_loss)  # global mean: every process decides alike
            value = float(step_loss)
            step += 1
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"lr {lr:g}: loss is {value} at step {step} (epoch {epoch + 1}); stopped",
                    step=step, reason="non-finite loss")
            if not math.isfinite(norm) or norm > config.explode_norm:
                reason = f"gradient norm {norm:.3g} above explode_norm {config.explode_norm:g}"
                raise TrainingDivergedError(f"lr {lr:g}: {reason} at step {step} "
                                            f"(epoch {epoch + 1}); stopped",
                                            step=step, reason=reason)
            opt.step()
            running += value * len(batch)
        val_loss, val_metric = _evaluate(model, xv, yv, config.task, dev, dtype)
        entry = EpochLog(lr, epoch + 1, running / len(x), val_loss, val_metric,
                         time.perf_counter() - started)
        history.append(entry)
        if on_epoch is not None and rank == 0:
            on_epoch(entry)
        if val_loss < best[0] - config.min_delta:
            best = (val_loss, val_metric, epoch + 1)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bad_epochs = 0
        else:
            bad_epochs += 1
            # gradual unfreezing: do not stop while depths are still waiting to learn
            if bad_epochs >= config.patience and epoch + 1 >= max(prep.unfreeze_epoch):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return prep, history, best[2], best[0], best[1], step


def fit(model: nn.Module, split: DataSplit, config: TrainConfig | None = None, *,
        on_epoch: Callable[[EpochLog], None] | None = None) -> FitResult:
    """Fine-tune a copy of ``model`` on ``split`` (``model`` itself is never modified).

    For each rate in ``config.lr_grid`` the copy trains from the same weights and seed;
    the rate with the lowest best validation loss wins, its best epoch's weights restored.
    A grid point that diverges is recorded in ``diverged`` and skipped; if every point
    diverges, :class:`TrainingDivergedError` of the last one is raised.
    """
    cfg = config or TrainConfig()
    dev = torch_device(cfg.device)
    # bf16 autocast on CUDA by default; the CPU stays fp32 (what CI checks) unless asked.
    dtype = (torch.bfloat16 if cfg.precision == "bf16"
             or (cfg.precision == "auto" and dev.type == "cuda") else None)
    _rank, world = _world()
    best: tuple[float, float, Prepared, list[EpochLog], int, float, int] | None = None
    history: list[EpochLog] = []
    diverged: list[dict[str, Any]] = []
    grid: dict[str, float] = {}
    last_error: TrainingDivergedError | None = None
    data = (*_tensors(model, split.train, cfg.task), *_tensors(model, split.validation, cfg.task))
    for lr in cfg.lr_grid:
        try:
            prep, hist, epoch, val_loss, val_metric, steps = _fit_one(
                model, data, cfg, lr, dev, dtype, on_epoch)
        except TrainingDivergedError as exc:
            log.warning("%s", exc)
            diverged.append({"lr": lr, "step": exc.step, "reason": exc.reason})
            last_error = exc
            continue
        history += hist
        grid[f"{lr:g}"] = val_loss
        if best is None or val_loss < best[0]:
            best = (val_loss, val_metric, prep, hist, epoch, lr, steps)
    if best is None:
        assert last_error is not None
        raise last_error
    val_loss, val_metric, prep, _hist, epoch, lr, steps = best
    trainable = count_trainable(prep.model)
    trained = prep.unwrap().to("cpu").eval()
    for p in trained.parameters():
        p.requires_grad_(True)
    return FitResult(model=trained, lr=lr, best_epoch=epoch, val_loss=val_loss,
                     val_metric=val_metric, steps=steps, seed=cfg.seed, world_size=world,
                     trainable_parameters=trainable, history=history, diverged=diverged,
                     grid=grid)
