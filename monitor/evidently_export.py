"""``driftline report --format evidently``: one window and its reference as an Evidently
snapshot (extra ``evidently``), for teams whose tooling reads Evidently.

driftline's own statistics stay the source of truth: its verdicts, p-values and drifted
features for the window travel in the snapshot's metadata, and Evidently's drift preset
(recomputed by Evidently on the data below) is for looking around, not for deciding.

What the data is: driftline does not keep a window's raw records, only the bounded summary
stored with its results (bin counts for numeric features, top-k category counts). The
window's rows are rebuilt from it: each bin's count spread evenly inside the bin, values
beyond the reference's range at half a bin outside it, categories repeated by their counts.
The reference is the model's reference file, exactly, when the settings file is given
(``--config``), else rebuilt from the summary the same way. Evidently's numbers on rebuilt
rows are approximate and differ from driftline's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ConfigError
from monitor.storage.reader import StorageReader, WindowResults


def _numeric(summary: Mapping[str, Any], side: str) -> np.ndarray:
    edges = np.asarray(summary["edges"], dtype=np.float64)
    parts = []
    for lo, hi, count in zip(edges[:-1], edges[1:], summary[side], strict=True):
        if count:
            parts.append(np.linspace(lo, hi, int(count) + 2)[1:-1])
    if side == "current":
        width = (edges[-1] - edges[0]) / max(len(edges) - 1, 1)
        parts.append(np.full(int(summary.get("current_below", 0)), edges[0] - width / 2))
        parts.append(np.full(int(summary.get("current_above", 0)), edges[-1] + width / 2))
    return np.concatenate(parts) if parts else np.empty(0)


def _categorical(summary: Mapping[str, Any], side: str) -> np.ndarray:
    values = [c for c, n in zip(summary["categories"], summary[side], strict=True)
              for _ in range(int(n))]
    values += ["(other)"] * int(summary.get(f"{side}_other", 0))
    return np.asarray(values, dtype=object)


def rebuild(summaries: Mapping[str, Mapping[str, Any]], side: str) -> dict[str, np.ndarray]:
    """Columns of ``side`` ("reference" or "current") rebuilt from stored summaries."""
    return {name: (_numeric(s, side) if s.get("kind") == "numeric" else _categorical(s, side))
            for name, s in summaries.items()}


def _frame(columns: Mapping[str, np.ndarray]) -> Any:
    import pandas as pd

    n = max((len(v) for v in columns.values()), default=0)
    # Columns of one side all have the window's length, bar non-finite values dropped:
    # pad with missing values so they line up.
    return pd.DataFrame({k: pd.Series(v).reindex(range(n)) for k, v in columns.items()})


def export_window(reader: StorageReader, output: Path, *, model: str | None,
                  first: int | None, last: int | None,
                  reference: Mapping[str, np.ndarray] | None = None,
                  types: Mapping[str, str] | None = None) -> tuple[str, int]:
    """Write the snapshot of the last window in the range; returns (model, window index)."""
    try:
        import pandas  # noqa: F401
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError:
        raise ConfigError("--format evidently needs Evidently: pip install "
                          "'driftline[evidently]'") from None
    models = reader.models("features")
    if model is None:
        if len(models) != 1:
            raise ConfigError("--format evidently exports one window of one model: name it "
                              f"with --model (stored: {', '.join(models) or 'none'})")
        model = models[0]
    elif model not in models:
        raise ConfigError(f"unknown model '{model}'; the database holds: "
                          f"{', '.join(models) or 'none'}")
    wins = [w for w in reader.window_results(model, "features", first=first, last=last)
            if w.window.error is None]
    if not wins:
        lo, hi = ("" if x is None else x for x in (first, last))
        raise ConfigError(f"model '{model}' has no evaluated windows in the range {lo}..{hi}")
    wr: WindowResults = wins[-1]
    summaries = {f.feature: f.summary for r in wr.results for f in r.features if f.summary}
    if not summaries:
        raise ConfigError(f"window {wr.window.window_index} of model '{model}' has no stored "
                          "feature summaries (stored by an older driftline)")
    current = rebuild(summaries, "current")
    if reference is not None:
        ref_cols = {k: np.asarray(reference[k]) for k in summaries if k in reference}
        ref_note = "the model's reference file, exactly"
    else:
        ref_cols = rebuild(summaries, "reference")
        ref_note = "rebuilt from the stored summary (approximate)"
    kinds = {k: (types or {}).get(k, s.get("kind", "numeric")) for k, s in summaries.items()}
    definition = DataDefinition(
        numerical_columns=[k for k, v in kinds.items() if v == "numeric"],
        categorical_columns=[k for k, v in kinds.items() if v != "numeric"])
    drifted = sorted({f.feature for r in wr.results for f in r.features if f.drifted})
    verdicts = {r.detector: ("insufficient_data" if r.insufficient_data
                             else "drift" if r.drifted else "ok") for r in wr.results}
    p_values: dict[str, str] = {}
    for r in wr.results:
        for f in r.features:
            if f.adjusted_p_value is not None:
                p_values[f"{r.detector}/{f.feature}"] = f"{f.adjusted_p_value:.6g}"
            elif f.statistic is not None:
                p_values[f"{r.detector}/{f.feature}"] = f"statistic {f.statistic:.6g}"
    metadata: dict[str, str | dict[str, str] | list[str]] = {
        "source": "driftline", "model": model, "window": str(wr.window.window_index),
        "window_start": datetime.fromtimestamp(wr.window.window_start, UTC).isoformat(),
        "window_end": datetime.fromtimestamp(wr.window.window_end, UTC).isoformat(),
        "records": str(wr.window.n_records),
        "current_data": "rebuilt from the stored per-window summary (approximate)",
        "reference_data": ref_note,
        "driftline_verdicts": verdicts,
        "driftline_drifted_features": drifted,
        "driftline_corrected_p_values": p_values,
        "source_of_truth": "driftline's verdicts above; Evidently's own drift tests here "
                           "run on rebuilt data and are approximate",
    }
    report = Report([DataDriftPreset()], metadata=metadata, tags=["driftline", model])
    snapshot = report.run(Dataset.from_pandas(_frame(current), data_definition=definition),
                          Dataset.from_pandas(_frame(ref_cols), data_definition=definition),
                          timestamp=datetime.fromtimestamp(wr.window.window_end, UTC),
                          name=f"driftline {model} window {wr.window.window_index}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".html", ".htm"):
        snapshot.save_html(str(output))
    else:  # the full snapshot (results, widgets, metadata): Snapshot.load() reads it back
        output.write_text(snapshot.dumps(), encoding="utf-8")
    return model, wr.window.window_index


def reference_columns(config: str, model: str | None, names: Sequence[str] | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """The model's reference columns and feature types from its settings file."""
    from monitor.reference import load_reference
    from monitor.settings import load_settings

    settings = load_settings(config)
    chosen = [m for m in settings.models if model is None or m.name == model]
    if len(chosen) != 1:
        return None
    m = chosen[0]
    types = {f.name: f.type for f in m.features}
    columns = load_reference(m.reference.path, dict(types), m.reference.format)  # type: ignore[arg-type]
    return {k: v for k, v in columns.items() if names is None or k in names}, dict(types)
