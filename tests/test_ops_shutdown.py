"""Graceful shutdown: SIGTERM stops accepting connections but lets in-flight uploads finish.

A client streams a monolithic upload (``POST ?digest=``) slowly over a raw socket;
SIGTERM arrives in the middle of the body. The server must refuse new connections
from then on, still answer the slow upload with 201, store the blob durably (visible
after a restart on the same storage) and exit with status 0.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import time

import pytest

from tests.helpers import RegistryServer
from tests.helpers.registry_api import new_session

CHUNK = 64 * 1024
CHUNKS = 40  # 2.5 MiB in all


def _connect(server: RegistryServer, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _send_head(sock: socket.socket, method: str, target: str, headers: dict[str, str]) -> None:
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def _connection_refused(server: RegistryServer) -> bool:
    try:
        with _connect(server, timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def _wait_refused(server: RegistryServer, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _connection_refused(server):
            return True
        time.sleep(0.05)
    return False


def _slow_monolithic_upload(server: RegistryServer, repo: str, payload: bytes):
    """Start a monolithic POST with a Content-Length body, return (socket, digest)."""
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    sock = _connect(server, timeout=60.0)
    _send_head(
        sock,
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={digest}",
        {
            "Content-Length": str(len(payload)),
            "Content-Type": "application/octet-stream",
            "Connection": "close",
        },
    )
    return sock, digest


@pytest.fixture
def payload() -> bytes:
    return os.urandom(CHUNK * CHUNKS)


def _stream_with_sigterm(server: RegistryServer, repo: str, payload: bytes, *, check_refused: bool):
    """Stream *payload* slowly, SIGTERM after a third of it; return (status, digest, refused)."""
    sock, digest = _slow_monolithic_upload(server, repo, payload)
    refused = None
    with sock:
        for i in range(CHUNKS):
            sock.sendall(payload[i * CHUNK : (i + 1) * CHUNK])
            time.sleep(0.03)
            if i == CHUNKS // 3:
                os.kill(server.pid, signal.SIGTERM)
                if check_refused:
                    refused = _wait_refused(server)
        status, _, body = _read_response(sock)
    assert status == 201, body
    return digest, refused


def test_sigterm_lets_an_in_flight_upload_finish_with_201(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory()
    _stream_with_sigterm(server, unique_repo, payload, check_refused=False)


def test_sigterm_refuses_new_connections_while_an_upload_finishes(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory()
    _, refused = _stream_with_sigterm(server, unique_repo, payload, check_refused=True)
    assert refused, "the server still accepted connections after SIGTERM"


def test_server_exits_0_after_sigterm_with_an_upload_in_flight(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory()
    _stream_with_sigterm(server, unique_repo, payload, check_refused=False)
    assert server.proc is not None
    assert server.proc.wait(timeout=30) == 0


def test_upload_finished_during_shutdown_is_stored_after_restart(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory()
    digest, _ = _stream_with_sigterm(server, unique_repo, payload, check_refused=False)
    assert server.proc is not None
    server.proc.wait(timeout=30)
    server.start()
    resp = new_session().get(f"{server.url}/v2/{unique_repo}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == payload


def test_idle_server_exits_0_on_sigterm_promptly(registry_factory) -> None:
    server = registry_factory()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5


def test_stalled_upload_is_cut_off_after_shutdown_timeout(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory(env={"CARGOHOLD_SERVER_SHUTDOWN_TIMEOUT": "1.5"})
    sock, digest = _slow_monolithic_upload(server, unique_repo, payload)
    with sock:
        sock.sendall(payload[: len(payload) // 3])  # ... and never the rest
        time.sleep(0.3)
        started = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        assert server.proc is not None
        assert server.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 8
    server.start()
    resp = new_session().head(f"{server.url}/v2/{unique_repo}/blobs/{digest}")
    assert resp.status_code == 404


def test_patch_in_flight_at_sigterm_gets_202_and_completes_after_restart(
    registry_factory, unique_repo: str, payload: bytes
) -> None:
    server = registry_factory()
    resp = new_session().post(f"{server.url}/v2/{unique_repo}/blobs/uploads/")
    assert resp.status_code == 202
    location = resp.headers["Location"]
    sock = _connect(server, timeout=60.0)
    _send_head(
        sock,
        "PATCH",
        location,
        {
            "Content-Length": str(len(payload)),
            "Content-Range": f"0-{len(payload) - 1}",
            "Content-Type": "application/octet-stream",
            "Connection": "close",
        },
    )
    with sock:
        for i in range(CHUNKS):
            sock.sendall(payload[i * CHUNK : (i + 1) * CHUNK])
            time.sleep(0.03)
            if i == CHUNKS // 3:
                os.kill(server.pid, signal.SIGTERM)
        status, headers, body = _read_response(sock)
    assert status == 202, body
    assert headers["range"] == f"0-{len(payload) - 1}"
    assert server.proc is not None
    assert server.proc.wait(timeout=30) == 0
    server.start()
    http = new_session()
    status_resp = http.get(server.url + location)
    assert status_resp.status_code == 204
    assert status_resp.headers["Range"] == f"0-{len(payload) - 1}"
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    resp = http.put(f"{server.url}{location}?digest={digest}")
    assert resp.status_code == 201, resp.text
    assert http.get(f"{server.url}/v2/{unique_repo}/blobs/{digest}").content == payload
