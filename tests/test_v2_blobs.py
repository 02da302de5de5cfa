"""Reading and deleting blobs: ``GET/HEAD/DELETE /v2/<name>/blobs/<digest>``, over real HTTP."""

from __future__ import annotations

import os

import pytest

from tests.v2_support import STORAGES, assert_error, digest_of, serve

REPO = "acme/dev/app"
OTHER = "acme/dev/other"
DATA = bytes(range(256)) * 40  # 10240 bytes, every byte value
UNKNOWN = digest_of(b"never pushed")


@pytest.fixture(params=STORAGES)
async def registry(request, tmp_path):
    async with serve(request.param, tmp_path) as client:
        yield client


@pytest.fixture
async def memory_registry(tmp_path):
    async with serve("memory", tmp_path) as client:
        yield client


# -- GET / HEAD ----------------------------------------------------------------------


async def test_get_blob_returns_its_bytes_and_headers(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}")

    assert reply.status == 200
    assert reply.body == DATA
    assert reply.headers["Docker-Content-Digest"] == digest
    assert int(reply.headers["Content-Length"]) == len(DATA)
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["ETag"]
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_head_blob_returns_headers_and_no_body(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.head(f"/v2/{REPO}/blobs/{digest}")

    assert reply.status == 200
    assert reply.body == b""
    assert int(reply.headers["Content-Length"]) == len(DATA)
    assert reply.headers["Docker-Content-Digest"] == digest
    assert reply.headers["ETag"]
    assert reply.headers["Accept-Ranges"] == "bytes"


async def test_get_unknown_blob_is_404_blob_unknown(registry):
    reply = await registry.get(f"/v2/{REPO}/blobs/{UNKNOWN}")

    assert_error(reply, 404, "BLOB_UNKNOWN")


async def test_head_unknown_blob_is_404_without_body(registry):
    reply = await registry.head(f"/v2/{REPO}/blobs/{UNKNOWN}")

    assert reply.status == 404
    assert reply.body == b""


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("sha256:abc", id="short"),
        pytest.param("sha256:" + "G" * 64, id="not-hex"),
        pytest.param("sha256:" + "A" * 64, id="uppercase-hex"),
        pytest.param("md5:" + "a" * 32, id="unknown-algorithm"),
        pytest.param("nocolon", id="no-algorithm"),
    ],
)
async def test_get_blob_with_malformed_digest_is_400_digest_invalid(memory_registry, digest):
    reply = await memory_registry.get(f"/v2/{REPO}/blobs/{digest}")

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_blob_pushed_to_one_repository_is_not_readable_through_another(registry):
    digest = await registry.push_blob(REPO, DATA)

    get = await registry.get(f"/v2/{OTHER}/blobs/{digest}")
    head = await registry.head(f"/v2/{OTHER}/blobs/{digest}")

    assert_error(get, 404, "BLOB_UNKNOWN")
    assert head.status == 404


async def test_blob_is_not_readable_through_another_tenant(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/intruder/dev/app/blobs/{digest}")

    assert_error(reply, 404, "BLOB_UNKNOWN")


async def test_sha512_blob_is_readable_by_its_sha512_digest(registry):
    digest = await registry.push_blob(REPO, DATA, algorithm="sha512")

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}")

    assert reply.status == 200
    assert reply.body == DATA
    assert reply.headers["Docker-Content-Digest"] == digest


async def test_empty_blob_is_served_with_zero_length(registry):
    digest = await registry.push_blob(REPO, b"")

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}")

    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["Content-Length"] == "0"


# -- Range ----------------------------------------------------------------------------


async def test_range_request_returns_206_with_content_range(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=100-1123"})

    assert reply.status == 206
    assert reply.body == DATA[100:1124]
    assert reply.headers["Content-Range"] == f"bytes 100-1123/{len(DATA)}"
    assert int(reply.headers["Content-Length"]) == 1024


async def test_open_ended_range_returns_the_rest_of_the_blob(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=10000-"})

    assert reply.status == 206
    assert reply.body == DATA[10000:]
    assert reply.headers["Content-Range"] == f"bytes 10000-{len(DATA) - 1}/{len(DATA)}"


async def test_suffix_range_returns_the_last_bytes(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=-16"})

    assert reply.status == 206
    assert reply.body == DATA[-16:]
    assert reply.headers["Content-Range"] == f"bytes {len(DATA) - 16}-{len(DATA) - 1}/{len(DATA)}"


async def test_range_past_the_end_is_clamped_to_the_blob(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=10200-99999"})

    assert reply.status == 206
    assert reply.body == DATA[10200:]
    assert reply.headers["Content-Range"] == f"bytes 10200-{len(DATA) - 1}/{len(DATA)}"


async def test_range_starting_past_the_end_is_416(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.get(
        f"/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes={len(DATA)}-{len(DATA) + 10}"}
    )

    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert reply.content_type != "text/html"


# -- DELETE ---------------------------------------------------------------------------


async def test_delete_blob_answers_202_and_then_it_is_unknown(registry):
    digest = await registry.push_blob(REPO, DATA)

    deleted = await registry.delete(f"/v2/{REPO}/blobs/{digest}")

    assert deleted.status == 202
    assert deleted.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert_error(await registry.get(f"/v2/{REPO}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


async def test_delete_unknown_blob_is_404_blob_unknown(registry):
    reply = await registry.delete(f"/v2/{REPO}/blobs/{UNKNOWN}")

    assert_error(reply, 404, "BLOB_UNKNOWN")


async def test_delete_blob_twice_is_404_the_second_time(registry):
    digest = await registry.push_blob(REPO, DATA)
    await registry.delete(f"/v2/{REPO}/blobs/{digest}")

    reply = await registry.delete(f"/v2/{REPO}/blobs/{digest}")

    assert_error(reply, 404, "BLOB_UNKNOWN")


async def test_delete_blob_with_malformed_digest_is_400_digest_invalid(memory_registry):
    reply = await memory_registry.delete(f"/v2/{REPO}/blobs/sha256:nothex")

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_blob_shared_with_another_repository_survives_deletion_in_the_first(registry):
    digest = await registry.push_blob(REPO, DATA)
    await registry.push_blob(OTHER, DATA)

    deleted = await registry.delete(f"/v2/{REPO}/blobs/{digest}")

    assert deleted.status == 202
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).status == 404
    reply = await registry.get(f"/v2/{OTHER}/blobs/{digest}")
    assert reply.status == 200
    assert reply.body == DATA


async def test_delete_through_a_repository_without_the_blob_leaves_it_alone(registry):
    digest = await registry.push_blob(REPO, DATA)

    reply = await registry.delete(f"/v2/{OTHER}/blobs/{digest}")

    assert_error(reply, 404, "BLOB_UNKNOWN")
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_blob_pushed_twice_to_two_repositories_is_stored_once(registry):
    await registry.push_blob(REPO, DATA)
    await registry.push_blob(OTHER, DATA)

    files = await registry.stored_blob_files()

    assert len([path for path in files if os.path.basename(path) == "data"]) == 1
