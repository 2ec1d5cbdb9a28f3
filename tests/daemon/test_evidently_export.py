"""``driftline report --format evidently``: a window and its reference as an Evidently
snapshot (extra ``evidently``), with driftline's verdicts in its metadata."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.demo import DemoOptions, run_demo
from monitor.evidently_export import rebuild
from monitor.storage import StorageReader


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    run_demo(DemoOptions(workdir=work, records=8_000, window=2_000, drift_at=4_000,
                         metrics_port=0, bad_every=0), out=io.StringIO())
    return work


def test_rebuilt_columns_keep_every_count(demo: Path) -> None:
    with StorageReader(f"sqlite:///{demo / 'driftline.db'}") as reader:
        wr = reader.window_results("credit-risk")[-1]
    summaries = {f.feature: f.summary for r in wr.results for f in r.features if f.summary}
    current, reference = rebuild(summaries, "current"), rebuild(summaries, "reference")
    assert all(len(v) == wr.window.n_records for v in current.values())
    assert len(reference["income"]) == sum(summaries["income"]["reference"])
    edges = summaries["income"]["edges"]
    assert edges[0] - (edges[1] - edges[0]) <= current["income"].min()
    assert sorted(set(current["country"])) == sorted(summaries["country"]["categories"])


def test_evidently_snapshot_of_a_drifted_window(demo: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "snap.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently's own deprecation noise
        assert main(["report", "--format", "evidently", "--config",
                     str(demo / "driftline.yml"), "--last", "2", "-o", str(out)]) == 0
        from evidently.core.report import Snapshot

        Snapshot.load(str(out))  # a real snapshot: Evidently reads it back
    assert "model credit-risk, window 2" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    meta = doc["metadata"]
    assert meta["source"] == "driftline" and meta["window"] == "2"
    assert meta["driftline_verdicts"] == {"chi2": "drift", "ks": "drift", "model": "drift"}
    assert "income" in meta["driftline_drifted_features"]
    assert meta["reference_data"] == "the model's reference file, exactly"
    assert "approximate" in meta["current_data"]
    assert doc["tags"] == ["driftline", "credit-risk"] and doc["metric_results"]
    assert any("income" in json.dumps(w) for w in doc["widgets"])


def test_evidently_export_errors(demo: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{demo / 'driftline.db'}"
    out = tmp_path / "x.json"
    assert main(["report", "--format", "evidently", "--db", db, "--model", "nope",
                 "-o", str(out)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["report", "--format", "evidently", "--db", db, "--first", "9",
                 "-o", str(out)]) == 2
    assert "no evaluated windows in the range 9.." in capsys.readouterr().err
