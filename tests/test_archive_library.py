"""registry_core.archive through the library alone (no HTTP): formats, names, digests."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from drivers import open_driver
from registry_core import Registry
from registry_core.archive import ImportOptions, export_docker_archive, import_archive
from registry_core.archive.compression import GzipCompressor
from registry_core.errors import NameInvalid
from tests.helpers.archives import (
    compress_file,
    read_entries,
    uncompressed_image,
    write_combined_archive,
    write_oci_archive,
)
from tests.helpers.images import (
    REF_NAME_ANNOTATION,
    build_image,
    build_index,
    make_layer_tar,
    sample_image,
    sha256_digest,
    write_docker_archive,
)

GOLDEN_LAYERS = [{"etc/golden.txt": "golden\n"}, {"usr/share/golden/data": "0123456789" * 500}]
# Pinned: the same archive gives the same digests with this Cargohold and zlib/zstd build.
GOLDEN_GZIP_MANIFEST = "sha256:fee28437257a5b20456d118aea4dee42a501789448b7c9ec22ac7ffe6fc6c918"
GOLDEN_ZSTD_MANIFEST = "sha256:6e04003c8e904e7195192aa7fc7d3bb3dc89878434a3dd7320378d7eae861c76"


@pytest.fixture
def registry() -> Registry:
    return Registry(open_driver("memory://"))


async def manifest_json(registry: Registry, name: str, tag: str) -> dict:
    stored = await registry.repository(name).manifests.get(tag)
    return json.loads(stored.body)


async def blob_bytes(registry: Registry, name: str, digest: str) -> bytes:
    from registry_core import Digest

    repo = registry.repository(name)
    parts = [chunk async for chunk in repo.blobs.read(Digest.parse(digest))]
    return b"".join(parts)


def golden_archive(tmp_path: Path) -> Path:
    return write_docker_archive(tmp_path / "golden.docker", "golden:1", GOLDEN_LAYERS).path


async def test_docker_save_archive_is_stored_as_docker_schema2_with_gzip_layers(
    registry: Registry, tmp_path: Path
) -> None:
    archive = write_docker_archive(
        tmp_path / "app.docker", "docker.io/library/app:1", [{"a": "1"}, {"b": "2" * 4000}]
    )
    result = await import_archive(registry, "acme/prod", archive.path)
    [image] = result.images
    assert (image.repository, image.tags, image.verbatim) == ("acme/prod/app", ("1",), False)
    manifest = await manifest_json(registry, "acme/prod/app", "1")
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["digest"] == archive.config_digest
    assert image.digest == sha256_digest(
        (await registry.repository("acme/prod/app").manifests.get("1")).body
    )
    for layer, tar in zip(manifest["layers"], archive.layer_tars, strict=True):
        assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        stored = await blob_bytes(registry, "acme/prod/app", layer["digest"])
        assert stored[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # fixed header
        assert gzip.decompress(stored) == tar


async def test_golden_digests_gzip(registry: Registry, tmp_path: Path) -> None:
    result = await import_archive(registry, "acme/prod", golden_archive(tmp_path))
    assert result.images[0].digest == GOLDEN_GZIP_MANIFEST


async def test_golden_digests_zstd(registry: Registry, tmp_path: Path) -> None:
    options = ImportOptions(compression="zstd")
    result = await import_archive(registry, "acme/prod", golden_archive(tmp_path), options=options)
    assert result.images[0].digest == GOLDEN_ZSTD_MANIFEST


async def test_same_archive_gives_same_digests_twice(tmp_path: Path) -> None:
    path = golden_archive(tmp_path)
    first = await import_archive(Registry(open_driver("memory://")), "a/b", path)
    second = await import_archive(Registry(open_driver("memory://")), "c/d", path)
    assert first.images[0].digest == second.images[0].digest


async def test_zstd_option_stores_oci_manifest_with_tar_zstd_layers(
    registry: Registry, tmp_path: Path
) -> None:
    archive = write_docker_archive(tmp_path / "z.docker", "z:1", [{"a": "x" * 3000}, {"b": "y"}])
    await import_archive(
        registry, "acme/prod", archive.path, options=ImportOptions(compression="zstd")
    )
    manifest = await manifest_json(registry, "acme/prod/z", "1")
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    for layer, tar in zip(manifest["layers"], archive.layer_tars, strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        stored = await blob_bytes(registry, "acme/prod/z", layer["digest"])
        assert zstandard.ZstdDecompressor().decompress(stored) == tar


def test_gzip_compressor_output_is_plain_gzip() -> None:
    packer = GzipCompressor()
    data = b"hello world" * 1000
    assert gzip.decompress(packer.compress(data) + packer.flush()) == data


async def test_oci_archive_is_stored_byte_for_byte(registry: Registry, tmp_path: Path) -> None:
    image = sample_image("svc")
    path = write_oci_archive(
        tmp_path / "svc.tar", [(image, {REF_NAME_ANNOTATION: "registry.example.com/team/svc:2"})]
    )
    result = await import_archive(registry, "acme/prod", path)
    [imported] = result.images
    assert imported.verbatim
    assert (imported.repository, imported.tags, imported.digest) == (
        "acme/prod/team/svc",
        ("2",),
        image.digest,
    )
    stored = await registry.repository("acme/prod/team/svc").manifests.get("2")
    assert stored.body == image.manifest
    for layer in image.layers:
        assert await blob_bytes(registry, "acme/prod/team/svc", layer.digest) == layer.data


async def test_tag_only_ref_name_needs_a_name(registry: Registry, tmp_path: Path) -> None:
    image = sample_image("svc")
    path = write_oci_archive(tmp_path / "svc.tar", [(image, {REF_NAME_ANNOTATION: "3.1"})])
    with pytest.raises(NameInvalid, match=r"names only the tag '3\.1'"):
        await import_archive(registry, "acme/prod", path)
    assert await registry.repositories() == []
    result = await import_archive(registry, "acme/prod", path, tags=["svc"])
    assert (result.images[0].repository, result.images[0].tags) == ("acme/prod/svc", ("3.1",))


async def test_untagged_docker_save_needs_a_tag(registry: Registry, tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "u.docker", "u:1", [{"a": "1"}])
    entries = read_entries(archive.path)
    for entry in entries:
        if entry.name == "manifest.json":
            doc = json.loads(entry.data or b"")
            doc[0]["RepoTags"] = None
            entry.data = json.dumps(doc).encode()
    from tests.helpers.archives import write_tar

    untagged = write_tar(tmp_path / "untagged.docker", entries)
    with pytest.raises(NameInvalid, match="carries no name"):
        await import_archive(registry, "acme/prod", untagged)
    result = await import_archive(registry, "acme/prod", untagged, tags=["named:7"])
    assert result.images[0].tags == ("7",)


async def test_tag_option_replaces_the_archive_names(registry: Registry, tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "a.docker", "app:1", [{"a": "1"}])
    result = await import_archive(
        registry, "acme/prod", archive.path, tags=["other:2", "other:3", "acme/prod/third:4"]
    )
    named = {(i.repository, t) for i in result.images for t in i.tags}
    assert named == {("acme/prod/other", "2"), ("acme/prod/other", "3"), ("acme/prod/third", "4")}
    assert await registry.repositories() == ["acme/prod/other", "acme/prod/third"]


async def test_registry_host_and_own_tenant_prefix_are_dropped(
    registry: Registry, tmp_path: Path
) -> None:
    archive = write_docker_archive(
        tmp_path / "a.docker", "localhost:5000/acme/prod/app:3", [{"a": "1"}]
    )
    result = await import_archive(registry, "acme/prod", archive.path)
    assert (result.images[0].repository, result.images[0].tags) == ("acme/prod/app", ("3",))


async def test_several_images_and_tags_in_one_archive(registry: Registry, tmp_path: Path) -> None:
    one, two = sample_image("one"), sample_image("two")
    multi = build_index([sample_image("m", architecture=a) for a in ("amd64", "arm64")])
    path = write_oci_archive(
        tmp_path / "many.tar",
        [
            (one, {REF_NAME_ANNOTATION: "one:1"}),
            (one, {REF_NAME_ANNOTATION: "one:latest"}),
            (two, {REF_NAME_ANNOTATION: "docker.io/library/two:2"}),
            (multi, {REF_NAME_ANNOTATION: "multi:1"}),
        ],
    )
    result = await import_archive(registry, "acme/prod", path)
    by_repo = {i.repository: i for i in result.images}
    assert by_repo["acme/prod/one"].tags == ("1", "latest")
    assert by_repo["acme/prod/one"].digest == one.digest
    assert by_repo["acme/prod/two"].digest == two.digest
    assert by_repo["acme/prod/multi"].digest == multi.digest
    assert set(by_repo["acme/prod/multi"].platforms) == {"linux/amd64", "linux/arm64/v8"}
    with pytest.raises(NameInvalid, match="holds 3 images"):
        await import_archive(registry, "acme/prod", path, tags=["x:1"])


async def test_index_missing_other_platforms_imports_the_image_it_holds(
    registry: Registry, tmp_path: Path
) -> None:
    amd, arm = sample_image("p", architecture="amd64"), sample_image("p", architecture="arm64")
    index = build_index([amd, arm])
    path = write_oci_archive(tmp_path / "p.tar", [(index, {REF_NAME_ANNOTATION: "p:1"})])
    entries = [e for e in read_entries(path) if not e.name.endswith(arm.digest.split(":")[1])]
    from tests.helpers.archives import write_tar

    partial = write_tar(tmp_path / "partial.tar", entries)
    result = await import_archive(registry, "acme/prod", partial)
    assert result.images[0].digest == amd.digest


async def test_combined_format_with_compressed_blobs_keeps_the_original_manifest(
    registry: Registry, tmp_path: Path
) -> None:
    image = sample_image("combo")
    path = write_combined_archive(tmp_path / "c.tar", image, ["combo:1", "combo:stable"])
    result = await import_archive(registry, "acme/prod", path)
    [imported] = result.images
    assert imported.source == "docker-archive+oci-layout"
    assert imported.verbatim and imported.digest == image.digest
    assert set(imported.tags) == {"1", "stable"}


async def test_combined_format_with_uncompressed_layers_is_recompressed(
    registry: Registry, tmp_path: Path
) -> None:
    tars = [make_layer_tar({"a": "1" * 100}), make_layer_tar({"b": "2"})]
    base = build_image([(gzip.compress(t, mtime=0), sha256_digest(t)) for t in tars])
    image = uncompressed_image(base, tars)
    path = write_combined_archive(tmp_path / "c.tar", image, ["raw:1"])
    result = await import_archive(registry, "acme/prod", path)
    [imported] = result.images
    assert not imported.verbatim
    manifest = await manifest_json(registry, "acme/prod/raw", "1")
    assert manifest["config"]["digest"] == image.config.digest
    assert [
        gzip.decompress(await blob_bytes(registry, "acme/prod/raw", layer["digest"]))
        for layer in manifest["layers"]
    ] == tars


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
async def test_compressed_archives_import_like_plain_ones(
    registry: Registry, tmp_path: Path, kind: str
) -> None:
    plain = golden_archive(tmp_path)
    result = await import_archive(registry, "acme/prod", compress_file(plain, kind))
    assert result.archive_compression == kind
    assert result.images[0].digest == GOLDEN_GZIP_MANIFEST


async def test_export_then_import_round_trips(registry: Registry, tmp_path: Path) -> None:
    archive = write_docker_archive(
        tmp_path / "a.docker", "app:1", [{"a": "1"}, {"b": "2" * 5000}, {"a": "1"}]
    )
    first = await import_archive(registry, "acme/prod", archive.path)
    out = tmp_path / "out.docker"
    exported = await export_docker_archive(registry.repository("acme/prod/app"), "1", out)
    assert exported.config_digest == archive.config_digest
    assert list(exported.diff_ids) == list(archive.diff_ids)
    assert exported.repo_tag == "acme/prod/app:1"
    again = await import_archive(Registry(open_driver("memory://")), "acme/prod", out)
    assert again.images[0].digest == first.images[0].digest
    assert again.images[0].repository == "acme/prod/app"


async def test_export_picks_the_platform_of_an_index(registry: Registry, tmp_path: Path) -> None:
    images = [sample_image("m", architecture=a) for a in ("amd64", "arm64")]
    path = write_oci_archive(
        tmp_path / "m.tar", [(build_index(images), {REF_NAME_ANNOTATION: "m:1"})]
    )
    await import_archive(registry, "acme/prod", path)
    repo = registry.repository("acme/prod/m")
    arm = await export_docker_archive(repo, "1", tmp_path / "arm.docker", platform="linux/arm64")
    assert arm.config_digest == images[1].config.digest
    amd = await export_docker_archive(repo, "1", tmp_path / "amd.docker")
    assert amd.config_digest == images[0].config.digest
