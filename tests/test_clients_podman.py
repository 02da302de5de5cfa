"""podman 4.3 against Cargohold: pull an image pushed by skopeo, push it elsewhere.

podman runs with private storage (``--root``/``--runroot``/``--tmpdir`` under the
test's tmp dir, ``vfs`` driver), an empty ``registries.conf`` and the isolated client
HOME/auth of :func:`tests.helpers.client_env`.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    Image,
    RegistryServer,
    client_env,
    run,
    sample_image,
    sha256_digest,
    skopeo,
    write_oci_layout,
)
from tests.helpers.registry_api import new_session

pytestmark = pytest.mark.clients

Podman = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """``podman(*args)``: podman with storage, state and config private to this test."""
    base = tmp_path / "podman"
    for sub in ("root", "tmp", "vartmp"):
        (base / sub).mkdir(parents=True)
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long.
    runroot = tempfile.mkdtemp(prefix="cargohold-podman-", dir="/tmp")
    registries_conf = base / "registries.conf"
    registries_conf.write_text("")
    env = client_env(
        {
            "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
            "TMPDIR": str(base / "vartmp"),
        }
    )
    global_args = [
        "--root",
        str(base / "root"),
        "--runroot",
        runroot,
        "--tmpdir",
        str(base / "tmp"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]

    def podman(*args: str) -> subprocess.CompletedProcess:
        return run(["podman", *global_args, *args], env=env, timeout=300)

    try:
        yield podman
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def push_with_skopeo(server: RegistryServer, repo: str, tag: str, tmp_path: Path) -> Image:
    image = sample_image("podman", layers=3)
    write_oci_layout(tmp_path / "layout", image, tag)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'layout'}:{tag}",
        f"docker://{server.host}/{repo}:{tag}",
    )
    return image


def image_inspect(podman: Podman, ref: str) -> dict:
    [info] = json.loads(podman("image", "inspect", ref).stdout)
    return info


def test_podman_pull_image_pushed_by_skopeo(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, podman: Podman
) -> None:
    image = push_with_skopeo(shared_server, unique_repo, "1.0", tmp_path)
    ref = f"{shared_server.host}/{unique_repo}:1.0"

    podman("pull", "--tls-verify=false", ref)

    info = image_inspect(podman, ref)
    # podman's image ID is the config digest (hex); Digest is the manifest's.
    assert f"sha256:{info['Id']}" == image.config_digest
    assert info["Digest"] == image.digest
    assert f"{shared_server.host}/{unique_repo}@{image.digest}" in info["RepoDigests"]
    assert info["RootFS"]["Layers"] == list(image.diff_ids)
    assert info["Architecture"] == image.architecture


def test_podman_push_to_another_repository(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path, podman: Podman
) -> None:
    image = push_with_skopeo(shared_server, unique_repo, "1.0", tmp_path)
    source = f"{shared_server.host}/{unique_repo}:1.0"
    target_repo = f"{unique_repo}-pushed"
    target = f"{shared_server.host}/{target_repo}:2.0"
    podman("pull", "--tls-verify=false", source)

    podman("push", "--tls-verify=false", source, f"docker://{target}")

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target}", text=False).stdout
    manifest = json.loads(raw)
    session = new_session()
    head = session.head(f"{shared_server.url}/v2/{target_repo}/manifests/2.0")
    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == sha256_digest(raw)
    # podman may recompress layers, so compare the config digest and the uncompressed
    # layer digests (diff_ids), not the layer blob digests.
    assert manifest["config"]["digest"] == image.config_digest
    config = session.get(f"{shared_server.url}/v2/{target_repo}/blobs/{image.config_digest}")
    assert config.status_code == 200
    assert config.content == image.config.data
    pushed_config = json.loads(
        skopeo("inspect", "--config", "--tls-verify=false", f"docker://{target}").stdout
    )
    assert pushed_config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert len(manifest["layers"]) == len(image.diff_ids)
    for descriptor, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        blob = session.get(f"{shared_server.url}/v2/{target_repo}/blobs/{descriptor['digest']}")
        assert blob.status_code == 200
        assert sha256_digest(blob.content) == descriptor["digest"]
        assert sha256_digest(gzip.decompress(blob.content)) == diff_id
