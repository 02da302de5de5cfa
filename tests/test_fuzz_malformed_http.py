"""Requests that are not HTTP/1.1 get a JSON 4xx, one access-log line and no traceback.

Sent over raw sockets, since no HTTP client will produce them: garbage in the
request line, TLS spoken to the plain-HTTP port, oversized headers, bodies
whose framing breaks half-way.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers.server import RegistryServer

# A TLS 1.2 ClientHello's record header and the start of its handshake, as a client
# that was told "https" sends it first.
TLS_CLIENT_HELLO = bytes.fromhex("16030100c4010000c00303") + bytes(32) + b"\x00\x00\x02\x13\x01"

MALFORMED = {
    "control characters in the path": (b"GET /v2/\x01\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "invalid method": (b"G\x00T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "unknown HTTP version": (b"GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    "TLS handshake on the plain port": (TLS_CLIENT_HELLO, 400),
    "missing Host on HTTP/1.1": (b"GET /v2/ HTTP/1.1\r\n\r\n", 400),
    "non-numeric Content-Length": (
        b"PUT /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
        400,
    ),
    "Content-Length with Transfer-Encoding": (
        b"POST /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "oversized header value": (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "oversized Authorization header": (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + b"c2VjcmV0" * 3000 + b"\r\n\r\n",
        431,
    ),
    "oversized header value that looks like a path": (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nReferer: /" + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "too many headers": (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        + b"\r\n",
        431,
    ),
    "oversized request target": (
        b"GET /v2/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    store = tmp_path_factory.mktemp("malformed-store")
    with RegistryServer(f"file://{store}", workdir=tmp_path_factory.mktemp("malformed")) as running:
        yield running


def exchange(server: RegistryServer, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send *parts* (pausing between them) on one connection; everything the server sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for index, part in enumerate(parts):
            if index and pause:
                time.sleep(pause)
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def access_lines(server: RegistryServer, request_id: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if f"request_id={request_id}" in line]


def single_access_line(server: RegistryServer, request_id: str) -> str:
    deadline = time.monotonic() + 10
    while not access_lines(server, request_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a second line would have been written by now
    lines = access_lines(server, request_id)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(("data", "status"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_a_json_error_one_log_line_and_no_traceback(
    server: RegistryServer, data: bytes, status: int
) -> None:
    before = len(server.log_text())
    answered, headers, body = parse_response(exchange(server, data))
    assert answered == status
    assert headers["content-type"].startswith("application/json")
    errors = json.loads(body)["errors"]
    assert errors and {"code", "message"} <= errors[0].keys()
    line = single_access_line(server, headers["x-request-id"])
    assert f"status={status}" in line
    assert "Traceback" not in server.log_text()[before:]


def test_oversized_authorization_header_is_not_echoed_to_the_log(server: RegistryServer) -> None:
    secret = b"c2VjcmV0dG9rZW4" * 1000
    before = len(server.log_text())
    exchange(
        server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + secret + b"\r\n\r\n"
    )
    time.sleep(0.3)
    assert secret[:40].decode() not in server.log_text()[before:]


def test_server_still_serves_after_malformed_requests(server: RegistryServer) -> None:
    for data, _ in MALFORMED.values():
        exchange(server, data)
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"{server.url}/v2/", timeout=10
    ) as resp:
        assert resp.status == 200


def _start_upload(server: RegistryServer, repo: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{server.url}/v2/{repo}/blobs/uploads/", method="POST")
    with opener.open(request, timeout=10) as resp:
        assert resp.status == 202
        return str(resp.headers["Location"])


@pytest.mark.parametrize(
    "body",
    [b"zz\r\n", b"3\r\nabc\r\n" + b"x" * 10],
    ids=["bad chunk size", "chunk longer than announced"],
)
def test_upload_body_with_broken_chunking_gets_400_one_log_line_and_no_traceback(
    server: RegistryServer, unique_repo: str, body: bytes
) -> None:
    location = _start_upload(server, unique_repo)
    before = len(server.log_text())
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    # The headers first, so that the handler is already reading the body when it breaks.
    answered, headers, reply = parse_response(exchange(server, head, body, pause=0.3))
    assert answered == 400
    assert json.loads(reply)["errors"][0]["message"]
    single_access_line(server, headers["x-request-id"])
    assert "Traceback" not in server.log_text()[before:]
