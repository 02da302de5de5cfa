"""One storage folder, two registries: CNCF Distribution 2.8 and Cargohold take turns.

(a) Distribution (Debian's ``docker-registry``) writes a folder (an OCI image and a
multi-arch index pushed with skopeo, a Docker schema 2 image and manifest list pushed
over plain HTTP), stops, and Cargohold serves that folder: skopeo pulls the same
manifest, config and layer digests; tags/list and _catalog list them.
(b) The reverse: skopeo pushes into Cargohold, which stops, and Distribution serves
the folder to skopeo.

The two servers never run at the same time on a folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    DistributionServer,
    Image,
    Index,
    ManagedServer,
    RegistryServer,
    build_image,
    build_index,
    make_layer,
    sample_image,
    sample_multiarch,
    skopeo,
    unique_repo_name,
    write_oci_layout,
)
from tests.helpers.images import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, REF_NAME_ANNOTATION
from tests.helpers.registry_api import get_manifest, new_session, push_image

pytestmark = pytest.mark.clients


@dataclass
class Folder:
    """A storage folder written by one registry and now served by the other."""

    server: ManagedServer
    image_repo: str
    image: Image
    index_repo: str
    index: Index
    docker_repo: str
    docker_image: Image
    docker_list: Index


def _push_with_skopeo(server: ManagedServer, src_dir: Path, repo: str, tag: str, *, all_: bool):
    args = ["copy", "--dest-tls-verify=false"]
    if all_:
        args.append("--all")
    skopeo(*args, f"oci:{src_dir}:{tag}", f"docker://{server.host}/{repo}:{tag}")


def _write_folder(
    writer: ManagedServer, tmp: Path
) -> tuple[str, Image, str, Index, str, Image, Index]:
    image_repo = unique_repo_name(image="compat-image")
    index_repo = unique_repo_name(image="compat-index")
    docker_repo = unique_repo_name(image="compat-docker")
    image = sample_image("compat", layers=3)
    index = sample_multiarch("compat-multi")
    write_oci_layout(tmp / "image", image, "1.0")
    write_oci_layout(tmp / "index", index, "multi")
    _push_with_skopeo(writer, tmp / "image", image_repo, "1.0", all_=False)
    _push_with_skopeo(writer, tmp / "index", index_repo, "multi", all_=True)

    docker_image = build_image(
        [make_layer({"etc/docker.txt": "schema 2\n"}), make_layer({"bin/tool": b"\x7fELF"})],
        fmt="docker",
    )
    arm = build_image([make_layer({"etc/arm.txt": "arm64\n"})], architecture="arm64", fmt="docker")
    docker_list = build_index([docker_image, arm], fmt="docker")
    push_image(writer.url, docker_repo, docker_image, "schema2")
    push_image(writer.url, docker_repo, docker_list, "list")
    return image_repo, image, index_repo, index, docker_repo, docker_image, docker_list


@pytest.fixture(scope="module")
def written_by_distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    folder = tmp_path_factory.mktemp("written-by-distribution")
    writer = DistributionServer(folder, workdir=tmp_path_factory.mktemp("distribution-writer"))
    with writer:
        written = _write_folder(writer, tmp_path_factory.mktemp("layouts-a"))
    assert not writer.running
    reader = RegistryServer(f"file://{folder}", workdir=tmp_path_factory.mktemp("cargo-reader"))
    with reader:
        yield Folder(reader, *written)
    assert not reader.running


@pytest.fixture(scope="module")
def written_by_cargohold(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    folder = tmp_path_factory.mktemp("written-by-cargohold")
    writer = RegistryServer(f"file://{folder}", workdir=tmp_path_factory.mktemp("cargo-writer"))
    with writer:
        written = _write_folder(writer, tmp_path_factory.mktemp("layouts-b"))
    assert not writer.running
    reader = DistributionServer(folder, workdir=tmp_path_factory.mktemp("distribution-reader"))
    with reader:
        yield Folder(reader, *written)
    assert not reader.running


FOLDERS = ["written_by_distribution", "written_by_cargohold"]


@pytest.fixture(params=FOLDERS)
def folder(request: pytest.FixtureRequest) -> Folder:
    return request.getfixturevalue(request.param)


# --- pulling into an OCI layout and checking what arrived ---------------------------------


def _pull(server: ManagedServer, repo: str, tag: str, dest: Path, *, all_: bool) -> None:
    args = ["copy", "--src-tls-verify=false"]
    if all_:
        args.append("--all")
    skopeo(*args, f"docker://{server.host}/{repo}:{tag}", f"oci:{dest}:{tag}")


def _layout_blobs(layout: Path) -> set[str]:
    """Digests of every blob in an OCI layout, each re-verified against its content."""
    found = set()
    for path in (layout / "blobs" / "sha256").iterdir():
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        assert actual == path.name, f"{path} holds the wrong content"
        found.add(f"sha256:{actual}")
    return found


def _tagged_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_bytes())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag:
            return desc["digest"]
    raise AssertionError(f"tag {tag} not in {layout}/index.json")


def _raw(server: ManagedServer, repo: str, ref: str) -> bytes:
    sep = "@" if ref.startswith("sha256:") else ":"
    return skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{server.host}/{repo}{sep}{ref}",
        text=False,
    ).stdout


def test_pulled_image_has_the_pushed_manifest_config_and_layer_digests(
    folder: Folder, tmp_path: Path
) -> None:
    _pull(folder.server, folder.image_repo, "1.0", tmp_path / "out", all_=False)
    assert _tagged_digest(tmp_path / "out", "1.0") == folder.image.digest
    blobs = _layout_blobs(tmp_path / "out")
    assert folder.image.config_digest in blobs
    assert set(folder.image.layer_digests) <= blobs
    assert folder.image.digest in blobs


def test_image_manifest_is_served_byte_for_byte(folder: Folder) -> None:
    assert _raw(folder.server, folder.image_repo, "1.0") == folder.image.manifest
    assert _raw(folder.server, folder.image_repo, folder.image.digest) == folder.image.manifest


def test_pulled_multiarch_index_has_every_child_and_blob(folder: Folder, tmp_path: Path) -> None:
    _pull(folder.server, folder.index_repo, "multi", tmp_path / "out", all_=True)
    assert _tagged_digest(tmp_path / "out", "multi") == folder.index.digest
    blobs = _layout_blobs(tmp_path / "out")
    assert {child.digest for child in folder.index.images} <= blobs
    assert {blob.digest for blob in folder.index.blobs()} <= blobs


def test_index_and_child_manifests_are_served_byte_for_byte(folder: Folder) -> None:
    assert _raw(folder.server, folder.index_repo, "multi") == folder.index.manifest
    for child in folder.index.images:
        assert _raw(folder.server, folder.index_repo, child.digest) == child.manifest


def test_tags_list_names_the_pushed_tags(folder: Folder) -> None:
    http = new_session()
    for repo, tags in [
        (folder.image_repo, ["1.0"]),
        (folder.index_repo, ["multi"]),
        (folder.docker_repo, ["list", "schema2"]),
    ]:
        resp = http.get(f"{folder.server.url}/v2/{repo}/tags/list")
        assert resp.status_code == 200
        body = resp.json()
        assert body["name"] == repo
        assert sorted(body["tags"]) == tags  # Distribution lists them in directory order


def test_catalog_lists_the_pushed_repositories(folder: Folder) -> None:
    resp = new_session().get(f"{folder.server.url}/v2/_catalog")
    assert resp.status_code == 200
    assert sorted(resp.json()["repositories"]) == sorted(
        [folder.image_repo, folder.index_repo, folder.docker_repo]
    )


def test_docker_schema2_manifest_is_served_with_its_content_type(folder: Folder) -> None:
    resp = get_manifest(folder.server.url, folder.docker_repo, "schema2")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert resp.headers["Docker-Content-Digest"] == folder.docker_image.digest
    assert resp.content == folder.docker_image.manifest


def test_docker_manifest_list_is_served_with_its_content_type(folder: Folder) -> None:
    resp = get_manifest(folder.server.url, folder.docker_repo, "list")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST_LIST
    assert resp.content == folder.docker_list.manifest


def test_docker_schema2_blobs_download_with_their_digests(folder: Folder) -> None:
    http = new_session()
    for blob in folder.docker_image.blobs():
        resp = http.get(f"{folder.server.url}/v2/{folder.docker_repo}/blobs/{blob.digest}")
        assert resp.status_code == 200
        assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == blob.digest


def test_docker_schema2_image_pulls_with_skopeo(folder: Folder, tmp_path: Path) -> None:
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{folder.server.host}/{folder.docker_repo}:schema2",
        f"dir:{tmp_path / 'dir'}",
    )
    pulled = (tmp_path / "dir" / "manifest.json").read_bytes()
    assert pulled == folder.docker_image.manifest
    for blob in folder.docker_image.blobs():
        assert (tmp_path / "dir" / blob.hex).read_bytes() == blob.data


def test_missing_blob_is_404_on_the_folder(folder: Folder) -> None:
    digest = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    resp = new_session().head(f"{folder.server.url}/v2/{folder.image_repo}/blobs/{digest}")
    assert resp.status_code == 404
