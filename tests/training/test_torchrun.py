"""`driftline retrain run` under a real `torchrun` (gloo on the CPU): one job, two processes.

The builtin backend starts `torchrun --nproc_per_node N -m monitor.cli retrain run ...` when
`nproc` > 1. Both ranks must train together (DDP) and only rank 0 may write the registry
and the result: one new version, the same weights as the in-process data-parallel run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_job import FEATURES, SPEC, _settings

from monitor.retrain_job import read_rows, run_job
from training import LabelledRows, Registry, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 2


def _capture(path: Path, rows: LabelledRows) -> Path:
    path.write_text("".join(
        json.dumps({**dict(zip(FEATURES, map(float, x), strict=True)), "label": int(y),
                    "timestamp": 1_764_547_200 + i}) + "\n"
        for i, (x, y) in enumerate(zip(rows.x, rows.y, strict=True))))
    return path


def test_torchrun_two_processes_register_one_version_equal_to_the_in_process_run(
        tmp_path: Path, champion: torch.nn.Module, drifted: LabelledRows,
        reference: LabelledRows) -> None:
    deployed = tmp_path / "deployed.pt"
    torch.save(champion.state_dict(), deployed)
    cfg = _settings(tmp_path, deployed, reference)
    data = _capture(tmp_path / "capture.jsonl", drifted)
    reg, result_file = tmp_path / "reg", tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "monitor.cli", "retrain", "run", "--config", str(cfg), "--model", "toy",
         "--data", str(data), "--registry", str(reg), "--epochs", str(EPOCHS),
         "--max-reference-drop", "0.1", "--result", str(result_file)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "torchrun: rank 1 of 2" in log and "torchrun: rank 0 of 2" in log
    result = json.loads(result_file.read_text())
    assert result["status"] in ("promoted", "rejected"), result
    registry = Registry(reg)
    versions = registry.versions("toy")
    assert [v.version for v in versions] == ["v0001", "v0002"]  # rank 1 wrote nothing
    assert versions[1].run["nproc"] == 2 and versions[1].metrics["fit"]["world_size"] == 2
    # rank 0's printed summary only, once
    assert sum(line.startswith("{") for line in proc.stdout.splitlines()) == 1

    # The same job in process, its two data-parallel processes started by fit_distributed
    rows = read_rows(data, FEATURES)
    replay = read_rows(tmp_path / "ref.csv", FEATURES, timestamp=None)  # as the CLI reads it
    alone = run_job("toy", rows, registry_dir=tmp_path / "reg-alone", model=SPEC,
                    model_path=deployed, reference=replay, nproc=2,
                    train=TrainConfig(epochs=EPOCHS))
    _, via_torchrun = registry.load("toy", "v0002")
    _, in_process = Registry(tmp_path / "reg-alone").load("toy", alone.version)
    for name, tensor in via_torchrun.state_dict().items():
        assert torch.allclose(tensor, in_process.state_dict()[name], atol=1e-5), name
