"""The retraining loop closed in the daemon (monitor.champion), on the demo's concept drift.

The real daemon (embedded source, SQLite) streams a concept drift with delayed labels; the
builtin backend runs the real `driftline retrain run` job, which promotes a challenger; the
serving stand-in then predicts with it. Checked: the daemon switched the model's reference
and embedding weights to the new version, its detectors started fresh, the switch and the
versions are stored, windows after the switch were evaluated by the new version, the drift
the version was trained for gives no second request, and a restarted daemon comes up on
the promoted version without a new switch; `driftline retrain rollback` switches it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.cli import main
from monitor.demo_loop import MODEL, Loop, LoopOptions, prepare, stream
from monitor.storage.models import (
    ChampionSwitchRow,
    DetectorStateRow,
    ModelVersionRow,
    WindowRow,
)

OPTS = LoopOptions(records=3000, drift_at=1250, min_labelled=500, epochs=10)


def rows(engine: Any, table: Any) -> list[Any]:
    with Session(engine) as s:
        return list(s.execute(select(table)).scalars())


@pytest.fixture
def loop_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job: one thread on two shared cores
    return tmp_path / "loop"


def test_promotion_switches_the_reference_and_survives_a_restart(loop_dir: Path) -> None:
    opts = LoopOptions(**{**OPTS.__dict__, "workdir": loop_dir})
    cfg = prepare(opts)
    x, y = stream(opts)
    loop = Loop(opts, cfg, say=lambda _line: None)
    size = opts.label_window
    try:
        for start in range(0, opts.records, size):
            loop.feed(start, x[start:start + size], y[start:start + size])
        d = loop.daemon
        engine = d.store.engine
        # one concept request, promoted by the job; no second request for the same drift
        retrains = [r for r in loop.store.requests(MODEL) if r.action == "retrain"]
        assert [(r.kind, r.state) for r in retrains] == [("concept", "promoted")]
        job = loop.result.job
        assert job is not None and job["status"] == "promoted" and job["version"] == "v0002"
        assert loop.result.promoted_at is not None

        # the switch is stored, with the first window of each stream the new version took
        (switch,) = [s for s in rows(engine, ChampionSwitchRow) if s.event != "baseline"]
        assert (switch.version, switch.previous, switch.event) == ("v0002", "v0001", "promote")
        assert switch.features_window is not None and switch.labels_window is not None
        assert switch.event_time is not None
        versions = {v.version: v for v in rows(engine, ModelVersionRow)}
        assert versions["v0001"].status == "baseline"
        assert versions["v0002"].status == "promoted" and versions["v0002"].parent == "v0001"
        assert versions["v0002"].promoted_at is not None
        assert versions["v0002"].request_id == retrains[0].id
        assert versions["v0002"].metrics["gate"]["promote"] is True

        # the reference and the embedding weights are the new version's
        state = d.pipeline.models[MODEL]
        folder = loop_dir / "registry" / MODEL / "versions" / "v0002"
        ev = state.features.evaluator
        assert ev.model_version == "v0002"  # type: ignore[attr-defined]
        n_ref = len((folder / "reference" / "features.csv").read_text().splitlines()) - 1
        assert ev.n_reference == n_ref  # type: ignore[attr-defined]
        assert ev.embedding.cfg.model.path == folder / "weights.pt"  # type: ignore[attr-defined]

        # windows record their version; after the switch none drifts on performance
        windows = {(w.stream, w.window_index): w.model_version for w in rows(engine, WindowRow)}
        after = {k: v for k, v in windows.items()
                 if k[1] >= (switch.labels_window if k[0] == "labels"
                             else switch.features_window)}
        assert after and set(after.values()) == {"v0002"}
        assert "v0002" not in {v for k, v in windows.items() if k not in after}
        perf = {r["window_index"]: r["drifted"] for r in d.store.results(stream="labels")
                if r["detector"] == "performance"}
        assert any(f for i, f in perf.items() if i < switch.labels_window)
        assert not any(f for i, f in perf.items() if i >= switch.labels_window)
        # DDM started fresh: warmed on the new labels reference, then only the new windows
        (ddm,) = [s for s in rows(engine, DetectorStateRow) if s.detector == "ddm"]
        n_labels_ref = len((folder / "reference" / "labels.csv").read_text().splitlines()) - 1
        new_pairs = sum(1 for i in perf if i >= switch.labels_window) * size
        assert ddm.window_index >= switch.labels_window
        assert json.loads(ddm.state)["state"]["_n"] == n_labels_ref + new_pairs
        # labels of the old version's predictions stayed out of the new version's windows
        get = d.metrics.registry.get_sample_value
        assert get("driftline_labels_total", {"outcome": "superseded"}) > 0
        assert get("driftline_model_version_info", {"model": MODEL, "version": "v0002"}) == 1
        assert get("driftline_model_switches_total", {"model": MODEL, "event": "promote"}) == 1
        served = [a for _s, v, a in loop.result.chunks if v == "v0002"]
        before = [a for s, v, a in loop.result.chunks if v != "v0002" and s >= opts.drift_at]
        assert np.mean(served) > np.mean(before) + 0.1  # the loop recovered accuracy
        first_run = set(windows)
    finally:
        loop.close()

    # a restart comes up on v0002 (from the registry and storage) and goes on evaluating
    # with it: no new switch, no new request
    again = Loop(opts, cfg, say=lambda _line: None)
    try:
        start = opts.records
        more_x, more_y = stream(LoopOptions(records=500, drift_at=0, seed=5))
        again.feed(start, more_x, more_y, last=True)
        d = again.daemon
        assert d.champions is not None and d.champions.serving[MODEL] == "v0002"
        assert d.pipeline.models[MODEL].labels.evaluator.model_version == "v0002"  # type: ignore
        engine = d.store.engine
        assert [(s.version, s.event) for s in rows(engine, ChampionSwitchRow)
                if s.event != "baseline"] == [("v0002", "promote")]
        new = [w for w in rows(engine, WindowRow) if (w.stream, w.window_index) not in first_run]
        assert new and {w.model_version for w in new} == {"v0002"}
        assert [r.state for r in again.store.requests(MODEL) if r.action == "retrain"] == [
            "promoted"]

        # a rollback by hand: the next batch is evaluated against v0001, the settings' files
        registry = str(loop_dir / "registry")
        assert main(["retrain", "rollback", "--model", MODEL, "--registry", registry]) == 0
        more_x, more_y = stream(LoopOptions(records=250, drift_at=250, seed=6))
        again.feed(start + 500, more_x, more_y, last=True)
        switches = [(s.version, s.previous, s.event) for s in rows(engine, ChampionSwitchRow)]
        assert switches[-1] == ("v0001", "v0002", "rollback")
        ev = d.pipeline.models[MODEL].features.evaluator
        assert ev.model_version == "v0001" and ev.n_reference == 1000  # type: ignore
        get = d.metrics.registry.get_sample_value
        assert get("driftline_model_version_info", {"model": MODEL, "version": "v0001"}) == 1
        assert get("driftline_model_version_info", {"model": MODEL, "version": "v0002"}) is None
        assert get("driftline_model_switches_total", {"model": MODEL, "event": "rollback"}) == 1
    finally:
        again.close()


def test_a_champion_that_cannot_be_served_keeps_the_reference_and_spares_others(
        loop_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A registry champion whose training capture is gone: the model is logged and keeps
    the settings' reference; a second model in the same daemon goes on unaffected."""
    import yaml

    from monitor.demo_loop import model
    from monitor.sources import Message
    from training import ModelSpec, Registry

    opts = LoopOptions(**{**OPTS.__dict__, "workdir": loop_dir, "records": 500})
    cfg = prepare(opts)
    doc = yaml.safe_load(cfg.read_text())
    other = {k: v for k, v in doc["models"][0].items() if k not in ("retrain", "embedding")}
    doc["models"].append({**other, "name": "other"})
    cfg.write_text(yaml.safe_dump(doc))
    registry = Registry(loop_dir / "registry")
    spec = ModelSpec("state_dict", "monitor.demo_loop:model")
    registry.register(MODEL, model(), spec, parent=None, run={}, metrics={}, status="baseline")
    gone = {"train": {"time_first": 1.0}, "holdout": {"time_first": 2.0, "time_last": 3.0}}
    v2 = registry.register(MODEL, model(), spec, parent="v0001", run={"data": gone},
                           metrics={}, status="candidate")
    registry.promote(MODEL, "v0001")
    registry.promote(MODEL, v2.version)
    x, y = stream(opts)
    loop = Loop(opts, cfg, say=lambda _line: None)
    try:
        for i in range(500):
            loop.source.messages.append(Message("logs", 1, i, json.dumps({
                "model": "other", "request_id": f"o{i}", "timestamp": 1_767_225_600.0 + i,
                "features": {f"f{j}": float(v) for j, v in enumerate(x[i])},
                "prediction": 0}).encode()))
        loop.feed(0, x, y, last=True)
        d = loop.daemon
        assert "cannot serve the registry's champion" in caplog.text
        assert "the capture was pruned" in caplog.text
        ev = d.pipeline.models[MODEL].features.evaluator
        assert ev.model_version is None and ev.n_reference == 1000  # type: ignore
        stored = {(w.model, w.stream) for w in rows(d.store.engine, WindowRow)}
        assert {("other", "features"), (MODEL, "features"), (MODEL, "labels")} <= stored
        assert rows(d.store.engine, ChampionSwitchRow) == []
    finally:
        loop.close()


def test_switch_index_with_event_time_windows(loop_dir: Path) -> None:
    """Time windows (event time, epoch-aligned, not counts): a promotion while a window is
    open takes effect from the window after it; the open one is still evaluated by the
    version before, every later one by the new version, and the switch row says which."""
    import yaml

    from training import ModelSpec, Registry

    seconds = 100
    opts = LoopOptions(**{**OPTS.__dict__, "workdir": loop_dir, "records": 700,
                          "drift_at": 700, "min_labelled": 10_000})
    cfg = prepare(opts)
    doc = yaml.safe_load(cfg.read_text())
    doc["models"][0]["window"] = {"kind": "time", "seconds": seconds}
    cfg.write_text(yaml.safe_dump(doc))
    registry = Registry(loop_dir / "registry")
    spec = ModelSpec("state_dict", "monitor.demo_loop:model")
    from training import load_weights

    deployed = load_weights(spec, loop_dir / "model.pt")
    registry.register(MODEL, deployed, spec, parent=None, run={}, metrics={},
                      status="baseline")
    registry.promote(MODEL, "v0001")
    x, y = stream(opts)
    loop = Loop(opts, cfg, say=lambda _line: None)
    try:
        loop.feed(0, x[:350], y[:350])  # records at T0 + i seconds: window 3 is open
        from monitor.demo_loop import T0

        first = int(T0 // seconds)  # T0 is a multiple of 100: records 0-99 are window first
        open_now = [w.index for w in loop.daemon.pipeline.models[MODEL].features.windows
                    .open_windows()]
        assert open_now == [first + 3]
        registry.register(MODEL, deployed, spec, parent="v0001", run={}, metrics={},
                          status="candidate")
        registry.promote(MODEL, "v0002")
        loop.feed(350, x[350:], y[350:], last=True)
        engine = loop.daemon.store.engine
        (switch,) = [s for s in rows(engine, ChampionSwitchRow) if s.event == "promote"]
        assert switch.version == "v0002" and switch.features_window == first + 4
        # the newest prediction seen at the switch: record 349
        assert switch.event_time == T0 + 349  # exact: approx would allow ~1,800 s here
        # labels arrive 300 records late: those of records 50-349 (predicted before the
        # switch) are superseded, those of 350-399 (window 3, predicted after it) are not
        get = loop.daemon.metrics.registry.get_sample_value
        assert get("driftline_labels_total", {"outcome": "superseded"}) == 300
        by_index = {w.window_index - first: w.model_version for w in rows(engine, WindowRow)
                    if w.stream == "features"}
        # records 350-399 joined window 3 after the switch: still the version before
        assert by_index == {0: "v0001", 1: "v0001", 2: "v0001", 3: "v0001", 4: "v0002",
                            5: "v0002"}
    finally:
        loop.close()
