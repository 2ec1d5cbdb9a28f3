"""Directory registry: versions, atomic aliases, promote/rollback, rejected, bad weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_test_nets import Scaled, mlp4

from embeddings.errors import ModelLoadError
from training import ModelSpec, Registry, RegistryError, recalibrate
from training.recalibrate import PriorCorrected

SPEC = ModelSpec(kind="state_dict", factory="training_test_nets:mlp4")


def test_register_promote_rollback(tmp_path) -> None:
    reg = Registry(tmp_path)
    torch.manual_seed(0)
    a = reg.register("m", mlp4(), SPEC, parent=None, run={"seed": 0}, metrics={},
                     status="baseline")
    assert a.version == "v0001" and reg.aliases("m").champion is None  # never aliased here
    reg.promote("m", "v0001")
    b = reg.register("m", mlp4(), SPEC, parent="v0001", run={}, metrics={"gate": {}})
    reg.promote("m", b.version)
    c = reg.register("m", mlp4(), SPEC, parent="v0002", run={}, metrics={})
    reg.promote("m", c.version)
    al = reg.aliases("m")
    assert (al.champion, al.previous, al.stack) == ("v0003", "v0002", ("v0001",))
    assert reg.rollback("m").champion == "v0002"
    assert reg.aliases("m").previous == "v0001"
    assert reg.rollback("m").champion == "v0001"
    with pytest.raises(RegistryError, match="no previous"):
        reg.rollback("m")
    infos = reg.versions("m")
    assert [(i.version, i.parent, i.status) for i in infos] == [
        ("v0001", None, "baseline"), ("v0002", "v0001", "promoted"),
        ("v0003", "v0002", "promoted")]
    assert infos[0].created and infos[0].run["seed"] == 0
    events = [e["event"] for e in reg.events("m")]
    assert events.count("promote") == 3 and events.count("rollback") == 2
    # the loaded weights are the registered ones
    info, module = reg.load("m", "v0002")
    assert torch.equal(module.state_dict()["0.weight"],
                       torch.load(info.weights, weights_only=True)["0.weight"])


def test_a_rejected_version_is_kept_but_never_aliased(tmp_path) -> None:
    reg = Registry(tmp_path)
    reg.register("m", mlp4(), SPEC, parent=None, run={}, metrics={}, status="baseline")
    reg.promote("m", "v0001")
    r = reg.register("m", mlp4(), SPEC, parent="v0001", run={},
                     metrics={"gate": {"promote": False}}, status="rejected")
    assert reg.aliases("m").champion == "v0001" and r.status == "rejected"
    with pytest.raises(RegistryError, match="failed the gate"):
        reg.promote("m", r.version)
    assert reg.promote("m", r.version, force=True).champion == r.version  # a person overrides


def test_aliases_file_is_replaced_not_rewritten(tmp_path) -> None:
    reg = Registry(tmp_path)
    reg.register("m", mlp4(), SPEC, parent=None, run={}, metrics={}, status="baseline")
    reg.promote("m", "v0001")
    path = tmp_path / "m" / "aliases.json"
    inode = path.stat().st_ino
    reg.register("m", mlp4(), SPEC, parent="v0001", run={}, metrics={})
    reg.promote("m", "v0002")
    assert path.stat().st_ino != inode  # os.replace of a new file
    assert json.loads(path.read_text())["champion"] == "v0002"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".aliases")]


def test_corrupt_or_missing_weights_are_clear_errors(tmp_path) -> None:
    reg = Registry(tmp_path)
    info = reg.register("m", mlp4(), SPEC, parent=None, run={}, metrics={}, status="baseline")
    info.weights.write_bytes(b"not a state dict")
    with pytest.raises(ModelLoadError, match="cannot read state dict"):
        reg.load("m", "v0001")
    info.weights.unlink()
    with pytest.raises(ModelLoadError, match="does not exist"):
        reg.load("m", "v0001")
    with pytest.raises(RegistryError, match="no version 'v0009'"):
        reg.load("m", "v0009")
    with pytest.raises(RegistryError, match="no champion"):
        reg.load("m")


def test_recalibrate_folds_log_weights_into_the_head(tmp_path) -> None:
    torch.manual_seed(0)
    model = mlp4()
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    w = np.array([0.5, 2.0])
    challenger = recalibrate(model, w, x)
    with torch.no_grad():
        base, new = model(torch.as_tensor(x)), challenger(torch.as_tensor(x))
    assert torch.allclose(new, base + torch.log(torch.tensor([0.5, 2.0])), atol=1e-5)
    assert type(challenger) is type(model)  # same architecture: loadable by the factory
    # a model whose output is not the head's gets a wrapper, stored and loaded as such
    wrapped = recalibrate(Scaled(), w, x)
    assert isinstance(wrapped, PriorCorrected)
    reg = Registry(tmp_path)
    spec = ModelSpec(kind="state_dict", factory="training_test_nets:Scaled",
                     wrapper="prior_corrected")
    reg.register("s", wrapped, spec, parent=None, run={}, metrics={})
    _info, loaded = reg.load("s", "v0001")
    with torch.no_grad():
        assert torch.allclose(loaded(torch.as_tensor(x)), wrapped(torch.as_tensor(x)))
    with pytest.raises(ValueError, match="weights has 3 classes"):
        recalibrate(model, np.ones(3), x)


def test_torchscript_versions_round_trip(tmp_path) -> None:
    reg = Registry(tmp_path)
    module = mlp4()
    reg.register("t", module, ModelSpec(kind="torchscript"), parent=None, run={}, metrics={})
    _info, loaded = reg.load("t", "v0001")
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), module(x))
