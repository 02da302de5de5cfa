"""Archives written by skopeo (and built like Docker 25 writes them), uploaded over the API,
then pulled back with skopeo: config digest and every diff_id match the source, and the
manifest digest too wherever the archive carried the compressed blobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.helpers import sample_image, sha256_digest, skopeo, write_oci_layout
from tests.helpers.archives import compress_file, write_combined_archive, write_oci_archive
from tests.helpers.images import REF_NAME_ANNOTATION, Image

pytestmark = pytest.mark.clients


def upload(server, path: Path, tenant: str = "acme/prod", **params) -> dict:
    response = requests.post(
        f"{server.url}/api/v1/registries/{tenant}/archives",
        params=params,
        data=path.open("rb"),
        headers={"Content-Type": "application/x-tar"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    return response.json()


def pulled(server, reference: str, tmp_path: Path) -> tuple[bytes, dict]:
    """The manifest bytes and config of ``reference``, pulled with skopeo into a dir."""
    target = tmp_path / f"pulled-{sha256_digest(reference.encode())[7:19]}"
    skopeo("copy", "--src-tls-verify=false", f"docker://{server.host}/{reference}", f"dir:{target}")
    manifest = (target / "manifest.json").read_bytes()
    config_digest = json.loads(manifest)["config"]["digest"]
    config = json.loads((target / config_digest.split(":")[1]).read_bytes())
    config["_digest"] = config_digest
    return manifest, config


def source_layout(tmp_path: Path, image: Image, tag: str = "1") -> str:
    write_oci_layout(tmp_path / "layout", image, tag=tag)
    return f"oci:{tmp_path / 'layout'}:{tag}"


def test_skopeo_docker_archive_round_trips_config_and_diff_ids(
    file_registry_server, tmp_path: Path
) -> None:
    image = sample_image("dockerish", layers=3)
    archive = tmp_path / "app.docker"
    skopeo(
        "copy",
        "--additional-tag",
        "src/app:2",
        source_layout(tmp_path, image),
        f"docker-archive:{archive}:src/app:1",
    )
    result = upload(file_registry_server, archive)
    [imported] = result["images"]
    assert imported["repository"] == "acme/prod/src/app"
    assert sorted(imported["tags"]) == ["1", "2"]
    for tag in ("1", "2"):
        manifest, config = pulled(file_registry_server, f"acme/prod/src/app:{tag}", tmp_path)
        assert config["_digest"] == image.config.digest
        assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
        assert sha256_digest(manifest) == imported["digest"]


def test_skopeo_oci_archive_keeps_the_manifest_digest(file_registry_server, tmp_path: Path) -> None:
    image = sample_image("ociish", layers=3)
    archive = tmp_path / "app.oci.tar"
    skopeo("copy", source_layout(tmp_path, image), f"oci-archive:{archive}:app:5")
    [imported] = upload(file_registry_server, archive)["images"]
    assert imported["verbatim"] is True
    assert imported["digest"] == image.digest
    manifest, config = pulled(file_registry_server, "acme/prod/app:5", tmp_path)
    assert sha256_digest(manifest) == image.digest
    assert config["_digest"] == image.config.digest
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_skopeo_oci_archive_with_only_a_tag_needs_the_tag_option(
    file_registry_server, tmp_path: Path
) -> None:
    image = sample_image("tagonly")
    archive = tmp_path / "t.oci.tar"
    skopeo("copy", source_layout(tmp_path, image), f"oci-archive:{archive}:7.0")
    response = requests.post(
        f"{file_registry_server.url}/api/v1/registries/acme/prod/archives",
        data=archive.read_bytes(),
        timeout=60,
    )
    assert response.status_code == 400
    [imported] = upload(file_registry_server, archive, tag="tools/tagonly")["images"]
    assert (imported["repository"], imported["tags"]) == ("acme/prod/tools/tagonly", ["7.0"])
    manifest, _ = pulled(file_registry_server, "acme/prod/tools/tagonly:7.0", tmp_path)
    assert sha256_digest(manifest) == image.digest


def test_docker25_combined_format(file_registry_server, tmp_path: Path) -> None:
    image = sample_image("combined", layers=2)
    archive = write_combined_archive(tmp_path / "c.tar", image, ["combined:1", "combined:latest"])
    [imported] = upload(file_registry_server, archive)["images"]
    assert imported["digest"] == image.digest and imported["verbatim"]
    for tag in ("1", "latest"):
        manifest, config = pulled(file_registry_server, f"acme/prod/combined:{tag}", tmp_path)
        assert sha256_digest(manifest) == image.digest
        assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_several_images_in_one_archive(file_registry_server, tmp_path: Path) -> None:
    images = {name: sample_image(name) for name in ("web", "worker", "cron")}
    archive = write_oci_archive(
        tmp_path / "many.tar",
        [(img, {REF_NAME_ANNOTATION: f"suite/{name}:3"}) for name, img in images.items()],
    )
    result = upload(file_registry_server, archive)
    assert {i["repository"] for i in result["images"]} == {
        f"acme/prod/suite/{name}" for name in images
    }
    for name, image in images.items():
        manifest, config = pulled(file_registry_server, f"acme/prod/suite/{name}:3", tmp_path)
        assert sha256_digest(manifest) == image.digest
        assert config["_digest"] == image.config.digest


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_archives(file_registry_server, tmp_path: Path, kind: str) -> None:
    image = sample_image(f"packed-{kind}", layers=2)
    archive = tmp_path / "app.docker"
    skopeo("copy", source_layout(tmp_path, image), f"docker-archive:{archive}:packed:1")
    result = upload(file_registry_server, compress_file(archive, kind))
    assert result["archive_compression"] == kind
    _, config = pulled(file_registry_server, "acme/prod/packed:1", tmp_path)
    assert config["_digest"] == image.config.digest
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_zstd_layers_on_request(file_registry_server, tmp_path: Path) -> None:
    image = sample_image("zlayers", layers=2)
    archive = tmp_path / "z.docker"
    skopeo("copy", source_layout(tmp_path, image), f"docker-archive:{archive}:zl:1")
    upload(file_registry_server, archive, compression="zstd")
    manifest, config = pulled(file_registry_server, "acme/prod/zl:1", tmp_path)
    layers = json.loads(manifest)["layers"]
    assert {layer["mediaType"] for layer in layers} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
