"""Light load clients: streaming blob upload/download over http.client, small async
requests over aiohttp, and the deterministic blob contents they send.

The client shares the machine with the server, so it does as little as it can:
a blob is an 8 MiB seeded random buffer repeated, whose last 16 bytes are a
per-run suffix (so no run is deduplicated against an earlier one). The hash of
everything before the suffix is computed once per size and copied per run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

CHUNK = 8 << 20
MiB = 1 << 20
GiB = 1 << 30
SUFFIX = 16
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_MANIFESTS = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class BenchError(RuntimeError):
    """A server answered something a correct registry would not (status, digest, size)."""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- big blobs ------------------------------------------------------------------------


class BlobSource:
    """Blobs of ``size`` bytes: the shared buffer repeated, then a 16-byte suffix."""

    def __init__(self, seed: int = 6) -> None:
        self.buffer = random.Random(seed).randbytes(CHUNK)
        self._prefix_hash: dict[int, Any] = {}

    def prefix_hash(self, size: int) -> Any:
        if size % CHUNK or size < CHUNK:
            raise ValueError(f"blob sizes are whole multiples of {CHUNK} bytes, not {size}")
        if size not in self._prefix_hash:
            h = hashlib.sha256()
            view = memoryview(self.buffer)
            for _ in range(size // CHUNK - 1):
                h.update(view)
            h.update(view[:-SUFFIX])
            self._prefix_hash[size] = h
        return self._prefix_hash[size]

    def blob(self, size: int, suffix: bytes) -> Blob:
        assert len(suffix) == SUFFIX
        h = self.prefix_hash(size).copy()
        h.update(suffix)
        last = self.buffer[:-SUFFIX] + suffix
        return Blob(size, "sha256:" + h.hexdigest(), self.buffer, last)


@dataclass
class Blob:
    size: int
    digest: str
    buffer: bytes
    last: bytes

    def chunks(self) -> Iterator[memoryview]:
        """The blob as CHUNK-sized views (no copies)."""
        view = memoryview(self.buffer)
        for _ in range(self.size // CHUNK - 1):
            yield view
        yield memoryview(self.last)

    def write_to(self, path: str) -> None:
        with open(path, "wb") as f:
            for chunk in self.chunks():
                f.write(chunk)


# -- http.client helpers (one connection, streaming) ------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection to a server; follows Location like a client."""

    def __init__(self, base_url: str, timeout: float = 600.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def close(self) -> None:
        self.conn.close()

    def _path(self, location: str) -> str:
        parts = urlsplit(location)
        return parts.path + ("?" + parts.query if parts.query else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        chunks: Iterator[memoryview] | None = None,
        length: int | None = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> tuple[http.client.HTTPResponse, bytes]:
        path = self._path(path)
        self.conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            self.conn.putheader(key, value)
        if body is not None:
            length = len(body)
        if length is not None or method in ("POST", "PUT", "PATCH"):
            self.conn.putheader("Content-Length", str(length or 0))
        self.conn.endheaders()
        if body:
            self.conn.send(body)
        elif chunks is not None:
            sock = self.conn.sock
            assert sock is not None
            for chunk in chunks:
                sock.sendall(chunk)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in expect:
            raise BenchError(
                f"{method} {path[:120]} answered {resp.status} (expected {expect}): "
                f"{data[:300].decode(errors='replace')}"
            )
        return resp, data

    def download(self, path: str, digest: str | None = None, *, follow: bool = False) -> int:
        """GET a blob into a reused buffer; hash it only when ``digest`` is given.

        With ``follow``, a redirect (a registry's 307 to a signed object-store URL) is
        followed on a new connection to its host, as registry clients do; ``redirected``
        then holds the host it went to."""
        self.redirected: str | None = None
        self.conn.request("GET", self._path(path))
        resp = self.conn.getresponse()
        if follow and resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location") or ""
            resp.read()
            parts = urlsplit(location)
            if not parts.netloc:
                raise BenchError(f"GET {path[:120]}: redirect to {location[:120]!r}")
            other = Conn(f"{parts.scheme}://{parts.netloc}", self.timeout)
            try:
                total = other.download(location, digest)
            finally:
                other.close()
            self.redirected = parts.netloc
            return total
        if resp.status != 200:
            raise BenchError(f"GET {path[:120]} answered {resp.status}: {resp.read()[:300]!r}")
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        h = hashlib.sha256() if digest else None
        total = 0
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            total += n
            if h is not None:
                h.update(view[:n])
        if h is not None and "sha256:" + h.hexdigest() != digest:
            raise BenchError(f"GET {path[:120]}: body does not match {digest}")
        return total


def upload_monolithic(base_url: str, repo: str, blob: Blob) -> None:
    """POST, then one PUT ?digest= carrying the whole blob (the spec's monolithic upload)."""
    conn = Conn(base_url)
    try:
        resp, _ = conn.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        location = _with_digest(resp.headers["Location"], blob.digest)
        conn.request(
            "PUT",
            location,
            chunks=blob.chunks(),
            length=blob.size,
            headers={"Content-Type": "application/octet-stream"},
            expect=(201,),
        )
    finally:
        conn.close()


def upload_chunked(base_url: str, repo: str, blob: Blob) -> None:
    """POST, one PATCH per 8 MiB chunk with Content-Range, then an empty PUT ?digest=."""
    conn = Conn(base_url)
    try:
        resp, _ = conn.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        location = resp.headers["Location"]
        offset = 0
        for chunk in blob.chunks():
            end = offset + len(chunk) - 1
            resp, _ = conn.request(
                "PATCH",
                location,
                chunks=iter([chunk]),
                length=len(chunk),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end}",
                },
                expect=(202,),
            )
            location = resp.headers["Location"]
            offset = end + 1
        conn.request("PUT", _with_digest(location, blob.digest), length=0, expect=(201,))
    finally:
        conn.close()


STREAM_PIECE = 32 * 1024
"""Chunk size of a streamed upload: what docker's push sends (Go's ``io.Copy`` buffer,
each write one chunk of the chunked transfer encoding)."""


def upload_streamed(base_url: str, repo: str, blob: Blob) -> None:
    """POST, one PATCH carrying the whole blob in chunked transfer encoding (no length,
    32 KiB chunks, as docker's push streams a layer it compresses on the fly), then an
    empty PUT ?digest=. Each chunk goes out in one ``sendmsg`` with TCP_NODELAY, as Go's
    HTTP client writes it."""
    conn = Conn(base_url)
    try:
        resp, _ = conn.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        http_conn = conn.conn
        http_conn.putrequest(
            "PATCH", conn._path(resp.headers["Location"]), skip_accept_encoding=True
        )
        http_conn.putheader("Content-Type", "application/octet-stream")
        http_conn.putheader("Transfer-Encoding", "chunked")
        http_conn.endheaders()
        sock = http_conn.sock
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in blob.chunks():
            for start in range(0, len(chunk), STREAM_PIECE):
                piece = chunk[start : start + STREAM_PIECE]
                _send_all(sock, [b"%x\r\n" % len(piece), piece, b"\r\n"])
        sock.sendall(b"0\r\n\r\n")
        answer = http_conn.getresponse()
        body = answer.read()
        if answer.status != 202:
            raise BenchError(f"streamed PATCH answered {answer.status}: {body[:300]!r}")
        location = _with_digest(answer.headers["Location"], blob.digest)
        conn.request("PUT", location, length=0, expect=(201,))
    finally:
        conn.close()


def _send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    sent = sock.sendmsg(parts)
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        sock.sendall(memoryview(part)[sent:])
        sent = 0


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# -- aiohttp helpers (many small requests) ----------------------------------------------


def session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=300),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def _join(base_url: str, location: str) -> str:
    return location if location.startswith("http") else base_url + location


async def expect(resp: aiohttp.ClientResponse, *statuses: int) -> bytes:
    body = await resp.read()
    if resp.status not in statuses:
        raise BenchError(
            f"{resp.method} {resp.url.path[:120]} answered {resp.status} (expected {statuses}): "
            f"{body[:300].decode(errors='replace')}"
        )
    return body


async def push_blob(
    http: aiohttp.ClientSession, base_url: str, repo: str, data: bytes, digest: str | None = None
) -> str:
    """HEAD (skip if present, as clients do), then POST + PUT ?digest= with the body."""
    digest = digest or sha256(data)
    async with http.head(f"{base_url}/v2/{repo}/blobs/{digest}") as resp:
        await resp.read()
        if resp.status == 200:
            return digest
        if resp.status != 404:
            raise BenchError(f"HEAD blob answered {resp.status}")
    async with http.post(f"{base_url}/v2/{repo}/blobs/uploads/") as resp:
        await expect(resp, 202)
        location = _join(base_url, resp.headers["Location"])
    async with http.put(
        _with_digest(location, digest),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        await expect(resp, 201)
    return digest


async def mount_blob(
    http: aiohttp.ClientSession, base_url: str, repo: str, source: str, digest: str, data: bytes
) -> None:
    """Cross-repository mount; uploads the data if the server answers 202 instead."""
    async with http.post(
        f"{base_url}/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source}
    ) as resp:
        await expect(resp, 201, 202)
        if resp.status == 201:
            return
        location = _join(base_url, resp.headers["Location"])
    async with http.put(_with_digest(location, digest), data=data) as resp:
        await expect(resp, 201)


async def put_manifest(
    http: aiohttp.ClientSession, base_url: str, repo: str, ref: str, body: bytes
) -> str:
    async with http.put(
        f"{base_url}/v2/{repo}/manifests/{ref}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await expect(resp, 201)
        return resp.headers.get("Docker-Content-Digest", sha256(body))


def image_manifest(
    config: tuple[str, int], layers: list[tuple[str, int]], **annotations: str
) -> bytes:
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
    }
    if annotations:
        body["annotations"] = annotations
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class SmallImage:
    """A tiny config + one layer, pushed once per repository, for manifest workloads."""

    config: bytes
    layer: bytes

    @classmethod
    def make(cls, seed: int = 7) -> SmallImage:
        rng = random.Random(seed)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256(rng.randbytes(32))]},
            }
        ).encode()
        return cls(config, rng.randbytes(2048))

    @property
    def refs(self) -> tuple[tuple[str, int], list[tuple[str, int]]]:
        return (sha256(self.config), len(self.config)), [(sha256(self.layer), len(self.layer))]

    def manifest(self, **annotations: str) -> bytes:
        config, layers = self.refs
        return image_manifest(config, layers, **annotations)

    async def push_blobs(self, http: aiohttp.ClientSession, base_url: str, repo: str) -> None:
        await push_blob(http, base_url, repo, self.config)
        await push_blob(http, base_url, repo, self.layer)


async def gather_limited(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``jobs`` with at most ``concurrency`` in flight; the first error propagates."""
    queue = iter(jobs)
    results: list[Any] = []

    async def worker() -> None:
        for job in queue:
            results.append(await job())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


# -- a lean image puller (what a registry client does, nothing more) --------------------

_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Pull:
    """One image pulled by ``pull_image``: wall seconds, bytes of blobs, blob count."""

    seconds: float
    blob_bytes: int
    blobs: int


async def _bearer(http: aiohttp.ClientSession, resp: aiohttp.ClientResponse) -> str | None:
    """The ``Authorization`` value a 401's Bearer challenge leads to (an anonymous token
    from its realm for its service and scope, as Docker clients ask), or None without one."""
    challenge = resp.headers.get("WWW-Authenticate", "")
    if resp.status != 401 or not challenge.lower().startswith("bearer "):
        return None
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", "")
    if not realm:
        raise BenchError(f"Bearer challenge without a realm: {challenge[:200]!r}")
    async with http.get(realm, params=params) as answer:
        body = json.loads(await expect(answer, 200))
    return "Bearer " + (body.get("token") or body["access_token"])


PULL_BUFFER = 1 << 20
"""Bytes read (and hashed) per step by ``fetch_blob``: one reused buffer per blob."""


def fetch_blob(url: str, digest: str, headers: dict[str, str]) -> int:
    """GET one blob on its own connection, blocking: each read lands in one reused
    1 MiB buffer and is hashed from there, nothing else is kept; the digest is checked
    at the end (BenchError if the body does not match). Run on a thread: ``recv_into``
    and ``hashlib`` release the GIL, so the blobs of a pull hash on every core at once,
    as a Go or Rust client would, and the client's own work hides behind the server's
    instead of queueing on one event loop."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
    try:
        conn.request("GET", parts.path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET blob {digest} answered {resp.status}: {resp.read(300)!r}")
        h = hashlib.sha256()
        view = memoryview(bytearray(PULL_BUFFER))
        total = 0
        while n := resp.readinto(view):
            h.update(view[:n])
            total += n
    finally:
        conn.close()
    if "sha256:" + h.hexdigest() != digest:
        raise BenchError(f"GET blob {digest}: body does not match its digest")
    return total


async def pull_image(
    base_url: str, repo: str, tag: str, executor: concurrent.futures.Executor | None = None
) -> Pull:
    """Pull ``repo:tag`` as a registry client does, without writing anything: the
    manifest by tag with every manifest type in ``Accept`` (the token flow first if the
    server answers 401 with a Bearer challenge), its digest checked against
    ``Docker-Content-Digest``, then the config and every layer at once, each on its own
    connection and thread (``fetch_blob``, from *executor*, else the loop's default),
    hashed while it streams and checked against its digest. The wall time is the
    server's share of a pull plus the least client work a correct pull needs (receiving
    and hashing every byte), spread over the machine's cores."""
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    async with session(4) as http:
        url = f"{base_url}/v2/{repo}/manifests/{tag}"
        headers = {"Accept": ACCEPT_MANIFESTS}
        async with http.get(url, headers=headers) as resp:
            body = await resp.read()
            auth = await _bearer(http, resp)
        if auth is not None:
            headers["Authorization"] = auth
            async with http.get(url, headers=headers) as resp:
                body = await expect(resp, 200)
        elif resp.status != 200:
            raise BenchError(f"GET {url[:120]} answered {resp.status}: {body[:300]!r}")
    said = resp.headers.get("Docker-Content-Digest")
    if said and sha256(body) != said:
        raise BenchError(f"manifest of {repo}:{tag} does not match {said}")
    manifest = json.loads(body)
    if "config" not in manifest or "layers" not in manifest:
        raise BenchError(f"{repo}:{tag} is not a single image ({manifest.get('mediaType')})")
    digests = [manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
    blob_headers = {k: v for k, v in headers.items() if k == "Authorization"}
    sizes = await asyncio.gather(
        *(
            loop.run_in_executor(
                executor, fetch_blob, f"{base_url}/v2/{repo}/blobs/{d}", d, blob_headers
            )
            for d in digests
        )
    )
    return Pull(time.perf_counter() - start, sum(sizes), len(digests))
