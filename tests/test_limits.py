"""Bounded resources over loopback: timeouts, header size, connections, upload sessions.

Each limit is tried against a real server process with small ``[limits]`` (raw sockets
where a well-behaved client library would not misbehave on purpose): the answer is the
JSON error body with 408, 413/431 or 429, the connection is closed where the limit is
about connections, and ``/metrics`` counts the refusal.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from registry_core import ConfigError, load_config
from tests.helpers import unique_repo_name
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import http, write_config

TIMEOUTS = {
    "header_timeout": 1.0,
    "keepalive_timeout": 1.0,
    "body_timeout": 1.0,
    "max_header_size": 2048,
    "max_uploads_per_repository": 2,
    "max_uploads_per_tenant": 3,
}
CLOSE = {"Connection": "close"}


def start(tmp: Path, limits: dict[str, float | int]) -> RegistryServer:
    store = tmp / "store"
    store.mkdir()
    config = write_config(tmp / "server.toml", limits=limits)
    server = RegistryServer(f"file://{store}", config=config, workdir=tmp)
    server.start()
    return server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Short timeouts, small header and upload-session limits."""
    server = start(tmp_path_factory.mktemp("limited"), TIMEOUTS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """At most two connections per process."""
    server = start(tmp_path_factory.mktemp("capped"), {"max_connections": 2})
    try:
        yield server
    finally:
        server.stop()


def refusals(server: RegistryServer, limit: str) -> float:
    with http() as session:  # Connection: close, so it holds no connection afterwards
        text = session.get(f"{server.url}/metrics", headers=CLOSE, timeout=10).text
    found = re.search(rf'^cargohold_limit_refusals_total{{limit="{limit}"}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def connect(server: RegistryServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from *sock*."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes the connection (within the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


# -- timeouts ----------------------------------------------------------------------------------


def test_headers_that_stop_arriving_get_408_and_the_connection_is_closed(limited):
    before = refusals(limited, "header_timeout")
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        status, headers, body = read_response(sock)

        assert status == 408
        assert headers["content-type"] == "application/json"
        assert error_code(body) == "TIMEOUT"
        assert closed_by_server(sock)
    assert refusals(limited, "header_timeout") == before + 1


def test_a_connection_that_never_sends_is_closed(limited):
    with connect(limited) as sock:
        assert closed_by_server(sock)


def test_an_idle_keep_alive_connection_is_closed(limited):
    before = refusals(limited, "keepalive_timeout")
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = read_response(sock)
        assert status == 200

        assert closed_by_server(sock)
    assert refusals(limited, "keepalive_timeout") >= before + 1


def _send_ten_of_more(limited, request_line: str, announced: int) -> tuple[int, bytes, object]:
    """Send *request_line* with a body announced as *announced* bytes, stop after ten, and
    return the answer plus the upload session's state afterwards."""
    with connect(limited) as sock:
        sock.sendall(
            f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {announced}\r\n\r\n".encode()
            + b"0123456789"
        )
        status, _, body = read_response(sock)
    return (
        status,
        body,
        http().get(f"{limited.url}{request_line.split()[1].split('?')[0]}", timeout=10),
    )


def _started_upload(limited) -> str:
    started = http().post(f"{limited.url}/v2/{unique_repo_name()}/blobs/uploads/", timeout=10)
    return started.headers["Location"]


def test_an_upload_body_that_stops_gets_408_and_keeps_what_arrived(limited):
    location = _started_upload(limited)
    before = refusals(limited, "body_timeout")
    status, body, status_after = _send_ten_of_more(limited, f"PATCH {location}", 100)

    assert status == 408
    assert error_code(body) == "BLOB_UPLOAD_INVALID"
    assert status_after.status_code == 204
    assert status_after.headers["Range"] == "0-9"
    assert refusals(limited, "body_timeout") == before + 1


def test_a_small_finishing_put_that_stops_gets_408_and_keeps_what_arrived(limited):
    # A PUT ?digest= with a small body is gathered whole before it is stored (one step):
    # a body that stops half-way is still kept as far as it came, as a PATCH's is.
    location = _started_upload(limited)
    digest = "sha256:" + "0" * 64
    status, body, status_after = _send_ten_of_more(limited, f"PUT {location}?digest={digest}", 4096)

    assert status == 408
    assert error_code(body) == "BLOB_UPLOAD_INVALID"
    assert status_after.status_code == 204
    assert status_after.headers["Range"] == "0-9"


def test_an_archive_upload_that_stops_gets_408(limited):
    before = refusals(limited, "body_timeout")
    with connect(limited) as sock:
        sock.sendall(
            b"POST /api/v1/registries/acme/prod/archives HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            + b"\0"
            * 512
        )
        status, headers, body = read_response(sock)

    assert status == 408
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["message"]
    assert refusals(limited, "body_timeout") == before + 1


# -- header size -------------------------------------------------------------------------------


def test_a_header_over_the_configured_size_gets_431(limited):
    before = refusals(limited, "header_size")
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        status, headers, body = read_response(sock)

    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"]
    assert refusals(limited, "header_size") == before + 1


def test_a_header_under_the_configured_size_is_served(limited):
    reply = http().get(f"{limited.url}/v2/", headers={"X-Big": "a" * 1500}, timeout=10)

    assert reply.status_code == 200


# -- upload sessions ---------------------------------------------------------------------------


def start_upload(server: RegistryServer, repo: str) -> requests.Response:
    return http().post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=10)


def test_upload_sessions_beyond_the_repository_limit_get_429(limited):
    repo = unique_repo_name(owner="perrepo", registry="limits")
    before = refusals(limited, "uploads_per_repository")
    first, second = start_upload(limited, repo), start_upload(limited, repo)

    third = start_upload(limited, repo)

    assert (first.status_code, second.status_code) == (202, 202)
    assert third.status_code == 429
    assert error_code(third.content) == "TOOMANYREQUESTS"
    assert refusals(limited, "uploads_per_repository") == before + 1


def test_a_cancelled_upload_session_frees_its_slot(limited):
    repo = unique_repo_name(owner="cancel", registry="limits")
    first, _ = start_upload(limited, repo), start_upload(limited, repo)
    assert start_upload(limited, repo).status_code == 429

    http().delete(f"{limited.url}{first.headers['Location']}", timeout=10)

    assert start_upload(limited, repo).status_code == 202


def test_a_finished_upload_session_frees_its_slot(limited):
    repo = unique_repo_name(owner="finish", registry="limits")
    first, _ = start_upload(limited, repo), start_upload(limited, repo)
    digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    done = http().put(f"{limited.url}{first.headers['Location']}?digest={digest}", timeout=10)

    assert done.status_code == 201
    assert start_upload(limited, repo).status_code == 202


def test_upload_sessions_beyond_the_tenant_limit_get_429_in_any_of_its_repositories(limited):
    owner, registry = "pertenant", "limits"
    before = refusals(limited, "uploads_per_tenant")
    opened = [start_upload(limited, unique_repo_name(owner, registry)) for _ in range(3)]

    refused = start_upload(limited, unique_repo_name(owner, registry))
    elsewhere = start_upload(limited, unique_repo_name(owner, "other"))

    assert [r.status_code for r in opened] == [202, 202, 202]
    assert refused.status_code == 429
    assert error_code(refused.content) == "TOOMANYREQUESTS"
    assert elsewhere.status_code == 202
    assert refusals(limited, "uploads_per_tenant") == before + 1


def test_upload_sessions_count_across_server_processes_sharing_the_storage(
    limited, registry_factory
):
    other = registry_factory(storage_url=limited.storage_url, config=limited.config)
    repo = unique_repo_name(owner="shared", registry="limits")
    start_upload(limited, repo), start_upload(limited, repo)

    refused = start_upload(other, repo)

    assert refused.status_code == 429
    assert error_code(refused.content) == "TOOMANYREQUESTS"


def test_a_monolithic_upload_is_not_held_to_the_session_limits(limited):
    repo = unique_repo_name(owner="mono", registry="limits")
    start_upload(limited, repo), start_upload(limited, repo)
    digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    reply = http().post(f"{limited.url}/v2/{repo}/blobs/uploads/?digest={digest}", timeout=10)

    assert reply.status_code == 201


# -- connections -------------------------------------------------------------------------------


def test_connections_beyond_the_process_limit_get_429_and_are_closed(capped):
    before = refusals(capped, "connections")
    held = [connect(capped), connect(capped)]
    try:
        for sock in held:  # both served: they count as open connections from here on
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200
        with connect(capped) as extra:
            status, headers, body = read_response(extra)
            assert status == 429
            assert error_code(body) == "TOOMANYREQUESTS"
            assert headers["retry-after"] == "1"
            assert closed_by_server(extra)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)  # the server notices the closed connections
    with http() as session:
        assert session.get(f"{capped.url}/v2/", headers=CLOSE, timeout=10).status_code == 200
    assert refusals(capped, "connections") == before + 1


# -- configuration -----------------------------------------------------------------------------


def test_limits_have_bounded_defaults():
    limits = load_config(environ={}).limits

    assert limits.header_timeout > 0 and limits.keepalive_timeout > 0
    assert limits.body_timeout > 0
    assert limits.max_connections > 0
    assert limits.max_uploads_per_repository > 0 and limits.max_uploads_per_tenant > 0


@pytest.mark.parametrize(
    "key, value",
    [
        ("body_timeout", "0"),
        ("header_timeout", "-1"),
        ("max_connections", "-5"),
        ("max_header_size", "10"),
        ("max_uploads_per_tenant", "many"),
    ],
)
def test_an_invalid_limit_stops_start_up_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        load_config(environ={f"CARGOHOLD_LIMITS_{key.upper()}": value})
