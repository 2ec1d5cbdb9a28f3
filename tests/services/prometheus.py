"""Prometheus server for tests, scraping the driftline metrics endpoints under test."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import ManagedProcess, find_binary, http_json, http_ok, wait_until
from .ports import free_port


class PrometheusServer:
    """`/usr/bin/prometheus` on 127.0.0.1:<free port> with job `driftline` scraping `targets`.

    Prometheus' service discovery reports targets and Alertmanagers only about 5s after
    start, so expect the first scrape (and the first alert delivery) that late.

    targets are "host:port" strings; rule_files are paths to rule YAML files; alertmanager_url
    ("http://127.0.0.1:PORT") makes Prometheus send firing alerts there.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        scrape_interval: str = "1s",
        rule_files: Sequence[str | Path] = (),
        alertmanager_url: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.targets_config = list(targets)
        self.scrape_interval = scrape_interval
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.alertmanager_url = alertmanager_url
        self.port = free_port()
        self.log_path = self.workdir / "prometheus.log"
        self.config_path = self.workdir / "prometheus.yml"
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,  # may not exceed the interval
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {"job_name": "driftline", "static_configs": [{"targets": self.targets_config}]}
            ],
            "rule_files": self.rule_files,
        }
        if self.alertmanager_url:
            parsed = urllib.parse.urlsplit(self.alertmanager_url)
            config["alerting"] = {
                "alertmanagers": [
                    {
                        "scheme": parsed.scheme or "http",
                        "path_prefix": parsed.path or "/",
                        "static_configs": [{"targets": [parsed.netloc]}],
                    }
                ]
            }
        return config

    def start(self, timeout: float = 60.0) -> None:
        binary = find_binary("prometheus", ["/usr/bin/prometheus"])
        # JSON is valid YAML: no YAML library needed.
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            # Alerts that fired before Alertmanager was discovered (service discovery only
            # reports after ~5s) are otherwise only re-sent after the default 1m.
            f"--rules.alert.resend-delay={self.scrape_interval}",
            "--log.level=warn",
        ]
        self._proc = ManagedProcess(argv, self.log_path, cwd=self.workdir)
        self._proc.start()
        ready = f"{self.url}/-/ready"
        wait_until(lambda: http_ok(ready), timeout=timeout, what="Prometheus", proc=self._proc)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            reply = http_json(f"{self.url}/api/v1/{path}{query}")
        except RuntimeError as exc:  # 4xx/5xx: the body carries Prometheus' error text
            raise RuntimeError(f"Prometheus {path} {params}: {exc}") from None
        if reply.get("status") != "success":
            raise RuntimeError(
                f"Prometheus {path} {params}: {reply.get('errorType')}: {reply.get('error')}"
            )
        return reply["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; a list of {"metric": {...}, "value": [ts, "value"]} dicts.

        Scalar and string results come back as a one-element list {"metric": {}, "value": ...}.
        """
        data = self._api("query", query=promql)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll `query(promql)` until `predicate(result)` holds (default: non-empty result)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{promql!r}: condition not met in {timeout}s; last: {result}")
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (dicts with "scrapeUrl", "health", "lastError", ...)."""
        return list(self._api("targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups (dicts with "name", "rules", ...)."""
        return list(self._api("rules")["groups"])
