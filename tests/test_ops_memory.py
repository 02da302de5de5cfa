"""Memory stays bounded however big the blob: 1 GiB through a file-storage server.

The client never holds the blob: it is generated piece by piece, sent as sixteen
64 MiB chunked PATCHes (each streamed in 1 MiB writes, ``Content-Range`` set) and
hashed as it goes; the download is streamed and hashed the same way. The server's
peak resident set (``VmHWM``) must stay under 200 MiB for the upload, and again for
the download (the peak is reset in between through ``/proc/PID/clear_refs``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import RegistryServer, peak_rss_kib, unique_repo_name

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
BLOB_SIZE = 1024 * MIB
CHUNK_SIZE = 64 * MIB
PIECE = MIB
RSS_LIMIT_KIB = 200 * 1024


@dataclass
class BigBlob:
    server: RegistryServer
    repo: str
    digest: str
    upload_peak_kib: int
    started_peak_kib: int


def _pieces(total: int, block: bytes | None = None) -> Iterator[bytes]:
    """*total* bytes of non-repeating data, 1 MiB at a time (a counter over random bytes)."""
    block = block or os.urandom(PIECE)
    for i in range(total // PIECE):
        yield i.to_bytes(8, "big") + block[8:]


def _reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def _connection(server: RegistryServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)


@pytest.fixture(scope="module")
def big_blob(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigBlob]:
    store = tmp_path_factory.mktemp("memory-store")
    server = RegistryServer(f"file://{store}", workdir=tmp_path_factory.mktemp("memory-cargohold"))
    with server:
        repo = unique_repo_name(image="big")
        started_peak = peak_rss_kib(server.pid)
        conn = _connection(server)
        conn.request("POST", f"/v2/{repo}/blobs/uploads/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202
        location = urllib.parse.urlsplit(resp.headers["Location"]).path

        hasher = hashlib.sha256()
        pieces = _pieces(BLOB_SIZE)
        for offset in range(0, BLOB_SIZE, CHUNK_SIZE):
            conn.putrequest("PATCH", location)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(CHUNK_SIZE))
            conn.putheader("Content-Range", f"{offset}-{offset + CHUNK_SIZE - 1}")
            conn.endheaders()
            for _ in range(CHUNK_SIZE // PIECE):
                piece = next(pieces)
                hasher.update(piece)
                conn.send(piece)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 202, body
            assert resp.headers["Range"] == f"0-{offset + CHUNK_SIZE - 1}"
        digest = "sha256:" + hasher.hexdigest()
        conn.request("PUT", f"{location}?digest={digest}")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 201, body
        conn.close()
        upload_peak = peak_rss_kib(server.pid)
        yield BigBlob(server, repo, digest, upload_peak, started_peak)


@dataclass
class Download:
    digest: str
    size: int
    peak_kib: int


@pytest.fixture(scope="module")
def downloaded(big_blob: BigBlob) -> Download:
    server = big_blob.server
    _reset_peak_rss(server.pid)
    conn = _connection(server)
    conn.request("GET", f"/v2/{big_blob.repo}/blobs/{big_blob.digest}")
    resp = conn.getresponse()
    assert resp.status == 200
    hasher = hashlib.sha256()
    size = 0
    while chunk := resp.read(PIECE):
        hasher.update(chunk)
        size += len(chunk)
    conn.close()
    return Download("sha256:" + hasher.hexdigest(), size, peak_rss_kib(server.pid))


def test_1gib_upload_keeps_server_peak_rss_under_200mib(big_blob: BigBlob) -> None:
    print(
        f"\nserver VmHWM: {big_blob.started_peak_kib / 1024:.1f} MiB at start, "
        f"{big_blob.upload_peak_kib / 1024:.1f} MiB after a 1 GiB upload"
    )
    assert big_blob.upload_peak_kib < RSS_LIMIT_KIB


def test_1gib_upload_is_stored_whole(big_blob: BigBlob) -> None:
    resp = _connection(big_blob.server)
    resp.request("HEAD", f"/v2/{big_blob.repo}/blobs/{big_blob.digest}")
    head = resp.getresponse()
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == BLOB_SIZE
    assert head.headers["Docker-Content-Digest"] == big_blob.digest


def test_1gib_download_has_the_uploaded_digest(downloaded: Download, big_blob: BigBlob) -> None:
    assert downloaded.size == BLOB_SIZE
    assert downloaded.digest == big_blob.digest


def test_1gib_download_keeps_server_peak_rss_under_200mib(downloaded: Download) -> None:
    print(f"\nserver VmHWM during a 1 GiB download: {downloaded.peak_kib / 1024:.1f} MiB")
    assert downloaded.peak_kib < RSS_LIMIT_KIB


def test_1gib_monolithic_chunked_post_keeps_server_peak_rss_under_200mib(
    registry_factory, unique_repo: str
) -> None:
    """One ``POST ?digest=`` whose body is sent with ``Transfer-Encoding: chunked``."""
    server = registry_factory()
    block = os.urandom(PIECE)
    hasher = hashlib.sha256()
    for piece in _pieces(BLOB_SIZE, block):
        hasher.update(piece)
    digest = "sha256:" + hasher.hexdigest()
    _reset_peak_rss(server.pid)
    conn = _connection(server)
    conn.putrequest("POST", f"/v2/{unique_repo}/blobs/uploads/?digest={digest}")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for piece in _pieces(BLOB_SIZE, block):
        conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 201, body
    peak = peak_rss_kib(server.pid)
    print(f"\nserver VmHWM during a 1 GiB chunked monolithic POST: {peak / 1024:.1f} MiB")
    assert peak < RSS_LIMIT_KIB
