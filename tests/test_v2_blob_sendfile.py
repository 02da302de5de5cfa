"""Blob downloads from local storage by sendfile in short calls (registry_server/http/sendfile.py):
every byte arrives, from any offset, to a slow reader, a reader that hangs up, and through
the real server with ranges and several downloads at once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from registry_server.http.sendfile import CALL_BYTES, CALLS_PER_TURN, send_file
from tests.helpers.server import RegistryServer

REPO = "acme/prod/app"


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _blob(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


def _read_all(sock: socket.socket, size: int, pause_every: int = 0) -> bytes:
    """Read *size* bytes; with *pause_every*, stall after each that many so the sender
    meets a full socket and waits for it to drain."""
    got = bytearray()
    mark = pause_every
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
        if pause_every and len(got) >= mark:
            mark += pause_every
            time.sleep(0.01)
    return bytes(got)


async def test_send_file_sends_every_byte_from_an_offset_to_a_slow_reader(
    tmp_path: Path,
) -> None:
    size = CALL_BYTES * CALLS_PER_TURN * 2 + 12345  # several turns, an uneven tail
    path, data = _blob(tmp_path, size + 777)
    server, client = socket.socketpair()
    server.setblocking(False)
    before = _open_descriptors()
    with ThreadPoolExecutor(1) as pool, open(path, "rb") as file:
        received = asyncio.get_running_loop().run_in_executor(
            pool, _read_all, client, size, 1 << 20
        )
        await send_file(asyncio.get_running_loop(), server.fileno(), file.fileno(), 777, size)
        got = await received
    assert got == data[777:]
    assert _open_descriptors() == before, "the duplicate descriptor is closed"
    server.close()
    client.close()


async def test_send_file_raises_when_the_reader_hangs_up(tmp_path: Path) -> None:
    path, _ = _blob(tmp_path, 32 * 1024 * 1024)
    before = _open_descriptors()
    server, client = socket.socketpair()
    server.setblocking(False)
    with open(path, "rb") as file:
        sending = asyncio.ensure_future(
            send_file(asyncio.get_running_loop(), server.fileno(), file.fileno(), 0, 32 << 20)
        )
        await asyncio.sleep(0.05)  # the socket is full: the sender waits for it
        assert not sending.done()
        client.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(sending, 10)
    server.close()
    assert _open_descriptors() == before, "the duplicate descriptor is closed"


def test_downloads_through_the_server_with_ranges_and_at_once(
    file_registry_server: RegistryServer,
) -> None:
    base = file_registry_server.url
    data = os.urandom(9 * 1024 * 1024 + 5)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = requests.Session()
    done = session.post(f"{base}/v2/{REPO}/blobs/uploads/", params={"digest": digest}, data=data)
    assert done.status_code == 201, done.text
    url = f"{base}/v2/{REPO}/blobs/{digest}"

    def fetch(headers: dict[str, str]) -> tuple[int, bytes]:
        answer = requests.get(url, headers=headers, timeout=60)
        return answer.status_code, answer.content

    asks = [
        ({}, 200, data),
        ({"Range": "bytes=0-0"}, 206, data[:1]),
        ({"Range": "bytes=4194304-"}, 206, data[4194304:]),
        ({"Range": "bytes=-100"}, 206, data[-100:]),
        ({"Range": "bytes=1-9437188"}, 206, data[1:]),
    ] * 2
    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(lambda ask: fetch(ask[0]), asks))
    for (headers, status, body), (got_status, got) in zip(asks, answers, strict=True):
        assert got_status == status, headers
        assert got == body, headers
    # One kept-alive connection: the next request reads fine after a sendfile answer.
    for _ in range(3):
        again = session.get(url, headers={"Range": "bytes=10-19"})
        assert again.status_code == 206 and again.content == data[10:20]
