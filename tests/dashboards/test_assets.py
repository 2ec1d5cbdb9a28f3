"""Checks of the deployment and monitoring assets.

docker-compose.yml and the Dockerfile, the Prometheus config and alert rules (with their
promtool unit tests), the Alertmanager config, Grafana provisioning, and the dashboard that
``dashboards/build.py`` generates. The PromQL of every panel and rule is sent to a real
Prometheus (started here on a loopback port, with no targets) to prove that it parses.

Needs ``prometheus``, ``promtool``, ``amtool`` and ``check-jsonschema`` on PATH:
scripts/install-test-deps.sh installs them. Nothing here needs the network.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_CONFIG = DASHBOARDS / "prometheus" / "prometheus.yml"
RULES = DASHBOARDS / "prometheus" / "rules" / "driftline.rules.yml"
RULES_TESTS = DASHBOARDS / "prometheus" / "rules" / "driftline.rules.test.yml"
ALERTMANAGER_CONFIG = DASHBOARDS / "alertmanager" / "alertmanager.yml"
GRAFANA = DASHBOARDS / "grafana"
DASHBOARD_JSON = GRAFANA / "dashboards" / "driftline-overview.json"
METRICS_PY = ROOT / "monitor" / "metrics.py"

ALERTS = {"DriftlineDown", "DriftlineDriftDetected", "DriftlineHighRejectRate",
          "DriftlineStalled", "DriftlineNotCommitting", "DriftlineSinkErrors",
          "DriftlineRetrainFailed", "DriftlineRetrainAwaitingApproval",
          "DriftlineEventTimeBehind", "DriftlineKafkaUnreachable", "DriftlineDatabaseFailing"}
SERVICES = {"kafka", "postgres", "driftline", "prometheus", "alertmanager", "grafana"}
VOLUMES = {"kafka-data", "postgres-data", "prometheus-data", "alertmanager-data",
           "grafana-data"}


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("driftline_dashboards_build",
                                                  DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"'{name}' is not on PATH: install the test dependencies with "
                    "scripts/install-test-deps.sh", pytrace=False)
    return path


def run_ok(*cmd: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run([tool(cmd[0]), *cmd[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- docker-compose.yml and Dockerfile -------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def test_compose_validates_against_compose_spec() -> None:
    # The schema ships inside check-jsonschema ("vendor.compose-spec"): no download.
    run_ok("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE))


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert set(compose["volumes"]) == VOLUMES
    for name, svc in services.items():
        if "image" in svc and "build" not in svc:
            image = svc["image"]
            assert re.search(r":[\w][\w.-]*$", image) and not image.endswith(":latest"), (
                f"service {name}: pin the image tag ({image})")
    for name in ("kafka", "postgres"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert services["grafana"]["image"].startswith("grafana/grafana-oss:")
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_compose_driftline_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["driftline"]
    build_ctx = svc["build"]
    context = build_ctx if isinstance(build_ctx, str) else build_ctx["context"]
    dockerfile = "Dockerfile" if isinstance(build_ctx, str) else build_ctx.get(
        "dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
    # The image's entrypoint is `driftline`, so this runs `driftline run --config ...`.
    assert svc["command"] == ["run", "--config", "/etc/driftline/driftline.yml"]
    env = svc["environment"]
    assert env["DRIFTLINE__STORAGE__URL"] == (
        "postgresql+psycopg://driftline:${POSTGRES_PASSWORD:-driftline}@postgres:5432/driftline")
    assert env["DRIFTLINE__SOURCE__KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "./examples:/etc/driftline:ro" in svc["volumes"]
    assert [str(p) for p in svc["expose"]] == ["9108"]
    assert svc["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                 "postgres": {"condition": "service_healthy"}}


def _bind_mounts(compose: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            if isinstance(vol, str):
                source, target = vol.split(":")[:2]
                if source.startswith((".", "/", "~")):
                    yield name, source, target
            elif vol.get("type") == "bind":
                yield name, vol["source"], vol["target"]


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    mounts = list(_bind_mounts(compose))
    assert mounts
    for service, source, _target in mounts:
        assert not source.startswith(("/", "~")), f"{service}: bind mount outside the repo"
        assert (ROOT / source).exists(), f"{service}: bind-mounted {source} is missing"
    # The daemon's --config file comes from the ./examples mount.
    assert (ROOT / "examples" / "driftline.yml").is_file()


def test_compose_mounts_match_configs(compose: dict[str, Any]) -> None:
    targets = {source: target for _service, source, target in _bind_mounts(compose)}
    assert targets["./dashboards/prometheus"] == "/etc/prometheus"
    assert targets["./dashboards/alertmanager"] == "/etc/alertmanager"
    assert targets["./dashboards/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "driftline.yml")
    [dashboards] = provider["providers"]
    assert dashboards["type"] == "file"
    assert targets["./dashboards/grafana/dashboards"] == dashboards["options"]["path"]


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"""^RUN pip install "?\.\[postgres,parquet\]"?""", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}, "the image must run as a non-root user"
    assert re.search(r'^ENTRYPOINT \["driftline"\]\s*$', text, re.M)
    assert re.search(r"^EXPOSE 9108\s*$", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for needed in ("pyproject.toml", "monitor", "detectors", "embeddings", "README.md"):
        assert needed not in ignored


# --- Prometheus, rules, Alertmanager -----------------------------------------------------------

def test_promtool_check_config() -> None:
    # Also checks the rule files, which it resolves relative to the config file.
    out = run_ok("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in out


def test_prometheus_config_targets(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"driftline", "prometheus"} <= set(jobs)
    assert jobs["driftline"]["static_configs"][0]["targets"] == ["driftline:9108"]
    [am] = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["rule_files"] == ["rules/driftline.rules.yml"]
    assert {"driftline", "alertmanager"} <= set(compose["services"])


def test_promtool_check_rules() -> None:
    run_ok("promtool", "check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    run_ok("promtool", "test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)


def test_rules_are_complete() -> None:
    rules = [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert "for" in rule, rule["alert"]
    tested = {t["alertname"] for test in load_yaml(RULES_TESTS)["tests"]
              for t in test["alert_rule_test"]}
    assert tested == ALERTS


def test_rule_reader_matches_yaml() -> None:
    # build.py reads the rules without a YAML library; it must agree with PyYAML.
    rules = [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]
    expected = [(r.get("alert") or r["record"], r["expr"].strip()) for r in rules]
    assert build.rule_expressions() == expected


def test_amtool_check_config() -> None:
    run_ok("amtool", "check-config", str(ALERTMANAGER_CONFIG))


@pytest.mark.parametrize("severity", ["critical", "warning"])
def test_alertmanager_routes_by_severity(severity: str) -> None:
    out = run_ok("amtool", "config", "routes", "test",
                 f"--config.file={ALERTMANAGER_CONFIG}", f"severity={severity}",
                 "alertname=DriftlineDriftDetected")
    assert out.split()[0] == f"driftline-{severity}"


def test_alertmanager_inhibits_on_down() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    [rule] = config["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname="DriftlineDown"']
    assert set(rule["equal"]) == {"job", "instance"}


# --- Grafana -----------------------------------------------------------------------------------

def test_grafana_datasource_provisioning() -> None:
    config = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    [prom] = [d for d in config["datasources"] if d["type"] == "prometheus"]
    assert prom["uid"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"
    assert prom["isDefault"] is True


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))


def test_dashboard_is_generated_by_build_py() -> None:
    assert DASHBOARD_JSON.read_text(encoding="utf-8") == build.render(), (
        "dashboards/grafana/dashboards/driftline-overview.json is stale: "
        "run `python dashboards/build.py`")


def test_dashboard_identity_and_variables(board: dict[str, Any]) -> None:
    assert board["uid"] == "driftline-overview"
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"]["query"] == (
        "label_values(driftline_records_consumed_total, model)")


def test_dashboard_panels_ids_and_grid(board: dict[str, Any]) -> None:
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        boxes.append((p["title"], g))
    for (t1, a), (t2, b) in itertools.combinations(boxes, 2):
        overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                   and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
        assert not overlap, f"panels '{t1}' and '{t2}' overlap"


def test_dashboard_targets_have_datasources(board: dict[str, Any]) -> None:
    allowed = {"${datasource}", "prometheus"}
    for p in board["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"], f"{p['title']} has no queries"
        assert p["datasource"]["uid"] in allowed, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["type"] == "prometheus", p["title"]
            assert t["datasource"]["uid"] in allowed, p["title"]
            assert t["expr"].strip() and t["refId"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


# --- metric names --------------------------------------------------------------------------

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _defined_metrics() -> tuple[set[str], set[str]]:
    """(all metric names, histogram names) declared in monitor/metrics.py, read as text."""
    text = METRICS_PY.read_text(encoding="utf-8")
    # GaugeMetricFamily: the per-window gauges, built by a collector at scrape time
    found = re.findall(r'\b(Counter|Gauge|GaugeMetricFamily|Histogram|Summary)\(\s*'
                       r'"(driftline_[a-z_]+)"', text)
    assert found, "no metric definitions found in monitor/metrics.py"
    return {name for _, name in found}, {name for kind, name in found if kind == "Histogram"}


def _referenced(text: str) -> set[str]:
    names, histograms = _defined_metrics()
    out = set()
    for token in re.findall(r"driftline_[a-z_]+", text):
        if token not in names:
            for suffix in _HISTOGRAM_SUFFIXES:
                if token.endswith(suffix) and token.removesuffix(suffix) in histograms:
                    token = token.removesuffix(suffix)
        out.add(token)
    return out


@pytest.mark.parametrize("path", [DASHBOARD_JSON, RULES], ids=lambda p: p.name)
def test_referenced_metrics_are_exported(path: Path) -> None:
    names, _ = _defined_metrics()
    referenced = _referenced(path.read_text(encoding="utf-8"))
    assert referenced
    unknown = sorted(referenced - names)
    assert not unknown, f"{path.name} uses metrics monitor/metrics.py does not define: {unknown}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    names, _ = _defined_metrics()
    missing = sorted(names - _referenced(DASHBOARD_JSON.read_text(encoding="utf-8")))
    assert not missing, f"metrics with no dashboard panel: {missing}"


# --- every query parses on a real Prometheus ---------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text("scrape_configs: []\n", encoding="utf-8")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"prometheus exited {proc.returncode}:\n"
                                f"{log_path.read_text(errors='replace')[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("prometheus not ready after 60s:\n"
                                f"{log_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _query(base: str, promql: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution: JSON bodies too
        with exc:
            return json.load(exc)


QUERIES = build.all_queries()


def test_all_queries_cover_dashboard_and_rules(board: dict[str, Any]) -> None:
    wheres = [w for w, _ in QUERIES]
    assert len(wheres) == len(set(wheres))
    targets = sum(len(p.get("targets", [])) for p in board["panels"])
    assert sum(w.startswith("panel ") for w in wheres) == targets
    assert {w.removeprefix("rule ") for w in wheres if w.startswith("rule ")} == ALERTS
    for _, promql in QUERIES:
        assert "$" not in promql, f"unsubstituted variable in {promql}"


@pytest.mark.parametrize(("where", "promql"), QUERIES, ids=[w for w, _ in QUERIES])
def test_query_parses(prometheus_url: str, where: str, promql: str) -> None:
    body = _query(prometheus_url, promql)
    assert body.get("status") == "success", (
        f"{where}: {body.get('errorType')}: {body.get('error')}\n{promql}")
