"""Helpers for the ``/v2/`` API tests: a real server on loopback, and small builders.

Every test talks to the application over real HTTP on 127.0.0.1, the way a
registry client does. ``serve()`` starts the app in-process on memory or
local-folder storage; the ``V2Client`` it yields sends requests, reads each
reply whole and checks the headers every reply must carry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from registry_core import load_config
from registry_server.app import REGISTRY_KEY, V2_KEY, build_app

STORAGES = ("memory", "file")
"""Storage backends the parametrized fixtures run on."""

BLOBS_PREFIX = "docker/registry/v2/blobs"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

EMPTY_CONFIG = b"{}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


EMPTY_DIGEST = digest_of(EMPTY_CONFIG)


@dataclass(frozen=True)
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip()


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """Assert *reply* is the spec's JSON error body with *status* and *code*; return the error."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.content_type == "application/json", reply.headers.get("Content-Type")
    document = reply.json()
    assert isinstance(document, dict), document
    assert set(document) == {"errors"}, document
    errors = document["errors"]
    assert isinstance(errors, list), document
    assert errors, "the errors list must not be empty"
    for error in errors:
        assert isinstance(error.get("code"), str), error
        assert isinstance(error.get("message"), str), error
        assert error["message"], error
    codes = [error["code"] for error in errors]
    assert code in codes, codes
    return errors[codes.index(code)]


class V2Client:
    """An HTTP client bound to one running registry server."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, root: Path | None):
        self.server = server
        self.session = session
        self.root = root
        """The storage folder for ``file`` storage, else None."""

    @property
    def host(self) -> str:
        return str(self.server.host)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def app(self) -> Any:
        return self.server.app

    @property
    def uploads_in_flight(self) -> int:
        return int(self.app[V2_KEY].uploads_in_flight)

    def url(self, path: str) -> yarl.URL:
        # encoded=True: send the path exactly as written ('..', '//' included).
        return yarl.URL(f"http://{self.host}:{self.port}{path}", encoded=True)

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        skip_auto_headers: tuple[str, ...] = (),
    ) -> Reply:
        async with self.session.request(
            method,
            self.url(path),
            data=data,
            headers=headers,
            params=params,
            skip_auto_headers=skip_auto_headers,
        ) as response:
            body = await response.read()
            reply = Reply(response.status, response.headers, body)
        assert "X-Request-Id" in reply.headers, f"{method} {path} answered without X-Request-Id"
        if reply.status >= 400 and method != "HEAD":
            assert reply.content_type != "text/html", reply.body[:200]
        return reply

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("HEAD", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)

    # -- pushing ---------------------------------------------------------------------

    async def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        """Push *data* with a monolithic POST; return its digest."""
        digest = digest_of(data, algorithm)
        reply = await self.post(
            f"/v2/{repo}/blobs/uploads/",
            params={"digest": digest},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert reply.status == 201, (reply.status, reply.body)
        return digest

    async def start_upload(self, repo: str) -> str:
        """Open an upload session; return its Location path."""
        reply = await self.post(f"/v2/{repo}/blobs/uploads/")
        assert reply.status == 202, (reply.status, reply.body)
        return reply.headers["Location"]

    async def put_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str | None
    ) -> Reply:
        """PUT manifest bytes; *media_type* None sends no Content-Type at all."""
        if media_type is None:
            return await self.put(
                f"/v2/{repo}/manifests/{reference}",
                data=body,
                skip_auto_headers=("Content-Type",),
            )
        headers = {"Content-Type": media_type}
        return await self.put(f"/v2/{repo}/manifests/{reference}", data=body, headers=headers)

    async def push_manifest(
        self, repo: str, reference: str, document: dict[str, Any], media_type: str | None
    ) -> tuple[str, bytes]:
        """PUT a manifest that must be accepted; return (digest, exact bytes)."""
        body = encode(document)
        reply = await self.put_manifest(repo, reference, body, media_type)
        assert reply.status == 201, (reply.status, reply.body)
        return digest_of(body), body

    async def push_image(
        self,
        repo: str,
        reference: str,
        *,
        seed: str = "image",
        media_type: str = OCI_MANIFEST,
        **manifest_fields: Any,
    ) -> tuple[str, bytes]:
        """Push a config and one layer, then an image manifest naming them."""
        docker = media_type == DOCKER_MANIFEST
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer of {seed}".encode() * 64
        await self.push_blob(repo, config)
        await self.push_blob(repo, layer)
        document = image_manifest(
            descriptor(config, DOCKER_CONFIG if docker else OCI_CONFIG),
            [descriptor(layer, DOCKER_LAYER if docker else OCI_LAYER)],
            media_type=media_type,
            **manifest_fields,
        )
        return await self.push_manifest(repo, reference, document, media_type)

    async def listed_tags(self, repo: str) -> list[str]:
        """The tags ``tags/list`` reports; none when the repository is unknown (404)."""
        reply = await self.get(f"/v2/{repo}/tags/list")
        if reply.status == 404:
            assert_error(reply, 404, "NAME_UNKNOWN")
            return []
        assert reply.status == 200, (reply.status, reply.body)
        return list(reply.json()["tags"])

    # -- what storage holds ------------------------------------------------------

    async def stored_blob_files(self) -> list[str]:
        """Paths of every blob data object in storage (on disk for ``file`` storage)."""
        if self.root is not None:
            top = self.root / BLOBS_PREFIX
            found = []
            for directory, _, files in os.walk(top):
                found.extend(str(Path(directory, name)) for name in files)
            return sorted(found)
        driver = self.app[REGISTRY_KEY].driver
        return sorted([entry.path async for entry in driver.walk(BLOBS_PREFIX) if not entry.is_dir])


def make_config(storage: str, tmp_path: Path, manifests: dict[str, Any] | None = None) -> Any:
    url = "memory://" if storage == "memory" else f"file://{tmp_path / 'storage'}"
    overrides: dict[str, dict[str, Any]] = {"storage": {"url": url}, "auth": {"enabled": False}}
    if manifests:
        overrides["manifests"] = manifests
    return load_config(overrides=overrides, environ={})


@asynccontextmanager
async def serve(
    storage: str, tmp_path: Path, *, manifests: dict[str, Any] | None = None
) -> AsyncIterator[V2Client]:
    """A registry on 127.0.0.1 over *storage* (``memory`` or ``file``), and a client for it."""
    config = make_config(storage, tmp_path, manifests)
    server = TestServer(build_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            root = tmp_path / "storage" if storage == "file" else None
            yield V2Client(server, session, root)
    finally:
        await server.close()


# -- documents ----------------------------------------------------------------------


def encode(document: dict[str, Any]) -> bytes:
    """Manifest bytes in a layout no server would produce by re-serialising."""
    return json.dumps(document, indent=3).encode() + b"\n"


def descriptor(data: bytes, media_type: str, **fields: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **fields}


def image_manifest(
    config: dict[str, Any],
    layers: Iterable[dict[str, Any]],
    *,
    media_type: str | None = OCI_MANIFEST,
    **fields: Any,
) -> dict[str, Any]:
    document: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        document["mediaType"] = media_type
    document["config"] = config
    document["layers"] = list(layers)
    document.update(fields)
    return document


def index_manifest(
    children: Iterable[tuple[str, int, str]],
    *,
    media_type: str | None = OCI_INDEX,
    **fields: Any,
) -> dict[str, Any]:
    """An index over (digest, size, mediaType) children, each for linux/amd64."""
    document: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        document["mediaType"] = media_type
    document["manifests"] = [
        {
            "mediaType": child_type,
            "digest": digest,
            "size": size,
            "platform": {"architecture": "amd64", "os": "linux"},
        }
        for digest, size, child_type in children
    ]
    document.update(fields)
    return document


def subject_of(digest: str, body: bytes, media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(body)}


def empty_config() -> dict[str, Any]:
    return descriptor(EMPTY_CONFIG, OCI_EMPTY)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll *predicate* (a plain callable) until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
