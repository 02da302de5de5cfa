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
from registry_core.lifecycle.counting import CountingDriver

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


async def test_a_failed_manifest_is_retried_by_every_later_pass_until_it_succeeds(
    registry: Registry,
) -> None:
    digest = await push_image(registry)

    async def failing(repo: str, found: Digest) -> None:
        raise RuntimeError("signing backend down")

    report = await registry.feed.catch_up("sign", failing)
    assert report.failed == 1 and report.complete  # the round goes on without it ...
    again = await registry.feed.catch_up("sign", failing)
    assert again.failed == 1  # ... and every pass tries it again
    recorder = Recorder()
    await registry.feed.catch_up("sign", recorder.handle)
    assert recorder.handled == [(REPO, digest)]
    quiet = Recorder()
    registry.feed.overlap = 0.0
    await registry.feed.catch_up("sign", quiet.handle)
    assert quiet.handled == []  # handled once: no longer retried


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


async def _many_repositories(tmp_path: Path, count: int) -> list[tuple[str, Digest]]:
    """*count* repositories with one tagged image each, their links made old."""
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    pushed = [
        (f"acme/r{n % 3}/image{n:03d}", await push_image(registry, f"acme/r{n % 3}/image{n:03d}"))
        for n in range(count)
    ]
    old = os.stat(tmp_path).st_mtime - 3600
    for path in (tmp_path / "store" / "docker").rglob("link"):
        os.utime(path, (old, old))
    return sorted(pushed)


async def _round(registry: Registry, name: str, handle: Any, budget: int) -> list[Any]:
    """Passes until one completes a round; their reports."""
    reports = []
    while not reports or not reports[-1].complete:
        reports.append(await registry.feed.catch_up(name, handle, budget=budget))
        assert len(reports) < 100
    return reports


@pytest.mark.parametrize("count", [12, 48])
async def test_a_pass_over_unchanged_repositories_costs_a_bounded_number_of_storage_calls(
    tmp_path: Path, count: int
) -> None:
    await _many_repositories(tmp_path, count)
    driver = CountingDriver(LocalDriver(str(tmp_path / "store")))
    registry = Registry(driver)
    registry.feed.overlap = 0.0
    first = Recorder()
    await _round(registry, "sign", first.handle, budget=10_000)  # the first round: everything
    assert len(first.handled) == count
    budget, passes = 8, 0
    while True:
        before = driver.counts.copy()
        report = await registry.feed.catch_up("sign", Recorder().handle, budget=budget)
        used = driver.counts - before
        passes += 1
        assert report.handled == 0 and report.repositories <= budget // 2
        # The budget's listings, the way back to the position (owner, registry, image),
        # the cursor's read and write, and for a new round one more write and a stat:
        assert used["list"] + used["walk"] <= budget + 3
        assert used["read"] == 1 and used["write"] <= 2 and used["stat"] <= 1
        assert used["read_stream"] == used["write_if_absent"] == 0
        if report.complete:
            break
    assert passes >= count * 2 // budget


async def test_a_round_split_over_passes_finds_what_was_pushed_anywhere_meanwhile(
    tmp_path: Path,
) -> None:
    pushed = await _many_repositories(tmp_path, 24)
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    await _round(registry, "sign", Recorder().handle, budget=10_000)
    recorder = Recorder()
    first = await registry.feed.catch_up("sign", recorder.handle, budget=10)
    assert not first.complete and recorder.handled == []
    # Pushed behind the round's position and ahead of it, as by another process.
    behind = await push_image(registry, pushed[0][0], tag="2.0", seed="behind")
    ahead = await push_image(registry, pushed[-1][0], tag="2.0", seed="ahead")
    await _round(registry, "sign", recorder.handle, budget=10)
    await _round(registry, "sign", recorder.handle, budget=10)
    assert set(recorder.handled) == {(pushed[0][0], behind), (pushed[-1][0], ahead)}


async def test_a_crash_between_store_and_sign_is_repaired_by_budgeted_passes(
    tmp_path: Path,
) -> None:
    from registry_core.secrets import SecretBox
    from registry_core.signing import KeyStore, Signer, SigningDefaults, cosign

    pushed = await _many_repositories(tmp_path, 18)
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    keys = KeyStore(registry.driver, SecretBox("test secrets key, long enough"))
    signer = Signer(
        registry, keys, SigningDefaults(enabled=True, simple=False, public_hosts=("h",))
    )
    await _round(registry, "signing", Recorder().handle, budget=10_000)  # as a running server
    repo = pushed[len(pushed) // 2][0]
    crashed = await push_image(registry, repo, tag="3.0", seed="crash")  # nobody was nudged
    signed = []
    for _ in range(2):  # at most two rounds: the one in progress and the next
        while True:
            report = await registry.feed.catch_up(
                "signing", lambda r, d: signer.sign_manifest(r, d), budget=10
            )
            signed.append(report.handled)
            if report.complete:
                break
    found = await cosign.read_attachment(registry.repository(repo), crashed)
    assert [s.key_id for s in found] == ["cosign-1"] and sum(signed) >= 1
