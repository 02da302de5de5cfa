"""A small scripted upstream registry on 127.0.0.1 and an in-process pull-through over it.

:class:`ScriptedUpstream` is a real aiohttp server speaking the parts of the
distribution API a pull-through cache uses (``/v2/``, manifests, blobs, tags,
referrers), with optional Basic or Bearer auth (its own token endpoint) and
knobs a test turns: corrupt a blob, answer a status with ``Retry-After``, slow
a blob down. It counts every request, so tests can assert how often the cache
asked. :func:`pull_through` builds the library's PullThrough over memory
storage with the real aiohttp upstream client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from drivers import open_driver
from registry_core import Registry
from registry_core.names import Tenant
from registry_core.proxy import NetworkPolicy, PullThrough, UpstreamSpec, UpstreamStore
from registry_core.secrets import SecretBox
from registry_core.settings import SettingsStore
from registry_server.upstream_client import AiohttpUpstreamClient
from tests.helpers.images import Image, Index

TENANT = Tenant("acme", "mirror")


@dataclass
class ScriptedUpstream:
    auth: str | None = None
    """None (anonymous), "basic" or "bearer"."""
    username: str = "puller"
    password: str = "pull-secret"
    anonymous_tokens: bool = False
    """Bearer: hand out tokens without credentials too (as Docker Hub does for public images)."""
    token_lifetime: int = 300
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    referrers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    slow_blobs: float = 0.0
    """Seconds to wait between the first and the rest of a blob's bytes."""
    stall_manifests: float = 0.0
    """Seconds to wait after a manifest's headers before its body (a stalled upstream)."""
    answer: tuple[int, dict[str, str]] | None = None
    """Answer every API request (but /v2/ and the token endpoint) with this status."""
    requests: Counter[str] = field(default_factory=Counter)
    token_requests: int = 0
    authorizations: list[str] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def add_image(self, name: str, tag: str | None, image: Image | Index) -> None:
        self.manifests[(name, image.digest)] = (image.manifest, image.media_type)
        if tag is not None:
            self.manifests[(name, tag)] = (image.manifest, image.media_type)
        for blob in image.blobs():
            self.blobs[blob.digest] = blob.data
        for child in getattr(image, "images", ()):
            self.add_image(name, None, child)

    def count(self, method: str, fragment: str) -> int:
        return sum(
            n
            for key, n in self.requests.items()
            if key.startswith(method + " ") and fragment in key
        )

    # -- the server -----------------------------------------------------------------

    def _challenge(self) -> dict[str, str]:
        if self.auth == "basic":
            return {"WWW-Authenticate": 'Basic realm="scripted"'}
        return {"WWW-Authenticate": f'Bearer realm="{self.url}/token",service="scripted"'}

    def _basic_ok(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        self.authorizations.append(header)
        if self.auth is None:
            return True
        if self.auth == "basic":
            return self._basic_ok(header)
        return header.startswith("Bearer tok-")

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        header = request.headers.get("Authorization", "")
        if not (self._basic_ok(header) or (self.anonymous_tokens and not header)):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        return web.json_response(
            {"token": "tok-" + secrets.token_hex(8), "expires_in": self.token_lifetime}
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[f"{request.method} {path}"] += 1
        if not self._authorized(request):
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED"}]}, status=401, headers=self._challenge()
            )
        if path == "/v2/":
            return web.json_response({})
        if self.answer is not None:
            status, headers = self.answer
            return web.json_response({"errors": [{"code": "X"}]}, status=status, headers=headers)
        tail = path[len("/v2/") :]
        if "/manifests/" in tail:
            name, ref = tail.rsplit("/manifests/", 1)
            found = self.manifests.get((name, ref))
            if found is None:
                return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
            body, media_type = found
            if self.stall_manifests and request.method == "GET":
                stalled = web.StreamResponse(
                    headers={"Content-Type": media_type, "Content-Length": str(len(body))}
                )
                await stalled.prepare(request)
                await asyncio.sleep(self.stall_manifests)
                await stalled.write(body)
                return stalled
            return web.Response(
                body=None if request.method == "HEAD" else body,
                headers={
                    "Content-Type": media_type,
                    "Docker-Content-Digest": "sha256:"
                    + __import__("hashlib").sha256(body).hexdigest(),
                    "Content-Length": str(len(body)),
                },
            )
        if "/blobs/" in tail:
            digest = tail.rsplit("/blobs/", 1)[1]
            data = self.blobs.get(digest)
            if data is None:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
            if digest in self.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if request.method == "HEAD":
                return web.Response(headers={"Content-Length": str(len(data))})
            response = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await response.prepare(request)
            await response.write(data[:1024])
            if self.slow_blobs:
                await asyncio.sleep(self.slow_blobs)
            await response.write(data[1024:])
            await response.write_eof()
            return response
        if tail.endswith("/tags/list"):
            name = tail[: -len("/tags/list")]
            tags = sorted({ref for (n, ref) in self.manifests if n == name and ":" not in ref})
            if not tags:
                return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
            return web.json_response({"name": name, "tags": tags})
        if "/referrers/" in tail:
            subject = tail.rsplit("/referrers/", 1)[1]
            body = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}
            body["manifests"] = self.referrers.get(subject, [])
            return web.Response(body=json.dumps(body), content_type="application/json")
        return web.json_response({"errors": [{"code": "UNSUPPORTED"}]}, status=404)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedUpstream]:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/v2/{tail:.*}", self.dispatch)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        try:
            yield self
        finally:
            await self.server.close()


@asynccontextmanager
async def pull_through(
    *specs: UpstreamSpec,
    allow: tuple[str, ...] = ("127.0.0.0/8",),
    timeout: float = 5.0,
    negative_ttl: float = 30.0,
) -> AsyncIterator[PullThrough]:
    """The library's pull-through over memory storage, with *specs* as TENANT's upstreams."""
    registry = Registry(open_driver("memory://"))
    store = UpstreamStore(SettingsStore(registry.driver, ttl=0.0), SecretBox("k" * 32))
    for spec in specs:
        await store.add(TENANT, spec)
    client = AiohttpUpstreamClient(NetworkPolicy(allow), timeout)
    proxy = PullThrough(registry, store, client, negative_ttl=negative_ttl)
    try:
        yield proxy
    finally:
        await proxy.close()
        await registry.close()


async def drain(chunks: AsyncIterator[bytes]) -> bytes:
    parts = [chunk async for chunk in chunks]
    return b"".join(parts)
