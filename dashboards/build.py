#!/usr/bin/env python3
"""Dashboards as code: builds the provisioned Grafana dashboard for driftline.

Run ``python dashboards/build.py`` after editing this file; it rewrites
``dashboards/grafana/dashboards/driftline-overview.json`` (committed, and checked against this
script by ``tests/dashboards/test_assets.py``). Standard library only.

``all_queries()`` lists every PromQL expression the monitoring assets run: dashboard targets,
template-variable queries and the alert rules in ``prometheus/rules/driftline.rules.yml``,
with Grafana's variables replaced by values Prometheus accepts, so tests can send each one
to a real Prometheus.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARD_PATH = HERE / "grafana" / "dashboards" / "driftline-overview.json"
RULES_PATH = HERE / "prometheus" / "rules" / "driftline.rules.yml"

UID = "driftline-overview"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

#: Every panel and target uses the dashboard's datasource variable; it defaults to the
#: provisioned Prometheus (uid "prometheus", see grafana/provisioning/datasources).
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Values substituted for Grafana variables in ``all_queries()``.
QUERY_SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
TEMPLATE_VALUE = ".*"  # what an "All" selection of a regex-matched variable expands to

M = 'model=~"$model"'
MD = 'model=~"$model", detector=~"$detector"'
RATE = "[$__rate_interval]"


# --- building blocks -------------------------------------------------------------------------

def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False,
           ) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DATASOURCE, "editorMode": "code", "expr": expr,
                         "legendFormat": legend or "__auto", "range": not instant,
                         "instant": instant}
    if table:
        t["format"] = "table"
    return t


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for color, value in steps]}


OK_ONLY = thresholds(("green", None))


def timeseries(title: str, description: str, targets: list[dict[str, Any]], *,
               unit: str = "short", minimum: float | None = 0, log: bool = False,
               steps: dict[str, Any] | None = None, threshold_line: bool = False,
               stack: bool = False) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
        "spanNulls": False, "axisPlacement": "auto",
        "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if threshold_line else "off"},
    }
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "palette-classic"},
                                "custom": custom, "thresholds": steps or OK_ONLY}
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries", "title": title, "description": description,
        "datasource": DATASOURCE, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": True, "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
         steps: dict[str, Any] | None = None, mappings: list[dict[str, Any]] | None = None,
         text_mode: str = "auto", decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "thresholds"},
                                "thresholds": steps or OK_ONLY, "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat", "title": title, "description": description,
        "datasource": DATASOURCE, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "justifyMode": "center",
                    "orientation": "auto", "textMode": text_mode, "wideLayout": True,
                    "showPercentChange": False},
    }


def value_mappings(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"type": "value", "options": {
        value: {"text": text, "color": color, "index": i}
        for i, (value, (text, color)) in enumerate(mapping.items())}}]


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.line_height = 0

    def _newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1,
                            "gridPos": {"x": 0, "y": self.y, "w": GRID_WIDTH, "h": 1}})
        self.y += 1

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > GRID_WIDTH:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        for ref, t in enumerate(panel.get("targets", [])):
            t["refId"] = chr(ord("A") + ref)
        self.panels.append(panel)
        self.x += w
        self.line_height = max(self.line_height, h)


# --- the dashboard -------------------------------------------------------------------------

def _panels() -> list[dict[str, Any]]:
    g = Layout()

    g.row("Overview")
    g.add(stat("Daemon up", "Whether Prometheus can scrape each driftline instance.",
               [target('up{job="driftline"}', "{{instance}}")],
               steps=thresholds(("red", None), ("green", 1)),
               mappings=value_mappings({"0": ("DOWN", "red"), "1": ("UP", "green")})), 4, 4)
    g.add(stat("Version", "driftline version reported by driftline_build_info.",
               [target("driftline_build_info", "{{version}}", instant=True)],
               steps=thresholds(("blue", None)), text_mode="name"), 4, 4)
    g.add(stat("Models drifting", "Selected models whose model verdict (family-wise over all "
               "their detectors, debounced: what DriftlineDriftDetected fires on) alarms.",
               [target(f"count(max by (model) (driftline_model_drift_detected{{{M}}}) == 1) "
                       "or vector(0)", "drifting")],
               steps=thresholds(("green", None), ("red", 1)), decimals=0), 4, 4)
    g.add(stat("Records / s", "Valid records consumed per second, selected models.",
               [target(f"sum(rate(driftline_records_consumed_total{{{M}}}{RATE}))",
                       "records/s")]), 4, 4)
    g.add(stat("Rejected / consumed", "Rejected records as a fraction of valid records, all "
               "models (the DriftlineHighRejectRate alert fires above 5%).",
               [target(f"sum(rate(driftline_records_rejected_total{RATE})) / "
                       f"sum(rate(driftline_records_consumed_total{RATE}))", "rejected")],
               unit="percentunit", decimals=1,
               steps=thresholds(("green", None), ("orange", 0.01), ("red", 0.05))), 4, 4)
    g.add(stat("Windows evaluated", "Windows closed and tested in the dashboard's time range, "
               "selected models.",
               [target(f"sum(increase(driftline_windows_evaluated_total{{{M}}}[$__range]))",
                       "windows", instant=True)], decimals=0), 4, 4)

    g.row("Throughput")
    g.add(timeseries("Records consumed / s", "Valid records decoded and assigned to a window.",
                     [target(f"sum by (model) (rate(driftline_records_consumed_total{{{M}}}"
                             f"{RATE}))", "{{model}}")]), 12, 8)
    g.add(timeseries("Records rejected / s by reason", "Records sent to the dead-letter topic, "
                     "by rejection reason (all models: a rejected record may have no valid "
                     "model).",
                     [target(f"sum by (reason) (rate(driftline_records_rejected_total{RATE}))",
                             "{{reason}}")], stack=True), 12, 8)
    g.add(timeseries("Windows evaluated / min", "Windows closed and tested for drift, and "
                     "windows whose evaluation failed (stored with the error, skipped).",
                     [target(f"sum by (model) (rate(driftline_windows_evaluated_total{{{M}}}"
                             f"{RATE})) * 60", "{{model}}"),
                      target(f"sum by (model) (rate(driftline_window_errors_total{{{M}}}"
                             f"{RATE})) * 60", "{{model}} failed")]), 12, 8)
    g.add(timeseries("Records per window", "Records in each model's last evaluated window.",
                     [target(f"max by (model) (driftline_window_records{{{M}}})",
                             "{{model}}")]), 12, 8)

    g.row("Drift")
    g.add(timeseries("Model verdict: smallest adjusted p-value", "Per model and stream: the "
                     "smallest p-value across its detectors after Holm/Bonferroni; the verdict "
                     "(1 = alarm, after the k-of-n rule) on the right axis.",
                     [target(f"max by (model, stream) (driftline_model_drift_p_value{{{M}}})",
                             "{{model}} {{stream}} p"),
                      target(f"max by (model, stream) (driftline_model_drift_detected{{{M}}})",
                             "{{model}} {{stream}} alarm")]), 12, 8)
    g.add(timeseries("Expected windows between false alarms", "What models[].false_alarms "
                     "gives: the expected number of windows between alarms on data without "
                     "drift.",
                     [target(f"max by (model, stream) "
                             f"(driftline_model_false_alarm_interval_windows{{{M}}})",
                             "{{model}} {{stream}}")]), 12, 8)
    drift_state = {"type": "state-timeline", "title": "Drift detected",
                   "description": "Per model and detector: did the last window drift (after "
                   "multiple-testing correction)?",
                   "datasource": DATASOURCE,
                   "targets": [target(f"max by (model, detector) (driftline_drift_detected"
                                      f"{{{MD}}})", "{{model}} / {{detector}}")],
                   "fieldConfig": {"defaults": {
                       "color": {"mode": "thresholds"},
                       "thresholds": thresholds(("green", None), ("red", 1)),
                       "mappings": value_mappings({"0": ("no drift", "green"),
                                                   "1": ("DRIFT", "red")}),
                       "custom": {"fillOpacity": 80, "lineWidth": 0}},
                       "overrides": []},
                   "options": {"mergeValues": True, "showValue": "auto", "alignValue": "left",
                               "rowHeight": 0.8,
                               "legend": {"displayMode": "list", "placement": "bottom",
                                          "showLegend": False},
                               "tooltip": {"mode": "single", "sort": "none"}}}
    g.add(drift_state, 24, 8)
    p_steps = thresholds(("red", None), ("green", 0.05))
    g.add(timeseries("Drift p-value", "Each detector's smallest corrected p-value for the last "
                     "window (log scale; the dashed line is 0.05). A p-value of exactly 0 "
                     "cannot be drawn on a log axis: see Drift detected.",
                     [target(f"min by (model, detector) (driftline_drift_p_value{{{MD}}})",
                             "{{model}} / {{detector}}")],
                     minimum=None, log=True, steps=p_steps, threshold_line=True), 12, 8)
    g.add(timeseries("Drift statistic", "Each detector's overall test statistic for the last "
                     "window.",
                     [target(f"max by (model, detector) (driftline_drift_statistic{{{MD}}})",
                             "{{model}} / {{detector}}")], minimum=None), 12, 8)
    features = {
        "type": "table", "title": "Per-feature drift (last window)",
        "description": "Per-feature verdicts of each model's last window, drifted first: "
                       "DRIFT when the feature's p-value after the detector's correction is "
                       "below the model's alpha (or its distance is above the threshold), "
                       "so the colour follows each model's own alpha and correction. Raw and "
                       "corrected p-values and statistics alongside.",
        "datasource": DATASOURCE,
        "targets": [
            target(f"max by (model, detector, feature) "
                   f"(driftline_feature_drift_detected{{{MD}}})", instant=True, table=True),
            target(f"min by (model, detector, feature) (driftline_feature_drift_p_value{{{MD}}})",
                   instant=True, table=True),
            target(f"min by (model, detector, feature) "
                   f"(driftline_feature_drift_adjusted_p_value{{{MD}}})", instant=True,
                   table=True),
            target(f"max by (model, detector, feature) "
                   f"(driftline_feature_drift_statistic{{{MD}}})", instant=True, table=True),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True},
                "indexByName": {"model": 0, "detector": 1, "feature": 2, "Value #A": 3,
                                "Value #B": 4, "Value #C": 5, "Value #D": 6},
                "renameByName": {"Value #A": "verdict", "Value #B": "raw p-value",
                                 "Value #C": "corrected p-value",
                                 "Value #D": "statistic"}}},
        ],
        "fieldConfig": {
            "defaults": {"color": {"mode": "thresholds"}, "thresholds": OK_ONLY,
                         "custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
            "overrides": [
                {"matcher": {"id": "byName", "options": "verdict"}, "properties": [
                    {"id": "mappings", "value": value_mappings({"0": ("ok", "green"),
                                                                "1": ("DRIFT", "red")})},
                    {"id": "thresholds", "value": thresholds(("green", None), ("red", 1))},
                    {"id": "custom.cellOptions",
                     "value": {"type": "color-background", "mode": "basic"}}]},
                {"matcher": {"id": "byName", "options": "raw p-value"}, "properties": [
                    {"id": "decimals", "value": 4}]},
                {"matcher": {"id": "byName", "options": "corrected p-value"}, "properties": [
                    {"id": "decimals", "value": 4}]},
                {"matcher": {"id": "byName", "options": "statistic"}, "properties": [
                    {"id": "decimals", "value": 3}]},
            ]},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "sortBy": [{"displayName": "verdict", "desc": True}],
                    "footer": {"show": False, "reducer": ["sum"], "countRows": False,
                               "fields": ""}},
    }
    g.add(features, 16, 10)
    drifted = {
        "type": "bargauge", "title": "Drifted windows",
        "description": "Windows flagged as drifting in the dashboard's time range.",
        "datasource": DATASOURCE,
        "targets": [target(f"sum by (model, detector) (increase(driftline_drift_windows_total"
                           f"{{{MD}}}[$__range]))", "{{model}} / {{detector}}",
                           instant=True)],
        "fieldConfig": {"defaults": {"unit": "short", "decimals": 0, "min": 0,
                                     "color": {"mode": "thresholds"},
                                     "thresholds": thresholds(("green", None), ("orange", 1))},
                        "overrides": []},
        "options": {"displayMode": "gradient", "orientation": "horizontal",
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True, "valueMode": "color", "namePlacement": "auto",
                    "sizing": "auto", "minVizHeight": 16, "minVizWidth": 8,
                    "maxVizHeight": 300},
    }
    g.add(drifted, 8, 10)
    g.add(timeseries("Label-shift weights", "Black Box Shift Estimation per class (models with "
                     "prediction_drift.label_shift): the estimated q(y) / p(y) of each class in "
                     "the last window. 1 is the reference's share; the dashed line marks it.",
                     [target(f'max by (model, feature) (driftline_feature_drift_statistic'
                             f'{{{M}, detector="label_shift"}})', "{{model}} / {{feature}}")],
                     steps=thresholds(("green", None), ("orange", 1)), threshold_line=True),
          12, 8)
    links = {
        "type": "table", "title": "Last window and alert links",
        "description": "Each model's last evaluated window, and the dashboard and runbook "
                       "URLs its alerts link to (settings alerts.dashboard_url, "
                       "alerts.runbook_url). `driftline report` draws any window.",
        "datasource": DATASOURCE,
        "targets": [
            target(f"max by (model) (driftline_window_index{{{M}}})", instant=True, table=True),
            target(f"max by (model, dashboard_url, runbook_url) "
                   f"(driftline_alert_links_info{{{M}}})", instant=True, table=True),
        ],
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value #B": True},
                "indexByName": {"model": 0, "Value #A": 1, "dashboard_url": 2,
                                "runbook_url": 3},
                "renameByName": {"Value #A": "last window", "dashboard_url": "dashboard",
                                 "runbook_url": "runbook"}}},
        ],
        "fieldConfig": {
            "defaults": {"color": {"mode": "thresholds"}, "thresholds": OK_ONLY,
                         "custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
            "overrides": [
                {"matcher": {"id": "byName", "options": "last window"}, "properties": [
                    {"id": "decimals", "value": 0}]},
            ]},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "countRows": False,
                               "fields": ""}},
    }
    g.add(links, 12, 8)

    g.row("Pipeline health")
    g.add(timeseries("Window end lag", "Wall-clock now minus the event-time end of each "
                     "model's last evaluated window: grows while no window closes, or while "
                     "a backlog of old records is replayed.",
                     [target(f"time() - max by (model) "
                             f"(driftline_window_end_timestamp_seconds{{{M}}})", "{{model}}")],
                     unit="s"), 12, 8)
    g.add(timeseries("Time since last commit", "Seconds since each daemon last committed Kafka "
                     "offsets (no line before its first commit). Offsets advance as windows "
                     "are stored, so a sawtooth of about one window length is normal.",
                     [target("time() - (max by (instance) "
                             "(driftline_last_commit_timestamp_seconds) > 0)", "{{instance}}")],
                     unit="s"), 12, 8)
    stage_q = ("histogram_quantile({q}, sum by (le, stage) "
               f"(rate(driftline_stage_duration_seconds_bucket{RATE})))")
    g.add(timeseries("Stage latency p50 / p95", "Time per pipeline stage, per batch or window, "
                     "from the driftline_stage_duration_seconds histogram.",
                     [target(stage_q.format(q=0.5), "p50 {{stage}}"),
                      target(stage_q.format(q=0.95), "p95 {{stage}}")], unit="s"), 12, 8)
    g.add(timeseries("Sink errors / s", "Failed sink flushes. Offsets are not committed while a "
                     "sink fails. Per-sink series appear with a sink's first error.",
                     [target(f"sum(rate(driftline_sink_errors_total{RATE})) or vector(0)",
                             "all sinks"),
                      target(f"sum by (sink) (rate(driftline_sink_errors_total{RATE}))",
                             "{{sink}}")]), 12, 8)

    g.row("Kafka and delayed labels")
    g.add(stat("Kafka reachable", "Whether each daemon can reach its Kafka brokers "
               "(driftline_source_connected). During an outage /metrics stays up, nothing is "
               "committed, and the consumer reconnects with back-off.",
               [target("min by (instance) (driftline_source_connected)", "{{instance}}")],
               steps=thresholds(("red", None), ("green", 1)),
               mappings=value_mappings({"0": ("DOWN", "red"), "1": ("UP", "green")})), 6, 8)
    g.add(timeseries("Consumer lag", "Records between each partition's end and the daemon's "
                     "position.",
                     [target("sum by (topic, partition) (driftline_consumer_lag_records)",
                             "{{topic}}/{{partition}}")]), 18, 8)
    g.add(timeseries("Rebalances and commit errors", "Partition revocations (scale-out, a "
                     "member leaving) and failed offset commits (retried with the next batch).",
                     [target(f"sum(increase(driftline_rebalances_total{RATE}))", "rebalances"),
                      target(f"sum(increase(driftline_commit_errors_total{RATE}))",
                             "commit errors")]), 12, 8)
    g.add(timeseries("Delayed labels / s by outcome", "Label records joined to a stored "
                     "prediction, late (beyond the horizon), orphan (no prediction within the "
                     "horizon), invalid, or replayed. Labels waiting for their prediction on "
                     "the right axis.",
                     [target(f"sum by (outcome) (rate(driftline_labels_total{RATE}))",
                             "{{outcome}}"),
                      target("sum(driftline_labels_waiting)", "waiting")]), 12, 8)

    g.row("Embeddings")
    g.add(timeseries("Inputs embedded / s", "Inputs of each model run through the deployed "
                     "model to test drift in its feature space.",
                     [target(f"sum by (model) (rate(driftline_embedded_records_total{{{M}}}"
                             f"{RATE}))", "{{model}}")]), 12, 8)
    def emb_q(q: float) -> str:
        return (f"histogram_quantile({q}, sum by (le, model) "
                f"(rate(driftline_embedding_duration_seconds_bucket{{{M}}}{RATE})))")

    g.add(timeseries("Embedding time per window p50 / p95", "Time to embed one window's "
                     "inputs (batched, on the configured device).",
                     [target(emb_q(0.5), "p50 {{model}}"),
                      target(emb_q(0.95), "p95 {{model}}")], unit="s"), 12, 8)

    g.row("Retraining")
    g.add(stat("Requests in flight", "Retraining requests of each model waiting for approval, "
               "queued, dispatched or running (at most one per model).",
               [target(f"sum by (model) (driftline_retrain_in_flight{{{M}}})", "{{model}}"),
                target(f"sum by (model) (driftline_retrain_pending_approval{{{M}}})",
                       "{{model}} awaiting approval")],
               steps=thresholds(("green", None), ("orange", 1))), 6, 8)
    g.add(timeseries("Retraining requests by outcome", "Requests as they move: queued (or "
                     "pending_approval with approval: manual), dispatched to the backend, "
                     "failed after every attempt; collected: an incident of covariate drift "
                     "recorded without training.",
                     [target(f"sum by (model, outcome) (increase("
                             f"driftline_retrain_requests_total{{{M}}}{RATE}))",
                             "{{model}} {{outcome}}")]), 10, 8)
    g.add(timeseries("Dispatch errors", "Failed attempts to hand a request to its backend "
                     "(retried with back-off; the request fails after max_attempts).",
                     [target(f"sum by (model, backend) (increase("
                             f"driftline_retrain_dispatch_errors_total{{{M}}}{RATE}))",
                             "{{model}} {{backend}}")]), 8, 8)
    g.add(timeseries("Time to request / to dispatch (p95)", "Event time from an incident's "
                     "first drifted window to its request, and wall-clock time from queued "
                     "to accepted by the backend.",
                     [target("histogram_quantile(0.95, sum by (le, model) (rate("
                             f"driftline_retrain_decision_delay_seconds_bucket{{{M}}}[1d])))",
                             "to request {{model}}"),
                      target("histogram_quantile(0.95, sum by (le, model) (rate("
                             f"driftline_retrain_dispatch_delay_seconds_bucket{{{M}}}[1d])))",
                             "to dispatch {{model}}")], unit="s"), 24, 8)
    g.add(stat("Champion version", "The model version each model's windows are evaluated "
               "against: the registry's champion once the builtin job registered one (it "
               "changes when a challenger is promoted or rolled back), else the settings' "
               "version.",
               [target(f"max by (model, version) (driftline_model_version_info{{{M}}})",
                       "{{model}} {{version}}")], text_mode="name"), 8, 8)
    g.add(timeseries("Champion switches", "The daemon switched a model's reference, embedding "
                     "weights and detectors to a new version (promote, rollback) or adopted the "
                     "registered deployed model (baseline).",
                     [target(f"sum by (model, event) (increase("
                             f"driftline_model_switches_total{{{M}}}{RATE}))",
                             "{{model}} {{event}}")]), 16, 8)
    return g.panels


def _templating() -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE,
                "definition": query, "query": {"query": query, "refId": f"{name}-query"},
                "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
                "allValue": TEMPLATE_VALUE, "current": {}, "options": [], "regex": "",
                "hide": 0}

    return {"list": [
        {"type": "datasource", "name": "datasource", "label": "Datasource", "query": "prometheus",
         "current": {}, "options": [], "refresh": 1, "regex": "", "hide": 0},
        query_var("model", "Model", "label_values(driftline_records_consumed_total, model)"),
        query_var("detector", "Detector",
                  'label_values(driftline_drift_detected{model=~"$model"}, detector)'),
    ]}


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "driftline overview",
        "description": "Throughput, drift verdicts and pipeline health of the driftline "
                       "drift-detection daemon. Generated by dashboards/build.py.",
        "tags": ["driftline", "drift", "ml-monitoring"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "timepicker": {},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}, {
            "datasource": DATASOURCE, "enable": True, "hide": False,
            "iconColor": "rgba(255, 152, 48, 1)", "name": "Retraining requests",
            "expr": f"sum by (model, outcome) (changes("
                    f"driftline_retrain_requests_total{{{M}}}[2m])) > 0",
            "step": "1m", "titleFormat": "retraining {{outcome}}",
            "textFormat": "model {{model}}: a request became {{outcome}}",
            "useValueForTime": False}, {
            "datasource": DATASOURCE, "enable": True, "hide": False,
            "iconColor": "rgba(115, 191, 105, 1)", "name": "Model promotions and rollbacks",
            "expr": f"(sum by (model, event) (changes("
                    f"driftline_model_switches_total{{{M}}}[2m])) > 0) "
                    f"* on (model) group_left (version) "
                    f"max by (model, version) (driftline_model_version_info{{{M}}})",
            "step": "1m", "titleFormat": "champion {{event}}",
            "textFormat": "model {{model}} now evaluated against version {{version}}",
            "useValueForTime": False}]},
        "templating": _templating(),
        "panels": _panels(),
    }


def render() -> str:
    """The dashboard JSON exactly as committed."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


# --- queries, for tests ----------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$", re.DOTALL)


def substitute(expr: str) -> str:
    """Replace Grafana variables with values Prometheus accepts."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return QUERY_SUBSTITUTIONS.get(name, TEMPLATE_VALUE)
    return _VAR.sub(repl, expr)


def rule_expressions(text: str | None = None) -> list[tuple[str, str]]:
    """``(alert or record name, expr)`` for each rule in the rules file.

    A small reader for the block style that file uses (stdlib has no YAML parser): a rule
    starts with ``- alert:`` or ``- record:``, and its ``expr`` is a plain or quoted scalar
    or a ``|``/``>`` block scalar. The tests check the result against PyYAML.
    """
    lines = (RULES_PATH.read_text(encoding="utf-8") if text is None else text).splitlines()
    out: list[tuple[str, str]] = []
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if m := re.match(r"^\s*-\s+(?:alert|record):\s*(\S.*?)\s*$", line):
            name = m.group(1).strip("'\"")
            continue
        m = re.match(r"^(\s*)expr:\s*(.*?)\s*$", line)
        if not m:
            continue
        if name is None:
            raise ValueError(f"{RULES_PATH.name}:{i}: expr before any alert/record name")
        indent, value = len(m.group(1)), m.group(2)
        if value[:1] in "|>":
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            body = list(block)
            while body and not body[-1].strip():
                body.pop()
            margin = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            body = [b[margin:] for b in body]
            expr = "\n".join(body) if value[0] == "|" else " ".join(b.strip() for b in body)
        elif value[:1] == "'":
            expr = value[1:-1].replace("''", "'")
        elif value[:1] == '"':
            expr = json.loads(value)
        else:
            expr = re.split(r"\s+#", value, maxsplit=1)[0]
        out.append((name, expr.strip()))
        name = None
    return out


def all_queries() -> list[tuple[str, str]]:
    """``(where, promql)`` for every dashboard target, variable query, annotation query and
    alert rule."""
    out: list[tuple[str, str]] = []
    board = dashboard()
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = _LABEL_VALUES.match(var["query"]["query"])
            if m is None:
                raise ValueError(f"variable {var['name']}: expected label_values(selector, label)")
            out.append((f"variable ${var['name']}", substitute(m["selector"])))
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            where = f"panel {panel['id']} '{panel['title']}' target {t['refId']}"
            out.append((where, substitute(t["expr"])))
    for ann in board["annotations"]["list"]:
        if "expr" in ann:  # events only: empty while nothing happens, but it must parse
            out.append((f"annotation '{ann['name']}'", substitute(ann["expr"])))
    for name, expr in rule_expressions():
        out.append((f"rule {name}", expr))
    return out


def main() -> int:
    DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {DASHBOARD_PATH.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
