"""The job: end to end on the toy drift, failures, SIGKILL mid-training, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from training_test_nets import quick

from monitor.cli import main
from monitor.retrain_job import read_rows, run_job
from training import GateConfig, LabelledRows, ModelSpec, Registry, SplitConfig

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(kind="state_dict", factory="training_test_nets:mlp4")
FEATURES = ("f0", "f1", "f2", "f3")


@pytest.fixture()
def deployed(tmp_path: Path, champion: torch.nn.Module) -> Path:
    path = tmp_path / "deployed.pt"
    torch.save(champion.state_dict(), path)
    return path


def test_drift_is_recovered_and_promoted(tmp_path, deployed, drifted, reference) -> None:
    result_file = tmp_path / "out" / "result.json"
    result = run_job("toy", drifted, registry_dir=tmp_path / "reg", model=SPEC,
                     model_path=deployed, reference=LabelledRows(reference.x, reference.y),
                     features=FEATURES, strategy="full", train=quick(epochs=10),
                     request_id="req-1", result_path=result_file,
                     # the small MLP forgets ~5% of the old region; the default 2% rejects
                     # it (next test), this one accepts it to exercise promotion
                     gate_config=GateConfig(max_reference_drop=0.1))
    assert result.status == "promoted", result.reason
    assert (result.champion_before, result.champion_after, result.version) == (
        "v0001", "v0002", "v0002")
    g = result.gate
    assert g is not None and g["p_value"] < 0.05 and g["gain"] > 0.1 and g["c"] > g["b"]
    assert g["reference_drop"] is not None and g["reference_drop"] <= 0.1
    on_disk = json.loads(result_file.read_text())
    assert on_disk["status"] == "promoted" and on_disk["timings"]["total_seconds"] > 0
    reg = Registry(tmp_path / "reg")
    info = reg.version("toy", "v0002")
    assert info.parent == "v0001" and info.status == "promoted"
    assert info.run["request_id"] == "req-1" and info.run["seed"] == 0
    assert info.run["data"]["holdout"]["rows"] == [600, 800]
    assert {"torch", "numpy", "python"} <= set(info.run["libraries"])
    assert info.metrics["gate"]["promote"] is True
    assert reg.versions("toy")[0].status == "baseline"


def test_forgetting_the_reference_is_rejected(tmp_path, deployed, drifted, reference) -> None:
    result = run_job("toy", drifted, registry_dir=tmp_path, model=SPEC, model_path=deployed,
                     reference=LabelledRows(reference.x, reference.y), train=quick(epochs=10))
    assert result.status == "rejected"
    assert "reference holdout drop" in (result.reason or "")
    assert result.gate is not None and result.gate["p_value"] < 0.05  # better on new data
    assert Registry(tmp_path).aliases("toy").champion == "v0001"


def test_no_drift_no_promotion_and_the_challenger_is_kept(tmp_path, deployed,
                                                          reference) -> None:
    same = LabelledRows(reference.x, reference.y, np.arange(600.0))
    result = run_job("toy", same, registry_dir=tmp_path, model=SPEC, model_path=deployed,
                     train=quick(epochs=3, lr_grid=(1e-4,)))
    assert result.status == "rejected" and result.champion_after == "v0001"
    reg = Registry(tmp_path)
    assert reg.aliases("toy").champion == "v0001"
    assert reg.version("toy", result.version or "").status == "rejected"


def test_failures_leave_the_champion_alone(tmp_path, deployed, drifted) -> None:
    few = LabelledRows(drifted.x[:50], drifted.y[:50], drifted.times[:50])
    r = run_job("toy", few, registry_dir=tmp_path, model=SPEC, model_path=deployed,
                result_path=tmp_path / "r.json")
    assert r.status == "failed" and "50 labelled rows" in (r.reason or "")
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "failed"
    assert [v.version for v in Registry(tmp_path).versions("toy")] == ["v0001"]
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage")
    r = run_job("other", drifted, registry_dir=tmp_path, model=SPEC, model_path=bad)
    assert r.status == "failed" and "ModelLoadError" in (r.reason or "")
    r = run_job("toy", drifted, registry_dir=tmp_path, model=SPEC, device="cuda:7")
    assert r.status == "failed" and "cuda" in (r.reason or "").lower()
    assert Registry(tmp_path).aliases("toy").champion == "v0001"


def test_dry_run_and_recalibrate(tmp_path, deployed, reference) -> None:
    r = run_job("toy", LabelledRows(reference.x, reference.y, np.arange(600.0)),
                registry_dir=tmp_path, model=SPEC, model_path=deployed, dry_run=True)
    assert r.status == "dry_run" and r.data["holdout"]["rows"] == [450, 600]
    assert not (tmp_path / "toy").exists()  # nothing written
    # label shift: class 1 became rare; the prior correction helps without training
    keep = (reference.y == 0) | (np.arange(600) % 6 == 0)
    shifted = LabelledRows(reference.x[keep], reference.y[keep], np.arange(keep.sum(),
                                                                            dtype=float))
    p1 = shifted.y.mean()
    weights = np.array([(1 - p1) / 0.5, p1 / 0.5])
    r = run_job("toy", shifted, registry_dir=tmp_path, model=SPEC, model_path=deployed,
                action="recalibrate", label_weights=weights,
                split=SplitConfig(min_rows=100, holdout_share=0.5),
                gate_config=None)
    assert r.status in ("promoted", "rejected") and r.gate is not None
    assert r.metrics["fit"] is None  # nothing trained
    reg = Registry(tmp_path)
    _info, champion = reg.load("toy", "v0001")
    _info, challenger = reg.load("toy", r.version)
    x = torch.as_tensor(shifted.x[:20])
    with torch.no_grad():
        assert torch.allclose(challenger(x), champion(x) + torch.log(torch.as_tensor(
            weights, dtype=torch.float32)), atol=1e-5)


KILL_SCRIPT = """
import logging, sys, numpy as np, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from monitor.retrain_job import run_job
from training import ModelSpec, TrainConfig
from training_test_nets import concept
rows = concept(1000, flipped=True, seed=2)
run_job("toy", rows, registry_dir={reg!r}, model=ModelSpec("state_dict", "training_test_nets:mlp4"),
        train=TrainConfig(epochs=500, patience=500, lr_grid=(1e-3,), batch_size=8))
"""


def test_sigkill_mid_training_leaves_the_champion_untouched(tmp_path, champion) -> None:
    reg = Registry(tmp_path / "reg")
    reg.register("toy", champion, SPEC, parent=None, run={}, metrics={}, status="baseline")
    reg.promote("toy", "v0001")
    aliases_before = (tmp_path / "reg" / "toy" / "aliases.json").read_bytes()
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), reg=str(tmp_path / "reg"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the job logs each epoch: kill it inside the second
            seen.append(line)
            if " epoch 2 " in f" {line}" or "epoch 2 lr" in line:
                break
        assert proc.poll() is None, f"job ended early: {''.join(seen)}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert any("epoch 1 lr" in line for line in seen)
    assert (tmp_path / "reg" / "toy" / "aliases.json").read_bytes() == aliases_before
    assert [v.version for v in reg.versions("toy")] == ["v0001"]
    _info, module = reg.load("toy")
    assert torch.equal(module.state_dict()["0.weight"], champion.state_dict()["0.weight"])


def _settings(tmp_path: Path, deployed: Path, reference: LabelledRows) -> Path:
    ref = tmp_path / "ref.csv"
    ref.write_text("f0,f1,f2,f3,label\n" + "".join(
        ",".join(f"{v:.6f}" for v in row) + f",{label}\n"
        for row, label in zip(reference.x, reference.y, strict=True)))
    cfg = tmp_path / "driftline.yaml"
    cfg.write_text(f"""
models:
  - name: toy
    reference: {{path: {ref}}}
    features: [{", ".join(f"{{name: {f}, type: numeric}}" for f in FEATURES)}]
    window: {{kind: count, size: 100}}
    embedding:
      model: {{kind: state-dict, path: {deployed}, factory: "training_test_nets:mlp4",
              shape: [4]}}
      reference: {{path: {ref}}}
""")
    return cfg


def test_cli_run_promote_rollback(tmp_path, deployed, drifted, reference, capsys) -> None:
    cfg = _settings(tmp_path, deployed, reference)
    data = tmp_path / "capture.jsonl"
    lines = []
    for i, (row, y) in enumerate(zip(drifted.x, drifted.y, strict=True)):
        record = {**dict(zip(FEATURES, map(float, row), strict=True)), "label": int(y),
                  "timestamp": f"2026-12-01T00:{i // 60:02d}:{i % 60:02d}Z"}
        lines.append(json.dumps(record) + "\n")
    data.write_text("".join(lines))
    assert len(read_rows(data, FEATURES)) == 800
    reg = str(tmp_path / "reg")
    assert main(["retrain", "run", "--config", str(cfg), "--model", "toy", "--data",
                 str(data), "--registry", reg, "--request", "r-9", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "dry_run"
    code = main(["retrain", "run", "--config", str(cfg), "--model", "toy", "--data", str(data),
                 "--registry", reg, "--strategy", "gradual", "--max-reference-drop", "0.1",
                 "--epochs", "10", "--result",
                 str(tmp_path / "res.json")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "promoted", out
    assert json.loads((tmp_path / "res.json").read_text())["gate"]["promote"] is True
    assert main(["retrain", "rollback", "--model", "toy", "--registry", reg]) == 0
    assert Registry(reg).aliases("toy").champion == "v0001"
    assert main(["retrain", "promote", "--model", "toy", "--version", "v0002", "--registry",
                 reg]) == 0
    assert Registry(reg).aliases("toy").champion == "v0002"
    assert main(["retrain", "promote", "--model", "toy", "--version", "v0042", "--registry",
                 reg]) == 2
    assert main(["retrain", "run", "--config", str(cfg), "--model", "nope", "--data",
                 str(data), "--registry", reg]) == 2


def test_cli_selects_the_capture_by_window_range_or_event_time(
        tmp_path, deployed, drifted, reference, capsys) -> None:
    """`retrain run --windows A:B | --since T` reads the training capture from storage."""
    from sqlalchemy.orm import Session

    from monitor.storage import SqlStore
    from monitor.storage.models import CaptureRow

    cfg = _settings(tmp_path, deployed, reference)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    cfg.write_text(cfg.read_text() + f"storage: {{url: '{db}'}}\n")
    store = SqlStore(db)
    store.migrate()
    with Session(store.engine) as s, s.begin():  # 800 rows, label windows of 100
        s.add_all(CaptureRow(model="toy", request_id=f"r{i}", event_time=float(i),
                             window_index=i // 100, prediction=0, label=int(y), raw_input=None,
                             features=dict(zip(FEATURES, map(float, row), strict=True)))
                  for i, (row, y) in enumerate(zip(drifted.x, drifted.y, strict=True)))
    store.close()
    reg = str(tmp_path / "reg")
    base = ["retrain", "run", "--config", str(cfg), "--model", "toy", "--registry", reg,
            "--dry-run", "--result", str(tmp_path / "res.json")]

    def selected(*extra: str) -> dict:
        assert main([*base, *extra]) == 0
        capsys.readouterr()
        return json.loads((tmp_path / "res.json").read_text())["data"]

    assert selected("--windows", "2:5")["recent_rows"] == 400
    assert selected("--windows", "6:")["recent_rows"] == 200
    data = selected("--since", "300")
    assert data["recent_rows"] == 500 and data["train"]["time_first"] == 300.0
    for bad in (["--windows", "5:2"], ["--windows", "x"], ["--windows", "1:2", "--since", "3"],
                ["--windows", "20:30"]):
        assert main([*base, *bad]) == 2, bad
    err = capsys.readouterr().err
    assert "the first window is after the last" in err and "expected A:B" in err
    assert "not both" in err and "in label windows 20:30" in err
