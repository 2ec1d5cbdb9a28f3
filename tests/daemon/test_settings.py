from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from monitor.errors import ConfigError
from monitor.settings import CountWindow, TimeWindow, load_settings, parse_settings


def doc() -> dict:
    return {"models": [{
        "name": "m", "reference": {"path": "ref.csv"},
        "features": [{"name": "x", "type": "numeric"}, {"name": "c", "type": "categorical"}],
        "window": {"kind": "count", "size": 100},
    }]}


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    p = tmp_path / "s.yml"
    p.write_text(yaml.safe_dump(doc()))
    s = load_settings(p, env={})
    assert s.storage.url == "sqlite:///driftline.db"
    assert s.metrics.port == 9108
    assert s.source.kafka.group_id == "driftline"
    assert s.models[0].reference.path == tmp_path / "ref.csv"
    assert isinstance(s.models[0].window, CountWindow)


def test_environment_overrides_nested_and_list_keys() -> None:
    env = {"DRIFTLINE__STORAGE__URL": "postgresql+psycopg://u@h/db",
           "DRIFTLINE__SOURCE__KAFKA__TOPICS": "[a, b]",
           "DRIFTLINE__MODELS__0__ALPHA": "0.01",
           "DRIFTLINE__MODELS__0__WINDOW": "{kind: time, seconds: 60}",
           "UNRELATED": "x"}
    s = parse_settings(doc(), env=env)
    assert s.storage.url == "postgresql+psycopg://u@h/db"
    assert s.source.kafka.topics == ("a", "b")
    assert s.models[0].alpha == 0.01
    assert isinstance(s.models[0].window, TimeWindow) and s.models[0].window.seconds == 60


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["models"][0]["window"].update(size=0), r"models\[0\]\.window\.size"),
    (lambda d: d["models"][0].update(alpha=1.5), r"models\[0\]\.alpha"),
    (lambda d: d.update(models=[]), r"models: .*at least 1"),
    (lambda d: d.update(storage={"uri": "x"}), r"storage\.uri: Extra inputs"),
    (lambda d: d["models"][0]["features"].append({"name": "x", "type": "numeric"}),
     "duplicate feature names: x"),
    (lambda d: d["models"][0]["features"][0].update(type="text"), r"features\[0\]\.type"),
    (lambda d: d["models"][0].update(detectors=[{"kind": "ks", "features": ["c"]}]),
     "'c' is categorical"),
    (lambda d: d["models"][0].update(detectors=[{"kind": "ks", "features": ["nope"]}]),
     "unknown feature 'nope'"),
    (lambda d: d["models"][0].update(detectors=[{"kind": "ks"}, {"kind": "ks"}]),
     "listed twice"),
    (lambda d: d["models"].append(d["models"][0]), "duplicate model names: m"),
    (lambda d: d["models"][0].update(detectors=[{"kind": "ks", "min_expected": 1}]),
     "min_expected applies to chi2 only"),
    (lambda d: d["models"][0].update(detectors=[{"kind": "chi2", "min_expected": -1}]),
     r"detectors\[0\]\.min_expected"),
    (lambda d: d["models"][0].update(labels={"reference": {"path": "l.csv"}, "streaming": [
        {"kind": "adwin", "params": {"delta": 2}}]}),
     r"models\[0\]\.labels\.streaming\[0\]: .*adwin params: delta must be in \(0, 1\)"),
    (lambda d: d["models"][0].update(labels={"reference": {"path": "l.csv"}, "streaming": [
        {"kind": "ddm", "params": {"drift_level": 3}}]}),
     r"streaming\[0\]: .*ddm params: .*unexpected keyword argument 'drift_level'"),
    (lambda d: d["models"][0].update(labels={"reference": {"path": "l.csv"}, "streaming": [
        {"kind": "ddm"}, {"kind": "ddm"}]}), r"streaming\[1\]: detector 'ddm' is listed twice"),
    (lambda d: d["models"][0].update(labels={"reference": {"path": "l.csv"},
                                             "task": "regression", "streaming": [
        {"kind": "ddm"}]}), "ddm watches binary errors"),
    (lambda d: d["models"][0].update(prediction_drift={"task": "regression",
                                                       "label_shift": True}),
     r"prediction_drift: .*label_shift .*needs task 'classification'"),
    (lambda d: d["metrics"].update(port=70000) if "metrics" in d else d.update(
        metrics={"port": 70000}), r"metrics\.port"),
])
def test_invalid_settings_name_the_key(mutate, message: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        parse_settings(d, env={})


def test_bad_env_override_is_named() -> None:
    with pytest.raises(ConfigError, match="DRIFTLINE__MODELS__3__ALPHA"):
        parse_settings(doc(), env={"DRIFTLINE__MODELS__3__ALPHA": "0.1"})


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yml", env={})
    bad = tmp_path / "bad.yml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: not valid YAML"):
        load_settings(bad, env={})
