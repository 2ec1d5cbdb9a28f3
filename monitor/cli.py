"""The ``driftline`` command: run, demo, produce, check-config, db."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from monitor import __version__
from monitor.errors import ConfigError, MonitorError, SinkError

log = logging.getLogger("driftline")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.app import build_daemon, install_signal_handlers
    from monitor.settings import load_settings

    settings = load_settings(args.config)
    _setup_logging(args.log_level or settings.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)  # before connecting: start-up may wait on Kafka
    daemon = build_daemon(settings, stop=stop)
    if stop.is_set():
        daemon.close()
        return 0
    log.info("driftline %s running: %d model(s), topics %s", __version__,
             len(settings.models), ",".join(settings.source.kafka.topics))
    daemon.run()
    log.info("stopped cleanly")
    return 0


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
    summary = run_demo(DemoOptions(
        workdir=Path(args.workdir), records=args.records, window=args.window,
        drift_at=args.drift_at, magnitude=args.magnitude, seed=args.seed,
        metrics_port=args.metrics_port))
    return 0 if summary["detected_window"] is not None else 1


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="driftline", description=(
        "Drift-detection daemon: consumes inference logs from Kafka, tests each model's "
        "windows for drift, exports Prometheus metrics and stores results in SQL."))
    p.add_argument("--version", action="version", version=f"driftline {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description=(
        "Run the daemon until SIGTERM/SIGINT, which finish the current batch, flush complete "
        "windows, commit, and exit."))
    run.add_argument("--config", required=True, help="settings YAML file")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(fn=cmd_run)

    chk = sub.add_parser("check-config", help="validate a settings file and its references",
                         description="Validate the settings file (with DRIFTLINE__* "
                         "environment overrides) and load every model's reference data.")
    chk.add_argument("file")
    chk.set_defaults(fn=cmd_check_config)

    demo = sub.add_parser("demo", help="run the pipeline on a synthetic stream, no services",
                          description="Run the real pipeline on an in-process synthetic "
                          "stream with drift injected partway; serves /metrics, writes SQLite.")
    demo.add_argument("--workdir", default="driftline-demo")
    demo.add_argument("--records", type=int, default=40_000)
    demo.add_argument("--window", type=int, default=2_000)
    demo.add_argument("--drift-at", type=int, default=24_000)
    demo.add_argument("--magnitude", type=float, default=0.5, help="shift in standard deviations")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--metrics-port", type=int, default=9108, help="0 picks a free port")
    demo.set_defaults(fn=cmd_demo)

    prod = sub.add_parser("produce", help="replay JSONL or a synthetic stream into a topic",
                          description="Send inference logs to Kafka: lines of a JSONL file "
                          "as they are, or a synthetic stream with optional injected drift.")
    prod.add_argument("--bootstrap-servers", default="localhost:9092")
    prod.add_argument("--topic", default="inference-logs")
    src = prod.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="JSONL file, one record per line")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic records")
    prod.add_argument("--model", default="credit-risk")
    prod.add_argument("--seed", type=int, default=0)
    prod.add_argument("--drift-at", type=int, default=None, help="inject drift from record K")
    prod.add_argument("--magnitude", type=float, default=0.5)
    prod.add_argument("--key-by-model", action="store_true",
                      help="use the model name as the message key (one partition per model)")
    prod.set_defaults(fn=cmd_produce)

    db = sub.add_parser("db", help="database schema: upgrade, current revision",
                        description="Manage the SQL schema (Alembic migrations shipped with "
                        "driftline). The daemon also upgrades the database when it starts.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for action, text in (("upgrade", "upgrade storage.url's database to the latest revision "
                          "(a database made by driftline 0.1.0 is adopted first)"),
                         ("current", "print the database's revision")):
        act = db_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        act.add_argument("--config", required=True, help="settings YAML file (storage.url)")
    db.set_defaults(fn=cmd_db)
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
