"""``driftline demo --retrain``: the whole retraining loop on a concept drift, no services.

A toy tabular model (an MLP over four features) serves a stream whose concept changes at
``drift_at``: the inputs move to a new region (``f2`` shifted by 3) where the label follows
``f0`` alone, so the deployed model is wrong about a quarter of the time there. Labels
arrive ``lag`` records after their predictions. The real daemon (embedded source, SQLite)
detects the drift on the labels, queues one request, the ``builtin`` backend runs the real
``driftline retrain run`` job (a subprocess) which fine-tunes, gates and promotes; the
stand-in serving system below then serves the registry's champion, and the daemon switches
its reference to the new version (:mod:`monitor.champion`).

The stream is fed in chunks of one label window; while a job runs the stream waits for it
(so the run is reproducible: a real serving system keeps serving the old model meanwhile).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from monitor.sources import Message, RebalanceHook
from monitor.windows import TopicPartition

MODEL = "churn"
FEATURES = ("f0", "f1", "f2", "f3")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: event time of record 0, one record a second


def model() -> Any:
    """The demo model's architecture (the ``state-dict`` factory the job and daemon load)."""
    from training.models import mlp

    return mlp(len(FEATURES), 2, hidden=(32, 32))


def concept(n: int, *, drifted: bool, rng: np.random.Generator,
            noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Before the drift y = [f0 + f1 > 0]; after it f2 is shifted by 3 and y = [f0 > 0];
    a ``noise`` share of labels is flipped (no model is perfect, as in production)."""
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    if drifted:
        x[:, 2] += 3.0
    y = ((x[:, 0] if drifted else x[:, 0] + x[:, 1]) > 0).astype(np.int64)
    flip = rng.random(n) < noise
    return x, np.where(flip, 1 - y, y)


@dataclass(frozen=True)
class LoopOptions:
    workdir: Path = Path("driftline-demo-retrain")
    records: int = 12_000
    drift_at: int = 6_000
    features_window: int = 500
    label_window: int = 250
    lag: int = 300  # a label arrives this many records after its prediction
    min_labelled: int = 1_000
    epochs: int = 10
    max_reference_drop: float = 0.1
    seed: int = 0
    job_timeout_s: float = 300.0


class FeedSource:
    """An in-process source over two topics that the loop appends to as it goes."""

    def __init__(self, batch: int = 500) -> None:
        self.messages: list[Message] = []
        self.batch, self.i = batch, 0
        self.committed: dict[TopicPartition, int] = {}

    def poll(self, timeout_s: float) -> list[Message]:
        out = self.messages[self.i:self.i + self.batch]
        self.i += len(out)
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return self.i >= len(self.messages)

    connected = True

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise RuntimeError("the demo source has no consumer group: nothing to rewind")

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None: ...

    def close(self) -> None: ...


class Serving:
    """The serving system: predicts with the registry's champion once there is one."""

    def __init__(self, registry: Path, deployed: Path, model: str = MODEL,
                 factory: str = "monitor.demo_loop:model",
                 shape: tuple[int, ...] | None = None) -> None:
        self.registry, self.deployed = registry, deployed
        self.model, self.factory, self.shape = model, factory, shape
        self.version: str | None = None
        self._module: Any = None

    def refresh(self) -> bool:
        """Load the champion if it changed; True when it did."""
        from training import ModelSpec, Registry, load_weights

        registry = Registry(self.registry)
        champion = registry.aliases(self.model).champion
        if self._module is not None and champion == self.version:
            return False
        if champion is None:
            self._module = load_weights(ModelSpec("state_dict", self.factory), self.deployed)
            return False
        info, self._module = registry.load(self.model, champion)
        self.version = champion
        return info.status != "baseline"  # the baseline is the deployed model itself

    def predict(self, x: np.ndarray) -> np.ndarray:
        from training import predict

        if self.shape is not None:
            x = x.reshape(len(x), *self.shape)
        return np.asarray(predict(self._module, x).argmax(axis=1), dtype=np.int64)


def train_champion(path: Path, seed: int) -> Any:
    """The deployed model: the MLP fitted on 2,000 rows of the old concept (seeded)."""
    import torch

    torch.manual_seed(seed)
    x, y = concept(2000, drifted=False, rng=np.random.default_rng([seed, 1]))
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), path)
    return net.eval()


def settings_doc(opts: LoopOptions, model: str, features: tuple[str, ...], factory: str,
                 job_args: tuple[str, ...] = (), shape: tuple[int, ...] | None = None
                 ) -> dict[str, Any]:
    """The loop's settings: files ``reference.csv``, ``labels.csv``, ``embedding.jsonl`` and
    ``model.pt`` beside the settings file, the builtin backend with its registry there."""
    doc: dict[str, Any] = {
        "source": {"kafka": {"topics": ["logs"], "labels_topic": "labels"}},
        "storage": {"url": f"sqlite:///{opts.workdir.resolve() / 'driftline.db'}"},
        "models": [{
            "name": model, "alpha": 0.001,
            "reference": {"path": "reference.csv"},
            "features": [{"name": f, "type": "numeric"} for f in features],
            "window": {"kind": "count", "size": opts.features_window},
            "prediction_drift": {"task": "classification"},
            "labels": {"reference": {"path": "labels.csv"}, "window_size": opts.label_window,
                       "horizon_seconds": 3600,
                       "streaming": [{"kind": "ddm", "params": {"min_num_instances": 100}}]},
            "embedding": {"model": {"kind": "state-dict", "path": "model.pt",
                                    "factory": factory,
                                    "shape": list(shape or (len(features),))},
                          "reference": {"path": "embedding.jsonl"},
                          "n_permutations": 1000, "device": "cpu"},
            "retrain": {"min_labelled": opts.min_labelled, "cooldown_windows": 4,
                        "action": {"kind": "builtin", "registry": "registry",
                                   "jobs_dir": "jobs", "timeout_seconds": 60,
                                   "job_args": ["--epochs", str(opts.epochs),
                                                "--max-reference-drop",
                                                str(opts.max_reference_drop),
                                                "--seed", str(opts.seed), *job_args]}},
        }],
    }
    return doc


def prepare(opts: LoopOptions) -> Path:
    """Deployed model, reference files and settings in ``opts.workdir``; the settings path."""
    import torch

    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    net = train_champion(work / "model.pt", opts.seed)
    x, y = concept(1000, drifted=False, rng=np.random.default_rng([opts.seed, 2]))
    with torch.no_grad():
        pred = net(torch.tensor(x)).argmax(dim=1).numpy()
    rows = ["f0,f1,f2,f3,prediction,label"] + [
        ",".join(f"{v:.6f}" for v in xi) + f",{p},{t}" for xi, p, t in zip(x, pred, y,
                                                                          strict=True)]
    (work / "reference.csv").write_text("\n".join(rows) + "\n")
    (work / "labels.csv").write_text("label,prediction\n" + "".join(
        f"{t},{p}\n" for p, t in zip(pred, y, strict=True)))
    (work / "embedding.jsonl").write_text("".join(
        json.dumps({"array": [round(float(v), 6) for v in xi]}) + "\n" for xi in x))
    doc = settings_doc(opts, MODEL, FEATURES, "monitor.demo_loop:model")
    cfg = work / "driftline.yml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


@dataclass
class LoopResult:
    """Per chunk of one label window: (first record, version serving, accuracy)."""

    chunks: list[tuple[int, str | None, float]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    job: dict[str, Any] | None = None
    promoted_at: int | None = None  # first record served by the promoted version
    seconds: float = 0.0

    def accuracy(self, lo: int, hi: int) -> float:
        accs = [a for start, _v, a in self.chunks if lo <= start < hi]
        return float(np.mean(accs)) if accs else float("nan")


class Loop:
    """The daemon over a :class:`FeedSource`, fed chunk by chunk by the serving stand-in."""

    def __init__(self, opts: LoopOptions, cfg: Path, say: Callable[[str], None] = print, *,
                 model: str = MODEL, features: tuple[str, ...] = FEATURES,
                 factory: str = "monitor.demo_loop:model",
                 shape: tuple[int, ...] | None = None) -> None:
        from prometheus_client import CollectorRegistry

        from monitor.app import build_daemon
        from monitor.deadletter import MemoryDeadLetter
        from monitor.metrics import Metrics
        from monitor.retrain.store import RetrainStore
        from monitor.settings import load_settings

        self.opts, self.say = opts, say
        self.source = FeedSource()
        self.daemon = build_daemon(load_settings(cfg), source=self.source,
                                   dead_letter=MemoryDeadLetter(), serve_metrics=False,
                                   metrics=Metrics(CollectorRegistry()), config_path=cfg)
        assert self.daemon.dispatcher is not None and self.daemon.champions is not None
        # look at the registry before every batch (a stat), not once a second: the serving
        # stand-in switches at a chunk boundary, and the daemon must see it at once to be
        # reproducible
        self.daemon.champions.poll_seconds = 0.0
        self.store = RetrainStore(self.daemon.store.engine)
        self.model, self.features = model, features
        self.serving = Serving(cfg.parent / "registry", cfg.parent / "model.pt", model, factory,
                               shape)
        self.result = LoopResult()
        self._labels: dict[int, Message] = {}
        self._stop = threading.Event()

    def feed(self, start: int, x: np.ndarray, y: np.ndarray, *, last: bool = False) -> None:
        """Records ``start..`` (predicted by the serving champion), the labels that are due,
        then process them and follow any retraining job."""
        if self.serving.refresh():
            self.result.promoted_at = start
            self.say(f"record {start}: serving {self.serving.version} from now on")
        pred = self.serving.predict(x)
        self.result.chunks.append((start, self.serving.version, float((pred == y).mean())))
        out = self.source.messages
        for k in range(len(x)):
            i = start + k
            ts = T0 + i
            record = {"model": self.model, "request_id": f"r{i}", "timestamp": ts,
                      "features": {f: float(v) for f, v in zip(self.features, x[k],
                                                                strict=True)},
                      "prediction": int(pred[k]),
                      "input": {"array": [float(v) for v in x[k]]}}
            out.append(Message("logs", 0, i, json.dumps(record).encode()))
            self._labels[i] = Message("labels", 0, i, json.dumps(
                {"request_id": f"r{i}", "label": int(y[k]), "timestamp": ts + 5.0}).encode())
            if i - self.opts.lag in self._labels:
                out.append(self._labels.pop(i - self.opts.lag))
        if last:
            out.extend(self._labels.pop(i) for i in sorted(self._labels))
        self.daemon.pipeline.run(self._stop, until_exhausted=True)
        _follow(self.daemon, self.store, self.result, self.opts, self.say, self.model)

    def close(self) -> None:
        self.daemon.close()


def stream(opts: LoopOptions) -> tuple[np.ndarray, np.ndarray]:
    """The whole seeded stream: the old concept, then the new one from ``drift_at``."""
    rng = np.random.default_rng([opts.seed, 3])
    x = np.empty((opts.records, len(FEATURES)), np.float32)
    y = np.empty(opts.records, np.int64)
    k = min(opts.drift_at, opts.records)
    x[:k], y[:k] = concept(k, drifted=False, rng=rng)
    x[k:], y[k:] = concept(opts.records - k, drifted=True, rng=rng)
    return x, y


def run_loop(opts: LoopOptions, say: Callable[[str], None] = print) -> LoopResult:
    """Stream ``opts.records`` records through the daemon, retraining when it asks."""
    import os

    # one thread per process (daemon and job) on a small machine: two cores shared by
    # two processes that each spin two threads is several times slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_start = time.perf_counter()
    loop = Loop(opts, prepare(opts), say)
    x, y = stream(opts)
    say(f"streaming {opts.records} records; concept drift from record {opts.drift_at}; "
        f"labels {opts.lag} records late")
    try:
        for start in range(0, opts.records, opts.label_window):
            stop_at = min(start + opts.label_window, opts.records)
            loop.feed(start, x[start:stop_at], y[start:stop_at], last=stop_at == opts.records)
    finally:
        loop.close()
    loop.result.seconds = time.perf_counter() - t_start
    return loop.result


def _follow(daemon: Any, store: Any, result: LoopResult, opts: LoopOptions,
            say: Callable[[str], None], model: str = MODEL) -> None:
    """Hand queued requests to the job and wait for it (the stream pauses meanwhile)."""
    daemon.dispatcher.run_once()
    deadline = time.monotonic() + opts.job_timeout_s
    while True:
        requests = store.requests(model)
        busy = [r for r in requests if r.state in ("dispatched", "running")]
        if not busy:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"retraining job still {busy[0].state} after "
                               f"{opts.job_timeout_s:.0f} s")
        time.sleep(0.2)
        daemon.dispatcher.run_once()
    known = {r.id: r.state for r in result.requests}
    for r in requests:
        if r.action != "collect" and known.get(r.id) != r.state:
            say(f"request {r.id}: {r.kind} drift from {r.first_stream} window "
                f"{r.first_window}, {r.labelled} labelled records: {r.state}")
    result.requests = [r for r in requests if r.action != "collect"]
    for r in result.requests:
        job = daemon.dispatcher.backends[model].result_path(r.id)
        if job.exists() and result.job is None:
            result.job = json.loads(job.read_text())
            gate = result.job.get("gate") or {}
            say(f"job {result.job['status']} in {result.job['timings']['total_seconds']:.1f} s:"
                f" version {result.job.get('version')}; gate on {gate.get('n')} holdout rows:"
                f" champion {gate.get('champion_metric', 0):.1%}, challenger "
                f"{gate.get('challenger_metric', 0):.1%}, p={gate.get('p_value', 1):.2g}, "
                f"reference drop {gate.get('reference_drop') or 0:.1%}")


def summary(result: LoopResult, opts: LoopOptions) -> dict[str, Any]:
    """Accuracy before, during and after, and where the loop acted (stream positions)."""
    request = result.requests[0] if result.requests else None
    size = opts.label_window

    def reached(window: int | None) -> int | None:
        # a label window closes with its last label, which arrives `lag` records later
        return None if window is None else (window + 1) * size + opts.lag

    promoted = result.promoted_at
    end = opts.records
    return {
        "drift_at": opts.drift_at,
        "detected_at": reached(request.first_window) if request else None,
        "requested_at": reached(request.decided_window) if request else None,
        "promoted_at": promoted,
        "job": None if result.job is None else {
            k: result.job.get(k) for k in ("status", "version", "reason")},
        "gate": None if result.job is None else result.job.get("gate"),
        "job_seconds": None if result.job is None
        else result.job["timings"]["total_seconds"],
        "accuracy_before": result.accuracy(0, opts.drift_at),
        "accuracy_during": result.accuracy(opts.drift_at, promoted or end),
        "accuracy_after": result.accuracy(promoted, end) if promoted else None,
        "seconds": result.seconds,
    }


def print_summary(s: dict[str, Any], out: Callable[[str], None] = print) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    out("")
    out(f"concept drift from record {s['drift_at']}; detected on the delayed labels by "
        f"record {s['detected_at']}; retraining requested by record {s['requested_at']}; "
        f"promoted model serving from record {s['promoted_at']}")
    if s["gate"]:
        g = s["gate"]
        out(f"job: {s['job']['status']} {s['job']['version']} in {s['job_seconds']:.1f} s; "
            f"gate: {g['reason']}")
    out(f"accuracy before the drift {pct(s['accuracy_before'])}, during it (old model) "
        f"{pct(s['accuracy_during'])}, after the promotion {pct(s['accuracy_after'])}")
    out(f"whole run {s['seconds']:.0f} s")
