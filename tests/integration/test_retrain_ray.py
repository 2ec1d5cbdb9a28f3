"""The Ray Jobs backend against a real local Ray head (pip-installed `ray[default]`).

The request id is the job's submission id: a second submission (a re-send after a crash) is
"already exists", which counts as success, so Ray runs the job once; the dispatcher follows
the job to `succeeded`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from services.ports import free_port
from services.retrain import store_with_request

from monitor.metrics import Metrics
from monitor.retrain.backends import RayBackend
from monitor.retrain.dispatcher import Dispatcher
from monitor.settings import BackendSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port, dashboard = free_port(), free_port()
    tmp = tmp_path_factory.mktemp("ray")
    started = subprocess.run(
        [ray, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--num-cpus=1", "--disable-usage-stats",
         f"--temp-dir={tmp}"], capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"could not start a Ray head: {started.stderr[-2000:]}", pytrace=False)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)


def test_ray_job_once_per_request_and_followed_to_its_end(ray_head: str,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = BackendSettings(kind="ray", address=ray_head,
                          entrypoint=f"python -c \"open('{marker}', 'a').write('{{id}} ')\"")
    backend = RayBackend(cfg, None)
    store, retrain = store_with_request(tmp_path)
    (rid,) = [r.id for r in retrain.requests()]
    d = Dispatcher(retrain, {"m": backend}, {"m": cfg}, Metrics(CollectorRegistry()))
    assert d.run_once() == 1
    assert retrain.get(rid).external_id == rid
    # a re-send (after a crash between the submission and its record) is refused by Ray
    assert backend.submit({"id": rid, "model": "m", "action": "retrain"}) == rid
    deadline = time.monotonic() + 120
    while retrain.get(rid).state != "succeeded" and time.monotonic() < deadline:
        time.sleep(1.0)
        d.run_once()
    assert retrain.get(rid).state == "succeeded"
    assert marker.read_text().split() == [rid]  # ran once
    store.close()
