"""The ``driftline`` command: run, demo, produce, check-config, db, retrain."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.errors import ConfigError, MonitorError, SinkError

if TYPE_CHECKING:
    from monitor.settings import ModelSettings, Settings
    from training import ModelSpec

log = logging.getLogger("driftline")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from monitor.story import setup_logging

    setup_logging(level, fmt)  # kafka-python tamed: see monitor.story.KafkaLogFilter


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.supervised import stop_on_signals

    stop = threading.Event()
    # before the slow imports: a SIGTERM meanwhile stops, not kills; the previous handlers
    # come back at the end (main() may be called in a longer-lived program, e.g. tests)
    restore = stop_on_signals(stop)
    try:
        return _run(args, stop)
    finally:
        restore()


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    from monitor.supervised import announce, tag_logs, watch_parent

    watch_parent(stop)  # a worker of a supervisor stops when its parent dies
    from monitor.app import build_daemon, install_signal_handlers
    from monitor.settings import load_settings
    from monitor.supervisor import resolve_workers

    settings = load_settings(args.config)
    _setup_logging(args.log_level or settings.log_level, args.log_format or settings.log_format)
    tag_logs()  # a supervised worker's index in its log lines
    try:
        workers = resolve_workers(settings.daemon.workers, args.workers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    install_signal_handlers(stop)  # before connecting: start-up may wait on Kafka
    if workers > 1:
        return _supervise(args, settings, workers, stop)
    daemon = build_daemon(settings, stop=stop, config_path=Path(args.config).resolve())
    announce(daemon.metrics_port)
    if stop.is_set():
        daemon.close()
        return 0
    log.info("driftline %s running: %d model(s), topics %s", __version__,
             len(settings.models), ",".join(settings.source.kafka.topics))
    daemon.run()
    log.info("stopped cleanly")
    return 0


def _supervise(args: argparse.Namespace, settings: Settings, workers: int,
               stop: threading.Event) -> int:
    """``--workers N`` (N > 1): this process supervises N ``--workers 1`` processes."""
    from monitor.app import _check_port
    from monitor.storage import SqlStore
    from monitor.supervisor import Supervisor, worker_command, worker_env

    address, port = settings.metrics.address, settings.metrics.port
    _check_port(address, port)  # before starting anything: a taken port fails at once
    SqlStore(settings.storage.url).close()  # a bad URL or driver too (does not connect)
    log.info("driftline %s: %d workers in consumer group %s", __version__, workers,
             settings.source.kafka.group_id)
    command = worker_command(str(Path(args.config).resolve()), log_level=args.log_level,
                             log_format=args.log_format)
    return Supervisor(command, workers, address=address, port=port, stop=stop,
                      env=worker_env()).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from detectors.alarms import MODEL
    from monitor.factory import build_models
    from monitor.metrics import Metrics
    from monitor.settings import load_settings
    from monitor.storage import SqlStore

    settings = load_settings(args.file)
    SqlStore(settings.storage.url).close()  # checks the URL and its driver; does not connect
    built = build_models(settings, Metrics())  # exactly what `run` builds, minus connections
    for m in settings.models:
        state = built.models[m.name]
        detectors = [d for _stream, s in state.streams() for d in s.evaluator.detector_names
                     if d != MODEL]
        rows = getattr(state.features.evaluator, "n_reference", "?")
        policy = getattr(state.features.evaluator, "verdict", None)
        print(f"model {m.name}: {len(m.features)} features, reference {m.reference.path} "
              f"({rows} rows), window {m.window.model_dump()}, detectors {', '.join(detectors)}")
        if policy is None:
            continue
        rule = policy.rule()
        print(f"  verdict: {m.verdict.method} across detectors at alpha {rule.level:.3g}, alarm "
              f"after {rule.k} of {rule.n} drifted windows: one false alarm every "
              f"{rule.windows:.4g} windows expected")
    print(f"{args.file}: OK")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import DemoOptions, run_demo

    _setup_logging("ERROR")  # the demo prints its own progress; rejects are in the summary
    if args.retrain:
        return _demo_retrain(args)
    summary = run_demo(DemoOptions(
        workdir=Path(args.workdir), records=args.records or 40_000, window=args.window,
        drift_at=24_000 if args.drift_at is None else args.drift_at,
        magnitude=args.magnitude, seed=args.seed,
        metrics_port=args.metrics_port,
        linger=sys.stdout.isatty() and sys.stdin.isatty()))  # a terminal: until Ctrl-C
    return 0 if summary["detected_window"] is not None else 1


def _demo_retrain(args: argparse.Namespace) -> int:
    from monitor.demo_loop import LoopOptions, print_summary, run_loop, summary

    defaults = LoopOptions()
    opts = LoopOptions(
        workdir=Path(args.workdir if args.workdir != "driftline-demo"
                     else "driftline-demo-retrain"),
        records=args.records or defaults.records,
        drift_at=defaults.drift_at if args.drift_at is None else args.drift_at,
        seed=args.seed if args.seed != 7 else defaults.seed)
    if opts.workdir.exists() and any(opts.workdir.iterdir()):
        raise ConfigError(f"{opts.workdir} is not empty: the loop starts from a fresh "
                          "registry and database; remove it or pass --workdir")
    s = summary(run_loop(opts), opts)
    print_summary(s)
    return 0 if s["promoted_at"] is not None else 1


def _jsonl_values(path: Path, key_field: str | None) -> Iterator[tuple[bytes | None, bytes]]:
    with path.open("rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            key = None
            if key_field:
                try:
                    model = json.loads(line).get(key_field)
                except (ValueError, AttributeError):
                    model = None  # replay bad lines as they are: the daemon dead-letters them
                key = None if model is None else str(model).encode()
            yield key, line


def cmd_produce(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from monitor.kafka_io import produce

    _setup_logging("WARNING")
    key_field = "model" if args.key_by_model else None
    if args.file:
        if not Path(args.file).is_file():  # before connecting: the file is read lazily
            raise ConfigError(f"{args.file}: no such file")
        values = _jsonl_values(Path(args.file), key_field)
    else:
        from monitor.synthetic import SyntheticStream

        stream = SyntheticStream(model=args.model, seed=args.seed, drift_at=args.drift_at,
                                 magnitude=args.magnitude)
        key = args.model.encode() if args.key_by_model else None
        values = ((key, v) for v in stream.encoded(args.synthetic))
    try:
        n = produce(args.bootstrap_servers, args.topic, values)
    except KafkaError as exc:
        raise SinkError(f"producing to '{args.topic}' at {args.bootstrap_servers} failed: "
                        f"{exc}") from None
    print(f"produced {n} records to {args.topic}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from monitor.settings import load_settings
    from monitor.storage import SqlStore, database_revision, head_revision
    from monitor.storage.migrate import database_is_legacy

    settings = load_settings(args.config)
    _setup_logging("WARNING")
    store = SqlStore(settings.storage.url)  # ConfigError for a bad URL or driver: exit 2
    where = store.engine.url.render_as_string(hide_password=True)
    head = head_revision()
    try:
        if args.db_command == "upgrade":
            before = database_revision(store.engine)
            after = store.migrate()  # SinkError when the database fails: exit 2
            print(f"{where}: upgraded from revision {before or 'none'} to {after}"
                  if before != after else f"{where}: already at revision {after}")
        else:
            revision = database_revision(store.engine)
            if revision is not None:
                state = ("head" if revision == head
                         else f"head is {head}: run `driftline db upgrade`")
            elif database_is_legacy(store.engine):
                state = "tables of driftline 0.1.0, not versioned yet: run `driftline db upgrade`"
            else:
                state = "no driftline tables: run `driftline db upgrade`"
            print(f"{revision or 'none'} ({state})")
    finally:
        store.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from monitor.htmlreport import build_report
    from monitor.storage import StorageReader
    from monitor.storage.models import open_engine

    _setup_logging("WARNING")
    if args.db:
        url = args.db
    elif args.config:
        from monitor.settings import load_settings

        url = load_settings(args.config).storage.url
    else:
        raise ConfigError("say where the results are: --db URL or --config FILE")
    engine = open_engine(url)  # ConfigError for a bad URL or a missing driver: exit 2
    where = engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:") \
            and not Path(str(engine.url.database)).is_file():
        raise ConfigError(f"{where}: no such database file")
    if args.format == "evidently":
        from monitor.evidently_export import export_window, reference_columns

        got = reference_columns(args.config, args.model) if args.config else None
        out = Path(args.output or "driftline-evidently.json")
        with StorageReader(engine) as reader:
            model, index = export_window(reader, out, model=args.model, first=args.first,
                                         last=args.last, reference=got[0] if got else None,
                                         types=got[1] if got else None)
        engine.dispose()
        print(f"wrote {out}: Evidently snapshot of model {model}, window {index} (the window "
              "rebuilt from its stored summary; driftline's verdicts in its metadata)")
        return 0
    with StorageReader(engine) as reader:
        page = build_report(reader, model=args.model, first=args.first, last=args.last,
                            source=where)
    engine.dispose()
    out = Path(args.output or "driftline-report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page) // 1024} KiB): open it in a browser, no network needed")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after an option's help, unless it has none or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action) or text


def cmd_dashboards(args: argparse.Namespace) -> int:
    from monitor.grafana_publish import load_assets, publish

    _setup_logging("WARNING")
    token_file = Path(args.token_file)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {token_file}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"--token-file {token_file} is empty")
    boards, datasource = load_assets(Path(args.dir), args.prometheus_url)
    result = publish(args.url, token, boards, datasource, folder_uid=args.folder_uid,
                     timeout=args.timeout)
    print(f"Grafana {result.grafana_version} at {args.url}:")
    for line in result.actions:
        print(f"  {line}")
    return 0


def _retrain_model(args: argparse.Namespace) -> tuple[ModelSettings, ModelSpec]:
    """The settings' model ``args.model`` and its deployed-model spec."""
    from monitor.settings import load_settings
    from training import ModelSpec

    settings = load_settings(args.config)
    by_name = {m.name: m for m in settings.models}
    if args.model not in by_name:
        raise ConfigError(f"{args.config}: no model named {args.model!r} "
                          f"(models: {', '.join(sorted(by_name))})")
    m = by_name[args.model]
    if m.embedding is None:
        raise ConfigError(f"model {args.model!r} has no embedding.model: retraining needs the "
                          "deployed torch model (state-dict, torchscript, transformers or "
                          "sentence-transformers)")
    em = m.embedding.model
    return m, ModelSpec(kind=em.kind.replace("-", "_"), factory=em.factory,
                        max_length=em.max_length)


def cmd_retrain(args: argparse.Namespace) -> int:
    from training import Registry, RegistryError

    _setup_logging("INFO")
    try:
        # a backend given here is stored in the registry folder: later commands mirror alike
        registry = Registry(args.registry, backend=args.registry_backend,
                            tracking_uri=args.mlflow_tracking_uri)
        if args.retrain_command == "promote":
            aliases = registry.promote(args.model, args.version, force=args.force)
            print(f"{args.model}: champion {aliases.champion} (previous {aliases.previous})")
            return 0
        if args.retrain_command == "rollback":
            aliases = registry.rollback(args.model)
            print(f"{args.model}: rolled back to {aliases.champion}")
            return 0
    except (RegistryError, ImportError) as exc:  # ImportError: mlflow not installed
        raise ConfigError(str(exc)) from None
    return _retrain_run(args)


def _captured_rows(args: argparse.Namespace, features: tuple[str, ...],
                   text: bool = False) -> Any:
    """The training capture of request ``args.request``: labelled records since its
    incident's first window (they include the incident's drifted windows)."""
    import numpy as np

    from monitor.retrain.store import RetrainStore
    from monitor.settings import load_settings
    from monitor.storage import SqlStore
    from training import LabelledRows

    store = SqlStore(load_settings(args.config).storage.url)
    try:
        retrain = RetrainStore(store.engine)
        if args.windows is not None or args.since is not None:
            first, last = _window_range(args.windows)
            rows = retrain.capture(args.model, since=args.since, first_window=first,
                                   last_window=last)
            what = (f"in label windows {args.windows}" if args.windows is not None
                    else f"since event time {args.since}")
        else:
            request = retrain.get(args.request)
            if request.model != args.model:
                raise ConfigError(f"request {args.request} is for model {request.model!r}, "
                                  f"not {args.model!r}")
            rows = retrain.capture(args.model, since=request.first_event_time)
            what = f"since request {args.request}'s incident began"
    finally:
        store.close()
    if not rows:
        raise ValueError(f"no captured records of model {args.model!r} {what}")
    try:
        if text:  # a text model trains on the records' raw input
            from monitor.retrain_job import text_rows

            x, y = text_rows(rows, f"model {args.model!r}")
        else:
            x = np.asarray([[float(r["features"][f]) for f in features] for r in rows],
                           dtype=np.float32)
            y = np.asarray([float(r["label"]) for r in rows])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"captured records of {args.model!r}: a feature or label is not a "
                         f"number ({exc})") from None
    y_out = y.astype(np.int64) if np.all(y == np.round(y)) else y
    return LabelledRows(x, y_out, np.asarray([r["event_time"] for r in rows]))


def _window_range(text: str | None) -> tuple[int | None, int | None]:
    """``A:B`` (either side may be empty) -> (first, last) label window, inclusive."""
    if text is None:
        return None, None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        first, last = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ConfigError(f"--windows {text!r}: expected A:B, label window indexes "
                          "(e.g. 12:30, 12: or :30)") from None
    if first is not None and last is not None and first > last:
        raise ConfigError(f"--windows {text!r}: the first window is after the last")
    return first, last


def _retrain_run(args: argparse.Namespace) -> int:
    import numpy as np

    from monitor.retrain_job import read_rows
    from monitor.retrain_torchrun import join_torchrun, leave_torchrun, train_as_worker
    from training import LabelledRows

    m, spec = _retrain_model(args)
    features = tuple(f.name for f in m.features if f.type == "numeric")
    if args.windows is not None and args.since is not None:
        raise ConfigError("give --windows or --since, not both")
    selected = args.windows is not None or args.since is not None
    if args.data is None and args.request is None and not selected:
        raise ConfigError("give --request ID (the incident's captured records are read from "
                          "storage.url), --windows A:B or --since T (captured records by "
                          "label window or event time), or --data FILE (CSV or JSONL with "
                          "the features, label and timestamp)")
    if args.data is not None and selected:
        raise ConfigError("--windows and --since select captured records: not with --data")
    text = spec.text
    try:
        rows = (read_rows(args.data, features, text=text) if args.data is not None
                else _captured_rows(args, features, text))
        reference = None
        try:  # a text model replays its embedding reference's texts (with labels)
            assert m.embedding is not None
            reference = read_rows(m.embedding.reference.path if text else m.reference.path,
                                  features, timestamp=None, text=text)
        except ValueError as exc:
            log.warning("no replay: the reference has no usable label column (%s)", exc)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    assert m.embedding is not None  # checked by _retrain_model
    shape = m.embedding.model.shape
    if shape and not text and tuple(shape) != (len(features),):
        rows = LabelledRows(rows.x.reshape(len(rows), *shape), rows.y, rows.times)
        if reference is not None:
            reference = LabelledRows(reference.x.reshape(len(reference), *shape), reference.y)
    weights = (np.asarray([float(w) for w in args.label_weights.split(",")])
               if args.label_weights else None)
    place = join_torchrun(args.device)
    if place.active and args.nproc > 1:
        raise ConfigError("--nproc starts its own processes: not under torchrun, which "
                          "already started them")
    try:
        if place.rank > 0:
            if args.action == "retrain" and not args.dry_run:
                train_as_worker(rows, registry_dir=args.registry, model_name=args.model,
                                model=spec, model_path=m.embedding.model.path,
                                reference=reference,
                                config=_train_config(args).replace(
                                    strategy=args.strategy, device=place.device,
                                    seed=args.seed))
            return 0
        result = _run_job_rank0(args, m, spec, rows, reference, features, weights, place)
    finally:
        leave_torchrun(place)
    print(json.dumps({k: result.as_dict()[k] for k in (
        "status", "model", "version", "champion_before", "champion_after", "reason")}))
    return 1 if result.status == "failed" else 0


def _train_config(args: argparse.Namespace) -> Any:
    from training import TrainConfig

    targets = (tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
               if args.lora_targets else None)
    try:
        rates = (tuple(float(r) for r in args.lr_grid.split(",")) if args.lr_grid
                 else TrainConfig().lr_grid)
        return TrainConfig(epochs=args.epochs, lora_targets=targets, lr_grid=rates)
    except ValueError as exc:
        raise ConfigError(f"--epochs / --lr-grid / --lora-targets: {exc}") from None


def _run_job_rank0(args: argparse.Namespace, m: Any, spec: Any, rows: Any, reference: Any,
                   features: tuple[str, ...], weights: Any, place: Any) -> Any:
    from monitor.retrain_job import run_job
    from training import GateConfig

    return run_job(
        args.model, rows, registry_dir=args.registry, model=spec,
        model_path=m.embedding.model.path, reference=reference,
        features=features, strategy=args.strategy, action=args.action, label_weights=weights,
        device=place.device, nproc=max(args.nproc, place.world), seed=args.seed,
        request_id=args.request, train=_train_config(args),
        gate_config=GateConfig(alpha=args.alpha, min_gain=args.min_gain,
                               max_reference_drop=args.max_reference_drop),
        dry_run=args.dry_run, result_path=args.result)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftline", description=(
        "Drift-detection daemon: consumes inference logs from Kafka, tests each model's "
        "windows for drift, exports Prometheus metrics and stores results in SQL."))
    p.add_argument("--version", action="version", version=f"driftline {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", formatter_class=_Help, description=(
        "Run the daemon until SIGTERM/SIGINT, which finish the current batch, flush complete "
        "windows, commit, and exit."),
        epilog="example: driftline run --config examples/driftline.yml --log-format json")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="settings YAML file (DRIFTLINE__* environment variables override it)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="log level (default: log_level in the settings, INFO)")
    run.add_argument("--log-format", choices=["text", "json"],
                     help="one line of text, or one JSON object, per event (default: "
                     "log_format in the settings, text)")
    run.add_argument("--workers", metavar="N|auto",
                     help="consumer processes in the group, under one supervisor with one "
                     "/metrics: auto is one per core (default: daemon.workers in the "
                     "settings, auto); 1 runs in this process")
    run.set_defaults(fn=cmd_run)

    chk = sub.add_parser("check-config", help="validate a settings file and its references",
                         formatter_class=_Help,
                         description="Validate the settings file (with DRIFTLINE__* "
                         "environment overrides) and load every model's reference data.",
                         epilog="example: driftline check-config examples/driftline.yml")
    chk.add_argument("file", help="settings YAML file")
    chk.set_defaults(fn=cmd_check_config)

    demo = sub.add_parser("demo", help="run the pipeline on a synthetic stream, no services",
                          formatter_class=_Help,
                          description="Run the real pipeline on an in-process synthetic "
                          "stream with drift injected partway; serves /metrics, writes SQLite. "
                          "On a terminal, /metrics stays up after the summary until Ctrl-C.",
                          epilog="example: driftline demo --metrics-port 0 && driftline report "
                          "--db sqlite:///driftline-demo/driftline.db")
    demo.add_argument("--workdir", default="driftline-demo", metavar="DIR",
                      help="folder for the reference, settings, database and dead letters")
    demo.add_argument("--records", type=int, default=None, metavar="N",
                      help="records to stream (default 40,000; --retrain: 12,000)")
    demo.add_argument("--window", type=int, default=2_000, metavar="N",
                      help="records per count window")
    demo.add_argument("--drift-at", type=int, default=None, metavar="K",
                      help="record from which drift is injected (default 24,000; --retrain: "
                      "6,000)")
    demo.add_argument("--magnitude", type=float, default=0.5,
                      help="shift in standard deviations")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the stream")
    demo.add_argument("--metrics-port", type=int, default=9108, metavar="PORT",
                      help="port of /metrics on 127.0.0.1; 0 picks a free port")
    demo.add_argument("--retrain", action="store_true",
                      help="the retraining loop instead: a concept drift detected on delayed "
                      "labels, one request, the builtin job fine-tunes and gates, the daemon "
                      "switches to the promoted model (needs the training extra)")
    demo.set_defaults(fn=cmd_demo)

    prod = sub.add_parser("produce", help="replay JSONL or a synthetic stream into a topic",
                          formatter_class=_Help,
                          description="Send inference logs to Kafka: lines of a JSONL file "
                          "as they are, or a synthetic stream with optional injected drift.",
                          epilog="example: driftline produce --synthetic 50000 --drift-at "
                          "30000 --key-by-model --bootstrap-servers localhost:9092")
    prod.add_argument("--bootstrap-servers", default="localhost:9092", metavar="HOST:PORT",
                      help="Kafka brokers, comma-separated")
    prod.add_argument("--topic", default="inference-logs", help="topic to send to")
    src = prod.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSONL file, one record per line (sent byte for byte)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic records")
    prod.add_argument("--model", default="credit-risk", help="model name of synthetic records")
    prod.add_argument("--seed", type=int, default=0, help="random seed of synthetic records")
    prod.add_argument("--drift-at", type=int, default=None, metavar="K",
                      help="inject drift from synthetic record K (default: no drift)")
    prod.add_argument("--magnitude", type=float, default=0.5,
                      help="injected shift in standard deviations")
    prod.add_argument("--key-by-model", action="store_true",
                      help="use the model name as the message key (one partition per model)")
    prod.set_defaults(fn=cmd_produce)

    rep = sub.add_parser(
        "report", help="write an HTML drift report from the stored results",
        formatter_class=_Help,
        description="Write one self-contained HTML file (no network needed to open it): "
        "per model a timeline of windows with each detector's verdict and p-values or "
        "distances over time, and feature by feature the reference against the window "
        "with raw and corrected p-values, thresholds and what drove each verdict.",
        epilog="example: driftline report --db sqlite:///driftline-demo/driftline.db "
        "--output report.html")
    rep_src = rep.add_mutually_exclusive_group()
    rep_src.add_argument("--db", metavar="URL", default=None,
                         help="SQLAlchemy URL of the results database")
    rep_src.add_argument("--config", metavar="FILE", default=None,
                         help="settings YAML file whose storage.url to read")
    rep.add_argument("--model", default=None,
                     help="only this model (default: every model in the database)")
    rep.add_argument("--first", type=int, default=None, metavar="N",
                     help="first window index (inclusive; default: the first stored)")
    rep.add_argument("--last", type=int, default=None, metavar="N",
                     help="last window index (inclusive; default: the last stored)")
    rep.add_argument("--output", "-o", default=None, metavar="FILE",
                     help="where to write it (default: driftline-report.html; "
                     "driftline-evidently.json with --format evidently, .html for "
                     "Evidently's own page)")
    rep.add_argument("--format", choices=["html", "evidently"], default="html",
                     help="html: driftline's report of every window in the range; evidently: "
                     "the range's last window and its reference as an Evidently snapshot "
                     "(pip install 'driftline[evidently]')")
    rep.set_defaults(fn=cmd_report)

    dash = sub.add_parser("dashboards", help="Grafana: publish the dashboards through its API",
                          description="Manage driftline's Grafana dashboards through Grafana's "
                          "HTTP API (needs pip install 'driftline[grafana]').",
                          epilog="example: driftline dashboards publish --url "
                          "https://grafana.example.com --token-file /run/secrets/grafana")
    dash_sub = dash.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    pub = dash_sub.add_parser(
        "publish", formatter_class=_Help,
        help="upload the dashboards and the Prometheus data source (idempotent)",
        description="Upload the generated dashboards and the Prometheus data source to "
        "Grafana: missing ones are created, changed ones overwritten, equal ones left alone.",
        epilog="example: driftline dashboards publish --url http://localhost:3000 "
        "--token-file grafana.token --prometheus-url http://prometheus:9090")
    pub.add_argument("--url", required=True, help="Grafana's base URL")
    pub.add_argument("--token-file", required=True, metavar="FILE",
                     help="file holding a Grafana service-account token (Editor role; Admin "
                     "to create data sources)")
    pub.add_argument("--dir", default="dashboards/grafana", metavar="DIR",
                     help="folder with dashboards/*.json and provisioning/datasources/")
    pub.add_argument("--prometheus-url", default=None, metavar="URL",
                     help="URL Grafana reaches Prometheus at (default: the provisioning "
                     "file's, http://prometheus:9090)")
    pub.add_argument("--folder-uid", default=None, metavar="UID",
                     help="Grafana folder for the dashboards (default: General)")
    pub.add_argument("--timeout", type=float, default=10.0, metavar="S",
                     help="seconds per HTTP request")
    dash.set_defaults(fn=cmd_dashboards)

    db = sub.add_parser("db", help="database schema: upgrade, current revision",
                        epilog="example: driftline db upgrade --config driftline.yml",
                        description="Manage the SQL schema (Alembic migrations shipped with "
                        "driftline). The daemon also upgrades the database when it starts.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for action, text in (("upgrade", "upgrade storage.url's database to the latest revision "
                          "(a database made by driftline 0.1.0 is adopted first)"),
                         ("current", "print the database's revision")):
        act = db_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".",
                                formatter_class=_Help,
                                epilog=f"example: driftline db {action} --config driftline.yml")
        act.add_argument("--config", required=True, help="settings YAML file (storage.url)")
    db.set_defaults(fn=cmd_db)

    from monitor.retrain.cli import register as register_retrain

    # requests (list, show, approve, reject, cancel) and the job (run, promote, rollback)
    rt_sub = register_retrain(sub)
    rr = rt_sub.add_parser("run", help="train, gate and register a challenger",
                           description="Exit 0 when a challenger was promoted or rejected "
                           "(or a dry run), 1 when the job failed (result JSON says why).")
    rr.add_argument("--config", required=True, help="settings YAML file (the model's spec)")
    rr.add_argument("--model", required=True, help="the model's name in the settings file")
    rr.add_argument("--request", help="retraining request id (recorded in the version)")
    rr.add_argument("--data", help="labelled rows: CSV or JSONL with the features, "
                    "'label' and 'timestamp' (the capture export)")
    rr.add_argument("--windows", metavar="A:B", help="the training capture of these label "
                    "windows (inclusive; either side may be empty)")
    rr.add_argument("--since", type=float, metavar="T",
                    help="the training capture from this event time (Unix seconds)")
    rr.add_argument("--strategy", choices=["head", "gradual", "full", "lora"], default="full")
    rr.add_argument("--lora-targets", metavar="NAMES", help="lora: comma-separated module "
                    "names or last name parts (e.g. query,value); default every Linear")
    rr.add_argument("--action", choices=["retrain", "recalibrate"], default="retrain")
    rr.add_argument("--label-weights", help="recalibrate: comma-separated BBSE class weights")
    rr.add_argument("--nproc", type=int, default=1, help="data-parallel processes")
    rr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (no silent fallback)")
    rr.add_argument("--seed", type=int, default=0)
    rr.add_argument("--epochs", type=int, default=20, help="most epochs per learning rate")
    rr.add_argument("--lr-grid", metavar="RATES", help="comma-separated learning rates tried "
                    "(the best on validation wins; default 3e-4,1e-3,3e-3)")
    rr.add_argument("--alpha", type=float, default=0.05, help="gate: paired test level")
    rr.add_argument("--min-gain", type=float, default=0.02,
                    help="gate: least accuracy gain (points as a fraction)")
    rr.add_argument("--max-reference-drop", type=float, default=0.02,
                    help="gate: most accuracy lost on the reference holdout")
    rr.add_argument("--dry-run", action="store_true", help="select the data, train nothing")
    rr.add_argument("--result", help="write the machine-readable result JSON here")
    rp = rt_sub.add_parser("promote", help="make a version the champion")
    rp.add_argument("--model", required=True, help="the model's name")
    rp.add_argument("--version", required=True, help="the registry version to serve")
    rp.add_argument("--force", action="store_true", help="promote even a rejected version")
    rb = rt_sub.add_parser("rollback", help="make the previous version the champion again")
    rb.add_argument("--model", required=True, help="the model's name")
    for parser in (rr, rp, rb):
        parser.add_argument("--registry", default="driftline-registry",
                            help="model registry folder (default ./driftline-registry)")
        parser.add_argument("--registry-backend", choices=["directory", "mlflow"],
                            help="mlflow: also register versions and move the aliases in "
                            "MLflow (stored in the folder; default: as stored, directory)")
        parser.add_argument("--mlflow-tracking-uri", metavar="URI",
                            help="the MLflow tracking store (e.g. sqlite:///mlflow.db)")
    for parser in (rr, rp, rb):
        parser.set_defaults(fn=cmd_retrain)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except MonitorError as exc:
        print(f"driftline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
