"""``Range``, ``Content-Range`` and upload bodies that are shorter or longer than announced.

The property: no 5xx and no traceback; a refused request stores nothing (no blob,
and the upload session's offset stays where it was); a body cut short is never
committed as a blob.
"""

from __future__ import annotations

import hashlib
import itertools
import socket
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import header_text
from tests.fuzz.support import (
    FUZZ,
    REPO,
    TENANT,
    Target,
    assert_client_error,
    assert_not_a_server_error,
    basic,
    start_target,
)

_fresh = itertools.count()
LOOSE_BLOB = b"a loose blob"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from start_target(tmp_path_factory, "fuzz-ranges")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


numbers = st.one_of(st.integers(0, 40), st.integers(0, 2**70), st.just(2**63))
range_headers = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", numbers, numbers),
    st.builds(lambda a: f"bytes={a}-", numbers),
    st.builds(lambda b: f"bytes=-{b}", numbers),
    st.builds(lambda a, b, c, d: f"bytes={a}-{b},{c}-{d}", numbers, numbers, numbers, numbers),
    st.sampled_from(["bytes=", "bytes=-", "items=0-1", "bytes=a-b", "bytes=1-0", "=", "bytes 0-1"]),
    header_text,
)


@FUZZ
@given(header=range_headers)
def test_blob_range_requests_answer_the_range_or_a_client_error(
    target: Target, header: str
) -> None:
    resp = target.request(
        "GET",
        f"/v2/{REPO}/blobs/{digest_of(LOOSE_BLOB)}",
        auth=target.writer,
        headers={"Range": header},
    )
    assert resp.status_code in (200, 206, 400, 416), (resp.status_code, resp.text[:300])
    if resp.status_code == 200:
        assert resp.content == LOOSE_BLOB
    elif resp.status_code == 206:
        assert resp.content and resp.content in LOOSE_BLOB
    elif resp.status_code == 400:
        assert_client_error(resp)
    else:
        assert resp.headers["Content-Range"] == f"bytes */{len(LOOSE_BLOB)}"
    target.assert_serving()


def _new_upload(target: Target) -> str:
    resp = target.request(
        "POST", f"/v2/{TENANT}/ranges{next(_fresh)}/blobs/uploads/", auth=target.writer
    )
    assert resp.status_code == 202, resp.text
    return resp.headers["Location"]


def _offset(target: Target, location: str) -> str:
    resp = target.request("GET", location, auth=target.writer)
    assert resp.status_code == 204, resp.text
    return resp.headers.get("Range", "")


content_ranges = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", numbers, numbers),
    st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", numbers, numbers, numbers),
    st.sampled_from(["", "0-", "-1", "bytes=0-4", "0-4/*", "a-b", "0-4/5/6", "0-4 "]),
    header_text,
)


@FUZZ
@given(header=content_ranges, body=st.binary(max_size=20))
def test_chunk_with_any_content_range_is_appended_in_order_or_refused(
    target: Target, header: str, body: bytes
) -> None:
    location = _new_upload(target)
    # The session's own data object is scratch (an empty one means zero bytes): what
    # counts is its offset, checked below, and that nothing else appears.
    session = location.rsplit("/", 1)[-1]
    before = target.files(ignore=session)
    resp = target.request(
        "PATCH",
        location,
        auth=target.writer,
        headers={"Content-Range": header, "Content-Type": "application/octet-stream"},
        data=body,
    )
    assert_not_a_server_error(resp)
    if resp.status_code >= 400:
        assert target.files(ignore=session) == before
        assert _offset(target, location) in ("", "0-0", "bytes=0-0")
    target.assert_serving()


def _raw(target: Target, head: str, body: bytes, *, half_close: bool, timeout: float = 30) -> bytes:
    """Send *head* and *body* on one connection; everything the server answers."""
    with socket.create_connection(("127.0.0.1", target.server.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received


def _statuses(raw: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def _head(method: str, location: str, target: Target, length: int, extra: str = "") -> str:
    return (
        f"{method} {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {basic(target.writer.username, target.writer.secret)}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n{extra}\r\n"
    )


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000), cut=st.integers(0, 1999))
def test_monolithic_upload_cut_short_stores_no_blob(target: Target, data: bytes, cut: int) -> None:
    sent = data[: cut % len(data)]
    location = _new_upload(target)
    path = urllib.parse.urlsplit(location)
    query = (path.query + "&" if path.query else "") + "digest=" + digest_of(data)
    before = target.files(ignore=location.rsplit("/", 1)[-1])
    raw = _raw(
        target, _head("PUT", f"{path.path}?{query}", target, len(data)), sent, half_close=True
    )
    assert all(status < 500 for status in _statuses(raw)), raw[:500]
    assert 201 not in _statuses(raw)
    blob = target.request("HEAD", f"/v2/{REPO}/blobs/{digest_of(data)}", auth=target.writer)
    assert blob.status_code == 404
    assert target.files(ignore=location.rsplit("/", 1)[-1]) == before
    target.assert_serving()


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000), extra=st.binary(min_size=1, max_size=300))
def test_chunk_longer_than_announced_never_appends_the_surplus(
    target: Target, data: bytes, extra: bytes
) -> None:
    """The surplus is parsed as a next request: garbage, so a 400 (which may also drop the
    announced chunk when both arrive in one segment); never a 5xx, never the surplus stored."""
    location = _new_upload(target)
    # The surplus ends like a request head, so the server parses it at once; a half-close
    # here would race aiohttp's answer against its reaction to the end of input.
    surplus = extra + b"\r\n\r\n"
    head = _head("PATCH", location, target, len(data))
    raw = _raw(target, head, data + surplus, half_close=False, timeout=3)
    statuses = _statuses(raw)
    assert statuses, raw[:500]
    assert all(status in (202, 400, 404, 405, 414, 431) for status in statuses), raw[:500]
    assert _offset(target, location) in ("0-0", f"0-{len(data) - 1}")
    target.assert_serving()


def test_session_is_still_usable_after_a_chunk_cut_short(target: Target) -> None:
    location = _new_upload(target)
    _raw(target, _head("PATCH", location, target, 100), b"x" * 40, half_close=True)
    offset = _offset(target, location)
    stored = 0 if offset in ("", "0-0") else int(offset.split("-")[1]) + 1
    rest = b"x" * (100 - stored)
    resp = target.request(
        "PUT",
        location,
        auth=target.writer,
        params={"digest": digest_of(b"x" * 100)},
        headers={"Content-Type": "application/octet-stream"},
        data=rest,
    )
    assert resp.status_code == 201, resp.text
