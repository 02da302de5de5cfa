"""Two server processes appending to one upload session at once never commit wrong bytes.

An upload's commit does not re-read the stored size when this request just appended
(its hash state says how much it wrote): the size check happens in the move itself
(``move_exact``), and the local driver's appends check, under a lock every process on
the machine shares, that the file is still where and as they left it. Here two apps on
one folder (each with its own upload locks and hash states, as two processes have)
race a PUT with a body against a PATCH of the same session, many times, with the
PATCH's body arriving in pieces so that its writer is open while the PUT commits.
Whatever each answers, every blob stored afterwards holds the bytes of its digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers.in_process import serve_in_process

REPO = "race/reg/app"
ROUNDS = 40


@pytest.fixture
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[str, str, Path]]:
    store = tmp_path / "store"
    first, url_a = await serve_in_process(store)
    second, url_b = await serve_in_process(store)
    try:
        yield url_a, url_b, store
    finally:
        await first.cleanup()
        await second.cleanup()


async def _pieces(data: bytes, pause: float) -> AsyncIterator[bytes]:
    half = len(data) // 2
    yield data[:half]
    await asyncio.sleep(pause)
    yield data[half:]


def _stored_blobs(store: Path) -> dict[str, bytes]:
    found = {}
    root = store / "docker/registry/v2/blobs/sha256"
    for data in root.glob("*/*/data"):
        found[data.parent.name] = data.read_bytes()
    return found


async def _put(http: aiohttp.ClientSession, url: str, body: bytes, delay: float) -> int:
    await asyncio.sleep(delay)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    async with http.put(f"{url}?digest={digest}", data=body) as answer:
        return answer.status


async def _patch(http: aiohttp.ClientSession, url: str, body: bytes, pause: float) -> int:
    async with http.patch(url, data=_pieces(body, pause)) as answer:
        return answer.status


async def test_racing_appends_from_two_processes_never_commit_wrong_bytes(
    two_servers: tuple[str, str, Path],
) -> None:
    url_a, url_b, store = two_servers
    rng = random.Random(15)
    statuses: list[tuple[int, int]] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(ROUNDS):
            mine = os.urandom(rng.choice([4096, 100_000]))
            theirs = os.urandom(rng.choice([512, 70_000]))
            async with http.post(f"{url_a}/v2/{REPO}/blobs/uploads/") as started:
                assert started.status == 202
                location = started.headers["Location"]
            put, patch = await asyncio.gather(
                _put(http, url_a + location, mine, rng.random() * 0.004),
                _patch(http, url_b + location, theirs, rng.random() * 0.01),
            )
            statuses.append((put, patch))
    assert all(status < 500 for pair in statuses for status in pair), statuses
    # The race was run, not dodged: some PUTs committed while the PATCH was streaming.
    assert any(put == 201 for put, _ in statuses), statuses
    for hex_digest, data in _stored_blobs(store).items():
        assert hashlib.sha256(data).hexdigest() == hex_digest, (
            f"blob {hex_digest[:12]} holds {len(data)} bytes of other content"
        )
