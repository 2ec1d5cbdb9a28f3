"""``driftline dashboards publish``: the generated dashboards and the Prometheus data source,
uploaded through Grafana's HTTP API with ``grafana-client`` (extra ``grafana``).

Idempotent: a dashboard or data source that already matches is left alone (no new
dashboard version); one that differs is overwritten; a missing one is created. Uses
Grafana's documented endpoints: ``GET /api/health`` (version), ``GET/POST/PUT
/api/datasources[/uid/:uid]`` and ``GET /api/dashboards/uid/:uid``, ``POST
/api/dashboards/db``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.errors import ConfigError

#: The dashboards use schemaVersion 39 (Grafana 10.3); older Grafana cannot load them.
MIN_GRAFANA = (10, 3)
#: Keys of a data source that publishing sets (the rest are Grafana's own).
DATASOURCE_KEYS = ("uid", "name", "type", "access", "url", "isDefault", "jsonData")


@dataclass
class PublishResult:
    grafana_version: str = ""
    actions: list[str] = field(default_factory=list)


def _version(text: str) -> tuple[int, int]:
    parts = [*text.split("-", 1)[0].split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


def load_assets(grafana_dir: Path, prometheus_url: str | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The dashboards (``dashboards/*.json``) and the Prometheus data source (from
    ``provisioning/datasources/*.yml``) under ``grafana_dir``."""
    boards_dir = grafana_dir / "dashboards"
    paths = sorted(boards_dir.glob("*.json")) if boards_dir.is_dir() else []
    if not paths:
        raise ConfigError(f"{boards_dir}: no dashboard JSON files (run from a driftline "
                          "checkout, or pass --dir DIR/dashboards/grafana)")
    boards = []
    for path in paths:
        try:
            boards.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    source: dict[str, Any] | None = None
    for path in sorted((grafana_dir / "provisioning" / "datasources").glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for ds in doc.get("datasources", []):
            if ds.get("type") == "prometheus":
                source = {k: ds[k] for k in DATASOURCE_KEYS if k in ds}
                break
    if source is None:
        raise ConfigError(f"{grafana_dir}/provisioning/datasources: no Prometheus data source")
    if prometheus_url:
        source["url"] = prometheus_url
    return boards, source


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(current.get(k) == v for k, v in wanted.items())


def _board_body(board: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in board.items() if k not in ("id", "version")}


def publish(url: str, token: str, boards: list[dict[str, Any]], datasource: dict[str, Any], *,
            folder_uid: str | None = None, timeout: float = 10.0,
            api_factory: Callable[..., Any] | None = None) -> PublishResult:
    """Upload ``datasource`` and ``boards`` to the Grafana at ``url``; ConfigError on
    authentication, version or connection problems, naming the URL."""
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import (
            GrafanaClientError,
            GrafanaException,
            GrafanaUnauthorizedError,
        )
    except ImportError:
        raise ConfigError("publishing needs grafana-client: pip install 'driftline[grafana]'") \
            from None
    import niquests

    api = (api_factory or GrafanaApi.from_url)(url=url, credential=token, timeout=timeout)
    result = PublishResult()

    def call(what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
        try:
            return fn()
        except GrafanaUnauthorizedError:
            raise ConfigError(f"Grafana at {url} rejected the token (HTTP 401) while trying "
                              f"to {what}: check --token-file (a service-account token)") \
                from None
        except GrafanaClientError as exc:
            if missing_ok and exc.status_code == 404:
                return None
            if exc.status_code == 403:
                raise ConfigError(f"Grafana at {url} refused to {what} (HTTP 403): the "
                                  "token's service account needs the Editor role (Admin "
                                  "for data sources)") from None
            raise ConfigError(f"Grafana at {url} could not {what}: HTTP {exc.status_code} "
                              f"{exc.message}") from None
        except GrafanaException as exc:
            raise ConfigError(f"Grafana at {url} could not {what}: {exc.message}") from None
        except niquests.exceptions.RequestException as exc:
            raise ConfigError(f"cannot reach Grafana at {url}: {exc}") from None

    health = call("report its version", lambda: api.client.GET("/health"))  # GET /api/health
    version = str((health or {}).get("version", ""))
    if not version:  # hidden there by some set-ups: the signed-in build info has it
        version = str((call("report its version", api.health.check) or {}).get("version", ""))
    result.grafana_version = version
    if _version(version) < MIN_GRAFANA:
        raise ConfigError(
            f"Grafana at {url} is version {version or 'unknown'}; the driftline dashboards "
            f"(schemaVersion 39) need Grafana {MIN_GRAFANA[0]}.{MIN_GRAFANA[1]} or newer")

    uid = datasource["uid"]
    current = call(f"read data source '{uid}'",
                   lambda: api.datasource.get_datasource_by_uid(uid), missing_ok=True)
    if current is None:
        call(f"create data source '{uid}'", lambda: api.datasource.create_datasource(datasource))
        result.actions.append(f"data source {uid}: created")
    elif _same(current, datasource):
        result.actions.append(f"data source {uid}: unchanged")
    else:
        call(f"update data source '{uid}'",
             lambda: api.datasource.update_datasource_by_uid(uid, datasource))
        result.actions.append(f"data source {uid}: updated")

    for board in boards:
        buid = board["uid"]
        existing = call(f"read dashboard '{buid}'",
                        functools.partial(api.dashboard.get_dashboard, buid), missing_ok=True)
        if existing is not None and _board_body(existing.get("dashboard", {})) == \
                _board_body(board) and (folder_uid is None or existing.get("meta", {})
                                        .get("folderUid") == folder_uid):
            result.actions.append(f"dashboard {buid}: unchanged")
            continue
        payload: dict[str, Any] = {"dashboard": {**_board_body(board), "id": None},
                                   "overwrite": True,
                                   "message": "driftline dashboards publish"}
        if folder_uid is not None:
            payload["folderUid"] = folder_uid
        done = call(f"save dashboard '{buid}'",
                    functools.partial(api.dashboard.update_dashboard, payload))
        where = (done or {}).get("url", "")
        result.actions.append(f"dashboard {buid}: {'updated' if existing else 'created'}"
                              f"{f' ({where})' if where else ''}")
    return result
