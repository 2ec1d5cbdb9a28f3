"""Fine-tuning practice for deployed models: data in, a gated challenger out.

No Kafka, no SQL, no settings objects; never imports :mod:`monitor`. Models are read with
:mod:`embeddings`' local, safe loaders.

* :mod:`~training.data`: time-ordered train / validation / holdout splits with replay.
* :mod:`~training.strategies`: head, gradual unfreezing, full, LoRA (peft).
* :mod:`~training.loop`: AdamW/SGD, warm-up + cosine, clipping, early stopping, rate grid.
* :mod:`~training.distributed`: the same loop data-parallel (gloo on CPU, NCCL on CUDA).
* :mod:`~training.recalibrate`: label-shift correction of the output prior, no training.
* :mod:`~training.gate`: the paired promotion test.
* :mod:`~training.registry`: versions, aliases, promote, rollback
  (:mod:`~training.mlflow_registry`: the optional MLflow mirror).
* :mod:`~training.text`: text classifiers (transformers, sentence-transformers + head)
  trained on raw text.
"""

from __future__ import annotations

from training.config import STRATEGIES, GateConfig, SplitConfig, TrainConfig
from training.data import DataSplit, LabelledRows, content_hash, split_by_time
from training.distributed import fit_distributed, init_from_torchrun
from training.errors import (
    InsufficientDataError,
    RegistryError,
    TrainingDeviceError,
    TrainingDivergedError,
    TrainingError,
)
from training.gate import GateResult, gate, mcnemar_exact, sign_test
from training.loop import EpochLog, FitResult, fit, predict, set_seed
from training.mlflow_registry import MlflowMirror
from training.modelio import ModelSpec, load_weights, save_weights
from training.recalibrate import PriorCorrected, recalibrate
from training.registry import BACKENDS, Aliases, Registry, VersionInfo
from training.text import (
    TEXT_KINDS,
    SentenceClassifier,
    SequenceClassifier,
    TextClassifier,
    load_text_model,
    model_inputs,
)

__all__ = [
    "BACKENDS",
    "STRATEGIES",
    "TEXT_KINDS",
    "Aliases",
    "DataSplit",
    "EpochLog",
    "FitResult",
    "GateConfig",
    "GateResult",
    "InsufficientDataError",
    "LabelledRows",
    "MlflowMirror",
    "ModelSpec",
    "PriorCorrected",
    "Registry",
    "RegistryError",
    "SentenceClassifier",
    "SequenceClassifier",
    "SplitConfig",
    "TextClassifier",
    "TrainConfig",
    "TrainingDeviceError",
    "TrainingDivergedError",
    "TrainingError",
    "VersionInfo",
    "content_hash",
    "fit",
    "fit_distributed",
    "gate",
    "init_from_torchrun",
    "load_text_model",
    "load_weights",
    "mcnemar_exact",
    "model_inputs",
    "predict",
    "recalibrate",
    "save_weights",
    "set_seed",
    "sign_test",
    "split_by_time",
]
