"""Closing the retraining loop: each model is evaluated against its registry champion.

For every model whose retraining backend is ``builtin`` the daemon watches the registry
(``retrain.action.registry``). When the ``champion`` alias moves (the job promoted a
challenger, or ``driftline retrain promote`` / ``rollback``), before the next batch:

* the model's reference becomes the new version's data: the training capture rows of the
  incident it was trained on (from its train split's first event time to its holdout's
  last), with the new version's own predictions; the labels stream's reference (the
  accuracy the performance test compares against) is the gate's holdout, predicted by the
  new version. Both are written once into the version's folder (``reference/``), so a
  restart reads them back even after the capture was pruned. A version without trained
  data (the ``baseline``, the deployed model) uses the settings' reference files;
* the embedding model becomes the version's weights (its reference embedded anew);
* every detector starts fresh (streaming detectors on the labels included). A window
  already open at the switch holds records the version before predicted: it is still
  evaluated as before (:class:`Handover`), the next one of each stream is the new
  version's first. Labels of predictions older than the switch are counted as
  ``superseded`` and kept out of the new version's label windows (:meth:`Champions.admit`);
* the switch is stored (``driftline_champion_switches``: version, event, first window of
  each stream, event time), the registry's versions are mirrored into
  ``driftline_model_versions``, windows carry the version that evaluated them, and
  ``driftline_model_version_info`` / ``driftline_model_switches_total`` are exported;
* the retraining policy starts fresh from the first window after the switch (the incident
  the version was trained for is closed by its promotion).

Everything is derived from the registry and storage, not memory: a daemon restarted after a
promotion comes up on the promoted version, and stored detector state is resumed only from
windows the current version evaluated. A version that cannot be served (missing data,
unreadable weights) is logged and the model keeps its current reference; other models are
never affected.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from monitor.errors import MonitorError, SinkError
from monitor.factory import build_model
from monitor.label_join import Joined
from monitor.metrics import SETTINGS_VERSION, Metrics
from monitor.pipeline import Evaluator, ModelState, Windows
from monitor.report import WindowReport
from monitor.retrain.store import RetrainStore
from monitor.settings import ModelSettings
from monitor.storage import SqlStore
from monitor.storage.models import (
    ChampionSwitchRow,
    DetectorStateRow,
    ModelVersionRow,
    WindowRow,
)
from monitor.windows import ClosedWindow, CountWindows

log = logging.getLogger("driftline.champion")

STREAMS = ("features", "labels")


class ChampionError(MonitorError):
    """A version that cannot be served (its data or weights are missing or unreadable)."""


@dataclass(frozen=True)
class Switch:
    """The version a model is evaluated against and the first window of each stream."""

    model: str
    version: str
    event: str  # promote | rollback | baseline (the deployed model registered)
    first_windows: Mapping[str, int]
    request_id: str | None  # the request the version was trained for (closed by it)
    # Newest prediction event time when it took over: labels of older predictions were
    # predicted by the version before, and are not evaluated against this one's reference.
    since: float | None = None


class Champions:
    def __init__(self, models_settings: Mapping[str, ModelSettings],
                 models: dict[str, ModelState], store: SqlStore, metrics: Metrics,
                 registries: Mapping[str, Path], cache_dir: Path | None = None,
                 poll_seconds: float = 1.0) -> None:
        self.settings = {name: m for name, m in models_settings.items() if name in registries}
        self.models = models
        self.engine = store.engine
        self.metrics = metrics
        self.registries = dict(registries)
        self.cache_dir = cache_dir
        self.poll_seconds = poll_seconds
        self._sessions = sessionmaker(store.engine)
        self.serving: dict[str, str | None] = dict.fromkeys(self.settings)  # None: settings'
        self._data: dict[str, str | None] = dict.fromkeys(self.settings)  # evaluators' data
        self._seen: dict[str, tuple[float, ...]] = {}
        self._last_poll = 0.0
        self._since: dict[str, float | None] = {}
        # the version label exported per model (build_daemon sets the settings' one)
        self._exported = {name: m.version or SETTINGS_VERSION for name, m in self.settings.items()}
        #: called after every switch applied or restored (the retraining policy restarts)
        self.on_switch: list[Callable[[Switch], None]] = []

    # -- hooks -----------------------------------------------------------------------------
    def restored(self) -> None:
        """After the pipeline rebuilt its windows and detector state (start, rebalance)."""
        for model in self.settings:
            self._guarded(model, restoring=True)

    def poll(self) -> None:
        """Before each batch: a registry whose files changed is read again (cheap: stat)."""
        now = time.monotonic()
        if now - self._last_poll < self.poll_seconds:
            return
        self._last_poll = now
        for model in self.settings:
            if self._stamp(model) != self._seen.get(model):
                self._guarded(model, restoring=False)

    def admit(self, pair: Joined) -> bool:
        """Whether a joined label belongs in the model's label windows: not when its
        prediction is older than the switch to the version now evaluated."""
        since = self._since.get(pair.model)
        return since is None or pair.predicted_at is None or pair.predicted_at > since

    def _guarded(self, model: str, *, restoring: bool) -> None:
        try:
            self._sync(model, restoring)
        except SinkError:
            if restoring:
                raise  # the pipeline retries a restore while storage is down
            log.warning("model %s: storage unavailable; the champion is checked again "
                        "next batch", model)
            self._seen.pop(model, None)
        except (ChampionError, OSError, ValueError) as exc:
            self._seen[model] = self._stamp(model)  # not again until the registry changes
            log.error("model %s: cannot serve the registry's champion, keeping %s: %s",
                      model, self.serving[model] or "the settings' reference", exc)

    def _stamp(self, model: str) -> tuple[float, ...]:
        folder = self.registries[model] / model
        out = []
        for name in ("aliases.json", "events.jsonl"):
            try:
                out.append((folder / name).stat().st_mtime_ns)
            except OSError:
                out.append(-1)
        return tuple(out)

    # -- the switch ------------------------------------------------------------------------
    def _sync(self, model: str, restoring: bool) -> None:
        from training import Registry, RegistryError

        stamp = self._stamp(model)
        registry = Registry(self.registries[model])
        try:
            aliases = registry.aliases(model)
            versions = registry.versions(model)
            events = registry.events(model)
        except RegistryError as exc:
            raise ChampionError(str(exc)) from None
        version = aliases.champion
        if version is None:
            self._seen[model] = stamp
            return  # no registry version yet: the settings' reference serves
        info = next((v for v in versions if v.version == version), None)
        if info is None:
            raise ChampionError(f"champion {version} is not a complete version")
        self._mirror(model, versions, events)
        last = self._last_switch(model)
        state = self.models[model]
        if last is not None and last.version == version:
            first = {"features": last.features_window, "labels": last.labels_window}
            switch = Switch(model, version, last.event, {k: v for k, v in first.items()
                                                         if v is not None},
                            info.run.get("request_id"), last.event_time)
            if not restoring and self.serving[model] == version:
                self._seen[model] = stamp
                return  # something else changed (a rejected challenger registered)
        else:
            event = ("baseline" if self.serving[model] is None and _is_deployed(info, last)
                     else _event_of(events, version))
            switch = Switch(model, version, event, self._first_windows(state),
                            info.run.get("request_id"), self._newest_prediction(model, state))
        data = version if _trained(info.run) else None
        stale = restoring and self._stale_state(model, switch.first_windows)
        moved = self.serving[model] is not None and self.serving[model] != version
        # The job's first run registers the deployed model itself as the baseline champion:
        # the same model and reference, so nothing is rebuilt and the policy goes on.
        baseline = switch.event == "baseline"
        if data != self._data[model] or stale or moved:
            self._rebuild(model, state, info, data, switch.first_windows, restoring)
        else:
            for _name, s in state.streams():
                s.evaluator.model_version = version  # type: ignore[attr-defined]
        if last is None or last.version != version:
            self._record(model, switch, last, aliases.previous)
            self.metrics.model_switches.labels(model=model, event=switch.event).inc()
            log.info("model %s: now evaluated against %s (%s), from features window %s and "
                     "labels window %s", model, version, switch.event,
                     switch.first_windows.get("features"), switch.first_windows.get("labels"),
                     extra={"event": "champion_switch", "model": model, "version": version})
        if self._exported[model] != version:
            self.metrics.model_version.remove(model, self._exported[model])
            self.metrics.model_version.labels(model=model, version=version).set(1)
            self._exported[model] = version
        self.serving[model], self._data[model] = version, data
        self._seen[model] = stamp
        self._since[model] = None if baseline else switch.since
        if not baseline:
            for hook in self.on_switch:
                hook(switch)

    def _rebuild(self, model: str, state: ModelState, info: Any, data: str | None,
                 first: Mapping[str, int], restoring: bool) -> None:
        """Fresh evaluators for the version; stored state only from windows it evaluated."""
        m = self.settings[model]
        if data is not None:
            m = self._version_settings(m, info)
        t0 = time.perf_counter()
        fresh = build_model(m, self.metrics, self.cache_dir)
        saved = self._detector_state(model, first) if restoring else {}
        for (name, s), (_n, new) in zip(state.streams(), fresh.streams(), strict=True):
            new.evaluator.model_version = info.version  # type: ignore[attr-defined]
            new.evaluator.load_state(saved.get(name, {}))
            if any(w.n for w in s.windows.open_windows()):
                # the records already in the open window were predicted by the version
                # before: that window is still evaluated as before, the next ones anew
                s.evaluator = Handover(s.evaluator, new.evaluator, first[name])
            else:
                s.evaluator = new.evaluator
        log.info("model %s: reference of %s built in %.1f s (%s)", model, info.version,
                 time.perf_counter() - t0, m.reference.path)

    # -- the version's data ----------------------------------------------------------------
    def _version_settings(self, m: ModelSettings, info: Any) -> ModelSettings:
        folder = info.path / "reference"
        files = {"features": folder / "features.csv", "labels": folder / "labels.csv",
                 "embedding": folder / "embedding.jsonl"}
        if not files["features"].is_file():
            self._write_reference(m, info, folder)
        update: dict[str, Any] = {
            "reference": m.reference.model_copy(update={"path": files["features"],
                                                        "format": "csv"})}
        if m.labels is not None:
            update["labels"] = m.labels.model_copy(update={"reference": m.labels.reference
                                                           .model_copy(update={
                                                               "path": files["labels"],
                                                               "format": "csv"})})
        if m.embedding is not None:
            em = m.embedding.model
            spec = info.spec
            model_update: dict[str, Any] = {}
            if spec.wrapper is None:  # a prior-corrected head keeps the deployed weights
                # text versions are model folders (training/text.py), embedded as such
                model_update = {"path": info.weights, "factory": spec.factory,
                                "kind": spec.kind.replace("_", "-")}
            update["embedding"] = m.embedding.model_copy(update={
                "model": em.model_copy(update=model_update),
                "reference": m.embedding.reference.model_copy(update={
                    "path": files["embedding"], "format": "jsonl"})})
        return m.model_copy(update=update)

    def _write_reference(self, m: ModelSettings, info: Any, folder: Path) -> None:
        """The version's reference files, from the capture rows it was trained on."""
        from training import Registry, predict

        data = info.run.get("data") or {}
        try:
            t0 = float(data["train"]["time_first"])
            h0 = float(data["holdout"]["time_first"])
            t1 = float(data["holdout"]["time_last"])
        except (KeyError, TypeError, ValueError):
            raise ChampionError(f"{info.path}/run.json has no numeric train/holdout event "
                                "times: cannot tell which captured rows it was trained on") \
                from None
        rows = [r for r in RetrainStore(self.engine).capture(m.name, since=t0)
                if r["event_time"] <= t1]
        holdout = [r for r in rows if r["event_time"] >= h0]
        if len(rows) < 2 or len(holdout) < 2:
            raise ChampionError(f"{len(rows)} captured rows of {m.name} between event times "
                                f"{t0} and {t1} (the rows {info.version} was trained on): the "
                                "capture was pruned; set the reference by hand")
        numeric = [f.name for f in m.features if f.type == "numeric"]
        _info, module = Registry(self.registries[m.name]).load(m.name, info.version)
        shape = tuple(m.embedding.model.shape or ()) if m.embedding is not None else ()
        x: np.ndarray
        if info.spec.text:  # a text model predicts from the captured raw text
            from monitor.retrain_job import text_rows

            x = text_rows(rows, f"model {m.name!r}")[0]
        else:
            x = np.asarray([[float(r["features"][f]) for f in numeric] for r in rows],
                           dtype=np.float32)
        if shape and not info.spec.text and shape != (len(numeric),):
            x = x.reshape(len(rows), *shape)
        out = predict(module, x)
        regression = (m.labels is not None and m.labels.task == "regression") or (
            m.prediction_drift is not None and m.prediction_drift.task == "regression")
        preds = (out.reshape(len(rows), -1)[:, 0] if regression
                 else out.reshape(len(rows), -1).argmax(axis=1))
        folder.mkdir(exist_ok=True)
        columns = [f.name for f in m.features]
        _write_csv(folder / "features.csv", [*columns, "prediction", "label"],
                   ([*(r["features"][c] for c in columns), _value(p), _value(r["label"])]
                    for r, p in zip(rows, preds, strict=True)))
        first_holdout = len(rows) - len(holdout)
        _write_csv(folder / "labels.csv", ["label", "prediction"],
                   ([_value(r["label"]), _value(p)]
                    for r, p in zip(holdout, preds[first_holdout:], strict=True)))
        if m.embedding is not None:
            tmp = folder / ".embedding.jsonl.tmp"
            with tmp.open("w", encoding="utf-8") as fh:
                for r, xi in zip(rows, x, strict=True):
                    payload = (r["input"] if r["input"] is not None
                               else np.ravel(xi).tolist())
                    # as an inference record's "input": a list, {"array"} or {"text"} alike
                    fh.write(json.dumps({"input": payload}) + "\n")
            tmp.replace(folder / "embedding.jsonl")
        log.info("model %s: reference of %s written to %s (%d rows, %d holdout)", m.name,
                 info.version, folder, len(rows), len(holdout))

    # -- storage ---------------------------------------------------------------------------
    def _first_windows(self, state: ModelState) -> dict[str, int]:
        return {name: _next_index(s.windows) for name, s in state.streams()}

    def _newest_prediction(self, model: str, state: ModelState) -> float | None:
        """The newest record event time the daemon has seen of ``model``."""
        # the newest record itself: a time window's ``end`` is its bound, up to a window
        # length past its newest record, and labels of the new version's predictions in
        # between would be taken for the old version's
        ends = [max((r.timestamp for r in w.records), default=-math.inf)
                for w in state.features.windows.open_windows()]
        ends = [e for e in ends if math.isfinite(e)]
        try:
            with self._sessions() as s:
                stored = s.execute(select(func.max(WindowRow.window_end))
                                   .where(WindowRow.model == model,
                                          WindowRow.stream == "features")).scalar()
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read stored windows: {exc}") from exc
        if stored is not None:
            ends.append(float(stored))
        return max(ends) if ends else None

    def _stale_state(self, model: str, first: Mapping[str, int]) -> bool:
        """Whether the pipeline just loaded detector state of windows before the switch."""
        try:
            with self._sessions() as s:
                rows = s.execute(select(DetectorStateRow.stream, DetectorStateRow.window_index)
                                 .where(DetectorStateRow.model == model)).all()
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read detector state: {exc}") from exc
        return any(index < first.get(stream, 0) for stream, index in rows)

    def _detector_state(self, model: str, first: Mapping[str, int]) -> dict[str, dict[str, str]]:
        try:
            with self._sessions() as s:
                rows = list(s.execute(select(DetectorStateRow)
                                      .where(DetectorStateRow.model == model)).scalars())
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read detector state: {exc}") from exc
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            if r.window_index >= first.get(r.stream, 0):
                out.setdefault(r.stream, {})[r.detector] = r.state
        return out

    def _last_switch(self, model: str) -> ChampionSwitchRow | None:
        try:
            with self._sessions() as s:
                row = s.execute(select(ChampionSwitchRow).where(ChampionSwitchRow.model == model)
                                .order_by(ChampionSwitchRow.seq.desc()).limit(1)).scalar()
                if row is not None:
                    s.expunge(row)
                return row
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot read champion switches: {exc}") from exc

    def _record(self, model: str, switch: Switch, last: ChampionSwitchRow | None,
                previous: str | None) -> None:
        try:
            with self._sessions.begin() as s:
                s.add(ChampionSwitchRow(
                    model=model, seq=(last.seq + 1) if last is not None else 1,
                    version=switch.version, previous=last.version if last else previous,
                    event=switch.event, features_window=switch.first_windows.get("features"),
                    labels_window=switch.first_windows.get("labels"),
                    event_time=switch.since,
                    switched_at=datetime.now(UTC)))
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot record the champion switch: {exc}") from exc

    def _mirror(self, model: str, versions: list[Any], events: list[dict[str, Any]]) -> None:
        """The registry's versions into ``driftline_model_versions`` (idempotent)."""
        promoted = {e.get("version"): str(e.get("time")) for e in events
                    if e.get("event") == "promote"}
        try:
            with self._sessions.begin() as s:
                for v in versions:
                    s.merge(ModelVersionRow(
                        model=model, version=v.version, parent=v.parent, status=v.status,
                        created=v.created, request_id=v.run.get("request_id"),
                        metrics=json.loads(json.dumps(v.metrics, default=str)),
                        promoted_at=promoted.get(v.version)))
        except SQLAlchemyError as exc:
            raise SinkError(f"cannot mirror the registry's versions: {exc}") from exc


def _trained(run: Mapping[str, Any]) -> bool:
    """A version with data of its own (trained or recalibrated on a capture)."""
    data = run.get("data")
    return isinstance(data, dict) and "holdout" in data


def _is_deployed(info: Any, last: ChampionSwitchRow | None) -> bool:
    """The registry's baseline (the settings' deployed model), never switched away from."""
    return last is None and info.status == "baseline"


def _event_of(events: list[dict[str, Any]], version: str) -> str:
    """How the registry made ``version`` the champion (its last promote or rollback)."""
    for e in reversed(events):
        if e.get("version") == version and e.get("event") in ("promote", "rollback"):
            return str(e["event"])
    return "promote"


class Handover:
    """The evaluator of a stream during a switch: windows before ``first`` (open when the
    switch came) are evaluated by the version before, later ones by the new version."""

    def __init__(self, old: Evaluator, new: Evaluator, first: int) -> None:
        self.old, self.new, self.first = old, new, first

    @property
    def detector_names(self) -> list[str]:
        return self.new.detector_names

    def evaluate(self, window: ClosedWindow) -> WindowReport:
        return (self.old if window.index < self.first else self.new).evaluate(window)

    def load_state(self, saved: Mapping[str, str]) -> None:
        self.new.load_state(saved)

    def __getattr__(self, name: str) -> Any:  # model_version, embedding, n_reference...
        return getattr(self.new, name)


def _next_index(windows: Windows) -> int:
    """The first window that holds no record received before now."""
    if isinstance(windows, CountWindows):
        return windows.open_index + (1 if any(w.n for w in windows.open_windows())
                                     else 0)
    opened = [w.index for w in windows.open_windows()]
    if opened:
        return max(opened) + 1
    last = getattr(windows, "_last_closed", -math.inf)  # TimeWindows: nothing open now
    return int(last) + 1 if math.isfinite(last) else 0


def _value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _write_csv(path: Path, header: list[str], rows: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([json.dumps(v) if isinstance(v, bool) else v for v in row])
    tmp.replace(path)
