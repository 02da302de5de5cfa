"""The offline image builders produce what real clients (skopeo) read back: no server."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.helpers.images import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    build_image,
    make_layer,
    sample_image,
    sample_multiarch,
    sha256_digest,
    write_docker_archive,
    write_oci_layout,
)
from tests.helpers.procs import run, skopeo


def inspect(ref: str, *global_args: str) -> dict:
    return json.loads(skopeo(*global_args, "inspect", ref).stdout)


def inspect_raw(ref: str, *extra: str) -> bytes:
    return skopeo("inspect", "--raw", *extra, ref, text=False).stdout


def test_make_layer_is_deterministic_gzip_tar() -> None:
    files = {"etc/hello.txt": b"hello\n", "bin/tool": b"\x7fELF..."}
    compressed, diff_id = make_layer(files)
    assert make_layer(dict(reversed(files.items()))) == (compressed, diff_id)
    raw = gzip.decompress(compressed)
    assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"bin", "bin/tool", "etc", "etc/hello.txt"}
        assert all(m.mtime == 0 and m.uid == 0 for m in members.values())
        assert members["etc"].isdir()
        assert tar.extractfile("etc/hello.txt").read() == b"hello\n"


def test_oci_layout_single_image(tmp_path: Path) -> None:
    image = sample_image("single", layers=3)
    layout = tmp_path / "layout"
    assert write_oci_layout(layout, image, "v1") is image
    ref = f"oci:{layout}:v1"

    raw = inspect_raw(ref)
    assert raw == image.manifest
    assert sha256_digest(raw) == image.digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_LAYER_GZIP}

    info = inspect(ref)
    assert info["Digest"] == image.digest
    assert info["Layers"] == image.layer_digests
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")

    config = inspect_raw(ref, "--config")
    assert config == image.config.data
    assert sha256_digest(config) == image.config_digest
    assert json.loads(config)["rootfs"]["diff_ids"] == list(image.diff_ids)

    index = json.loads((layout / "index.json").read_bytes())
    assert index["manifests"][0]["annotations"] == {REF_NAME_ANNOTATION: "v1"}
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}

    # Copying reads and verifies every blob against its digest.
    out = tmp_path / "copy"
    skopeo("copy", ref, f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image.manifest
    for blob in image.blobs():
        assert (out / blob.hex).read_bytes() == blob.data

    # umoci is a strict OCI layout reader.
    stat = run(["umoci", "stat", "--json", "--image", f"{layout}:v1"]).stdout
    assert len(json.loads(stat)["history"]) == 3


def test_oci_layout_multiarch_index(tmp_path: Path) -> None:
    index = sample_multiarch("multi")
    layout = tmp_path / "layout"
    write_oci_layout(layout, index, "latest")
    ref = f"oci:{layout}:latest"

    raw = inspect_raw(ref)
    assert raw == index.manifest
    assert sha256_digest(raw) == index.digest
    listed = json.loads(raw)
    assert listed["mediaType"] == OCI_INDEX
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in listed["manifests"]]
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]

    amd64, arm64 = index.by_platform("amd64"), index.by_platform("arm64")
    assert amd64.digest != arm64.digest
    assert not set(amd64.layer_digests) & set(arm64.layer_digests)
    for image in (amd64, arm64):
        platform = ("--override-arch", image.architecture, "--override-os", "linux")
        info = inspect(ref, *platform)
        # skopeo reports the digest of what the reference names (the index) and the
        # chosen instance's configuration and layers.
        assert info["Digest"] == index.digest
        assert (info["Architecture"], info["Os"]) == (image.architecture, "linux")
        assert info["Layers"] == image.layer_digests
        config = skopeo(*platform, "inspect", "--config", "--raw", ref, text=False).stdout
        assert config == image.config.data
        assert json.loads(config)["architecture"] == image.architecture
        assert json.loads(config)["rootfs"]["diff_ids"] == list(image.diff_ids)

    out = tmp_path / "copy"
    skopeo("copy", "--all", ref, f"dir:{out}")
    for blob in index.blobs():
        assert (out / blob.hex).read_bytes() == blob.data


def test_oci_layout_holds_several_tags(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    first, second = sample_image("a"), sample_image("b")
    write_oci_layout(layout, first, "one")
    write_oci_layout(layout, second, "two")
    write_oci_layout(layout, [second], "one")  # retag: replaces the old "one"
    names = [
        d["annotations"][REF_NAME_ANNOTATION]
        for d in json.loads((layout / "index.json").read_bytes())["manifests"]
    ]
    assert sorted(names) == ["one", "two"]
    assert inspect(f"oci:{layout}:one")["Digest"] == second.digest
    assert inspect(f"oci:{layout}:two")["Digest"] == second.digest


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_build_image_media_types(tmp_path: Path, fmt: str) -> None:
    image = build_image([{"x": b"1"}, make_layer({"y": b"2"})], fmt=fmt, architecture="arm64")
    assert image.media_type == (OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST)
    assert image.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    manifest = image.manifest_json()
    assert manifest["mediaType"] == image.media_type
    assert manifest["config"] == image.config.descriptor()
    assert image.config_json()["variant"] == "v8"
    if fmt == "oci":
        write_oci_layout(tmp_path / "l", image, "t")
        assert inspect_raw(f"oci:{tmp_path / 'l'}:t") == image.manifest
    else:
        # OCI layouts hold OCI media types only (skopeo ignores other descriptors).
        with pytest.raises(ValueError, match="OCI"):
            write_oci_layout(tmp_path / "l", image, "t")


def test_docker_archive(tmp_path: Path) -> None:
    path = tmp_path / "image.tar"
    archive = write_docker_archive(
        path,
        "example.com/test/reg/img:1.0",
        [{"etc/os-release": b"ID=test\n"}, {"app/main.py": b"print('hi')\n"}],
    )
    ref = f"docker-archive:{path}"

    info = inspect(ref)
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    # Archive layers are uncompressed: their digests are the diff ids.
    assert info["Layers"] == list(archive.diff_ids)

    config = inspect_raw(ref, "--config")
    assert config == archive.config
    assert sha256_digest(config) == archive.config_digest
    assert json.loads(config)["rootfs"]["diff_ids"] == list(archive.diff_ids)

    manifest = json.loads(inspect_raw(ref))
    assert manifest["config"]["digest"] == archive.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == list(archive.diff_ids)

    with tarfile.open(path) as tar:
        saved = json.load(tar.extractfile("manifest.json"))
        assert saved[0]["RepoTags"] == ["example.com/test/reg/img:1.0"]
        assert saved[0]["Config"] == archive.config_digest.split(":")[1] + ".json"
        for name, layer_tar in zip(saved[0]["Layers"], archive.layer_tars, strict=True):
            assert tar.extractfile(name).read() == layer_tar

    # Reading by tag works too, and copying verifies the layers.
    tagged = inspect(f"{ref}:example.com/test/reg/img:1.0")
    assert tagged["Layers"] == list(archive.diff_ids)
    out = tmp_path / "copy"
    skopeo("copy", ref, f"dir:{out}")
    for diff_id, layer_tar in zip(archive.diff_ids, archive.layer_tars, strict=True):
        assert (out / diff_id.split(":")[1]).read_bytes() == layer_tar
