"""Upload bodies as the server reads them: piece by piece as the parser made them, with one
silence watchdog per body (``registry_server.http.bodies``), against a real server process.

The watchdog must refuse only silence: a body that keeps arriving, however long it takes
in total, is stored; a chunked body's chunk ends are not the end of the body.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import unique_repo_name
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import http, write_config
from tests.test_limits import read_response

BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    tmp = tmp_path_factory.mktemp("bodies")
    store = tmp / "store"
    store.mkdir()
    config = write_config(tmp / "server.toml", limits={"body_timeout": BODY_TIMEOUT})
    registry = RegistryServer(f"file://{store}", config=config, workdir=Path(tmp))
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def _start_upload(server: RegistryServer) -> str:
    with http() as session:
        started = session.post(f"{server.url}/v2/{unique_repo_name()}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    return started.headers["Location"]


def _connect(server: RegistryServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def test_a_body_that_keeps_arriving_for_longer_than_the_timeout_is_stored(
    server: RegistryServer,
) -> None:
    location = _start_upload(server)
    pieces = [bytes([65 + n]) * 20 for n in range(5)]
    with _connect(server) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n".encode()
        )
        for piece in pieces:  # 2.5 s in all, never silent for the 1 s timeout
            time.sleep(BODY_TIMEOUT / 2)
            sock.sendall(piece)
        status, headers, body = read_response(sock)
    assert status == 202, body
    assert headers["range"] == "0-99"


def test_a_body_that_stops_after_arriving_steadily_gets_408(server: RegistryServer) -> None:
    location = _start_upload(server)
    with _connect(server) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n".encode()
        )
        for _ in range(3):
            time.sleep(BODY_TIMEOUT / 2)
            sock.sendall(b"0123456789")
        started = time.monotonic()
        status, _, _ = read_response(sock)
        waited = time.monotonic() - started
    assert status == 408
    assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT * 3
    with http() as session:
        kept = session.get(f"{server.url}{location}", timeout=10)
    assert kept.headers["Range"] == "0-29"


def test_a_chunked_body_in_many_pieces_is_stored_whole(server: RegistryServer) -> None:
    location = _start_upload(server)
    pieces = [os.urandom(1 + (n * 7919) % 70_000) for n in range(60)]
    blob = b"".join(pieces)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    target = f"{location}{'&' if '?' in location else '?'}digest={digest}"
    with _connect(server) as sock:
        sock.sendall(
            f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for piece in pieces:
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 201, body
    with http() as session:
        stored = session.get(f"{server.url}{headers['location']}", timeout=10)
    assert stored.status_code == 200
    assert stored.content == blob


def test_empty_patches_on_one_connection_are_all_answered(server: RegistryServer) -> None:
    """aiohttp shares one empty-body reader between requests; after the first read it
    reports a chunk end, never the end: a second empty PATCH must not wait for ever."""
    with requests.Session() as session:  # keep-alive: one connection, one process
        for _ in range(4):
            location = session.post(
                f"{server.url}/v2/{unique_repo_name()}/blobs/uploads/", timeout=10
            ).headers["Location"]
            patched = session.patch(f"{server.url}{location}", data=b"", timeout=10)
            assert patched.status_code == 202, patched.text
            assert patched.headers["Range"] == "0-0"
