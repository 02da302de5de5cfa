"""Large upload bodies read straight off the socket (``RequestBody.receive``), against a
real server process on local storage, over raw sockets so the connection is visible.

Taking the socket from aiohttp mid-request must not change what a client sees: the
body is stored whole and exactly, the connection serves its next (or pipelined) request,
a silent client gets the usual 408 and a departed one leaves a resumable session, and
bytes beyond the announced length are not part of the blob. ``/metrics`` proves the
direct path was taken; each test runs with both threadings of it, and under uvloop
(whose transports differ from asyncio's) as well as asyncio's loop.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import unique_repo_name
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import http, write_config

BODY_TIMEOUT = 1.0
MiB = 1 << 20
LARGE = 2 * MiB + 12345
"""Over the direct path's 1 MiB threshold, and not a whole number of its buffers."""


@pytest.fixture(
    scope="module", params=[("split", "asyncio"), ("serial", "asyncio"), ("split", "uvloop")]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    threads, loop = request.param
    tmp = tmp_path_factory.mktemp(f"direct-{threads}-{loop}")
    store = tmp / "store"
    store.mkdir()
    config = write_config(
        tmp / "server.toml",
        limits={"body_timeout": BODY_TIMEOUT},
        server={"event_loop": loop},
    )
    registry = RegistryServer(
        f"file://{store}",
        config=config,
        workdir=Path(tmp),
        env={"CARGOHOLD_BODY_THREADS": threads},
    )
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


class Connection:
    """A raw HTTP/1.1 connection that keeps what it read past one response."""

    def __init__(self, server: RegistryServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.pending = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, method: str, target: str, body: bytes = b"", **headers: str) -> None:
        self.sock.sendall(head(method, target, len(body), **headers) + body)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed before a whole response: {self.pending!r}"
        self.pending += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.pending:
            self._more()
        first, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = first.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        length = int(fields.get("content-length", "0"))
        while len(self.pending) < length:
            self._more()
        body, self.pending = self.pending[:length], self.pending[length:]
        return int(lines[0].split()[1]), fields, body

    def closed_by_server(self) -> bool:
        try:
            return not self.pending and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def head(method: str, target: str, length: int | None, **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def direct_bodies(server: RegistryServer) -> float:
    with http() as session:
        text = session.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(r"^cargohold_upload_bodies_direct_total (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def start_upload(conn: Connection) -> str:
    conn.send("POST", f"/v2/{unique_repo_name()}/blobs/uploads/")
    status, fields, body = conn.response()
    assert status == 202, body
    return fields["location"]


def with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def stored_range(server: RegistryServer, location: str) -> str:
    with http() as session:
        return session.get(f"{server.url}{location}", timeout=10).headers["Range"]


def fetch(server: RegistryServer, location: str) -> bytes:
    with http() as session:
        got = session.get(f"{server.url}{location}", timeout=30)
    assert got.status_code == 200, got.text
    return got.content


def test_a_monolithic_upload_is_stored_exactly_and_the_connection_serves_the_next_request(
    server: RegistryServer,
) -> None:
    blob = os.urandom(LARGE)
    before = direct_bodies(server)
    with Connection(server) as conn:
        conn.send("POST", f"/v2/{unique_repo_name()}/blobs/uploads/?digest={digest_of(blob)}", blob)
        status, fields, body = conn.response()
        assert status == 201, body
        conn.send("GET", "/v2/")
        assert conn.response()[0] == 200
    assert direct_bodies(server) == before + 1
    assert fetch(server, fields["location"]) == blob


def test_chunked_patches_and_a_final_put_with_a_body_on_one_connection(
    server: RegistryServer,
) -> None:
    pieces = [os.urandom(LARGE), os.urandom(3 * MiB), os.urandom(LARGE)]
    blob = b"".join(pieces)
    before = direct_bodies(server)
    with Connection(server) as conn:
        location = start_upload(conn)
        offset = 0
        for piece in pieces[:2]:
            conn.send(
                "PATCH",
                location,
                piece,
                Content_Range=f"{offset}-{offset + len(piece) - 1}",
                Content_Type="application/octet-stream",
            )
            status, fields, body = conn.response()
            assert status == 202, body
            offset += len(piece)
            assert fields["range"] == f"0-{offset - 1}"
            location = fields["location"]
        conn.send("PUT", with_digest(location, digest_of(blob)), pieces[2])
        status, fields, body = conn.response()
        assert status == 201, body
    assert direct_bodies(server) == before + 3
    assert fetch(server, fields["location"]) == blob


def test_a_request_pipelined_right_after_the_body_is_answered(server: RegistryServer) -> None:
    piece = os.urandom(LARGE)
    with Connection(server) as conn:
        location = start_upload(conn)
        conn.sock.sendall(head("PATCH", location, len(piece)) + piece + head("GET", location, None))
        status, fields, body = conn.response()
        assert status == 202, body
        assert fields["range"] == f"0-{LARGE - 1}"
        status, fields, body = conn.response()
        assert status == 204, body
        assert fields["range"] == f"0-{LARGE - 1}"


def test_bytes_beyond_the_announced_length_are_not_stored(server: RegistryServer) -> None:
    piece = os.urandom(LARGE)
    with Connection(server) as conn:
        location = start_upload(conn)
        conn.sock.sendall(head("PATCH", location, len(piece)) + piece + b"X" * 5000 + b"\r\n\r\n")
        status, fields, body = conn.response()
        assert status == 202, body
        assert fields["range"] == f"0-{LARGE - 1}"
        # The surplus is read as the next request: answered as unparseable, then closed.
        status, _, _ = conn.response()
        assert status == 400
    assert stored_range(server, location) == f"0-{LARGE - 1}"


def test_a_wrong_digest_is_refused_and_the_connection_stays_usable(
    server: RegistryServer,
) -> None:
    blob = os.urandom(LARGE)
    wrong = digest_of(blob + b"!")
    with Connection(server) as conn:
        location = start_upload(conn)
        conn.send("PUT", with_digest(location, wrong), blob)
        status, _, body = conn.response()
        assert status == 400, body
        assert b"DIGEST_INVALID" in body
        # The session keeps its bytes: the right digest finishes it.
        conn.send("PUT", with_digest(location, digest_of(blob)))
        status, fields, body = conn.response()
        assert status == 201, body
    assert fetch(server, fields["location"]) == blob


def test_a_body_that_stops_gets_408_keeps_what_arrived_and_closes(
    server: RegistryServer,
) -> None:
    sent = os.urandom(LARGE - MiB // 2)
    with Connection(server) as conn:
        location = start_upload(conn)
        conn.sock.sendall(head("PATCH", location, LARGE) + sent)
        started = time.monotonic()
        status, _, body = conn.response()
        waited = time.monotonic() - started
        assert status == 408, body
        assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT * 5
        assert conn.closed_by_server()  # the rest of the body would follow on it
    assert stored_range(server, location) == f"0-{len(sent) - 1}"


def test_a_client_that_leaves_mid_body_leaves_a_resumable_session(
    server: RegistryServer,
) -> None:
    blob = os.urandom(LARGE)
    cut = LARGE - MiB // 3
    with Connection(server) as conn:
        location = start_upload(conn)
    with Connection(server) as conn:
        conn.sock.sendall(head("PATCH", location, LARGE) + blob[:cut])
    deadline = time.monotonic() + 10
    while stored_range(server, location) != f"0-{cut - 1}":
        assert time.monotonic() < deadline, stored_range(server, location)
        time.sleep(0.05)
    with Connection(server) as conn:
        conn.send("PATCH", location, blob[cut:], Content_Range=f"{cut}-{LARGE - 1}")
        status, fields, body = conn.response()
        assert status == 202, body
        conn.send("PUT", with_digest(fields["location"], digest_of(blob)))
        status, fields, body = conn.response()
        assert status == 201, body
    assert fetch(server, fields["location"]) == blob


def test_small_and_chunked_bodies_keep_aiohttps_path(server: RegistryServer) -> None:
    small = os.urandom(MiB - 1)
    large = os.urandom(LARGE)
    before = direct_bodies(server)
    with Connection(server) as conn:
        location = start_upload(conn)
        conn.send("PATCH", location, small)
        status, fields, body = conn.response()
        assert status == 202, body
        conn.sock.sendall(
            head("PATCH", fields["location"], None, Transfer_Encoding="chunked")
            + b"%x\r\n" % len(large)
            + large
            + b"\r\n0\r\n\r\n"
        )
        status, fields, body = conn.response()
        assert status == 202, body
        assert fields["range"] == f"0-{len(small) + LARGE - 1}"
    assert direct_bodies(server) == before
