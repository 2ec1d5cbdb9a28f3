"""The registry mirrored into MLflow (a local sqlite tracking store under tmp)."""

from __future__ import annotations

import json

import pytest
import torch
from training_test_nets import mlp4

from monitor.cli import main
from training import ModelSpec, Registry

SPEC = ModelSpec(kind="state_dict", factory="training_test_nets:mlp4")

# mlflow's SQL store uses a loader option SQLAlchemy 2.1 deprecates: theirs, not ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One local tracking store for the module (creating its schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _mlflow(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(client, alias: str, model: str = "toy") -> str:  # type: ignore[no-untyped-def]
    return client.get_model_version_by_alias(model, alias).tags["driftline.version"]


def test_versions_and_aliases_are_mirrored(tmp_path, uri) -> None:
    reg = Registry(tmp_path / "reg", backend="mlflow", tracking_uri=uri)
    torch.manual_seed(0)
    reg.register("toy", mlp4(), SPEC, parent=None, run={}, metrics={}, status="baseline")
    reg.promote("toy", "v0001")
    gate = {"promote": True, "p_value": 1e-5, "gain": 0.2}
    reg.register("toy", mlp4(), SPEC, parent="v0001", run={"request_id": "req-7"},
                 metrics={"gate": gate}, status="promoted")
    reg.promote("toy", "v0002")
    reg.register("toy", mlp4(), SPEC, parent="v0002", run={},
                 metrics={"gate": {"promote": False}}, status="rejected")
    client = _mlflow(uri)
    found = {mv.tags["driftline.version"]: mv for mv in
             client.search_model_versions("name='toy'")}
    assert sorted(found) == ["v0001", "v0002", "v0003"]
    v2 = found["v0002"]
    assert v2.tags["driftline.status"] == "promoted" and v2.tags["driftline.parent"] == "v0001"
    assert v2.tags["driftline.gate.p_value"] == "1e-05"
    assert v2.tags["driftline.request_id"] == "req-7"
    assert v2.source == (tmp_path / "reg" / "toy" / "versions" / "v0002").resolve().as_uri()
    assert found["v0003"].tags["driftline.status"] == "rejected"
    assert (_alias(client, "champion"), _alias(client, "previous")) == ("v0002", "v0001")
    # the choice is stored: a plain Registry(root), as the CLI and the daemon open it,
    # mirrors too
    again = Registry(tmp_path / "reg")
    assert again.backend == "mlflow" and again.tracking_uri == uri
    again.rollback("toy")
    assert _alias(client, "champion") == "v0001"
    with pytest.raises(Exception, match="alias"):  # no previous before v0001: removed
        client.get_model_version_by_alias("toy", "previous")
    assert again.sync("toy") == {"v0001": "1", "v0002": "2", "v0003": "3"}  # idempotent
    assert len(client.search_model_versions("name='toy'")) == 3


def test_cli_promote_moves_the_mlflow_alias_and_directory_stays_default(tmp_path, uri) -> None:
    plain = Registry(tmp_path / "plain")
    plain.register("toy", mlp4(), SPEC, parent=None, run={}, metrics={}, status="baseline")
    assert plain.backend == "directory" and not (tmp_path / "plain" / "registry.json").exists()
    reg = str(tmp_path / "reg")
    base = Registry(reg)
    for _ in range(2):
        base.register("cli", mlp4(), SPEC, parent=None, run={}, metrics={}, status="candidate")
    assert main(["retrain", "promote", "--model", "cli", "--version", "v0001", "--registry",
                 reg, "--registry-backend", "mlflow", "--mlflow-tracking-uri", uri]) == 0
    assert json.loads((tmp_path / "reg" / "registry.json").read_text()) == {
        "backend": "mlflow", "tracking_uri": uri}
    assert main(["retrain", "promote", "--model", "cli", "--version", "v0002",
                 "--registry", reg]) == 0
    client = _mlflow(uri)
    assert (_alias(client, "champion", "cli"), _alias(client, "previous", "cli")) == (
        "v0002", "v0001")
    with pytest.raises(ValueError, match="backend must be one of"):
        Registry(reg, backend="s3")
