"""The server's GC schedule (``[gc] interval``): off by default; when on, garbage goes and
``/metrics`` reports the runs. (One GC at a time across processes: tests/test_jobs.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.images import Blob
from tests.helpers.registry_api import new_session, push_blob

REPO = "acme/prod/app"


def metric(server: Any, name: str) -> float:
    text = new_session().get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def blob_status(server: Any, digest: str) -> int:
    return new_session().head(f"{server.url}/v2/{REPO}/blobs/{digest}").status_code


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_scheduled_gc_removes_garbage_and_reports_it(registry_factory: Any, tmp_path: Path) -> None:
    config = tmp_path / "gc.toml"
    config.write_text('[gc]\ninterval = "1s"\ngrace = "0s"\nsettle = "0s"\n')
    server = registry_factory(config=config)
    stray = Blob("application/octet-stream", b"garbage for the schedule")
    push_blob(server.url, REPO, stray.data)
    assert wait_until(lambda: blob_status(server, stray.digest) == 404)
    assert wait_until(lambda: metric(server, "cargohold_gc_reclaimed_bytes_total") >= stray.size)
    assert metric(server, "cargohold_gc_runs_total") >= 1


def test_gc_is_off_unless_configured(registry_factory: Any, tmp_path: Path) -> None:
    server = registry_factory()
    stray = Blob("application/octet-stream", b"nobody collects me")
    push_blob(server.url, REPO, stray.data)
    time.sleep(2)
    assert blob_status(server, stray.digest) == 200
    assert metric(server, "cargohold_gc_runs_total") == 0
