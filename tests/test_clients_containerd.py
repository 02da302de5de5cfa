"""containerd 1.6 (``ctr``) against Cargohold: platform-filtered pull, unpack, push.

Each test runs its own containerd (see :mod:`tests.helpers.containerd`) and pulls a
multi-arch index that skopeo pushed; digests are checked in containerd's content store,
its snapshots (chain IDs of the builder's diff_ids) and in the registry afterwards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import (
    Image,
    Index,
    RegistryServer,
    sample_multiarch,
    sha256_digest,
    skopeo,
    write_oci_layout,
)
from tests.helpers.containerd import ContainerdDaemon
from tests.helpers.registry_api import get_manifest, new_session

pytestmark = pytest.mark.clients


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[ContainerdDaemon]:
    daemon = ContainerdDaemon(tmp_path / "containerd")
    with daemon:
        yield daemon


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of a layer stack (containerd's snapshot key for it)."""
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain


def push_index(server: RegistryServer, repo: str, tmp_path: Path) -> Index:
    index = sample_multiarch("containerd", layers=2)
    write_oci_layout(tmp_path / "layout", index, "multi")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'layout'}:multi",
        f"docker://{server.host}/{repo}:multi",
    )
    return index


def content_digests(ctd: ContainerdDaemon) -> set[str]:
    return set(ctd.ctr("content", "ls", "--quiet").stdout.split())


def content_labels(ctd: ContainerdDaemon) -> dict[str, str]:
    """``{digest: labels}`` from ``ctr content ls``."""
    rows = ctd.ctr("content", "ls").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[-1] for row in rows if row.strip()}


def image_digests(ctd: ContainerdDaemon) -> dict[str, str]:
    """``{ref: target digest}`` from ``ctr images ls``."""
    rows = ctd.ctr("images", "ls").stdout.splitlines()[1:]
    return {row.split()[0]: row.split()[2] for row in rows if row.strip()}


def pull(ctd: ContainerdDaemon, ref: str, *extra: str) -> str:
    return ctd.ctr(
        "images", "pull", "--plain-http", "--snapshotter", ctd.snapshotter, *extra, ref
    ).stdout


def assert_image_in_repo(server: RegistryServer, repo: str, image: Image) -> None:
    session = new_session()
    resp = get_manifest(server.url, repo, image.digest, session=session)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.content == image.manifest
    for blob in image.blobs():
        got = session.get(f"{server.url}/v2/{repo}/blobs/{blob.digest}")
        assert got.status_code == 200
        assert sha256_digest(got.content) == blob.digest


def test_ctr_pull_arm64_fetches_only_that_platform(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, containerd: ContainerdDaemon
) -> None:
    index = push_index(shared_server, unique_repo, tmp_path)
    arm64, amd64 = index.by_platform("arm64"), index.by_platform("amd64")
    ref = f"{shared_server.host}/{unique_repo}:multi"

    output = pull(containerd, ref, "--platform", "linux/arm64", "--print-chainid")

    assert image_digests(containerd)[ref] == index.digest
    content = content_digests(containerd)
    assert {index.digest, arm64.digest, *(b.digest for b in arm64.blobs())} <= content
    assert amd64.digest not in content
    assert not {b.digest for b in amd64.blobs()} & content
    # containerd recorded each layer's uncompressed digest: the builder's diff_ids.
    labels = content_labels(containerd)
    for layer, diff_id in zip(arm64.layers, arm64.diff_ids, strict=True):
        assert f"containerd.io/uncompressed={diff_id}" in labels[layer.digest]
    # Unpacked with the native snapshotter: the top snapshot is the arm64 chain ID.
    expected_chain = chain_id(arm64.diff_ids)
    assert expected_chain in output
    snapshots = containerd.ctr("snapshots", "--snapshotter", containerd.snapshotter, "ls").stdout
    assert expected_chain in snapshots
    assert chain_id(amd64.diff_ids) not in snapshots


def test_ctr_push_arm64_to_another_repository(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, containerd: ContainerdDaemon
) -> None:
    index = push_index(shared_server, unique_repo, tmp_path)
    arm64, amd64 = index.by_platform("arm64"), index.by_platform("amd64")
    source = f"{shared_server.host}/{unique_repo}:multi"
    target_repo = f"{unique_repo}-ctr"
    target = f"{shared_server.host}/{target_repo}:arm64"
    pull(containerd, source, "--platform", "linux/arm64")

    containerd.ctr("images", "push", "--plain-http", "--platform", "linux/arm64", target, source)

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target}", text=False).stdout
    assert sha256_digest(raw) == arm64.digest
    assert json.loads(raw)["config"]["digest"] == arm64.config_digest
    assert_image_in_repo(shared_server, target_repo, arm64)
    assert get_manifest(shared_server.url, target_repo, amd64.digest).status_code == 404


def test_ctr_push_all_platforms_keeps_index_digest(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, containerd: ContainerdDaemon
) -> None:
    index = push_index(shared_server, unique_repo, tmp_path)
    source = f"{shared_server.host}/{unique_repo}:multi"
    target_repo = f"{unique_repo}-all"
    target = f"{shared_server.host}/{target_repo}:multi"
    pull(containerd, source, "--all-platforms")

    containerd.ctr("images", "push", "--plain-http", target, source)

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target}", text=False).stdout
    assert sha256_digest(raw) == index.digest
    assert raw == index.manifest
    for image in index.images:
        child = skopeo(
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{shared_server.host}/{target_repo}@{image.digest}",
            text=False,
        ).stdout
        assert sha256_digest(child) == image.digest
        assert_image_in_repo(shared_server, target_repo, image)
