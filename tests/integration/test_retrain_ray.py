"""The Ray Jobs backend against a real local Ray head (pip-installed `ray[default]`).

The request id is the job's submission id: a second submission (a re-send after a crash) is
"already exists", which counts as success, so Ray runs the job once; the dispatcher follows
the job to `succeeded`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from services.retrain import store_with_request

from monitor.metrics import Metrics
from monitor.retrain.backends import RayBackend
from monitor.retrain.dispatcher import Dispatcher
from monitor.settings import BackendSettings

pytestmark = pytest.mark.integration


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


def test_cancel_stops_the_running_ray_job(ray_head: str, tmp_path: Path) -> None:
    """`driftline retrain cancel` of a dispatched request stops its Ray job (stop_job)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from monitor.retrain.cli import cancel_request

    marker = tmp_path / "finished"
    cfg = BackendSettings(kind="ray", address=ray_head, entrypoint=(
        f"python -c \"import time; time.sleep(60); open('{marker}', 'w').write('x')\""))
    backend = RayBackend(cfg, None)
    store, retrain = store_with_request(tmp_path, first_window=7)
    (rid,) = [r.id for r in retrain.requests()]
    d = Dispatcher(retrain, {"m": backend}, {"m": cfg}, Metrics(CollectorRegistry()))
    assert d.run_once() == 1
    client = JobSubmissionClient(ray_head)
    deadline = time.monotonic() + 60
    while client.get_job_status(rid) != JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(rid) == JobStatus.RUNNING
    r, note = cancel_request(retrain, rid, "wrong incident", backend)
    assert r.state == "cancelled" and note == f"Ray job {rid} stopped"
    while client.get_job_status(rid) == JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(rid) == JobStatus.STOPPED
    d.run_once()  # the dispatcher leaves a cancelled request alone
    assert retrain.get(rid).state == "cancelled"
    assert [e[2] for e in retrain.events(rid)][-1] == "cancelled"
    assert not marker.exists()
    store.close()
