"""skopeo 1.9 against Cargohold: push, pull, multi-arch, tags, delete, repository copies.

Every test compares digests end to end: what the builders in :mod:`tests.helpers.images`
wrote against what skopeo reads back from the registry (and against the bytes the
registry serves over plain HTTP).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.helpers import (
    CommandError,
    Image,
    RegistryServer,
    make_layer_tar,
    sample_image,
    sample_multiarch,
    sha256_digest,
    skopeo,
    write_docker_archive,
    write_oci_layout,
)
from tests.helpers.images import OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION
from tests.helpers.registry_api import get_manifest, new_session

pytestmark = pytest.mark.clients


# --- helpers ----------------------------------------------------------------------------


def docker_ref(server: RegistryServer, repo: str, ref: str) -> str:
    """``docker://127.0.0.1:PORT/REPO:TAG`` (or ``@sha256:...`` for a digest)."""
    sep = "@" if ref.startswith("sha256:") else ":"
    return f"docker://{server.host}/{repo}{sep}{ref}"


def push(src: str, dest: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, src, dest)


def copy_between(src: str, dest: str, *extra: str) -> None:
    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, src, dest)


def inspect_raw(ref: str) -> bytes:
    """The exact manifest bytes skopeo reads for ``ref``."""
    return skopeo("inspect", "--raw", "--tls-verify=false", ref, text=False).stdout


def inspect(ref: str) -> dict:
    return json.loads(skopeo("inspect", "--tls-verify=false", ref).stdout)


def fetch_blob(server: RegistryServer, repo: str, digest: str) -> bytes:
    """GET a blob over HTTP and check that its bytes hash to ``digest``."""
    resp = new_session().get(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert resp.status_code == 200, (digest, resp.status_code, resp.text[:500])
    assert sha256_digest(resp.content) == digest
    return resp.content


def manifest_status(server: RegistryServer, repo: str, ref: str) -> int:
    return get_manifest(server.url, repo, ref).status_code


def blob_status(server: RegistryServer, repo: str, digest: str) -> int:
    return new_session().head(f"{server.url}/v2/{repo}/blobs/{digest}").status_code


def assert_image_served(server: RegistryServer, repo: str, image: Image) -> None:
    """The repository serves ``image`` byte for byte: manifest, config and layers."""
    resp = get_manifest(server.url, repo, image.digest)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.content == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    for blob in image.blobs():
        assert fetch_blob(server, repo, blob.digest) == blob.data


def read_layout_manifest(layout: Path, tag: str) -> tuple[str, bytes]:
    """``(digest, bytes)`` of the manifest tagged ``tag`` in an OCI layout."""
    index = json.loads((layout / "index.json").read_bytes())
    matches = [
        d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME_ANNOTATION) == tag
    ]
    assert len(matches) == 1, index
    digest = matches[0]["digest"]
    return digest, read_layout_blob(layout, digest)


def read_layout_blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert sha256_digest(data) == digest
    return data


# --- tests ------------------------------------------------------------------------------


def test_skopeo_push_oci_layout_and_pull_back(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    image = sample_image("skopeo-oci", layers=3)
    write_oci_layout(tmp_path / "src", image, "1.0")
    remote = docker_ref(shared_server, unique_repo, "1.0")

    push(f"oci:{tmp_path / 'src'}:1.0", remote)

    raw = inspect_raw(remote)
    assert sha256_digest(raw) == image.digest
    assert raw == image.manifest
    info = inspect(remote)
    assert info["Digest"] == image.digest
    assert info["Layers"] == image.layer_digests
    assert info["Architecture"] == "amd64"
    assert_image_served(shared_server, unique_repo, image)

    dest = tmp_path / "dest"
    skopeo("copy", "--src-tls-verify=false", remote, f"oci:{dest}:1.0")

    digest, manifest = read_layout_manifest(dest, "1.0")
    assert digest == image.digest
    pulled = json.loads(manifest)
    assert pulled["mediaType"] == OCI_MANIFEST
    assert pulled["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in pulled["layers"]] == image.layer_digests
    assert read_layout_blob(dest, image.config_digest) == image.config.data
    for layer in image.layers:
        assert read_layout_blob(dest, layer.digest) == layer.data


def test_skopeo_push_docker_archive(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    layers = [
        {"etc/os-release": f"ID=cargohold\nREPO={unique_repo}\n", "bin/": b""},
        {"srv/app/data.txt": f"archive payload for {unique_repo}\n" * 50},
    ]
    archive = write_docker_archive(tmp_path / "image.tar", "cargohold/archive:1", layers)
    assert archive.diff_ids == tuple(sha256_digest(make_layer_tar(spec)) for spec in layers)
    remote = docker_ref(shared_server, unique_repo, "1")

    push(f"docker-archive:{archive.path}", remote)

    raw = inspect_raw(remote)
    manifest = json.loads(raw)
    head = new_session().head(f"{shared_server.url}/v2/{unique_repo}/manifests/1")
    assert head.headers["Docker-Content-Digest"] == sha256_digest(raw)
    # The config is copied verbatim; layers are recompressed by skopeo, so only their
    # uncompressed content (the diff_ids) is comparable end to end.
    assert manifest["config"]["digest"] == archive.config_digest
    assert fetch_blob(shared_server, unique_repo, archive.config_digest) == archive.config
    assert len(manifest["layers"]) == len(archive.diff_ids)
    for descriptor, diff_id, tar in zip(
        manifest["layers"], archive.diff_ids, archive.layer_tars, strict=True
    ):
        compressed = fetch_blob(shared_server, unique_repo, descriptor["digest"])
        assert descriptor["size"] == len(compressed)
        uncompressed = gzip.decompress(compressed)
        assert sha256_digest(uncompressed) == diff_id
        assert uncompressed == tar
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", remote).stdout)
    assert config["rootfs"]["diff_ids"] == list(archive.diff_ids)


def test_skopeo_copy_all_multiarch_index(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    index = sample_multiarch("skopeo-all", architectures=("amd64", "arm64", "ppc64le"))
    write_oci_layout(tmp_path / "src", index, "multi")
    remote = docker_ref(shared_server, unique_repo, "multi")

    push(f"oci:{tmp_path / 'src'}:multi", remote, "--all")

    raw = inspect_raw(remote)
    assert sha256_digest(raw) == index.digest
    assert raw == index.manifest
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    assert sha256_digest(inspect_raw(docker_ref(shared_server, unique_repo, index.digest))) == (
        index.digest
    )
    for image in index.images:
        child = inspect_raw(docker_ref(shared_server, unique_repo, image.digest))
        assert sha256_digest(child) == image.digest
        assert json.loads(child)["config"]["digest"] == image.config_digest
        assert_image_served(shared_server, unique_repo, image)


def test_skopeo_list_tags(shared_server: RegistryServer, unique_repo: str, tmp_path: Path) -> None:
    image = sample_image("skopeo-tags")
    write_oci_layout(tmp_path / "src", image, "src")
    tags = ["1.0", "1.1", "latest", "v2-rc.1"]
    for tag in tags:
        push(f"oci:{tmp_path / 'src'}:src", docker_ref(shared_server, unique_repo, tag))

    listed = json.loads(
        skopeo(
            "list-tags", "--tls-verify=false", f"docker://{shared_server.host}/{unique_repo}"
        ).stdout
    )

    assert listed["Repository"] == f"{shared_server.host}/{unique_repo}"
    assert sorted(listed["Tags"]) == sorted(tags)
    for tag in tags:
        assert sha256_digest(inspect_raw(docker_ref(shared_server, unique_repo, tag))) == (
            image.digest
        )


def test_skopeo_delete_makes_manifest_unknown(
    registry_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    image = sample_image("skopeo-delete")
    keep = sample_image("skopeo-keep")
    write_oci_layout(tmp_path / "src", image, "gone")
    write_oci_layout(tmp_path / "src", keep, "kept")
    remote = docker_ref(registry_server, unique_repo, "gone")
    push(f"oci:{tmp_path / 'src'}:gone", remote)
    push(f"oci:{tmp_path / 'src'}:kept", docker_ref(registry_server, unique_repo, "kept"))
    assert sha256_digest(inspect_raw(remote)) == image.digest

    skopeo("delete", "--tls-verify=false", remote)

    for ref in (remote, docker_ref(registry_server, unique_repo, image.digest)):
        with pytest.raises(CommandError) as failed:
            inspect_raw(ref)
        assert "manifest unknown" in str(failed.value.stderr).lower()
    assert manifest_status(registry_server, unique_repo, image.digest) == 404
    assert manifest_status(registry_server, unique_repo, "gone") == 404
    # The other image of the repository is untouched.
    kept = inspect_raw(docker_ref(registry_server, unique_repo, "kept"))
    assert sha256_digest(kept) == keep.digest
    assert_image_served(registry_server, unique_repo, keep)


def test_skopeo_copy_between_repositories(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    image = sample_image("skopeo-cross", layers=3)
    write_oci_layout(tmp_path / "src", image, "1")
    source = docker_ref(shared_server, unique_repo, "1")
    target_repo = f"{unique_repo}-copy"
    target = docker_ref(shared_server, target_repo, "copied")
    push(f"oci:{tmp_path / 'src'}:1", source)

    # Blobs may be mounted from the source repository or uploaded again; either way
    # the target must end up serving the same content.
    copy_between(source, target)

    raw = inspect_raw(target)
    assert sha256_digest(raw) == image.digest
    assert raw == image.manifest
    assert_image_served(shared_server, target_repo, image)
    assert_image_served(shared_server, unique_repo, image)


def test_skopeo_copy_override_arch_copies_one_platform(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    index = sample_multiarch("skopeo-arch")
    arm64, amd64 = index.by_platform("arm64"), index.by_platform("amd64")
    write_oci_layout(tmp_path / "src", index, "multi")
    source = docker_ref(shared_server, unique_repo, "multi")
    push(f"oci:{tmp_path / 'src'}:multi", source, "--all")
    target_repo = f"{unique_repo}-arm64"

    copy_between(source, docker_ref(shared_server, target_repo, "1"), "--override-arch", "arm64")

    raw = inspect_raw(docker_ref(shared_server, target_repo, "1"))
    assert sha256_digest(raw) == arm64.digest
    assert raw == arm64.manifest
    assert_image_served(shared_server, target_repo, arm64)
    assert manifest_status(shared_server, target_repo, amd64.digest) == 404
    assert manifest_status(shared_server, target_repo, index.digest) == 404
    for blob in amd64.blobs():
        assert blob_status(shared_server, target_repo, blob.digest) == 404


def test_skopeo_copy_multi_arch_index_only_makes_sparse_index(
    shared_server: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    index = sample_multiarch("skopeo-sparse")
    write_oci_layout(tmp_path / "src", index, "multi")
    source = docker_ref(shared_server, unique_repo, "multi")
    push(f"oci:{tmp_path / 'src'}:multi", source, "--all")
    target_repo = f"{unique_repo}-sparse"

    # skopeo 1.9 has no "sparse" mode that copies some children: index-only copies the
    # index alone, which the server accepts unless manifests.strict_index is set.
    copy_between(
        source, docker_ref(shared_server, target_repo, "multi"), "--multi-arch", "index-only"
    )

    raw = inspect_raw(docker_ref(shared_server, target_repo, "multi"))
    assert sha256_digest(raw) == index.digest
    assert raw == index.manifest
    for image in index.images:
        assert manifest_status(shared_server, target_repo, image.digest) == 404
        for blob in image.blobs():
            assert blob_status(shared_server, target_repo, blob.digest) == 404
