"""``driftline retrain run`` under ``torchrun``: one job, N data-parallel processes.

``torchrun --nproc_per_node N -m monitor.cli retrain run ...`` (what the ``builtin``
backend starts when ``nproc`` > 1) starts N copies of the command. Each joins the process
group torchrun set up; every rank reads the same rows and splits them alike, and
:func:`training.fit` trains in lockstep (DDP, each rank its slice of every global batch).
Only rank 0 runs the whole job (baseline registration, gate, registry, result file): the
other ranks train and exit, so a run registers one version, never N.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from training import (
    LabelledRows,
    ModelSpec,
    Registry,
    TrainConfig,
    TrainingError,
    fit,
    init_from_torchrun,
    load_weights,
    split_by_time,
)

__all__ = ["Torchrun", "join_torchrun", "leave_torchrun", "train_as_worker"]

log = logging.getLogger("driftline.retrain")


@dataclass(frozen=True)
class Torchrun:
    """This process's place: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def active(self) -> bool:
        return self.world > 1


def join_torchrun(device: str) -> Torchrun:
    """Join torchrun's group when started by it (``WORLD_SIZE`` > 1); else a no-op.

    On CUDA each process takes the GPU of its local rank (NCCL needs one per process).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Torchrun(device=device)
    if device.startswith("cuda"):
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    rank, world = init_from_torchrun(device)
    log.info("torchrun: rank %d of %d on %s", rank, world, device)
    return Torchrun(rank, world, device)


def leave_torchrun(place: Torchrun) -> None:
    if place.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def train_as_worker(rows: LabelledRows, *, registry_dir: str | Path, model_name: str,
                    model: ModelSpec, model_path: str | Path | None,
                    reference: LabelledRows | None, config: TrainConfig) -> None:
    """A rank > 0's share of :func:`monitor.retrain_job.run_job`: the same champion, the
    same split, the same :func:`training.fit` call (rank 0 makes the identical one), no
    registry writes. The champion is the registry's, or the deployed weights rank 0 is
    registering as the baseline: the same tensors either way."""
    from embeddings.errors import EmbeddingError

    registry = Registry(registry_dir)
    try:
        if registry.aliases(model_name).champion is not None:
            _, champion = registry.load(model_name)
        elif model_path is not None:
            champion = load_weights(model, model_path)
        else:
            return
        data = split_by_time(rows, reference, None, seed=config.seed)
    except (TrainingError, EmbeddingError, OSError, ValueError) as exc:
        # rank 0 meets the same error and reports it in the result; exiting quietly here
        # keeps torchrun from killing rank 0 before it has written that result
        log.info("torchrun worker: nothing to train (%s)", exc)
        return
    fit(champion, data, config)
