"""python-dxf (``dxf.DXF``) against Cargohold over plain HTTP, without auth.

dxf treats the registry as a blob store: blobs pushed from files, "aliases" (tags of
schema-2 manifests whose layers are the blobs), tag and repository listings. Every
test checks digests against hashes computed here.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dxf import DXF, DXFBase

from tests.helpers import RegistryServer, sha256_digest
from tests.helpers.images import DOCKER_MANIFEST
from tests.helpers.registry_api import get_manifest

pytestmark = pytest.mark.clients


def _loopback_only(client: DXFBase) -> None:
    """Use one session that ignores proxy settings from the environment."""
    client.__enter__()
    client._sessions[0].trust_env = False  # the session __enter__ just pushed


@pytest.fixture
def dxf_factory() -> Iterator:
    opened: list[DXFBase] = []

    def make(server: RegistryServer, repo: str | None = None) -> DXFBase:
        client = (
            DXFBase(server.host, insecure=True)
            if repo is None
            else DXF(server.host, repo, insecure=True)
        )
        _loopback_only(client)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def write_blob(path: Path, size: int) -> tuple[Path, bytes]:
    data = secrets.token_bytes(size)
    path.write_bytes(data)
    return path, data


def test_dxf_push_and_pull_blob(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, dxf_factory
) -> None:
    dxf = dxf_factory(shared_server, unique_repo)
    path, data = write_blob(tmp_path / "blob.bin", 200_000)

    digest = dxf.push_blob(str(path))

    assert digest == sha256_digest(data)
    chunks, size = dxf.pull_blob(digest, size=True)
    pulled = b"".join(chunks)  # dxf verifies the digest while iterating
    assert size == len(data)
    assert pulled == data
    assert sha256_digest(pulled) == digest
    assert dxf.blob_size(digest) == len(data)
    # Pushing again finds the blob by HEAD and returns the same digest.
    assert dxf.push_blob(str(path)) == digest


def test_dxf_blob_size(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, dxf_factory
) -> None:
    dxf = dxf_factory(shared_server, unique_repo)
    sizes = [0, 1, 65_537]
    digests = []
    for size in sizes:
        path, data = write_blob(tmp_path / f"blob-{size}.bin", size)
        digest = dxf.push_blob(str(path), check_exists=False)
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        digests.append(digest)

    assert [dxf.blob_size(d) for d in digests] == sizes
    with pytest.raises(requests.HTTPError) as missing:
        dxf.blob_size(sha256_digest(b"never pushed " + secrets.token_bytes(8)))
    assert missing.value.response.status_code == 404


def test_dxf_set_and_get_alias(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, dxf_factory
) -> None:
    dxf = dxf_factory(shared_server, unique_repo)
    digests = [dxf.push_blob(str(write_blob(tmp_path / f"b{i}", 1000 + i)[0])) for i in range(3)]

    manifest_json = dxf.set_alias("v1", *digests)

    assert dxf.get_alias("v1") == digests
    assert dxf.get_alias("v1", sizes=True) == [(d, 1000 + i) for i, d in enumerate(digests)]
    # dxf's manifest uses the first blob as config: get_digest returns it.
    assert dxf.get_digest("v1") == digests[0]
    resp = get_manifest(shared_server.url, unique_repo, "v1")
    assert resp.status_code == 200
    assert resp.content == manifest_json.encode()
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(manifest_json.encode())
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert dxf.get_manifest("v1") == manifest_json
    assert [layer["digest"] for layer in json.loads(manifest_json)["layers"]] == digests


def test_dxf_list_aliases(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, dxf_factory
) -> None:
    dxf = dxf_factory(shared_server, unique_repo)
    digest = dxf.push_blob(str(write_blob(tmp_path / "blob", 512)[0]))
    aliases = ["a", "b", "latest", "v1.0", "v1.1"]
    manifests = {alias: dxf.set_alias(alias, digest) for alias in aliases}

    assert sorted(dxf.list_aliases()) == aliases
    # Paginated through the Link header, two at a time.
    assert sorted(dxf.list_aliases(batch_size=2)) == aliases
    for alias, manifest_json in manifests.items():
        assert dxf.get_alias(alias) == [digest]
        resp = get_manifest(shared_server.url, unique_repo, alias)
        assert resp.headers["Docker-Content-Digest"] == sha256_digest(manifest_json.encode())


def test_dxf_del_alias(
    registry_server: RegistryServer, unique_repo: str, tmp_path: Path, dxf_factory
) -> None:
    dxf = dxf_factory(registry_server, unique_repo)
    blobs = [write_blob(tmp_path / f"b{i}", 300 + i) for i in range(2)]
    digests = [dxf.push_blob(str(path)) for path, _ in blobs]
    doomed = dxf.set_alias("doomed", *digests)
    kept = dxf.set_alias("kept", digests[1])

    assert dxf.del_alias("doomed") == digests

    assert get_manifest(registry_server.url, unique_repo, "doomed").status_code == 404
    gone = get_manifest(registry_server.url, unique_repo, sha256_digest(doomed.encode()))
    assert gone.status_code == 404
    with pytest.raises(requests.HTTPError) as missing:
        dxf.get_alias("doomed")
    assert missing.value.response.status_code == 404
    assert dxf.list_aliases() == ["kept"]
    resp = get_manifest(registry_server.url, unique_repo, "kept")
    assert resp.headers["Docker-Content-Digest"] == sha256_digest(kept.encode())
    # Deleting an alias leaves its blobs in place.
    for digest, (_, data) in zip(digests, blobs, strict=True):
        assert b"".join(dxf.pull_blob(digest)) == data
        assert dxf.blob_size(digest) == len(data)


def test_dxf_list_repos(registry_server: RegistryServer, tmp_path: Path, dxf_factory) -> None:
    repos = sorted(f"test/dxf/repo-{i}-{secrets.token_hex(3)}" for i in range(3))
    path, data = write_blob(tmp_path / "blob", 256)
    for repo in repos:
        dxf = dxf_factory(registry_server, repo)
        assert dxf.push_blob(str(path)) == sha256_digest(data)
        dxf.set_alias("latest", sha256_digest(data))

    base = dxf_factory(registry_server)

    assert base.list_repos() == repos
    assert base.list_repos(batch_size=1) == repos
    for repo in repos:
        listed = dxf_factory(registry_server, repo)
        assert listed.get_alias("latest") == [sha256_digest(data)]
