"""``driftline retrain list | show | approve | reject | cancel``: operators steer requests."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any


def _store(args: argparse.Namespace) -> Any:
    from monitor.retrain.store import RetrainStore
    from monitor.settings import load_settings
    from monitor.storage import SqlStore

    settings = load_settings(args.config)
    store = SqlStore(settings.storage.url)
    store.migrate()  # a database of an older release gets the retraining tables
    return RetrainStore(store.engine)


#: Backends whose running job `cancel` stops; the others (command, webhook, kafka) handed
#: the request to a system driftline cannot reach back into: the request is cancelled
#: here only.
STOPPABLE = ("builtin", "ray")


def cancel_request(store: Any, rid: str, reason: str, backend: Any = None) -> tuple[Any, str]:
    """Cancel request ``rid`` (compare-and-set first, so a request that finished meanwhile
    is refused, not stopped), then stop its backend job when ``backend`` can. Returns the
    request and what happened to the job."""
    before = store.get(rid)
    after = store.transition(rid, "cancelled", reason)
    stop = getattr(backend, "cancel", None)
    if before.state not in ("dispatched", "running") or before.external_id is None:
        return after, "no job had been started"
    if stop is None:
        return after, (f"the {before.backend or 'backend'} system was not told: stop its run "
                       f"{before.external_id} there if needed")
    return after, str(stop(before.external_id, rid))


def cmd_cancel(args: argparse.Namespace) -> int:
    from pathlib import Path

    from monitor.retrain.backends import BackendError, build_backend
    from monitor.settings import load_settings

    settings = load_settings(args.config)
    store = _store(args)
    request = store.get(args.id)
    cfg = {m.name: m.retrain for m in settings.models if m.retrain is not None}.get(
        request.model)
    backend = None
    if cfg is not None and cfg.action.kind in STOPPABLE and request.backend == cfg.action.kind:
        backend = build_backend(cfg.action, config_path=Path(args.config))
    try:
        r, note = cancel_request(store, args.id, args.reason or "cancelled by an operator",
                                 backend)
    except BackendError as exc:
        print(f"request {args.id} is now cancelled, but its job was not stopped: {exc}")
        return 1
    print(f"request {r.id} is now {r.state}; {note}")
    return 0


def _when(t: datetime | float | None) -> str:
    if t is None:
        return "-"
    if isinstance(t, int | float):
        t = datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(args: argparse.Namespace) -> int:
    rows = _store(args).requests(args.model)
    if args.json:
        print(json.dumps([{**r.__dict__, "created_at": r.created_at.isoformat(),
                           "updated_at": r.updated_at.isoformat()} for r in rows]))
        return 0
    if not rows:
        print("no retraining requests" + (f" for model '{args.model}'" if args.model else ""))
        return 0
    print(f"{'id':<32}  {'model':<20} {'action':<11} {'state':<16} {'incident':<18} "
          f"{'labelled':>8}  updated")
    for r in rows:
        print(f"{r.id:<32}  {r.model:<20} {r.action:<11} {r.state:<16} "
              f"{r.first_stream + '/' + str(r.first_window):<18} {r.labelled:>8}  "
              f"{_when(r.updated_at)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    r = store.get(args.id)
    print(f"request {r.id}\n  model {r.model}, action {r.action} ({r.kind} drift), "
          f"state {r.state}\n  incident from {r.first_stream} window {r.first_window} "
          f"(event time {_when(r.first_event_time)}); decided at window {r.decided_window}"
          f"\n  labelled records {r.labelled}; attempts {r.attempts}; backend "
          f"{r.backend or '-'}; external id {r.external_id or '-'}\n  reason: {r.reason}")
    print("  history:")
    for seq, old, new, at, reason in store.events(r.id):
        print(f"    {seq:>3}. {_when(at)}  {old or '(new)'} -> {new}: {reason}")
    return 0


def _move(to: str, verb: str) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        reason = args.reason or f"{verb} by an operator"
        r = _store(args).transition(args.id, to, reason)
        print(f"request {r.id} is now {r.state}")
        return 0
    return cmd


def register(sub: Any) -> Any:
    """Add ``retrain`` and its operator commands; returns its sub-command group, to which
    the job's commands (run, promote, rollback) are added beside them."""
    rt = sub.add_parser("retrain", help="retraining requests (list, show, approve, reject, "
                        "cancel) and the built-in job (run, promote, rollback)",
                        description="Inspect and steer retraining requests stored in the "
                        "configured database (storage.url).",
                        epilog="example: driftline retrain list --config driftline.yml")
    cmds = rt.add_subparsers(dest="retrain_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True,
                       help="settings YAML file (its storage.url is read)")

    ls = cmds.add_parser("list", help="every request, oldest first",
                         description="Example: driftline retrain list --config driftline.yml")
    common(ls)
    ls.add_argument("--model", help="only this model's requests (default: all)")
    ls.add_argument("--json", action="store_true", help="one JSON array (default: a table)")
    ls.set_defaults(fn=cmd_list)
    show = cmds.add_parser("show", help="one request and its history",
                           epilog="example: driftline retrain show --config driftline.yml ID")
    common(show)
    show.add_argument("id", help="the request id (see `list`)")
    show.set_defaults(fn=cmd_show)
    for name, to, verb, what in (
            ("approve", "queued", "approved", "a request waiting for approval is queued"),
            ("reject", "rejected", "rejected", "a request waiting for approval is rejected"),
            ("cancel", "cancelled", "cancelled", "stop a request that is not finished (and "
             "its builtin or Ray job)")):
        p = cmds.add_parser(name, help=what, epilog=f"example: driftline retrain {name} "
                            "--config driftline.yml ID --reason 'checked the incident'")
        common(p)
        p.add_argument("id", help="the request id (see `list`)")
        p.add_argument("--reason", help="recorded in the request's history")
        p.set_defaults(fn=cmd_cancel if name == "cancel" else _move(to, verb))
    return cmds
