"""The ``driftline`` command line: help, version, check-config, and refusing bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor import __version__
from monitor.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "driftline.yml"
COMMANDS = {
    "run": ["--config", "SIGTERM"],
    "demo": ["--workdir", "--records", "--drift-at", "--metrics-port"],
    "produce": ["--bootstrap-servers", "--topic", "--file", "--synthetic", "--key-by-model"],
    "check-config": ["environment overrides", "reference"],
}


@pytest.fixture(autouse=True)
def _no_driftline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("DRIFTLINE__"):
            monkeypatch.delenv(var)


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE__")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def exit_code(argv: list[str]) -> int:
    """main() returns a code, except where argparse exits (help, version, usage errors)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


# --- help and version ------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: driftline")
    assert "Drift-detection daemon" in proc.stdout
    for command in COMMANDS:
        assert command in proc.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: driftline {command}")
    for word in COMMANDS[command]:
        assert word in out, f"{word!r} missing from `driftline {command} --help`"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"driftline {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_produce_needs_exactly_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["produce"]) == 2
    assert "--file" in capsys.readouterr().err
    assert exit_code(["produce", "--file", "x.jsonl", "--synthetic", "3"]) == 2
    assert "not allowed with" in capsys.readouterr().err


# --- check-config ----------------------------------------------------------------------------


def test_check_config_on_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"{EXAMPLE}: OK"
    assert "model credit-risk: 7 features" in out
    assert "(5000 rows)" in out
    assert "detectors ks, chi2" in out


def _example_copy(tmp_path: Path, mutate=None) -> Path:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["models"][0]["reference"]["path"] = str(EXAMPLE.parent / "credit-risk-reference.csv")
    if mutate:
        mutate(doc)
    path = tmp_path / "driftline.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["storage"].update(uri="sqlite:///x.db"), ["storage.uri", "Extra inputs"]),
    (lambda d: d["models"][0]["window"].update(size=1), ["models[0].window.size"]),
    (lambda d: d["models"][0]["reference"].update(path="missing.csv"),
     ["missing.csv", "reference file not found"]),
    (lambda d: d["models"][0]["features"].append({"name": "salary", "type": "numeric"}),
     ["credit-risk-reference.csv", "missing column 'salary'"]),
    (lambda d: d["storage"].update(url="not a database url"), ["storage.url"]),
], ids=["bad-key", "bad-window-size", "missing-reference", "reference-lacks-feature",
        "bad-storage-url"])
def test_check_config_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              mutate, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    path = _example_copy(tmp_path, mutate)
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("driftline: error: ")
    for text in expected:
        assert text in captured.err
    assert "OK" not in captured.out
    assert "Traceback" not in captured.err


def test_check_config_applies_environment_overrides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = _example_copy(tmp_path)
    monkeypatch.setenv("DRIFTLINE__MODELS__0__ALPHA", "0.2")
    assert main(["check-config", str(path)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("DRIFTLINE__MODELS__0__WINDOW__SIZE", "0")
    assert main(["check-config", str(path)]) == 2
    assert "models[0].window.size" in capsys.readouterr().err


def test_check_config_bad_environment_override_as_a_process(tmp_path: Path) -> None:
    path = _example_copy(tmp_path)
    bad = cli("check-config", str(path), env={"DRIFTLINE__MODELS__0__ALPHA": "2"})
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert f"{path}: invalid settings" in bad.stderr
    assert "models[0].alpha" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_check_config_unreadable_and_invalid_yaml(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml: cannot read settings file" in capsys.readouterr().err
    broken = tmp_path / "broken.yml"
    broken.write_text("models: [\n")
    assert main(["check-config", str(broken)]) == 2
    assert "broken.yml: not valid YAML" in capsys.readouterr().err


# --- run refuses to start on bad settings ----------------------------------------------------


def test_run_with_missing_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    proc = cli("run", "--config", "missing.yml", cwd=tmp_path, timeout=20)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == ("driftline: error: missing.yml: cannot read settings file: "
                                   "No such file or directory")
    assert list(tmp_path.iterdir()) == []  # no database, no log, nothing


def test_run_without_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run"]) == 2
    assert "--config" in capsys.readouterr().err


def test_run_with_invalid_settings_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _example_copy(tmp_path, lambda d: d["models"][0].update(alpha=0))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", str(path)]) == 2
    assert "models[0].alpha" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driftline.yml"]


def test_run_with_bad_storage_url_exits_2_without_traceback(tmp_path: Path) -> None:
    path = _example_copy(tmp_path, lambda d: d["storage"].update(url="::not-a-url::"))
    proc = cli("run", "--config", str(path), cwd=tmp_path, timeout=20)
    assert proc.returncode == 2
    assert "storage.url" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_produce_missing_file_exits_2_before_connecting(tmp_path: Path) -> None:
    # Nothing listens on the bootstrap address: reaching Kafka first would take 30 s and fail
    # with a Kafka traceback instead of naming the file.
    proc = cli("produce", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t",
               "--file", str(tmp_path / "missing.jsonl"), timeout=20)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"driftline: error: {tmp_path / 'missing.jsonl'}: no such file"


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in row) for row in [header, *rows]) + "\n")
    return path


def test_check_config_with_prediction_drift_and_labels(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: check-config loaded only the feature columns and crashed with a traceback
    # on prediction_drift; it now builds what `run` builds (monitor.factory.build_models).
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(600):
        label = int(rng.random() < 0.3)
        pred = label if rng.random() < 0.85 else 1 - label
        rows.append([round(float(rng.normal()), 4), pred, label])
    _write_csv(tmp_path / "ref.csv", ["x", "prediction", "label"], rows)
    labelled = _write_csv(tmp_path / "labelled.csv", ["label", "prediction"],
                          [[r[2], r[1]] for r in rows])
    doc = {
        "source": {"kafka": {"labels_topic": "labels"}},
        "storage": {"url": f"sqlite:///{tmp_path}/r.db", "reference_cache_dir": ""},
        "models": [
            {"name": "shift", "reference": {"path": "ref.csv"},
             "features": [{"name": "x", "type": "numeric"}],
             "window": {"kind": "count", "size": 100},
             "prediction_drift": {"task": "classification", "label_shift": True}},
            {"name": "labelled", "reference": {"path": "ref.csv"},
             "features": [{"name": "x", "type": "numeric"}],
             "window": {"kind": "count", "size": 100},
             "prediction_drift": {"task": "classification", "label_shift": True},
             "labels": {"reference": {"path": labelled.name}, "window_size": 100,
                        "streaming": [{"kind": "ddm"}, {"kind": "adwin"}]}},
        ],
    }
    path = tmp_path / "driftline.yml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.out.splitlines()
    assert lines[-1] == f"{path}: OK"
    shift = next(line for line in lines if line.startswith("model shift:"))
    assert shift.endswith("detectors ks, prediction_chi2, label_shift")
    assert "(600 rows)" in shift
    with_labels = next(line for line in lines if line.startswith("model labelled:"))
    assert with_labels.endswith("detectors ks, prediction_chi2, label_shift, performance, "
                                "label_chi2, ddm, adwin")
