"""The retraining job the ``builtin`` backend runs: capture + replay -> fine-tune -> gate ->
registry -> promote. Runs standalone too (``driftline retrain run``).

Everything it needs arrives as plain arguments (no settings object), so the daemon, the
CLI and tests call it alike. It never raises for a job that could not produce a model
(too few rows, divergence, unreadable weights): the result says ``failed`` with the
reason, and the champion is untouched. The champion's alias moves only after the
challenger is fully written and passed the gate.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitor import __version__
from training import (
    DataSplit,
    FitResult,
    GateConfig,
    LabelledRows,
    ModelSpec,
    Registry,
    SplitConfig,
    TrainConfig,
    TrainingError,
    fit,
    fit_distributed,
    gate,
    load_weights,
    predict,
    recalibrate,
    split_by_time,
)
from training.registry import atomic_write_json

__all__ = ["JobResult", "library_versions", "read_rows", "run_job", "text_rows"]

log = logging.getLogger("driftline.retrain")

Status = Literal["promoted", "rejected", "failed", "dry_run"]


@dataclass(frozen=True)
class JobResult:
    """The machine-readable outcome (written as JSON for the request side).

    ``status``: ``promoted`` (challenger now champion), ``rejected`` (kept, not aliased),
    ``failed`` (nothing trained or nothing registered; ``reason`` says why) or
    ``dry_run`` (data selected, nothing trained).
    """

    status: Status
    model: str
    request_id: str | None
    action: str
    champion_before: str | None
    champion_after: str | None
    version: str | None = None
    gate: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    started: str = ""
    finished: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    """Versions that decide a run's numbers, for ``run.json``."""
    found = {"python": platform.python_version(), "driftline": __version__}
    for dist in ("torch", "numpy", "scipy", "peft", "transformers", "tokenizers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def _in_process_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _log_epoch(entry: Any, task: str) -> None:
    metric = "acc" if task == "classification" else "mae"
    log.info("epoch %d lr %g train_loss %.4f val_loss %.4f val_%s %.4f (%.2fs)", entry.epoch,
             entry.lr, entry.train_loss, entry.val_loss, metric, entry.val_metric,
             entry.seconds)


def run_job(
    model_name: str,
    rows: LabelledRows,
    *,
    registry_dir: str | Path,
    model: ModelSpec,
    model_path: str | Path | None = None,
    reference: LabelledRows | None = None,
    features: tuple[str, ...] = (),
    strategy: str = "full",
    action: Literal["retrain", "recalibrate"] = "retrain",
    label_weights: np.ndarray | None = None,
    device: str = "cpu",
    nproc: int = 1,
    seed: int = 0,
    train: TrainConfig | None = None,
    split: SplitConfig | None = None,
    gate_config: GateConfig | None = None,
    request_id: str | None = None,
    dry_run: bool = False,
    result_path: str | Path | None = None,
) -> JobResult:
    """Train (or recalibrate) a challenger for ``model_name``, gate it, register it.

    Parameters
    ----------
    rows : LabelledRows
        The training capture: inputs (n, ...) as the model takes them, labels, event times.
    registry_dir : path
        The directory registry. With no champion there yet, the deployed model at
        ``model_path`` (built per ``model``) is registered as the ``baseline`` champion.
    reference : LabelledRows, optional
        Labelled reference data: replayed into train/validation, part held out for the
        gate's reference check.
    action : {"retrain", "recalibrate"}
        ``recalibrate`` trains nothing: the challenger adds ``log label_weights`` to the
        champion's logits (label shift, BBSE weights).
    result_path : path, optional
        Where to write the result JSON (atomically).
    """
    started, t0 = _now(), time.perf_counter()
    timings: dict[str, float] = {}
    registry = Registry(registry_dir)
    base = TrainConfig() if train is None else train
    cfg = base.replace(strategy=strategy, device=device, seed=seed)
    before: str | None = None
    result: JobResult
    try:
        before = registry.aliases(model_name).champion
        champion_info, champion = _champion(registry, model_name, model, model_path, dry_run)
        before = None if champion_info is None else champion_info.version
        timings["load_seconds"] = time.perf_counter() - t0
        t = time.perf_counter()
        data = split_by_time(rows, reference, split, seed=seed)
        timings["split_seconds"] = time.perf_counter() - t
        log.info("%s: %s, train %d (replay %d) / validation %d / holdout %d rows", model_name,
                 action, len(data.train), data.selection["train"]["n_replay"],
                 len(data.validation), len(data.holdout))
        if dry_run:
            result = JobResult("dry_run", model_name, request_id, action, before, before,
                               data=data.selection, reason="dry run: nothing trained")
        else:
            result = _train_gate_register(
                registry, model_name, champion, champion_info, model, data, cfg, action,
                label_weights, nproc, gate_config or GateConfig(), request_id, features,
                timings)
    except (TrainingError, OSError, ValueError, ImportError) as exc:
        result = JobResult("failed", model_name, request_id, action, before, before,
                           reason=f"{type(exc).__name__}: {exc}")
        log.error("%s: retraining failed, champion %s untouched: %s", model_name, before, exc)
    except Exception as exc:  # ModelLoadError and kin: report, never half-promote
        from embeddings.errors import EmbeddingError

        if not isinstance(exc, EmbeddingError):
            raise
        result = JobResult("failed", model_name, request_id, action, before, before,
                           reason=f"{type(exc).__name__}: {exc}")
        log.error("%s: cannot load the model, champion %s untouched: %s", model_name, before,
                  exc)
    timings["total_seconds"] = time.perf_counter() - t0
    final = JobResult(**{**result.as_dict(), "timings": {**timings, **result.timings},
                         "started": started, "finished": _now()})
    if result_path is not None:
        path = Path(result_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, final.as_dict())
    return final


def _champion(registry: Registry, name: str, spec: ModelSpec, model_path: str | Path | None,
              dry_run: bool) -> tuple[Any, Any]:
    if registry.aliases(name).champion is not None:
        return registry.load(name)
    if model_path is None:
        raise TrainingError(f"model {name!r} has no champion in {registry.root} and no "
                            "model_path to start from")
    module = load_weights(spec, model_path)
    if dry_run:
        return None, module
    info = registry.register(name, module, spec, parent=None,
                             run={"source": str(model_path), "libraries": library_versions()},
                             metrics={}, status="baseline")
    registry.promote(name, info.version)
    log.info("%s: registered the deployed model %s as %s (champion)", name, model_path,
             info.version)
    return info, module


def _train_gate_register(
    registry: Registry, name: str, champion: Any, champion_info: Any, spec: ModelSpec,
    data: DataSplit, cfg: TrainConfig, action: str, label_weights: np.ndarray | None,
    nproc: int, gate_config: GateConfig, request_id: str | None, features: tuple[str, ...],
    timings: dict[str, float],
) -> JobResult:
    before = champion_info.version
    t = time.perf_counter()
    fitted: FitResult | None = None
    out_spec = spec
    if action == "recalibrate":
        if label_weights is None:
            raise ValueError("action 'recalibrate' needs label_weights (BBSE class weights)")
        challenger = recalibrate(champion, label_weights, data.train.x)
        if type(challenger).__name__ == "PriorCorrected" and spec.kind == "state_dict":
            out_spec = ModelSpec(spec.kind, spec.factory, dict(spec.factory_kwargs),
                                 wrapper="prior_corrected")
    elif action == "retrain":
        def on_epoch(entry: Any) -> None:
            _log_epoch(entry, cfg.task)

        if nproc > 1 and not _in_process_group():  # under torchrun fit() runs DDP itself
            fitted = fit_distributed(champion, data, cfg, nproc=nproc,
                                     start_method="spawn" if cfg.device.startswith("cuda")
                                     else "fork")
            for entry in fitted.history:
                _log_epoch(entry, cfg.task)
        else:
            fitted = fit(champion, data, cfg, on_epoch=on_epoch)
        challenger = fitted.model
        log.info("%s: chose lr %g (best epoch %d, val_loss %.4f)", name, fitted.lr,
                 fitted.best_epoch, fitted.val_loss)
    else:
        raise ValueError(f"action must be 'retrain' or 'recalibrate', got {action!r}")
    timings["train_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    dev = cfg.device
    ref = data.reference_holdout
    verdict = gate(
        data.holdout.y, predict(champion, data.holdout.x, device=dev),
        predict(challenger, data.holdout.x, device=dev), task=cfg.task,
        reference_y=None if ref is None else ref.y,
        reference_champion=None if ref is None else predict(champion, ref.x, device=dev),
        reference_challenger=None if ref is None else predict(challenger, ref.x, device=dev),
        config=gate_config)
    timings["gate_seconds"] = time.perf_counter() - t
    log.info("%s: gate %s: %s (b=%d, c=%d, n=%d)", name,
             "PASS" if verdict.promote else "FAIL", verdict.reason, verdict.b, verdict.c,
             verdict.n)
    t = time.perf_counter()
    metrics = {"gate": verdict.as_dict(), "fit": None if fitted is None else fitted.summary()}
    run = {"request_id": request_id, "action": action, "features": list(features),
           "data": data.selection, "hyperparameters": cfg.as_dict(), "seed": cfg.seed,
           "nproc": nproc, "libraries": library_versions()}
    info = registry.register(name, challenger.cpu(), out_spec, parent=before, run=run,
                             metrics=metrics,
                             status="promoted" if verdict.promote else "rejected")
    after = before
    if verdict.promote:
        after = registry.promote(name, info.version).champion
    timings["register_seconds"] = time.perf_counter() - t
    return JobResult("promoted" if verdict.promote else "rejected", name, request_id, action,
                     before, after, version=info.version, gate=verdict.as_dict(),
                     metrics={"fit": metrics["fit"]}, data=data.selection,
                     reason=None if verdict.promote else verdict.reason)


def read_rows(path: str | Path, features: tuple[str, ...], *, label: str = "label",
              timestamp: str | None = "timestamp", text: bool = False) -> LabelledRows:
    """Read labelled rows from CSV or JSONL (the capture export): feature columns, the
    label, and the event time (a number or an ISO-8601 string) when ``timestamp`` is set.

    ``text=True`` (a text model): the input is the row's raw text instead of features, its
    ``text`` field or, as in an inference record, ``input`` (a string or ``{"text": ...}``).
    """
    import csv
    import json

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such file")
    with file.open(encoding="utf-8", newline="") as fh:
        if file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            records = [json.loads(line) for line in fh if line.strip()]
        else:
            records = list(csv.DictReader(fh))
    need = (*(() if text else features), label, *((timestamp,) if timestamp else ()))
    for i, rec in enumerate(records, start=1):
        missing = [c for c in need if c not in rec or rec[c] in (None, "")]
        if missing:
            raise ValueError(f"{file}: row {i}: missing {', '.join(missing)}")
    if text:
        x = np.asarray([_text_of(r, f"{file}: row {i}") for i, r in enumerate(records, 1)],
                       dtype=object)
    try:
        if not text:
            x = np.asarray([[float(r[f]) for f in features] for r in records],
                           dtype=np.float32).reshape(len(records), len(features))
        y = np.asarray([float(r[label]) for r in records])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file}: a feature or label is not a number: {exc}") from None
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)
    times = None
    if timestamp:
        times = np.asarray([_epoch(r[timestamp]) for r in records], dtype=np.float64)
    return LabelledRows(x, y, times)


def _text_of(record: Any, where: str) -> str:
    """A row's raw text: ``text``, or ``input`` as a string or ``{"text": ...}``."""
    value = record.get("text")
    if value in (None, ""):
        value = record.get("input")
        if isinstance(value, dict):
            value = value.get("text")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: a text model needs the raw text in 'text' or 'input' "
                         "(a string or {\"text\": ...})")
    return value


def text_rows(records: list[dict[str, Any]], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Texts and labels of captured records (``input`` is the inference record's text)."""
    texts = np.asarray([_text_of(r, f"{what}, captured record {r.get('request_id')}")
                        for r in records], dtype=object)
    return texts, np.asarray([float(r["label"]) for r in records])


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    try:
        return float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
