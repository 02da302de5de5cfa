"""A chunk of a chunked upload is answered once written, while its last buffers still hash.

The body of a large PATCH is read off the socket and written by one thread and hashed by
a second (``registry_server/http/bodies.py``); the answer used to wait for the hash of
the last buffers, which left the hashing thread idle while the client sent its next
chunk. Now the upload keeps that hash as pending (``BlobStore._take_hash_state``): the
next PATCH and the closing PUT of the same process wait for it before they hash on. Here
the hash is slowed on purpose, so the answer visibly comes first, and the blob must still
get exactly the digest of its bytes, through further chunks, a wrong digest and a right
one, and when the next chunk goes to a second server process on the same storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from registry_core.digest import Hasher
from registry_server.http import bodies
from tests.helpers.in_process import serve_in_process

REPO = "deferred/reg/app"
MiB = 1 << 20
SLOW = 0.15
"""Seconds the hash of each slowed buffer takes beyond its real cost."""


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    store = tmp_path / "store"
    first, url_a = await serve_in_process(store)
    second, url_b = await serve_in_process(store)
    try:
        yield url_a, url_b
    finally:
        await first.cleanup()
        await second.cleanup()


class SlowHash:
    """Hasher.update slowed on the body threads, noting when each hash ended."""

    def __init__(self) -> None:
        self.ended: list[float] = []
        self.lock = threading.Lock()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = Hasher.update

        def update(hasher: Hasher, data: bytes | memoryview) -> None:
            on_body_thread = threading.current_thread().name.startswith("body-hash")
            if on_body_thread and len(data) >= 64 * 1024:
                time.sleep(SLOW)
            real(hasher, data)
            if on_body_thread:
                with self.lock:
                    self.ended.append(time.monotonic())

        monkeypatch.setattr(Hasher, "update", update)


async def _start(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(f"{base}/v2/{REPO}/blobs/uploads/") as response:
        assert response.status == 202, await response.text()
        return response.headers["Location"]


def _url(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


async def _patch(http: aiohttp.ClientSession, url: str, body: bytes, start: int) -> str:
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{start}-{start + len(body) - 1}",
    }
    async with http.patch(url, data=body, headers=headers) as response:
        assert response.status == 202, await response.text()
        assert response.headers["Range"] == f"0-{start + len(body) - 1}"
        return response.headers["Location"]


async def test_a_chunk_is_answered_before_its_last_buffers_are_hashed(
    servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bodies.DIRECT_MODE == "split"
    base, _ = servers
    slow = SlowHash()
    slow.install(monkeypatch)
    data = [os.urandom(3 * MiB + 777), os.urandom(2 * MiB), os.urandom(1234)]
    async with aiohttp.ClientSession() as http:
        location = await _start(http, base)
        began = time.monotonic()
        location = await _patch(http, _url(base, location), data[0], 0)
        answered = time.monotonic()
        # The answer came while buffers of this very chunk were still being hashed.
        await _wait_until(lambda: len(slow.ended) >= 4)
        assert max(slow.ended) > answered + SLOW / 2, (answered - began, slow.ended)
        # The next chunk follows at once: its hash waits for the previous one's.
        location = await _patch(http, _url(base, location), data[1], len(data[0]))
        location = await _patch(http, _url(base, location), data[2], len(data[0]) + len(data[1]))
        whole = b"".join(data)
        wrong = "sha256:" + hashlib.sha256(whole[:-1]).hexdigest()
        async with http.put(_url(base, location), params={"digest": wrong}) as response:
            assert response.status == 400
            assert (await response.json())["errors"][0]["code"] == "DIGEST_INVALID"
        right = "sha256:" + hashlib.sha256(whole).hexdigest()
        async with http.put(_url(base, location), params={"digest": right}) as response:
            assert response.status == 201, await response.text()
        async with http.get(f"{base}/v2/{REPO}/blobs/{right}") as response:
            assert response.status == 200
            assert hashlib.sha256(await response.read()).hexdigest() == right[7:]


async def test_a_chunk_closed_at_once_and_one_continued_elsewhere_get_the_right_digest(
    servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, other = servers
    SlowHash().install(monkeypatch)
    async with aiohttp.ClientSession() as http:
        # The closing PUT comes while the only chunk's last buffers still hash.
        data = os.urandom(2 * MiB + 5)
        location = await _patch(http, _url(base, await _start(http, base)), data, 0)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with http.put(_url(base, location), params={"digest": digest}) as response:
            assert response.status == 201, await response.text()

        # The next chunk goes to another process, which has no hash state: it rehashes
        # what is stored (every byte was written before the first answer went out).
        first, second = os.urandom(2 * MiB), os.urandom(MiB + 3)
        location = await _patch(http, _url(base, await _start(http, base)), first, 0)
        path = location[location.index("/v2/") :]
        location = await _patch(http, other + path, second, len(first))
        digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
        async with http.put(_url(other, location), params={"digest": digest}) as response:
            assert response.status == 201, await response.text()
        async with http.get(f"{base}/v2/{REPO}/blobs/{digest}") as response:
            assert hashlib.sha256(await response.read()).hexdigest() == digest[7:]


async def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
