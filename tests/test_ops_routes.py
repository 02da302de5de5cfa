"""Whatever a client sends to the running server, the answer is the spec's JSON error body.

Unknown routes and methods, HEAD requests (no body at all), and requests aiohttp
cannot even parse (a garbage request line, TLS on the plain port, a missing Host,
oversized lines) are answered in JSON, never HTML or plain text.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.helpers import RegistryServer
from tests.helpers.registry_api import new_session


def assert_json_error(resp, status: int) -> list[dict]:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].split(";")[0] == "application/json"
    assert b"<html" not in resp.content.lower()
    errors = resp.json()["errors"]
    assert errors
    for error in errors:
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str)
    return errors


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/index.html",
        "/v1/",
        "/v2/nothing",
        "/v2/acme/prod/app/whatever",
        "/v2/acme/prod/app/blobs/uploads/a/b",
        "/v2/acme/prod/app/manifests/",
        "/healthz/extra",
        "/metrics/x",
        "/%7e/admin",
    ],
)
def test_unknown_route_is_a_json_404(shared_server: RegistryServer, path: str) -> None:
    resp = new_session().get(shared_server.url + path)
    assert_json_error(resp, 404)


def test_unknown_route_is_json_even_when_the_client_asks_for_html(
    shared_server: RegistryServer,
) -> None:
    resp = new_session().get(
        f"{shared_server.url}/no/such/page", headers={"Accept": "text/html,*/*;q=0.8"}
    )
    assert_json_error(resp, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/v2/"),
        ("DELETE", "/v2/_catalog"),
        ("POST", "/v2/acme/prod/app/tags/list"),
        ("POST", "/v2/acme/prod/app/manifests/latest"),
        ("PATCH", "/v2/acme/prod/app/blobs/sha256:" + "0" * 64),
        ("PUT", "/v2/acme/prod/app/blobs/uploads/"),
        ("PUT", "/healthz"),
        ("POST", "/metrics"),
        ("DELETE", "/readyz"),
        ("OPTIONS", "/v2/"),
        ("PROPFIND", "/v2/"),
    ],
)
def test_unsupported_method_is_a_json_405_with_allow(
    shared_server: RegistryServer, method: str, path: str
) -> None:
    resp = new_session().request(method, shared_server.url + path)
    errors = assert_json_error(resp, 405)
    assert errors[0]["code"] == "UNSUPPORTED"
    assert resp.headers.get("Allow")
    assert method not in resp.headers["Allow"].replace(" ", "").split(",")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/no/such/page", 404),
        ("/v2/acme/prod/app/whatever", 404),
        ("/v2/acme/prod/app/manifests/missing", 404),
        ("/v2/acme/prod/app/blobs/sha256:" + "0" * 64, 404),
        ("/v2/_catalog", 405),
    ],
)
def test_head_error_has_no_body(shared_server: RegistryServer, path: str, status: int) -> None:
    # Read the raw reply: a client library would hide a body sent after a HEAD.
    reply = _raw(
        shared_server,
        f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert body == b""
    assert b"text/html" not in head.lower()


def _raw(server: RegistryServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def _parse(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


GARBAGE = {
    "junk line": b"GARBAGE\r\n\r\n",
    "binary": b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    "tls hello": bytes.fromhex("160301020001000100fc0303") + b"\x00" * 32,
    "unknown method": b"BREW /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad version": b"GET /v2/ HTTP/7.3\r\nHost: 127.0.0.1\r\n\r\n",
    "missing host": b"GET /v2/ HTTP/1.1\r\n\r\n",
    "header without colon": b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nNoColonHere\r\n\r\n",
    "bad content length": b"PUT /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
    "huge request line": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "huge header": b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("data", list(GARBAGE.values()), ids=list(GARBAGE))
def test_unparseable_request_is_a_json_400(shared_server: RegistryServer, data: bytes) -> None:
    status, headers, body = _parse(_raw(shared_server, data))
    assert 400 <= status < 500
    assert headers["content-type"].split(";")[0] == "application/json"
    errors = json.loads(body)["errors"]
    assert errors[0]["code"]
    assert errors[0]["message"]
    assert b"<html" not in body.lower()


def test_unparseable_request_answer_does_not_echo_the_request(
    shared_server: RegistryServer,
) -> None:
    _, _, body = _parse(_raw(shared_server, b"<script>alert(1)</script>\r\n\r\n"))
    assert b"script" not in body


def test_server_keeps_serving_after_garbage(shared_server: RegistryServer) -> None:
    for data in GARBAGE.values():
        _raw(shared_server, data)
    resp = new_session().get(f"{shared_server.url}/v2/")
    assert resp.status_code == 200
    assert resp.json() == {}


def test_unknown_route_carries_the_api_version_header(shared_server: RegistryServer) -> None:
    resp = new_session().get(f"{shared_server.url}/v2/nothing")
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
