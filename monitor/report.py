"""What evaluating one window produces: the unit every sink stores or exports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detectors import DriftResult
from monitor.windows import TopicPartition


@dataclass(frozen=True, slots=True)
class WindowReport:
    model: str
    window_index: int
    window_start: float
    window_end: float
    n_records: int
    results: tuple[DriftResult, ...]
    offsets: Mapping[TopicPartition, tuple[int, int]]
    evaluated_at: float
    stream: str = "features"  # or "labels": windows of joined (label, prediction) pairs
    # Detector name -> JSON state to store with the window (streaming detectors), so a
    # restart resumes them exactly after the last stored window.
    state: Mapping[str, str] | None = None
    # Set when evaluating the window failed: the window is stored with no results and this
    # reason, so the stream moves past it instead of crash-looping on a replay.
    error: str | None = None
    # Feature name -> bounded summary of the window and the reference (bin or category
    # counts, see monitor.components.FeatureSummaries), stored for reports.
    summaries: Mapping[str, Mapping[str, Any]] | None = None
    # The registry version whose reference evaluated the window (None: no registry yet).
    model_version: str | None = None
