"""``kill -9`` in the middle of uploads, then a restart on the same storage.

One scenario (module scope): complete images are pushed (blobs, manifests, tags),
then several uploads are left streaming (chunked PATCHes and monolithic
``POST ?digest=`` bodies half sent, one session holding all its data but never
finished) and the server is SIGKILLed. After a restart every committed blob and
tag must be intact, nothing uncommitted may be visible as a blob, and an
interrupted session must resume from the offset the server stored (its hash state
rebuilt by re-reading the data).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import (
    Image,
    Index,
    RegistryServer,
    sample_image,
    sample_multiarch,
    sha256_digest,
    unique_repo_name,
)
from tests.helpers.registry_api import get_manifest, new_session, push_image

PAYLOAD_SIZE = 4 * 1024 * 1024
SENT_BEFORE_KILL = 2 * 1024 * 1024 + 512 * 1024
MIN_STORED = 1024 * 1024  # the server writes in 1 MiB steps
STREAMED_SESSIONS = 3
MONOLITHIC = 2


@dataclass
class Session:
    repo: str
    upload_id: str
    location: str
    payload: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.payload)


@dataclass
class Scenario:
    server: RegistryServer
    images: dict[tuple[str, str], Image | Index]
    streamed: list[Session]
    complete_uncommitted: Session
    monolithic: list[tuple[str, bytes]]
    stored_before_kill: dict[str, int]


def _stored_size(range_header: str) -> int:
    found = re.fullmatch(r"0-(\d+)", range_header)
    assert found, range_header
    last = int(found[1])
    return 0 if last == 0 else last + 1


def _start_session(server: RegistryServer, repo: str, payload: bytes) -> Session:
    resp = new_session().post(f"{server.url}/v2/{repo}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    return Session(repo, upload_id, urllib.parse.urljoin(server.url + "/", location), payload)


def _raw_request(server: RegistryServer, method: str, target: str, headers: dict[str, str]):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _status(server: RegistryServer, session: Session):
    return new_session().get(session.location)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    store = tmp_path_factory.mktemp("crash-store")
    server = RegistryServer(f"file://{store}", workdir=tmp_path_factory.mktemp("crash-cargohold"))
    with server:
        http = new_session()
        images: dict[tuple[str, str], Image | Index] = {}
        repo_a, repo_b = unique_repo_name(image="crash-a"), unique_repo_name(image="crash-b")
        for repo, tag, image in [
            (repo_a, "1.0", sample_image("one", layers=3)),
            (repo_a, "2.0", sample_image("two")),
            (repo_b, "latest", sample_image("three")),
            (repo_b, "multi", sample_multiarch("four")),
        ]:
            push_image(server.url, repo, image, tag, session=http)
            images[(repo, tag)] = image

        # Uploads left streaming when the server dies.
        sockets = []
        streamed = []
        for i in range(STREAMED_SESSIONS):
            session = _start_session(
                server, unique_repo_name(image=f"crash-up{i}"), os.urandom(PAYLOAD_SIZE)
            )
            path = urllib.parse.urlsplit(session.location).path
            sock = _raw_request(
                server,
                "PATCH",
                path,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(PAYLOAD_SIZE),
                    "Content-Range": f"0-{PAYLOAD_SIZE - 1}",
                },
            )
            sock.sendall(session.payload[:SENT_BEFORE_KILL])
            sockets.append(sock)
            streamed.append(session)
        monolithic = []
        for i in range(MONOLITHIC):
            repo, payload = unique_repo_name(image=f"crash-mono{i}"), os.urandom(PAYLOAD_SIZE)
            sock = _raw_request(
                server,
                "POST",
                f"/v2/{repo}/blobs/uploads/?digest={sha256_digest(payload)}",
                {"Content-Type": "application/octet-stream", "Content-Length": str(PAYLOAD_SIZE)},
            )
            sock.sendall(payload[:SENT_BEFORE_KILL])
            sockets.append(sock)
            monolithic.append((repo, payload))
        complete = _start_session(
            server, unique_repo_name(image="crash-full"), os.urandom(PAYLOAD_SIZE // 2)
        )
        resp = http.patch(
            complete.location,
            data=complete.payload,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 202, resp.text

        # Wait until the server has written part of every streamed body, then crash it.
        stored: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(stored) < len(streamed):
            assert time.monotonic() < deadline, f"uploads never reached storage: {stored}"
            for session in streamed:
                resp = _status(server, session)
                assert resp.status_code == 204, resp.text
                size = _stored_size(resp.headers["Range"])
                if size >= MIN_STORED:
                    stored[session.upload_id] = size
            time.sleep(0.05)
        server.kill9()
        for sock in sockets:
            sock.close()
        server.restart()
        yield Scenario(server, images, streamed, complete, monolithic, stored)


def _resume(server: RegistryServer, session: Session) -> int:
    """Finish *session* from the offset the server reports; return that offset."""
    http = new_session()
    resp = _status(server, session)
    assert resp.status_code == 204, resp.text
    offset = _stored_size(resp.headers["Range"])
    rest = session.payload[offset:]
    resp = http.patch(
        session.location,
        data=rest,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{len(session.payload) - 1}",
        },
    )
    assert resp.status_code == 202, resp.text
    assert _stored_size(resp.headers["Range"]) == len(session.payload)
    resp = http.put(f"{session.location}?digest={session.digest}")
    assert resp.status_code == 201, resp.text
    assert resp.headers["Docker-Content-Digest"] == session.digest
    return offset


def _blob_file(server: RegistryServer, digest: str) -> Path:
    assert server.storage_path is not None
    hex_ = digest.split(":", 1)[1]
    return server.storage_path / f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


def test_committed_blobs_survive_kill9_byte_for_byte(scenario: Scenario) -> None:
    http = new_session()
    checked = 0
    for (repo, _tag), image in scenario.images.items():
        for blob in image.blobs():
            resp = http.get(f"{scenario.server.url}/v2/{repo}/blobs/{blob.digest}")
            assert resp.status_code == 200, (repo, blob.digest)
            assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == blob.digest
            checked += 1
    assert checked >= 9


def test_tags_survive_kill9_pointing_at_the_same_manifests(scenario: Scenario) -> None:
    for (repo, tag), image in scenario.images.items():
        resp = get_manifest(scenario.server.url, repo, tag)
        assert resp.status_code == 200, (repo, tag, resp.text)
        assert resp.content == image.manifest
        assert resp.headers["Docker-Content-Digest"] == image.digest
        assert resp.headers["Content-Type"] == image.media_type


def test_tag_lists_survive_kill9(scenario: Scenario) -> None:
    expected: dict[str, list[str]] = {}
    for repo, tag in scenario.images:
        expected.setdefault(repo, []).append(tag)
    for repo, tags in expected.items():
        resp = new_session().get(f"{scenario.server.url}/v2/{repo}/tags/list")
        assert resp.status_code == 200
        assert resp.json() == {"name": repo, "tags": sorted(tags)}


def test_child_manifests_of_an_index_survive_kill9(scenario: Scenario) -> None:
    indexes = [(repo, i) for (repo, _), i in scenario.images.items() if isinstance(i, Index)]
    assert indexes
    for repo, index in indexes:
        for child in index.images:
            resp = get_manifest(scenario.server.url, repo, child.digest)
            assert resp.status_code == 200
            assert resp.content == child.manifest


def test_interrupted_monolithic_uploads_leave_no_blob(scenario: Scenario) -> None:
    for repo, payload in scenario.monolithic:
        digest = sha256_digest(payload)
        resp = new_session().head(f"{scenario.server.url}/v2/{repo}/blobs/{digest}")
        assert resp.status_code == 404
        assert not _blob_file(scenario.server, digest).exists()


def test_interrupted_chunked_uploads_leave_no_blob(scenario: Scenario) -> None:
    for session in scenario.streamed:
        resp = new_session().head(f"{scenario.server.url}/v2/{session.repo}/blobs/{session.digest}")
        assert resp.status_code == 404
        assert not _blob_file(scenario.server, session.digest).exists()


def test_complete_but_unfinished_upload_is_not_a_blob_after_kill9(scenario: Scenario) -> None:
    session = scenario.complete_uncommitted
    url = f"{scenario.server.url}/v2/{session.repo}/blobs/{session.digest}"
    assert new_session().head(url).status_code == 404


def test_repositories_of_interrupted_uploads_are_not_in_the_catalog(scenario: Scenario) -> None:
    resp = new_session().get(f"{scenario.server.url}/v2/_catalog")
    assert resp.status_code == 200
    listed = set(resp.json()["repositories"])
    assert {repo for repo, _ in scenario.images} <= listed
    interrupted = {s.repo for s in scenario.streamed} | {r for r, _ in scenario.monolithic}
    assert not listed & interrupted


def test_interrupted_upload_status_reports_a_stored_prefix_of_the_data(scenario: Scenario) -> None:
    session = scenario.streamed[0]
    resp = _status(scenario.server, session)
    assert resp.status_code == 204
    assert resp.headers["Docker-Upload-UUID"] == session.upload_id
    stored = _stored_size(resp.headers["Range"])
    assert MIN_STORED <= stored <= SENT_BEFORE_KILL
    assert stored >= scenario.stored_before_kill[session.upload_id]
    assert scenario.server.storage_path is not None
    data = scenario.server.storage_path / (
        f"docker/registry/v2/repositories/{session.repo}/_uploads/{session.upload_id}/data"
    )
    assert data.read_bytes() == session.payload[:stored]


def test_interrupted_upload_resumes_from_the_stored_offset_and_commits(
    scenario: Scenario,
) -> None:
    for session in scenario.streamed[1:]:
        offset = _resume(scenario.server, session)
        assert offset >= MIN_STORED
        resp = new_session().get(f"{scenario.server.url}/v2/{session.repo}/blobs/{session.digest}")
        assert resp.status_code == 200
        assert resp.content == session.payload


def test_complete_but_unfinished_upload_commits_after_restart(scenario: Scenario) -> None:
    session = scenario.complete_uncommitted
    resp = new_session().put(f"{session.location}?digest={session.digest}")
    assert resp.status_code == 201, resp.text
    resp = new_session().get(f"{scenario.server.url}/v2/{session.repo}/blobs/{session.digest}")
    assert resp.status_code == 200
    assert resp.content == session.payload


def test_resumed_upload_with_a_wrong_digest_is_refused_after_restart(scenario: Scenario) -> None:
    session = _start_session(scenario.server, unique_repo_name(image="crash-wrong"), b"x" * 10)
    resp = new_session().patch(session.location, data=session.payload)
    assert resp.status_code == 202
    scenario.server.kill9()
    scenario.server.start()
    wrong = sha256_digest(b"y" * 10)
    resp = new_session().put(f"{session.location}?digest={wrong}")
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"] == "DIGEST_INVALID"
    resp = new_session().put(f"{session.location}?digest={session.digest}")
    assert resp.status_code == 201
