"""Idle upload sessions are purged with their data; everything committed stays.

A server configured with ``[uploads] purge_after = 1.0, purge_interval = 0.5`` (TOML
file given with ``--config``). One scenario (module scope): idle sessions (one holding
data, one empty), an upload kept busy with a PATCH every 0.3 s, a committed blob and
a tagged image, then a wait of about 3 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import Image, RegistryServer, sample_image, sha256_digest, unique_repo_name
from tests.helpers.registry_api import get_manifest, new_session, push_blob, push_image

PURGE_AFTER = 1.0
PURGE_INTERVAL = 0.5
WAIT = 3.0


@dataclass
class Upload:
    repo: str
    location: str
    data: bytes = field(default=b"", repr=False)

    @property
    def upload_id(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Scenario:
    server: RegistryServer
    idle: Upload
    idle_empty: Upload
    active: Upload
    status_before_wait: int
    blob_repo: str
    blob: bytes
    image_repo: str
    image: Image
    idle_in_image_repo: Upload
    waited: float


def _start(server: RegistryServer, repo: str) -> Upload:
    resp = new_session().post(f"{server.url}/v2/{repo}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    return Upload(repo, server.url + resp.headers["Location"])


def _patch(upload: Upload, chunk: bytes) -> requests.Response:
    resp = new_session().patch(
        upload.location,
        data=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{len(upload.data)}-{len(upload.data) + len(chunk) - 1}",
        },
    )
    if resp.status_code == 202:
        upload.data += chunk
    return resp


def _session_dir(server: RegistryServer, upload: Upload) -> Path:
    assert server.storage_path is not None
    return (
        server.storage_path
        / f"docker/registry/v2/repositories/{upload.repo}/_uploads/{upload.upload_id}"
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("purge")
    config = work / "cargohold.toml"
    config.write_text(
        f"[uploads]\npurge_after = {PURGE_AFTER}\npurge_interval = {PURGE_INTERVAL}\n"
    )
    store = work / "store"
    server = RegistryServer(f"file://{store}", config=config, workdir=work / "server")
    with server:
        blob_repo = unique_repo_name(image="purge-blob")
        blob = os.urandom(10_000)
        push_blob(server.url, blob_repo, blob)
        image_repo = unique_repo_name(image="purge-image")
        image = sample_image("purge")
        push_image(server.url, image_repo, image, "1.0")

        idle = _start(server, unique_repo_name(image="purge-idle"))
        assert _patch(idle, os.urandom(5000)).status_code == 202
        idle_empty = _start(server, unique_repo_name(image="purge-empty"))
        idle_in_image_repo = _start(server, image_repo)
        assert _patch(idle_in_image_repo, b"abandoned").status_code == 202
        active = _start(server, unique_repo_name(image="purge-active"))
        status_before = new_session().get(idle.location).status_code

        started = time.monotonic()
        while time.monotonic() - started < WAIT:
            resp = _patch(active, os.urandom(100))
            assert resp.status_code == 202, f"busy upload lost: {resp.status_code} {resp.text}"
            time.sleep(0.3)
        yield Scenario(
            server,
            idle,
            idle_empty,
            active,
            status_before,
            blob_repo,
            blob,
            image_repo,
            image,
            idle_in_image_repo,
            time.monotonic() - started,
        )


def test_idle_upload_is_there_before_purge_after(scenario: Scenario) -> None:
    assert scenario.status_before_wait == 204


def test_idle_upload_status_is_404_blob_upload_unknown_after_purge(scenario: Scenario) -> None:
    resp = new_session().get(scenario.idle.location)
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_idle_upload_data_folder_is_gone_from_storage(scenario: Scenario) -> None:
    session = _session_dir(scenario.server, scenario.idle)
    assert session.parent.name == "_uploads"
    assert not session.exists()


def test_idle_empty_upload_is_purged(scenario: Scenario) -> None:
    assert new_session().get(scenario.idle_empty.location).status_code == 404
    assert not _session_dir(scenario.server, scenario.idle_empty).exists()


def test_purged_upload_cannot_be_continued_or_finished(scenario: Scenario) -> None:
    http = new_session()
    resp = http.patch(scenario.idle.location, data=b"more")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    resp = http.put(f"{scenario.idle.location}?digest={sha256_digest(scenario.idle.data)}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_busy_upload_is_not_purged_and_completes(scenario: Scenario) -> None:
    active = scenario.active
    assert scenario.waited >= WAIT
    resp = new_session().put(f"{active.location}?digest={sha256_digest(active.data)}")
    assert resp.status_code == 201, resp.text
    resp = new_session().get(
        f"{scenario.server.url}/v2/{active.repo}/blobs/{sha256_digest(active.data)}"
    )
    assert resp.content == active.data


def test_committed_blob_is_unaffected_by_purge(scenario: Scenario) -> None:
    digest = sha256_digest(scenario.blob)
    resp = new_session().get(f"{scenario.server.url}/v2/{scenario.blob_repo}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == scenario.blob


def test_tagged_image_in_a_repository_with_a_purged_upload_is_unaffected(
    scenario: Scenario,
) -> None:
    assert new_session().get(scenario.idle_in_image_repo.location).status_code == 404
    resp = get_manifest(scenario.server.url, scenario.image_repo, "1.0")
    assert resp.status_code == 200
    assert resp.content == scenario.image.manifest
    for blob in scenario.image.blobs():
        url = f"{scenario.server.url}/v2/{scenario.image_repo}/blobs/{blob.digest}"
        assert new_session().get(url).content == blob.data
    tags = new_session().get(f"{scenario.server.url}/v2/{scenario.image_repo}/tags/list")
    assert tags.json()["tags"] == ["1.0"]


def test_purge_is_reported_in_the_log(scenario: Scenario) -> None:
    assert "purged" in scenario.server.log_text()
