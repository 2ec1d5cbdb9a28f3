"""Alertmanager for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ManagedProcess, find_binary, http_json, http_ok, wait_until
from .ports import free_port

# Routes everything to a receiver that does nothing: alerts are only inspected via the API.
DEFAULT_CONFIG = """\
route:
  receiver: "null"
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


class AlertmanagerServer:
    """`prometheus-alertmanager` on 127.0.0.1:<free port>, clustering disabled."""

    def __init__(self, workdir: Path, config_yaml: str = DEFAULT_CONFIG) -> None:
        self.workdir = Path(workdir)
        self.config_yaml = config_yaml
        self.port = free_port()
        self.log_path = self.workdir / "alertmanager.log"
        self.config_path = self.workdir / "alertmanager.yml"
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        # Debian names the binary prometheus-alertmanager; upstream tarballs say alertmanager.
        binary = find_binary(
            "alertmanager", ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        )
        self.config_path.write_text(self.config_yaml)
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # empty: no gossip cluster, no second port
            "--log.level=warn",
        ]
        self._proc = ManagedProcess(argv, self.log_path, cwd=self.workdir)
        self._proc.start()
        ready = f"{self.url}/-/ready"
        wait_until(lambda: http_ok(ready), timeout=timeout, what="Alertmanager", proc=self._proc)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def alerts(self, active_only: bool = False) -> list[dict[str, Any]]:
        """Alerts known to Alertmanager (API v2): dicts with "labels", "status", ..."""
        query = "?silenced=false&inhibited=false&unprocessed=false" if active_only else ""
        return list(http_json(f"{self.url}/api/v2/alerts{query}"))

    def status(self) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/api/v2/status"))
