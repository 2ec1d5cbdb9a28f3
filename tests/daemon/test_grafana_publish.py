"""``driftline dashboards publish`` against a local HTTP server that checks every request
against Grafana's documented HTTP API (no Grafana server can be installed here):
https://grafana.com/docs/grafana/latest/developers/http_api/ (dashboard, data source,
health). It answers the way Grafana does, and records every request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
TOKEN = "glsa_test_token_123"


class FakeGrafana:
    """Grafana's dashboard, data-source and health endpoints, strictly."""

    def __init__(self, version: str = "11.2.0") -> None:
        self.version = version
        self.requests: list[tuple[str, str]] = []
        self.violations: list[str] = []
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.forbid_datasource_writes = False

    def handle(self, method: str, path: str, headers: Any, body: bytes
               ) -> tuple[int, dict[str, Any]]:
        self.requests.append((method, path))
        if path == "/api/health" and method == "GET":
            return 200, {"commit": "abc123", "database": "ok", "version": self.version}
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "invalid API key"}
        doc: Any = None
        if method in ("POST", "PUT"):
            if not headers.get("Content-Type", "").startswith("application/json"):
                self.violations.append(f"{method} {path}: Content-Type not JSON")
            try:
                doc = json.loads(body)
            except ValueError:
                self.violations.append(f"{method} {path}: body not JSON")
                return 400, {"message": "bad request data"}
        parts = path.split("/")
        if path.startswith("/api/datasources/uid/") and len(parts) == 5:
            uid = parts[4]
            if method == "GET":
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                return 200, self.datasources[uid]
            if method == "PUT":
                if self.forbid_datasource_writes:
                    return 403, {"message": "Permissions needed: datasources:write"}
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                missing = {"name", "type", "access"} - set(doc)
                if missing:
                    self.violations.append(f"PUT datasource without {sorted(missing)}")
                    return 400, {"message": "bad request data"}
                self.datasources[uid] = {**self.datasources[uid], **doc, "version":
                                         self.datasources[uid]["version"] + 1}
                return 200, {"datasource": self.datasources[uid],
                             "id": self.datasources[uid]["id"],
                             "message": "Datasource updated", "name": doc["name"]}
        if path == "/api/datasources" and method == "POST":
            if self.forbid_datasource_writes:
                return 403, {"message": "Permissions needed: datasources:create"}
            missing = {"name", "type", "access"} - set(doc)
            if missing:
                self.violations.append(f"POST datasource without {sorted(missing)}")
                return 400, {"message": "bad request data"}
            if any(d["name"] == doc["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            uid = doc.get("uid") or "generated"
            self.datasources[uid] = {"id": len(self.datasources) + 1, "orgId": 1,
                                     "basicAuth": False, "readOnly": False, "version": 1,
                                     "jsonData": {}, "isDefault": False, **doc, "uid": uid}
            return 200, {"datasource": self.datasources[uid], "id": self.datasources[uid]["id"],
                         "message": "Datasource added", "name": doc["name"]}
        if path.startswith("/api/dashboards/uid/") and len(parts) == 5 and method == "GET":
            uid = parts[4]
            if uid not in self.dashboards:
                return 404, {"message": "Dashboard not found"}
            return 200, self.dashboards[uid]
        if path == "/api/dashboards/db" and method == "POST":
            board = doc.get("dashboard")
            if not isinstance(board, dict) or not board.get("title") or not board.get("uid"):
                self.violations.append("POST /api/dashboards/db without dashboard.title/uid")
                return 400, {"message": "Dashboard title cannot be empty"}
            if set(doc) - {"dashboard", "folderId", "folderUid", "message", "overwrite"}:
                self.violations.append(f"POST /api/dashboards/db with keys {sorted(doc)}")
            uid = board["uid"]
            old = self.dashboards.get(uid)
            if old is not None and not doc.get("overwrite"):
                return 412, {"message": "A dashboard with the same uid already exists",
                             "status": "name-exists"}
            version = (old["dashboard"]["version"] + 1) if old else 1
            ident = old["dashboard"]["id"] if old else len(self.dashboards) + 1
            self.dashboards[uid] = {
                "dashboard": {**board, "id": ident, "version": version},
                "meta": {"slug": "driftline-overview", "url": f"/d/{uid}/driftline-overview",
                         "folderUid": doc.get("folderUid", "")}}
            return 200, {"id": ident, "uid": uid, "url": f"/d/{uid}/driftline-overview",
                         "status": "success", "version": version, "slug": "driftline-overview"}
        self.violations.append(f"undocumented request {method} {path}")
        return 404, {"message": "Not found"}


@pytest.fixture()
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, doc = fake.handle(self.command, self.path, self.headers, body)
            out = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "grafana.token"
    path.write_text(TOKEN + "\n")
    return path


def _publish(url: str, token_file: Path, *extra: str) -> int:
    return main(["dashboards", "publish", "--url", url, "--token-file", str(token_file),
                 "--dir", str(GRAFANA_DIR), *extra])


def test_publish_creates_then_is_idempotent(grafana: tuple[FakeGrafana, str], token_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    assert _publish(url, token_file, "--prometheus-url", "http://prom:9090") == 0
    out = capsys.readouterr().out
    assert "Grafana 11.2.0" in out and "data source prometheus: created" in out
    assert "dashboard driftline-overview: created (/d/driftline-overview/" in out
    assert fake.datasources["prometheus"]["url"] == "http://prom:9090"
    assert fake.datasources["prometheus"]["type"] == "prometheus"
    board = json.loads((GRAFANA_DIR / "dashboards" / "driftline-overview.json").read_text())
    stored = fake.dashboards["driftline-overview"]["dashboard"]
    assert {k: v for k, v in stored.items() if k not in ("id", "version")} == \
        {k: v for k, v in board.items() if k not in ("id", "version")}

    fake.requests.clear()
    assert _publish(url, token_file, "--prometheus-url", "http://prom:9090") == 0
    out = capsys.readouterr().out
    assert "data source prometheus: unchanged" in out
    assert "dashboard driftline-overview: unchanged" in out
    assert all(method == "GET" for method, _path in fake.requests), fake.requests
    assert fake.dashboards["driftline-overview"]["dashboard"]["version"] == 1

    # A changed data source is updated in place (PUT by uid), not duplicated.
    assert _publish(url, token_file, "--prometheus-url", "http://other:9090") == 0
    assert "data source prometheus: updated" in capsys.readouterr().out
    assert ("PUT", "/api/datasources/uid/prometheus") in fake.requests
    assert len(fake.datasources) == 1
    assert fake.violations == []


def test_a_changed_dashboard_is_overwritten(grafana: tuple[FakeGrafana, str], token_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    assert _publish(url, token_file) == 0
    fake.dashboards["driftline-overview"]["dashboard"]["title"] = "edited by hand"
    assert _publish(url, token_file, "--folder-uid", "ml") == 0
    assert "dashboard driftline-overview: updated" in capsys.readouterr().out
    saved = fake.dashboards["driftline-overview"]
    assert saved["dashboard"]["title"] == "driftline overview"
    assert saved["dashboard"]["version"] == 2 and saved["meta"]["folderUid"] == "ml"
    assert fake.violations == []


def test_a_bad_token_is_a_clear_error(grafana: tuple[FakeGrafana, str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    bad = tmp_path / "bad.token"
    bad.write_text("nope")
    assert _publish(url, bad) == 2
    err = capsys.readouterr().err
    assert f"Grafana at {url} rejected the token (HTTP 401)" in err and "--token-file" in err
    assert "Traceback" not in err and fake.dashboards == {}


def test_missing_permissions_say_which_role(grafana: tuple[FakeGrafana, str], token_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    fake.forbid_datasource_writes = True
    assert _publish(url, token_file) == 2
    assert "(HTTP 403)" in capsys.readouterr().err


def test_an_old_grafana_is_refused_before_any_change(grafana: tuple[FakeGrafana, str],
                                                    token_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = grafana
    fake.version = "9.5.2"
    assert _publish(url, token_file) == 2
    assert "is version 9.5.2; the driftline dashboards (schemaVersion 39) need Grafana 10.3" \
        in capsys.readouterr().err
    assert fake.requests == [("GET", "/api/health")]


def test_unreachable_grafana_and_missing_token_file(tmp_path: Path, token_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _publish(f"http://127.0.0.1:{port}", token_file, "--timeout", "2") == 2
    assert f"cannot reach Grafana at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert _publish("http://127.0.0.1:1", tmp_path / "none.token") == 2
    assert "none.token: No such file or directory" in capsys.readouterr().err
