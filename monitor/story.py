"""What the daemon tells its operator: logging set-up, one line per window, drift changes.

* :func:`setup_logging` configures the root logger once: ``text`` (one human line per
  event) or ``json`` (one JSON object per line, with the same fields as ``extra``), and
  tames kafka-python (:class:`KafkaLogFilter`).
* :class:`WindowLog` is called with every stored window report: one line per evaluated
  window (model, window, records, each detector's verdict, the drifted features) and a
  clear line when a model starts or stops drifting.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from monitor.report import WindowReport

log = logging.getLogger("driftline.windows")

#: Drifted features named in a window's line (the rest are counted).
MAX_FEATURES_LOGGED = 10

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(ts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class KafkaLogFilter(logging.Filter):
    """kafka-python logs every reconnect attempt (hundreds of ERROR lines per outage) and
    an ERROR for a topic that does not exist yet on a normal first start.

    Below DEBUG, its records are collapsed: the first one after ``quiet_s`` of silence is
    kept (at WARNING at most, marked as kafka-python's), the rest are dropped until it has
    been quiet again. driftline itself logs each change of the connection's state ("source
    unreachable", "source reachable again"). "Topic ... not found in cluster metadata" is
    dropped: the consumer waits for the topic. With ``--log-level DEBUG`` everything passes.
    """

    def __init__(self, quiet_s: float = 300.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.quiet_s = quiet_s
        self.clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka"):
            return True
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        if record.levelno < logging.WARNING:
            return False
        if "not found in cluster metadata" in str(record.msg):
            return False
        now = self.clock()
        quiet = self._last is None or now - self._last >= self.quiet_s
        self._last = now
        if not quiet:
            self.suppressed += 1
            return False
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"kafka-python: {record.msg} (repeats are not logged)"
        return True


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger, as :func:`logging.basicConfig` does: when the process
    already has handlers someone else installed (a program embedding driftline, pytest),
    they are left alone. A second call replaces the handler an earlier one installed;
    ``stream`` installs one whatever is there."""
    root = logging.getLogger()
    # kafka-python logs at INFO on every (re)connect and rebalance step: WARNING and up
    # reach the filter below, INFO too with DEBUG. Never its DEBUG: it prints the SASL
    # request bytes, the password included.
    logging.getLogger("kafka").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    foreign = [h for h in root.handlers if not getattr(h, "_driftline", False)]
    if foreign and stream is None:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._driftline = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(KafkaLogFilter())
    for old in list(root.handlers):
        if stream is not None or getattr(old, "_driftline", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _verdict(drifted: bool, insufficient: bool) -> str:
    return "insufficient_data" if insufficient else "drift" if drifted else "ok"


def _value(p: float | None, statistic: float) -> str:
    if p is not None:
        return f"p={p:.2e}"
    return f"stat={statistic:.3g}" if math.isfinite(statistic) else "untested"


class WindowLog:
    """Logs every delivered window report, and when a model starts or stops drifting."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger
        # (model, stream) -> (window index drift started at, its start time) while drifting
        self._drifting: dict[tuple[str, str], tuple[int, float]] = {}

    def __call__(self, report: WindowReport) -> None:
        key = (report.model, report.stream)
        base: dict[str, Any] = {
            "event": "window", "model": report.model, "stream": report.stream,
            "window": report.window_index, "window_start": _iso(report.window_start),
            "window_end": _iso(report.window_end), "records": report.n_records}
        if report.error is not None:
            self.log.warning("model %s %s window %d (%d records): evaluation failed: %s",
                             report.model, report.stream, report.window_index,
                             report.n_records, report.error,
                             extra={**base, "event": "window_failed", "error": report.error})
            return
        verdicts = {r.detector: _verdict(r.drifted, r.insufficient_data) for r in report.results}
        features: list[str] = []
        for r in report.results:
            if r.detector == "model":
                continue  # the verdict's "features" are its detectors, not the model's
            for f in r.features:
                if f.drifted and f.feature not in features:
                    features.append(f.feature)
        drifted = [r.detector for r in report.results if r.drifted]
        shown = features[:MAX_FEATURES_LOGGED]
        more = f" (+{len(features) - len(shown)} more)" if len(features) > len(shown) else ""
        self.log.info(
            "model %s %s window %d [%s .. %s] %d records: %s%s", report.model, report.stream,
            report.window_index, base["window_start"], base["window_end"], report.n_records,
            " ".join(f"{r.detector}={verdicts[r.detector]}({_value(r.p_value, r.statistic)})"
                     for r in report.results),
            f"; drifted features: {', '.join(shown)}{more}" if features else "",
            extra={**base, "verdicts": verdicts, "drifted": bool(drifted),
                   "drifted_detectors": drifted, "drifted_features": shown,
                   "drifted_features_total": len(features)})
        was = self._drifting.get(key)
        if drifted and was is None:
            self._drifting[key] = (report.window_index, report.window_start)
            self.log.warning(
                "DRIFT STARTED: model %s (%s) at window %d (%s) - detectors %s; features %s%s",
                report.model, report.stream, report.window_index, base["window_start"],
                ", ".join(drifted), ", ".join(shown) or "-", more,
                extra={**base, "event": "drift_started", "drifted_detectors": drifted,
                       "drifted_features": shown})
        elif not drifted and was is not None and verdicts and \
                not all(v == "insufficient_data" for v in verdicts.values()):
            del self._drifting[key]
            self.log.warning(
                "drift ended: model %s (%s) is clean again at window %d (%s); it drifted "
                "from window %d (%s)", report.model, report.stream, report.window_index,
                base["window_start"], was[0], _iso(was[1]),
                extra={**base, "event": "drift_ended", "drift_started_window": was[0]})

    def drifting(self) -> Mapping[tuple[str, str], tuple[int, float]]:
        return dict(self._drifting)
