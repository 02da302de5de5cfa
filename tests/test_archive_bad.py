"""Bad archives: a clear error naming the entry, nothing imported, no temporary file left."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from drivers import open_driver
from registry_core import Registry
from registry_core.archive import ArchiveInvalid, ArchiveTooLarge, ImportOptions, import_archive
from tests.helpers.archives import Entry, read_entries, write_oci_archive, write_tar
from tests.helpers.images import REF_NAME_ANNOTATION, sample_image, write_docker_archive

Change = Callable[[list[Entry]], list[Entry]]


@pytest.fixture
def registry() -> Registry:
    return Registry(open_driver("memory://"))


def good_archive(tmp_path: Path) -> Path:
    return write_docker_archive(
        tmp_path / "good.docker", "app:1", [{"a.txt": "a" * 2000}, {"b.txt": "b"}]
    ).path


def entry(entries: list[Entry], suffix: str) -> Entry:
    return next(e for e in entries if e.name.endswith(suffix))


def layer_names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries if e.name.endswith("/layer.tar")]


async def assert_refused(
    registry: Registry,
    path: Path,
    tmp_path: Path,
    match: str,
    *,
    error: type[Exception] = ArchiveInvalid,
    options: ImportOptions | None = None,
) -> Exception:
    temp = tmp_path / "work"
    temp.mkdir(exist_ok=True)
    options = options or ImportOptions()
    options = ImportOptions(
        max_size=options.max_size,
        max_layer_size=options.max_layer_size,
        max_metadata_size=options.max_metadata_size,
        temp_dir=str(temp),
    )
    with pytest.raises(error, match=match) as caught:
        await import_archive(registry, "acme/prod", path, options=options)
    assert await registry.repositories() == []
    assert os.listdir(temp) == []
    return caught.value


def rewritten(tmp_path: Path, change: Change, name: str = "bad.docker") -> Path:
    return write_tar(tmp_path / name, change(read_entries(good_archive(tmp_path))))


async def test_truncated_tar(registry: Registry, tmp_path: Path) -> None:
    data = good_archive(tmp_path).read_bytes()
    cut = tmp_path / "cut.docker"
    cut.write_bytes(data[: len(data) // 2])
    await assert_refused(registry, cut, tmp_path, "truncated")


async def test_tar_cut_at_an_entry_boundary(registry: Registry, tmp_path: Path) -> None:
    data = good_archive(tmp_path).read_bytes().rstrip(b"\0")
    cut = tmp_path / "cut.docker"
    cut.write_bytes(data + b"\0" * (-len(data) % 512))
    await assert_refused(registry, cut, tmp_path, "truncated|end-of-archive")


async def test_not_a_tar(registry: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not an archive" * 100)
    await assert_refused(registry, junk, tmp_path, "not a tar archive")


async def test_gzip_garbage(registry: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(4000))
    await assert_refused(registry, junk, tmp_path, "not valid gzip")


async def test_truncated_gzip(registry: Registry, tmp_path: Path) -> None:
    packed = gzip.compress(good_archive(tmp_path).read_bytes())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) - 100])
    await assert_refused(registry, cut, tmp_path, "gzip stream is truncated")


async def test_gzip_garbage_inside_a_layer(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        entry(entries, "/layer.tar").data = b"\x1f\x8b\x08\x00" + b"\xff" * 3000
        return entries

    error = await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "not valid gzip")
    assert str(error.detail["entry"]).endswith("/layer.tar")  # type: ignore[attr-defined]


async def test_missing_layer_file(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        victim = layer_names(entries)[1]
        return [e for e in entries if e.name != victim]

    await assert_refused(
        registry,
        rewritten(tmp_path, change),
        tmp_path,
        r"layer '[0-9a-f]{64}/layer\.tar' is missing",
    )


async def test_diff_id_mismatch(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        layer = entry(entries, "/layer.tar")
        layer.data = (layer.data or b"").replace(b"a" * 10, b"c" * 10, 1)
        return entries

    await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "diff_id mismatch")


async def test_config_digest_mismatch(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        config = next(
            e
            for e in entries
            if e.name.endswith(".json") and "/" not in e.name and e.name != "manifest.json"
        )
        doc = json.loads(config.data or b"")
        doc["config"]["Cmd"] = ["/bin/evil"]
        config.data = json.dumps(doc).encode()
        return entries

    await assert_refused(
        registry,
        rewritten(tmp_path, change),
        tmp_path,
        r"config digest mismatch: '[0-9a-f]{64}\.json'",
    )


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/etc/absolute.txt", "blobs/../../x", "./a/../../b"]
)
async def test_entries_leaving_the_archive(registry: Registry, tmp_path: Path, name: str) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        return [*entries, Entry(name, b"x")]

    await assert_refused(
        registry, rewritten(tmp_path, change), tmp_path, "absolute path|'\\.\\.' path component"
    )


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
async def test_symlink_outside_the_archive(registry: Registry, tmp_path: Path, target: str) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        return [*entries, Entry("evil/link", kind="symlink", linkname=target)]

    await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "points outside")


async def test_hardlink_outside_the_archive(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        return [*entries, Entry("evil/hard", kind="hardlink", linkname="../outside")]

    await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "'\\.\\.' path component")


async def test_symlink_loop(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        victim = layer_names(entries)[0]
        kept = [e for e in entries if e.name != victim]
        folder = victim.split("/")[0]
        return [
            *kept,
            Entry(victim, kind="symlink", linkname="loop.tar"),
            Entry(f"{folder}/loop.tar", kind="symlink", linkname="layer.tar"),
        ]

    await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "link loop")


async def test_dangling_symlink(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        victim = layer_names(entries)[0]
        kept = [e for e in entries if e.name != victim]
        return [*kept, Entry(victim, kind="symlink", linkname="../nothing.tar")]

    await assert_refused(registry, rewritten(tmp_path, change), tmp_path, "not in the archive")


async def test_internal_links_as_docker_and_skopeo_write_them_are_followed(
    registry: Registry, tmp_path: Path
) -> None:
    """``<id>/layer.tar -> ../<hex>.tar`` (skopeo) and hard links are legitimate."""

    def change(entries: list[Entry]) -> list[Entry]:
        first, second = layer_names(entries)
        out = []
        for item in entries:
            if item.name == first:
                hexname = hashlib.sha256(item.data or b"").hexdigest() + ".tar"
                out += [
                    Entry(hexname, item.data),
                    Entry(first, kind="symlink", linkname=f"../{hexname}"),
                ]
            elif item.name == second:
                out += [
                    Entry("stash/l2.tar", item.data),
                    Entry(second, kind="hardlink", linkname="stash/l2.tar"),
                ]
            else:
                out.append(item)
        return out

    result = await import_archive(registry, "acme/prod", rewritten(tmp_path, change))
    assert result.images[0].tags == ("1",)


async def test_manifest_json_not_json(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        entry(entries, "manifest.json").data = b"[{not json"
        return entries

    error = await assert_refused(
        registry, rewritten(tmp_path, change), tmp_path, "manifest.json.*not valid JSON"
    )
    assert error.detail == {"entry": "manifest.json"}  # type: ignore[attr-defined]


async def test_manifest_json_huge(registry: Registry, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        entry(entries, "manifest.json").data = b"[" + b" " * 20_000 + b"]"
        return entries

    await assert_refused(
        registry,
        rewritten(tmp_path, change),
        tmp_path,
        "manifest.json 'manifest.json' is 20002 bytes; the limit is 16384",
        options=ImportOptions(max_metadata_size=16384),
    )


async def test_layer_over_the_size_limit(registry: Registry, tmp_path: Path) -> None:
    await assert_refused(
        registry,
        good_archive(tmp_path),
        tmp_path,
        r"layer '[0-9a-f]{64}/layer\.tar' is \d+ bytes; the limit is 3000",
        options=ImportOptions(max_layer_size=3000),
    )


async def test_archive_over_the_size_limit(registry: Registry, tmp_path: Path) -> None:
    packed = tmp_path / "a.gz"
    packed.write_bytes(gzip.compress(good_archive(tmp_path).read_bytes()))
    error = await assert_refused(
        registry,
        packed,
        tmp_path,
        "unpacks to more than 5000 bytes",
        error=ArchiveTooLarge,
        options=ImportOptions(max_size=5000),
    )
    assert error.status == 413  # type: ignore[attr-defined]


async def test_oci_blob_that_does_not_match_its_digest(registry: Registry, tmp_path: Path) -> None:
    image = sample_image("x")
    path = write_oci_archive(tmp_path / "x.tar", [(image, {REF_NAME_ANNOTATION: "x:1"})])
    layer_hex = image.layers[1].hex
    entries = read_entries(path)
    entry(entries, layer_hex).data = image.layers[0].data
    bad = write_tar(tmp_path / "bad.tar", entries)
    await assert_refused(registry, bad, tmp_path, f"blobs/sha256/{layer_hex}")


async def test_a_bad_second_image_leaves_the_first_untagged(
    registry: Registry, tmp_path: Path
) -> None:
    good, bad = sample_image("good"), sample_image("bad")
    path = write_oci_archive(
        tmp_path / "two.tar",
        [(good, {REF_NAME_ANNOTATION: "good:1"}), (bad, {REF_NAME_ANNOTATION: "bad:1"})],
    )
    entries = read_entries(path)
    entry(entries, bad.layers[0].hex).data = b"\x1f\x8b" + b"\0" * 100
    await assert_refused(
        registry, write_tar(tmp_path / "b.tar", entries), tmp_path, bad.layers[0].hex
    )


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def archive_server(registry_factory, tmp_path: Path):
    temp = tmp_path / "server-temp"
    temp.mkdir()
    server = registry_factory(
        env={"CARGOHOLD_ARCHIVES_TEMP_DIR": str(temp), "CARGOHOLD_ARCHIVES_MAX_SIZE": "200000"}
    )
    server.archive_temp = temp
    return server


def archives_url(server, tenant: str = "acme/prod") -> str:
    return f"{server.url}/api/v1/registries/{tenant}/archives"


def catalog(server) -> list[str]:
    return requests.get(f"{server.url}/v2/_catalog", timeout=10).json()["repositories"]


def test_http_bad_archive_is_a_400_naming_the_entry(archive_server, tmp_path: Path) -> None:
    def change(entries: list[Entry]) -> list[Entry]:
        layer = entry(entries, "/layer.tar")
        layer.data = (layer.data or b"").replace(b"a" * 10, b"c" * 10, 1)
        return entries

    body = rewritten(tmp_path, change).read_bytes()
    response = requests.post(archives_url(archive_server), data=body, timeout=30)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["code"] == "ARCHIVE_INVALID"
    assert "diff_id mismatch" in error["message"]
    assert error["detail"]["entry"].endswith("/layer.tar")
    assert catalog(archive_server) == []
    assert os.listdir(archive_server.archive_temp) == []


def test_http_archive_over_max_size_is_413(archive_server) -> None:
    response = requests.post(archives_url(archive_server), data=b"\0" * 300_000, timeout=30)
    assert response.status_code == 413
    assert response.json()["errors"][0]["code"] == "SIZE_INVALID"
    assert os.listdir(archive_server.archive_temp) == []


def test_http_upload_cut_off_midway(archive_server, tmp_path: Path) -> None:
    body = good_archive(tmp_path).read_bytes()
    head = (
        f"POST /api/v1/registries/acme/prod/archives HTTP/1.1\r\n"
        f"Host: {archive_server.host}\r\nContent-Type: application/x-tar\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", archive_server.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
    # The server notices the connection is gone, refuses the archive and cleans up.
    import time

    deadline = time.monotonic() + 10
    while os.listdir(archive_server.archive_temp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert os.listdir(archive_server.archive_temp) == []
    assert catalog(archive_server) == []
    ok = requests.post(archives_url(archive_server), data=body, timeout=30)
    assert ok.status_code == 201, ok.text
    assert catalog(archive_server) == ["acme/prod/app"]


def test_http_unnamed_image_without_tag_is_400(archive_server, tmp_path: Path) -> None:
    image = sample_image("x")
    path = write_oci_archive(tmp_path / "x.tar", [(image, {REF_NAME_ANNOTATION: "1.0"})])
    response = requests.post(archives_url(archive_server), data=path.read_bytes(), timeout=30)
    assert response.status_code == 400
    assert "names only the tag '1.0'" in response.json()["errors"][0]["message"]
    named = requests.post(
        archives_url(archive_server), params={"tag": "x"}, data=path.read_bytes(), timeout=30
    )
    assert named.status_code == 201
    assert named.json()["images"][0]["tags"] == ["1.0"]
