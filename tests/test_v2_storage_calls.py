"""The storage calls a small push makes: counted, so the write path cannot silently regress.

A server over the local driver, wrapped in a driver that records every call
with its path, answers real HTTP on 127.0.0.1. Each test performs one
client-visible operation and asserts the exact calls it cost; the lists say
what each call is for (see registry_core/storage/blobs.py and manifests.py for
why each is needed: GC's safety rests on the existence checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drivers.local import LocalDriver
from registry_core import Registry, load_config
from registry_core.lifecycle.counting import CountingDriver
from registry_core.storage.driver import FileWriter
from registry_core.storage.steps import Step
from registry_server.app import build_app

REPO = "calls/reg/app"


class RecordingDriver(CountingDriver):
    """CountingDriver that also keeps (operation, path) of calls made while recording."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, str]] = []
        self.recording = False

    def _note(self, operation: str, path: str) -> None:
        if self.recording:
            self.calls.append((operation, path))

    async def read(self, path: str) -> bytes:
        self._note("read", path)
        return await super().read(path)

    async def write(self, path: str, data: bytes) -> None:
        self._note("write", path)
        await super().write(path, data)

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        self._note("write_if_absent", path)
        return await super().write_if_absent(path, data)

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        self._note("open_writer", path)
        return await super().open_writer(path, append=append)

    async def stat(self, path: str) -> Any:
        self._note("stat", path)
        return await super().stat(path)

    async def list(self, path: str) -> list[str]:
        self._note("list", path)
        return await super().list(path)

    async def move(self, source: str, destination: str) -> None:
        self._note("move", source)
        await super().move(source, destination)

    async def move_exact(self, source: str, destination: str, size: int) -> None:
        self._note("move", source)
        await self.inner.move_exact(source, destination, size)

    async def delete(self, path: str) -> None:
        self._note("delete", path)
        await super().delete(path)

    async def run_steps(self, groups: list[list[Step]]) -> list[list[Any]]:
        """Passed on (the local driver's one-hop path is what the server runs), each step
        recorded in the order the driver runs them."""
        for group in groups:
            for step in group:
                self._note(step.operation, step.path)
        return await self.inner.run_steps(groups)

    async def commit_small_upload(
        self, record: str, pending: str, folder: str, destination: str, data: bytes, **then: Any
    ) -> bytes | None:
        self._note("commit_small_upload", folder)
        if then.get("then_write") is not None:
            self._note("+ write", then["then_write"][0])
        if then.get("then_delete") is not None:
            self._note("+ delete", then["then_delete"])
        return await self.inner.commit_small_upload(
            record, pending, folder, destination, data, **then
        )

    def recorded(self) -> list[str]:
        """The recorded operations, each with the kind of object it touched."""
        return [f"{operation} {_kind(path)}" for operation, path in self.calls]


def _kind(path: str) -> str:
    """A path reduced to what it is (digests, upload ids and names dropped)."""
    parts = path.split("/")
    if path.startswith("cargohold/uploads/"):
        return "upload-marker" if len(parts) > 4 else "upload-markers"
    if "_uploads" in parts:
        tail = parts[parts.index("_uploads") + 2 :]
        return "upload/" + "/".join(tail) if tail else "upload"
    if "_layers" in parts:
        return "layer-link"
    if path.startswith("cargohold/tag-index/"):
        # The website's per-repository tag index: one entry per tag write, and a pointer.
        return "web-tag-" + ("entry" if "@" in parts[-1] else "pointer")
    if "_manifests" in parts:
        if "tags" in parts:
            return "tag-current" if "current" in parts else "tag-index"
        return "revision-link"
    if "repositories" not in parts and "blobs" in parts:
        return "blob-data"
    return path


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, RecordingDriver]]:
    driver = RecordingDriver(LocalDriver(str(tmp_path / "store")))
    config = load_config(
        overrides={"auth": {"enabled": False}, "storage": {"url": f"file://{tmp_path}/store"}},
        environ={},
    )
    runner = web.AppRunner(build_app(config, Registry(driver)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", driver
    finally:
        await runner.cleanup()


async def push_blob(http: aiohttp.ClientSession, url: str, data: bytes) -> str:
    """What clients do for a small layer: HEAD (absent), POST, PUT ?digest= with the body."""
    digest = digest_of(data)
    async with http.head(f"{url}/v2/{REPO}/blobs/{digest}") as answer:
        assert answer.status == 404
    async with http.post(f"{url}/v2/{REPO}/blobs/uploads/") as answer:
        assert answer.status == 202
        location = answer.headers["Location"]
    async with http.put(f"{url}{location}?digest={digest}", data=data) as answer:
        assert answer.status == 201, await answer.text()
    return digest


async def test_a_small_blob_push_costs_these_storage_calls(
    server: tuple[str, RecordingDriver],
) -> None:
    url, driver = server
    async with aiohttp.ClientSession() as http:
        await push_blob(http, url, b"warm-up: the repository's folders exist")
        driver.calls.clear()
        driver.recording = True
        await push_blob(http, url, b"x" * 4096)
    assert sorted(driver.recorded()) == sorted(
        [
            "read layer-link",  # HEAD: is it linked here? (no: 404, nothing more)
            "write upload-marker",  # POST, together: this session counts ...
            "write upload/startedat",  # ... and exists ...
            "list upload-markers",  # ... and the open sessions (upload limits), without it
            # PUT, the whole body at once, in one operation: the session exists and holds
            # no bytes yet, the blob is stored if absent (GC: a commit stores its own copy),
            # and the session is gone ...
            "commit_small_upload upload",
            "+ write layer-link",  # ... then the blob is linked into the repository ...
            "+ delete upload-marker",  # ... and the session no longer counts
        ]
    )


async def test_a_manifest_put_costs_these_storage_calls(
    server: tuple[str, RecordingDriver],
) -> None:
    url, driver = server
    async with aiohttp.ClientSession() as http:
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = b"layer" * 100
        descriptors = []
        for data, media_type in (
            (config, "application/vnd.oci.image.config.v1+json"),
            (layer, "application/vnd.oci.image.layer.v1.tar"),
        ):
            await push_blob(http, url, data)
            descriptors.append(
                {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": descriptors[0],
                "layers": descriptors[1:],
            }
        ).encode()
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        async with http.put(
            f"{url}/v2/{REPO}/manifests/warm", data=manifest, headers=headers
        ) as answer:
            assert answer.status == 201
        manifest = manifest.replace(b"linux", b"linux ")
        driver.calls.clear()
        driver.recording = True
        async with http.put(
            f"{url}/v2/{REPO}/manifests/v1", data=manifest, headers=headers
        ) as answer:
            assert answer.status == 201, await answer.text()
    # In this order (the local driver runs each call's steps in the order given): the GC
    # protocol (lifecycle/gc.py) needs the revision visible before the second check, and
    # the tag visible before its confirmation.
    assert driver.recorded() == (
        [
            # Each referenced blob (config, layer): linked here and stored ...
            *["read layer-link", "stat blob-data"] * 2,
            "write_if_absent blob-data",  # the manifest's content (create-if-absent) ...
            "write revision-link",  # ... with its revision link, together
            # ... checked again once the revision is visible (GC's set-aside, gc.py), the
            # manifest's own bytes too (stored again only if GC had set them aside) ...
            *["read layer-link", "stat blob-data"] * 2,
            "stat blob-data",
            "read web-tag-pointer",  # ... with the website's index pointer of the tag
            "write tag-index",  # the tag's history ...
            "write tag-current",  # ... and the tag ...
            # ... with the website's tag index (date and size sorting without reading
            # manifests), all together: the tag's new entry (pushed time, size, digest) ...
            "write web-tag-entry",
            "write web-tag-pointer",  # ... and the pointer to it (a new tag: nothing to drop)
            # The tag written, its revision confirmed still linked (a GC run or a retention rule
            # may have collected it while it was untagged, gc.py)
            "stat revision-link",
        ]
    )


async def test_a_manifest_put_costs_three_thread_hops(
    server: tuple[str, RecordingDriver], hops: list[object]
) -> None:
    # One client: the blob check; the content, revision and second check (in order); the
    # tag, its index entry and the confirmation (in order). Tag rules, repository index
    # and settings come from this process's caches after the first push.
    url, _ = server
    manifests = []
    async with aiohttp.ClientSession() as http:
        config = await push_blob(http, url, b'{"os": "linux"}')
        for n in range(2):
            manifests.append(
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": config,
                            "size": 15,
                        },
                        "layers": [],
                        "annotations": {"n": str(n)},
                    }
                ).encode()
            )
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        for n, manifest in enumerate(manifests):
            hops.clear()
            async with http.put(
                f"{url}/v2/{REPO}/manifests/v{n}", data=manifest, headers=headers
            ) as answer:
                assert answer.status == 201, await answer.text()
    assert len(hops) == 3


@pytest.fixture
def hops(server: tuple[str, RecordingDriver], monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The worker-thread hops the local driver makes (each a thread and a loop wake-up)."""
    workers = server[1].inner._workers
    made: list[object] = []
    submit = workers.submit

    def counted(func: Any, deliver: Any) -> None:
        made.append(func)
        submit(func, deliver)

    monkeypatch.setattr(workers, "submit", counted)
    return made


async def test_a_small_blob_push_costs_these_thread_hops(
    server: tuple[str, RecordingDriver], hops: list[object]
) -> None:
    # One client, one request at a time: nothing to share a hop with but this request's own
    # operations started together. HEAD 1; POST 1 (marker, record and the session count
    # together); PUT 1 (the whole commit of the body, the link and the marker's removal).
    url, _ = server
    async with aiohttp.ClientSession() as http:
        await push_blob(http, url, b"warm-up: the repository's folders exist")
        hops.clear()
        await push_blob(http, url, b"y" * 4096)
    assert len(hops) == 3


async def test_concurrent_small_pushes_share_thread_hops(
    server: tuple[str, RecordingDriver], hops: list[object]
) -> None:
    # Small operations started in the same loop turn by different requests share one hop:
    # 16 pushes at once make at most half the hops of 16 pushes one after the other.
    url, _ = server
    async with aiohttp.ClientSession() as http:
        await push_blob(http, url, b"warm-up: the repository's folders exist")
        hops.clear()
        await asyncio.gather(*(push_blob(http, url, bytes([n]) * 4096) for n in range(16)))
    assert len(hops) < 16 * 3 // 2
