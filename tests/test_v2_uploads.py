"""Pushing blobs: ``POST/PATCH/PUT/GET/DELETE /v2/<name>/blobs/uploads/...``, over real HTTP.

Monolithic and chunked uploads, streamed and ranged PATCHes, cross-repository
mounts, digest verification, concurrent pushes of one blob, and clients that
drop the connection in the middle of a body.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid

import pytest

from tests.v2_support import STORAGES, assert_error, digest_of, serve, wait_until

REPO = "acme/dev/app"
OTHER = "acme/dev/other"
DATA = os.urandom(3000)


@pytest.fixture(params=STORAGES)
async def registry(request, tmp_path):
    async with serve(request.param, tmp_path) as client:
        yield client


@pytest.fixture
async def memory_registry(tmp_path):
    async with serve("memory", tmp_path) as client:
        yield client


def upload_path_pattern(repo: str) -> re.Pattern[str]:
    return re.compile(rf"^/v2/{re.escape(repo)}/blobs/uploads/([^/?]+)$")


def stored_size(range_header: str) -> int:
    """Bytes an upload holds, from its ``Range: 0-<last>`` header (``0-0`` read as empty)."""
    found = re.fullmatch(r"0-(\d+)", range_header)
    assert found, f"malformed upload Range {range_header!r}"
    last = int(found[1])
    return 0 if last == 0 else last + 1


async def chunks(data: bytes, size: int = 1000):
    """*data* as an async stream, which aiohttp sends chunked, without Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def send_truncated(registry, method: str, path: str, declared: int, body: bytes) -> None:
    """Send a request declaring *declared* body bytes, send only *body*, then hang up.

    Returns once the server has given up on the request body.
    """
    _reader, writer = await asyncio.open_connection(registry.host, registry.port)
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {registry.host}:{registry.port}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n"
        "\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    await wait_until(lambda: registry.uploads_in_flight == 1)
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: registry.uploads_in_flight == 0)


# -- POST: start, monolithic, mount -------------------------------------------------


async def test_post_starts_an_upload_session(registry):
    reply = await registry.post(f"/v2/{REPO}/blobs/uploads/")

    assert reply.status == 202
    location = reply.headers["Location"]
    found = upload_path_pattern(REPO).match(location)
    assert found, location
    assert reply.headers["Docker-Upload-UUID"] == found[1]
    assert reply.headers["Range"] == "0-0"
    assert reply.headers["Content-Length"] == "0"
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_post_without_trailing_slash_starts_an_upload_session(memory_registry):
    reply = await memory_registry.post(f"/v2/{REPO}/blobs/uploads")

    assert reply.status == 202
    assert upload_path_pattern(REPO).match(reply.headers["Location"])


async def test_each_post_starts_a_distinct_session(registry):
    first = await registry.start_upload(REPO)
    second = await registry.start_upload(REPO)

    assert first != second


async def test_monolithic_post_with_digest_creates_the_blob(registry):
    digest = digest_of(DATA)

    reply = await registry.post(
        f"/v2/{REPO}/blobs/uploads/",
        params={"digest": digest},
        data=DATA,
        headers={"Content-Type": "application/octet-stream"},
    )

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{REPO}/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_monolithic_post_with_wrong_digest_is_400_and_creates_nothing(registry):
    wrong = digest_of(b"something else")

    reply = await registry.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": wrong}, data=DATA)

    assert_error(reply, 400, "DIGEST_INVALID")
    assert (await registry.head(f"/v2/{REPO}/blobs/{wrong}")).status == 404
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).status == 404


async def test_monolithic_post_with_malformed_digest_is_400_digest_invalid(memory_registry):
    reply = await memory_registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"digest": "sha256:xyz"}, data=DATA
    )

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_monolithic_post_of_a_sha512_digest_creates_the_blob(registry):
    digest = digest_of(DATA, "sha512")

    reply = await registry.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": digest}, data=DATA)

    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == digest
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_mount_from_a_repository_holding_the_blob_is_201(registry):
    digest = await registry.push_blob(OTHER, DATA)

    reply = await registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": OTHER}
    )

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{REPO}/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_mounted_blob_is_stored_once(registry):
    digest = await registry.push_blob(OTHER, DATA)

    await registry.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": OTHER})

    assert len(await registry.stored_blob_files()) == 1


async def test_mount_from_a_repository_without_the_blob_falls_back_to_an_upload(registry):
    await registry.push_blob(OTHER, b"another blob")
    digest = await registry.push_blob("acme/dev/third", DATA)

    reply = await registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": OTHER}
    )

    assert reply.status == 202
    assert upload_path_pattern(REPO).match(reply.headers["Location"])
    assert reply.headers["Docker-Upload-UUID"]
    assert reply.headers["Range"] == "0-0"
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


async def test_mount_from_a_repository_that_never_existed_falls_back_to_an_upload(registry):
    digest = await registry.push_blob(OTHER, DATA)

    reply = await registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": "acme/dev/ghost"}
    )

    assert reply.status == 202
    assert upload_path_pattern(REPO).match(reply.headers["Location"])
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


async def test_mount_from_a_repository_whose_blob_was_deleted_falls_back_to_an_upload(registry):
    digest = await registry.push_blob(OTHER, DATA)
    assert (await registry.delete(f"/v2/{OTHER}/blobs/{digest}")).status == 202

    reply = await registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": OTHER}
    )

    assert reply.status == 202
    assert upload_path_pattern(REPO).match(reply.headers["Location"])
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


@pytest.mark.parametrize("source", ["Acme/Dev/App", "acme/dev", "acme/../dev/app", ""])
async def test_mount_from_an_invalid_name_falls_back_to_an_upload(memory_registry, source):
    digest = await memory_registry.push_blob(OTHER, DATA)

    reply = await memory_registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": digest, "from": source}
    )

    assert reply.status == 202
    assert upload_path_pattern(REPO).match(reply.headers["Location"])


async def test_mount_without_from_starts_an_upload(memory_registry):
    digest = await memory_registry.push_blob(OTHER, DATA)

    reply = await memory_registry.post(f"/v2/{REPO}/blobs/uploads/", params={"mount": digest})

    assert reply.status == 202
    assert (await memory_registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


async def test_mount_with_a_malformed_digest_is_400_digest_invalid(memory_registry):
    reply = await memory_registry.post(
        f"/v2/{REPO}/blobs/uploads/", params={"mount": "sha256:zz", "from": OTHER}
    )

    assert_error(reply, 400, "DIGEST_INVALID")


# -- PATCH -------------------------------------------------------------------------------


async def test_streamed_patch_without_content_length_appends_the_body(registry):
    location = await registry.start_upload(REPO)

    reply = await registry.patch(
        location, data=chunks(DATA), headers={"Content-Type": "application/octet-stream"}
    )

    assert reply.status == 202
    assert reply.headers["Location"] == location
    assert reply.headers["Range"] == f"0-{len(DATA) - 1}"
    assert location.endswith(reply.headers["Docker-Upload-UUID"])


async def test_patches_with_content_range_append_in_order(registry):
    location = await registry.start_upload(REPO)

    first = await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})
    second = await registry.patch(
        location, data=DATA[1000:], headers={"Content-Range": f"1000-{len(DATA) - 1}"}
    )

    assert first.status == 202
    assert first.headers["Range"] == "0-999"
    assert second.status == 202
    assert second.headers["Range"] == f"0-{len(DATA) - 1}"


async def test_patch_without_content_range_appends_to_the_end(registry):
    location = await registry.start_upload(REPO)

    await registry.patch(location, data=DATA[:1000])
    reply = await registry.patch(location, data=DATA[1000:])

    assert reply.status == 202
    assert reply.headers["Range"] == f"0-{len(DATA) - 1}"


async def test_out_of_order_chunk_is_416_with_the_current_range(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})

    reply = await registry.patch(
        location, data=DATA[2000:2500], headers={"Content-Range": "2000-2499"}
    )

    assert_error(reply, 416, "BLOB_UPLOAD_INVALID")
    assert reply.headers["Range"] == "0-999"


async def test_repeated_chunk_is_416_and_leaves_the_upload_unchanged(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})

    reply = await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})

    assert reply.status == 416
    assert reply.headers["Range"] == "0-999"
    status = await registry.get(location)
    assert status.headers["Range"] == "0-999"


async def test_upload_continues_after_an_out_of_order_chunk(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})
    await registry.patch(location, data=DATA[2000:], headers={"Content-Range": "2000-2999"})

    await registry.patch(location, data=DATA[1000:], headers={"Content-Range": "1000-2999"})
    reply = await registry.put(location, params={"digest": digest_of(DATA)})

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).body == DATA


async def test_racing_patches_for_the_same_range_accept_exactly_one(registry):
    location = await registry.start_upload(REPO)

    replies = await asyncio.gather(
        registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"}),
        registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"}),
    )

    assert sorted(reply.status for reply in replies) == [202, 416]
    assert (await registry.get(location)).headers["Range"] == "0-999"


async def test_malformed_content_range_is_refused(memory_registry):
    location = await memory_registry.start_upload(REPO)

    reply = await memory_registry.patch(location, data=DATA, headers={"Content-Range": "abc"})

    assert_error(reply, 416, "BLOB_UPLOAD_INVALID")


async def test_content_range_disagreeing_with_content_length_is_400_size_invalid(
    memory_registry,
):
    location = await memory_registry.start_upload(REPO)

    reply = await memory_registry.patch(
        location, data=DATA[:100], headers={"Content-Range": "0-199"}
    )

    assert_error(reply, 400, "SIZE_INVALID")


async def test_patch_to_an_unknown_upload_is_404_blob_upload_unknown(registry):
    reply = await registry.patch(f"/v2/{REPO}/blobs/uploads/{uuid.uuid4()}", data=DATA)

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


# -- PUT ---------------------------------------------------------------------------------


async def test_put_with_digest_completes_the_upload(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)
    digest = digest_of(DATA)

    reply = await registry.put(location, params={"digest": digest})

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{REPO}/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_put_with_a_final_chunk_completes_the_upload(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1000])
    digest = digest_of(DATA)

    reply = await registry.put(
        location,
        params={"digest": digest},
        data=DATA[1000:],
        headers={"Content-Type": "application/octet-stream"},
    )

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{REPO}/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_put_with_the_whole_body_on_a_fresh_session_completes_the_upload(registry):
    location = await registry.start_upload(REPO)
    digest = digest_of(DATA)

    reply = await registry.put(location, params={"digest": digest}, data=DATA)

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_put_with_a_final_chunk_and_content_range_completes_the_upload(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1000], headers={"Content-Range": "0-999"})

    reply = await registry.put(
        location,
        params={"digest": digest_of(DATA)},
        data=DATA[1000:],
        headers={"Content-Range": f"1000-{len(DATA) - 1}"},
    )

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).body == DATA


async def test_put_without_digest_is_400_digest_invalid(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)

    reply = await registry.put(location)

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_put_with_a_malformed_digest_is_400_digest_invalid(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)

    reply = await registry.put(location, params={"digest": "sha256:1234"})

    assert_error(reply, 400, "DIGEST_INVALID")


async def test_digest_mismatch_at_put_is_400_and_the_blob_is_not_visible(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)
    claimed = digest_of(DATA + b"!")

    reply = await registry.put(location, params={"digest": claimed})

    assert_error(reply, 400, "DIGEST_INVALID")
    assert (await registry.head(f"/v2/{REPO}/blobs/{claimed}")).status == 404
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).status == 404


async def test_digest_mismatch_with_a_final_chunk_leaves_no_blob(registry):
    location = await registry.start_upload(REPO)
    claimed = digest_of(b"other content")

    reply = await registry.put(location, params={"digest": claimed}, data=DATA)

    assert_error(reply, 400, "DIGEST_INVALID")
    assert (await registry.head(f"/v2/{REPO}/blobs/{claimed}")).status == 404
    assert await registry.stored_blob_files() == []


async def test_upload_completes_with_the_right_digest_after_a_mismatch(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)
    await registry.put(location, params={"digest": digest_of(b"wrong")})

    reply = await registry.put(location, params={"digest": digest_of(DATA)})

    assert reply.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).body == DATA


async def test_chunked_upload_with_a_sha512_digest_completes(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1234])
    await registry.patch(location, data=DATA[1234:])
    digest = digest_of(DATA, "sha512")

    reply = await registry.put(location, params={"digest": digest})

    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == digest
    head = await registry.head(f"/v2/{REPO}/blobs/{digest}")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(DATA)
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA


async def test_sha512_mismatch_is_400_digest_invalid(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)
    claimed = digest_of(b"other", "sha512")

    reply = await registry.put(location, params={"digest": claimed})

    assert_error(reply, 400, "DIGEST_INVALID")
    assert (await registry.head(f"/v2/{REPO}/blobs/{claimed}")).status == 404


async def test_multi_megabyte_streamed_upload_keeps_every_byte(registry):
    data = os.urandom(3 * 1024 * 1024 + 17)
    location = await registry.start_upload(REPO)

    patched = await registry.patch(location, data=chunks(data, 256 * 1024))
    reply = await registry.put(location, params={"digest": digest_of(data)})

    assert patched.headers["Range"] == f"0-{len(data) - 1}"
    assert reply.status == 201
    got = await registry.get(f"/v2/{REPO}/blobs/{digest_of(data)}")
    assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_completed_upload_session_is_gone(registry):
    location = await registry.start_upload(REPO)
    await registry.put(location, params={"digest": digest_of(DATA)}, data=DATA)

    reply = await registry.get(location)

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_put_to_an_unknown_upload_is_404_blob_upload_unknown(registry):
    reply = await registry.put(
        f"/v2/{REPO}/blobs/uploads/{uuid.uuid4()}", params={"digest": digest_of(DATA)}
    )

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


# -- GET status, DELETE --------------------------------------------------------------


async def test_upload_status_is_204_with_the_range_stored(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA[:1500])

    reply = await registry.get(location)

    assert reply.status == 204
    assert reply.body == b""
    assert reply.headers["Range"] == "0-1499"
    assert reply.headers["Location"] == location
    assert location.endswith(reply.headers["Docker-Upload-UUID"])
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_status_of_an_empty_upload_is_range_0_0(registry):
    location = await registry.start_upload(REPO)

    reply = await registry.get(location)

    assert reply.status == 204
    assert reply.headers["Range"] == "0-0"


async def test_delete_cancels_the_upload(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)

    reply = await registry.delete(location)

    assert reply.status == 204
    assert_error(await registry.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await registry.patch(location, data=DATA), 404, "BLOB_UPLOAD_UNKNOWN")
    put = await registry.put(location, params={"digest": digest_of(DATA)})
    assert_error(put, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_cancelled_upload_leaves_no_blob(registry):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)

    await registry.delete(location)

    assert (await registry.head(f"/v2/{REPO}/blobs/{digest_of(DATA)}")).status == 404
    assert await registry.stored_blob_files() == []


async def test_delete_of_an_unknown_upload_is_404_blob_upload_unknown(registry):
    reply = await registry.delete(f"/v2/{REPO}/blobs/uploads/{uuid.uuid4()}")

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_status_of_an_unknown_upload_is_404_blob_upload_unknown(registry):
    reply = await registry.get(f"/v2/{REPO}/blobs/uploads/{uuid.uuid4()}")

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("upload_id", ["not-a-uuid", "..", "%2e%2e", "x" * 300, "_uploads"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
async def test_malformed_upload_id_is_404_blob_upload_unknown(memory_registry, method, upload_id):
    reply = await memory_registry.request(
        method,
        f"/v2/{REPO}/blobs/uploads/{upload_id}",
        params={"digest": digest_of(DATA)} if method == "PUT" else None,
        data=DATA if method in ("PATCH", "PUT") else None,
    )

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
async def test_upload_of_one_repository_is_unknown_under_another(registry, method):
    location = await registry.start_upload(REPO)
    await registry.patch(location, data=DATA)
    foreign = location.replace(f"/v2/{REPO}/", f"/v2/{OTHER}/")

    reply = await registry.request(
        method,
        foreign,
        params={"digest": digest_of(DATA)} if method == "PUT" else None,
        data=DATA if method == "PATCH" else None,
    )

    assert_error(reply, 404, "BLOB_UPLOAD_UNKNOWN")
    assert (await registry.get(location)).headers["Range"] == f"0-{len(DATA) - 1}"


# -- concurrency and broken connections -----------------------------------------------


async def test_two_clients_pushing_the_same_blob_both_succeed_with_one_copy(registry):
    data = os.urandom(200_000)
    digest = digest_of(data)
    first = await registry.start_upload(REPO)
    second = await registry.start_upload(OTHER)
    await asyncio.gather(registry.patch(first, data=data), registry.patch(second, data=data))

    replies = await asyncio.gather(
        registry.put(first, params={"digest": digest}),
        registry.put(second, params={"digest": digest}),
    )

    assert [reply.status for reply in replies] == [201, 201]
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == data
    assert (await registry.get(f"/v2/{OTHER}/blobs/{digest}")).body == data
    files = await registry.stored_blob_files()
    assert len(files) == 1, files


async def test_concurrent_monolithic_pushes_of_one_blob_store_one_copy(registry):
    data = os.urandom(100_000)
    digest = digest_of(data)

    replies = await asyncio.gather(
        *(
            registry.post(f"/v2/{REPO}/blobs/uploads/", params={"digest": digest}, data=data)
            for _ in range(4)
        )
    )

    assert [reply.status for reply in replies] == [201] * 4
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == data
    assert len(await registry.stored_blob_files()) == 1


async def test_truncated_patch_keeps_a_prefix_and_the_upload_resumes(registry):
    data = os.urandom(100_000)
    location = await registry.start_upload(REPO)

    await send_truncated(registry, "PATCH", location, len(data), data[:40_000])

    status = await registry.get(location)
    assert status.status == 204
    offset = stored_size(status.headers["Range"])
    assert offset <= 40_000
    resumed = await registry.patch(
        location, data=data[offset:], headers={"Content-Range": f"{offset}-{len(data) - 1}"}
    )
    assert resumed.status == 202
    assert resumed.headers["Range"] == f"0-{len(data) - 1}"
    done = await registry.put(location, params={"digest": digest_of(data)})
    assert done.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest_of(data)}")).body == data


async def test_truncated_large_patch_keeps_the_bytes_received(registry):
    data = os.urandom(3 * 1024 * 1024)
    sent = 2 * 1024 * 1024
    location = await registry.start_upload(REPO)

    await send_truncated(registry, "PATCH", location, len(data), data[:sent])

    offset = stored_size((await registry.get(location)).headers["Range"])
    assert 0 < offset <= sent
    await registry.patch(
        location, data=data[offset:], headers={"Content-Range": f"{offset}-{len(data) - 1}"}
    )
    done = await registry.put(location, params={"digest": digest_of(data)})
    assert done.status == 201
    assert (await registry.get(f"/v2/{REPO}/blobs/{digest_of(data)}")).body == data


async def test_truncated_patch_does_not_complete_a_blob(registry):
    data = os.urandom(100_000)
    location = await registry.start_upload(REPO)

    await send_truncated(registry, "PATCH", location, len(data), data[:40_000])

    assert (await registry.head(f"/v2/{REPO}/blobs/{digest_of(data)}")).status == 404
    assert (await registry.head(f"/v2/{REPO}/blobs/{digest_of(data[:40_000])}")).status == 404


async def test_truncated_monolithic_post_leaves_no_blob(registry):
    data = os.urandom(100_000)
    digest = digest_of(data)

    await send_truncated(
        registry, "POST", f"/v2/{REPO}/blobs/uploads/?digest={digest}", len(data), data[:40_000]
    )

    assert (await registry.head(f"/v2/{REPO}/blobs/{digest}")).status == 404
    assert await registry.stored_blob_files() == []


async def test_server_keeps_serving_after_a_client_hangs_up(registry):
    data = os.urandom(100_000)
    location = await registry.start_upload(REPO)
    await send_truncated(registry, "PATCH", location, len(data), data[:10_000])

    digest = await registry.push_blob(REPO, DATA)

    assert (await registry.get(f"/v2/{REPO}/blobs/{digest}")).body == DATA
