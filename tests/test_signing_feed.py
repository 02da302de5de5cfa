"""The manifest feed (registry_core/manifest_feed.py): nudges on store, catch-up walks from a cursor."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core import mediatypes as mt
from registry_core.jobs import Leases

REPO = "acme/prod/app"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalDriver(str(tmp_path / "store")))


async def _blob(registry: Registry, repo: str, data: bytes) -> Digest:
    async with registry.repository(repo).blobs.upload() as upload:
        await upload.write(data)
        return (await upload.commit(Digest.of(data))).digest


async def push_image(
    registry: Registry, repo: str = REPO, tag: str | None = "1.0", seed: str = "", **extra: Any
) -> Digest:
    config = await _blob(registry, repo, b"{}")
    layer = await _blob(registry, repo, f"layer {seed}".encode())
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(config),
                "size": 2,
            },
            "layers": [{"mediaType": LAYER, "digest": str(layer), "size": 6 + len(seed)}],
            "annotations": {"seed": seed},
            **extra,
        }
    ).encode()
    parsed = await registry.repository(repo).manifests.put(body, mt.OCI_MANIFEST, tag=tag)
    return parsed.digest


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Digest, str, str | None]] = []
        self.handled: list[tuple[str, Digest]] = []

    def __call__(self, repo: str, digest: Digest, media_type: str, tag: str | None) -> None:
        self.events.append((repo, digest, media_type, tag))

    async def handle(self, repo: str, digest: Digest) -> None:
        self.handled.append((repo, digest))


async def test_a_stored_manifest_nudges_every_listener_with_its_tag(registry: Registry) -> None:
    first, second = Recorder(), Recorder()
    registry.feed.subscribe("sign", first)
    registry.feed.subscribe("scan", second)
    digest = await push_image(registry)
    assert first.events == [(REPO, digest, mt.OCI_MANIFEST, "1.0")]
    assert second.events == first.events


async def test_tagging_an_existing_manifest_nudges_with_the_new_tag(registry: Registry) -> None:
    digest = await push_image(registry)
    recorder = Recorder()
    registry.feed.subscribe("sign", recorder)
    await registry.repository(REPO).manifests.tag("latest", digest)
    assert [(e[1], e[3]) for e in recorder.events] == [(digest, "latest")]


async def test_attachments_are_never_fed(registry: Registry) -> None:
    subject = await push_image(registry)
    recorder = Recorder()
    registry.feed.subscribe("sign", recorder)
    await push_image(registry, tag=f"sha256-{subject.hex}.sig", seed="sig")
    await push_image(
        registry,
        tag=None,
        seed="ref",
        subject={"mediaType": mt.OCI_MANIFEST, "digest": str(subject), "size": 1},
    )
    assert recorder.events == []
    await registry.feed.catch_up("sign", recorder.handle)
    assert recorder.handled == [(REPO, subject)]


async def test_a_failing_listener_does_not_fail_the_push(registry: Registry) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("listener bug")

    registry.feed.subscribe("sign", broken)
    digest = await push_image(registry)
    assert (await registry.repository(REPO).manifests.get("1.0")).digest == digest


async def test_the_first_catch_up_finds_every_manifest_tagged_or_not(registry: Registry) -> None:
    tagged = await push_image(registry, seed="a")
    untagged = await push_image(registry, tag=None, seed="b")
    other = await push_image(registry, "acme/dev/tool", seed="c")
    recorder = Recorder()
    report = await registry.feed.catch_up("sign", recorder.handle)
    assert sorted(recorder.handled, key=str) == sorted(
        [(REPO, tagged), (REPO, untagged), ("acme/dev/tool", other)], key=str
    )
    assert report.handled == 3 and report.cursor is not None


async def test_a_catch_up_only_walks_past_its_stored_cursor(tmp_path: Path) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    registry.feed.overlap = 0.0
    await push_image(registry, seed="old")
    await registry.feed.catch_up("sign", Recorder().handle)
    # Another process (a fresh Registry on the same storage) reads the stored cursor.
    later = Registry(LocalDriver(str(tmp_path / "store")))
    later.feed.overlap = 0.0
    cursor = await later.feed.cursor("sign")
    assert cursor is not None
    new = await push_image(later, tag="2.0", seed="new")
    # The old links as they look a while later: well before the cursor.
    for path in (tmp_path / "store").rglob("link"):
        if new.hex not in str(path) and "/2.0/" not in str(path):
            os.utime(path, (cursor - 10, cursor - 10))
    recorder = Recorder()
    await later.feed.catch_up("sign", recorder.handle)
    assert recorder.handled == [(REPO, new)]


async def test_a_failed_handler_leaves_the_cursor_so_the_next_walk_retries(
    registry: Registry,
) -> None:
    digest = await push_image(registry)

    async def failing(repo: str, found: Digest) -> None:
        raise RuntimeError("signing backend down")

    report = await registry.feed.catch_up("sign", failing)
    assert report.failed == 1
    assert await registry.feed.cursor("sign") is None
    recorder = Recorder()
    await registry.feed.catch_up("sign", recorder.handle)
    assert recorder.handled == [(REPO, digest)]


async def test_a_full_catch_up_ignores_the_cursor(registry: Registry) -> None:
    digest = await push_image(registry)
    await registry.feed.catch_up("sign", Recorder().handle)
    recorder = Recorder()
    await registry.feed.catch_up("sign", recorder.handle, full=True)
    assert recorder.handled == [(REPO, digest)]


async def test_a_catch_up_under_a_lost_lease_stops(registry: Registry) -> None:
    from registry_core.jobs import LeaseLost

    await push_image(registry)
    leases = Leases(registry.driver, "me")
    async with leases.hold("sign", ttl=30) as guard:
        guard.lost = LeaseLost("taken over")
        recorder = Recorder()
        with pytest.raises(LeaseLost):
            await registry.feed.catch_up("sign", recorder.handle, guard)
        assert recorder.handled == []
