"""Garbage collection through the library (``Registry.collect_garbage``) on local storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.attachments import ATTACHMENT_KINDS
from registry_core.errors import ManifestBlobUnknown
from registry_core.jobs import LeaseBusy, Leases
from registry_core.storage import layout
from registry_core.storage.driver import PathNotFound
from tests.gc_support import (
    blob_present,
    image,
    image_complete,
    push_attachment,
    push_blob,
    push_image,
    push_index,
    readable_in,
)
from tests.helpers.images import Blob, build_index

REPO = "acme/prod/app"
OTHER = "acme/prod/other"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalDriver(str(tmp_path / "store")))


async def collect(registry: Registry, **options: object) -> object:
    options.setdefault("grace", 0.0)
    options.setdefault("settle", 0.0)
    return await registry.collect_garbage(**options)  # type: ignore[arg-type]


async def test_a_blob_no_manifest_references_is_deleted(registry: Registry) -> None:
    stray = Blob("application/octet-stream", b"nobody wants me")
    await push_blob(registry, REPO, stray)
    report = await collect(registry)
    assert not await blob_present(registry, stray.digest)
    assert report.blobs_deleted == 1
    assert report.bytes_deleted == stray.size


async def test_everything_a_tag_reaches_is_kept(registry: Registry) -> None:
    img = image("tagged")
    await push_image(registry, REPO, img, tag="1.0")
    report = await collect(registry)
    assert report.blobs_deleted == 0
    assert await image_complete(registry, REPO, "1.0")


async def test_blobs_younger_than_the_grace_period_are_kept(registry: Registry) -> None:
    stray = Blob("application/octet-stream", b"fresh upload")
    await push_blob(registry, REPO, stray)
    await collect(registry, grace=3600.0)
    assert await readable_in(registry, REPO, stray.digest)


async def test_untagged_manifests_are_kept_by_default(registry: Registry) -> None:
    img = image("untagged")
    await push_image(registry, REPO, img)
    await collect(registry)
    assert await image_complete(registry, REPO, img.digest)


async def test_the_untagged_policy_collects_untagged_manifests_and_their_blobs(
    registry: Registry,
) -> None:
    kept, dropped = image("kept"), image("dropped")
    await push_image(registry, REPO, kept, tag="1.0")
    await push_image(registry, REPO, dropped)
    report = await collect(registry, collect_untagged=lambda repo, digest, mtime: True)
    assert report.revisions_removed == 1
    assert not await blob_present(registry, dropped.digest)
    for blob in dropped.layers:
        assert not await blob_present(registry, blob.digest)
    assert await image_complete(registry, REPO, "1.0")


async def test_an_index_keeps_its_children(registry: Registry) -> None:
    index = build_index([image("amd"), image("arm")])
    await push_index(registry, REPO, index, tag="multi")
    await collect(registry, collect_untagged=lambda repo, digest, mtime: True)
    assert await image_complete(registry, REPO, "multi")


async def test_an_attachment_is_kept_while_its_subject_is(registry: Registry) -> None:
    img = image("signed")
    await push_image(registry, REPO, img, tag="1.0")
    sbom = await push_attachment(registry, REPO, img, "sbom-1")
    await collect(registry, collect_untagged=lambda repo, digest, mtime: True)
    assert await image_complete(registry, REPO, sbom)


async def test_an_attachment_is_collected_with_its_subject(registry: Registry) -> None:
    img = image("gone")
    await push_image(registry, REPO, img, tag="1.0")
    sbom = await push_attachment(registry, REPO, img, "sbom-2")
    await registry.repository(REPO).manifests.delete(img.digest)  # the SBOM's revision too
    assert await registry.repository(REPO).manifests.revisions() == []
    report = await collect(registry)
    assert not await blob_present(registry, sbom)
    assert report.revisions_removed == 0
    assert await registry.repository(REPO).manifests.referrers(Digest.parse(img.digest)) == []


async def test_an_attachment_pushed_after_its_subject_went_is_collected(
    registry: Registry,
) -> None:
    img = image("gone-first")
    await push_image(registry, REPO, img, tag="1.0")
    await registry.repository(REPO).manifests.delete(img.digest)
    sbom = await push_attachment(registry, REPO, img, "sbom-late")  # the spec allows it
    assert len(await registry.repository(REPO).manifests.revisions()) == 1
    report = await collect(registry)
    assert not await blob_present(registry, sbom)
    assert report.revisions_removed == 1
    assert await registry.repository(REPO).manifests.revisions() == []


async def test_a_cosign_tag_goes_when_its_subject_is_gone(registry: Registry) -> None:
    img = image("cosigned")
    await push_image(registry, REPO, img, tag="1.0")
    hexpart = img.digest.split(":", 1)[1]
    signature_tag = f"sha256-{hexpart}.{ATTACHMENT_KINDS[0]}"
    signature = await push_attachment(registry, REPO, image("other"), "sig", tag=signature_tag)
    await registry.repository(REPO).manifests.delete(img.digest)
    await collect(registry)
    assert signature_tag not in await registry.repository(REPO).manifests.tags()
    assert not await blob_present(registry, signature)


async def test_a_cosign_tag_stays_while_its_subject_is_kept(registry: Registry) -> None:
    img = image("cosigned-kept")
    await push_image(registry, REPO, img, tag="1.0")
    signature_tag = f"sha256-{img.digest.split(':', 1)[1]}.sig"
    await push_attachment(registry, REPO, image("payload"), "sig", tag=signature_tag)
    await collect(registry)
    assert await image_complete(registry, REPO, signature_tag)


async def test_a_link_to_an_unreferenced_blob_is_removed_from_the_repository(
    registry: Registry,
) -> None:
    img = image("shared")
    await push_image(registry, REPO, img, tag="1.0")
    await push_blob(registry, OTHER, img.layers[0])  # linked in OTHER, used by no manifest there
    report = await collect(registry)
    assert report.layer_links_removed == 1
    assert not await readable_in(registry, OTHER, img.layers[0].digest)
    assert await image_complete(registry, REPO, "1.0")


async def test_a_tag_naming_a_missing_manifest_is_removed(registry: Registry) -> None:
    img = image("broken")
    await push_image(registry, REPO, img, tag="broken")
    await registry.driver.delete(layout.blob_data(Digest.parse(img.digest)))
    await collect(registry)
    assert "broken" not in await registry.repository(REPO).manifests.tags()


async def test_a_dry_run_reports_exactly_what_the_real_run_deletes(registry: Registry) -> None:
    await push_image(registry, REPO, image("keep"), tag="1.0")
    await push_image(registry, REPO, image("untagged-drop"))
    for n in range(3):
        await push_blob(registry, OTHER, Blob("application/octet-stream", f"stray {n}".encode()))
    policy = {"collect_untagged": lambda repo, digest, mtime: True}
    dry = await collect(registry, dry_run=True, **policy)
    assert dry.blobs_deleted > 0
    assert await blob_present(registry, dry.deleted[0][0])  # nothing deleted
    real = await collect(registry, **policy)
    assert sorted(dry.deleted) == sorted(real.deleted)
    assert dry.bytes_deleted == real.bytes_deleted
    assert (dry.layer_links_removed, dry.revisions_removed, dry.tags_removed) == (
        real.layer_links_removed,
        real.revisions_removed,
        real.tags_removed,
    )


async def test_blob_data_a_killed_run_set_aside_is_restored_by_the_next(
    registry: Registry,
) -> None:
    img = image("interrupted")
    await push_image(registry, REPO, img, tag="1.0")
    layer = Digest.parse(img.layers[0].digest)
    await registry.driver.move(layout.blob_data(layer), layout.gc_trash("killed-run", layer))
    report = await collect(registry)
    assert report.trash_recovered == 1
    assert await image_complete(registry, REPO, "1.0")


async def test_only_one_run_at_a_time(registry: Registry) -> None:
    await Leases(registry.driver, "another-process").acquire("gc", ttl=60)
    with pytest.raises(LeaseBusy):
        await collect(registry)


async def test_a_run_counts_its_storage_requests(registry: Registry) -> None:
    await push_image(registry, REPO, image("counted"), tag="1.0")
    await push_blob(registry, REPO, Blob("application/octet-stream", b"stray"))
    report = await collect(registry)
    assert report.storage_requests >= sum(
        n for op, n in report.requests_by_operation.items() if op != "walk-entries"
    )
    assert report.requests_by_operation["walk"] >= 3


async def test_a_second_run_finds_nothing_more(registry: Registry) -> None:
    await push_image(registry, REPO, image("stable"), tag="1.0")
    await push_blob(registry, REPO, Blob("application/octet-stream", b"stray"))
    await collect(registry)
    again = await collect(registry)
    assert again.objects_reclaimed == 0


async def test_a_manifest_pushed_during_the_settle_window_keeps_its_blobs(
    registry: Registry,
) -> None:
    """The re-check: a blob set aside is put back when a manifest written meanwhile uses it."""
    img = image("late")
    for blob in img.blobs():
        await push_blob(registry, REPO, blob)
    run = asyncio.create_task(collect(registry, settle=1.0))
    await asyncio.sleep(0.5)  # the unreferenced blobs are set aside by now (settle window)
    # A client whose blob check passed before the set-aside writes its manifest now.
    store = registry.repository(REPO).manifests
    digest = Digest.parse(img.digest)
    await registry.blob_store.put_small(img.manifest, digest)
    await registry.driver.write(layout.revision_link(store.name, digest), img.digest.encode())
    await store.tag("1.0", digest)
    report = await run
    assert report.blobs_rescued == len(img.blobs())
    assert await image_complete(registry, REPO, "1.0")


async def test_an_index_naming_another_repositorys_manifest_gets_no_links_to_its_blobs(
    registry: Registry,
) -> None:
    """Sparse indexes are allowed; GC's link repair must not hand one tenant another's layers."""
    private = image("other-tenant")
    await push_image(registry, "other/secret/app", private, tag="1.0")
    index = build_index([private])
    await registry.repository(REPO).manifests.put(index.manifest, index.media_type, tag="idx")
    await collect(registry)
    for blob in private.blobs():
        assert not await readable_in(registry, REPO, blob.digest)
    assert await image_complete(registry, "other/secret/app", "1.0")


class _SetAsideOnRevisionWrite(LocalDriver):
    """Sets a blob aside (as a GC sweep does) right after a manifest's revision is written."""

    blob: Digest | None = None

    async def write(self, path: str, data: bytes) -> None:
        await super().write(path, data)
        if self.blob is not None and "/_manifests/revisions/" in path:
            blob, self.blob = self.blob, None
            for _ in range(500):  # the manifest's bytes are written concurrently
                try:
                    await self.move(layout.blob_data(blob), layout.gc_trash("racing-run", blob))
                    return
                except PathNotFound:
                    await asyncio.sleep(0.01)
            raise AssertionError(f"{blob} never appeared")


async def test_a_manifest_push_racing_a_set_aside_of_a_linked_blob_moves_it_back(
    tmp_path: Path,
) -> None:
    # The layer's link is younger than the run's mark (a run unlinks before it sets data
    # aside), so the PUT's second check moves the data back instead of refusing.
    driver = _SetAsideOnRevisionWrite(str(tmp_path / "store"))
    registry = Registry(driver)
    img = image("racing")
    for blob in img.blobs():
        await push_blob(registry, REPO, blob)
    layer = Digest.parse(img.layers[0].digest)
    driver.blob = layer
    await registry.repository(REPO).manifests.put(img.manifest, img.media_type, tag="1.0")
    fresh = Registry(LocalDriver(str(tmp_path / "store")))
    assert await image_complete(fresh, REPO, "1.0")
    assert not (tmp_path / "store" / layout.gc_trash("racing-run", layer)).exists()


async def test_a_manifest_push_racing_a_set_aside_of_an_unlinked_blob_is_refused(
    tmp_path: Path,
) -> None:
    # A run that unlinked the layer (it was garbage at the mark) then set it aside: the
    # PUT's second check finds neither, refuses, and leaves no revision behind.
    driver = _SetAsideOnRevisionWrite(str(tmp_path / "store"))
    registry = Registry(driver)
    img = image("racing-unlinked")
    for blob in img.blobs():
        await push_blob(registry, REPO, blob)
    layer = Digest.parse(img.layers[0].digest)
    original = driver.move

    async def unlink_then_move(source: str, destination: str) -> None:
        if destination == layout.gc_trash("racing-run", layer):
            await driver.delete(layout.layer_link_dir(registry.repository(REPO).name, layer))
        await original(source, destination)

    driver.move = unlink_then_move  # type: ignore[method-assign]
    driver.blob = layer
    with pytest.raises(ManifestBlobUnknown):
        await registry.repository(REPO).manifests.put(img.manifest, img.media_type, tag="1.0")
    assert "1.0" not in await registry.repository(REPO).manifests.tags()
    assert await registry.repository(REPO).manifests.revisions() == []


async def test_a_manifest_push_whose_own_bytes_are_set_aside_stores_them_again(
    tmp_path: Path,
) -> None:
    driver = _SetAsideOnRevisionWrite(str(tmp_path / "store"))
    registry = Registry(driver)
    img = image("racing-body")
    for blob in img.blobs():
        await push_blob(registry, REPO, blob)
    driver.blob = Digest.parse(img.digest)
    await registry.repository(REPO).manifests.put(img.manifest, img.media_type, tag="1.0")
    fresh = Registry(LocalDriver(str(tmp_path / "store")))  # no cached manifest bytes
    assert await image_complete(fresh, REPO, "1.0")


async def test_untagged_manifests_younger_than_the_grace_are_kept_whatever_the_policy(
    registry: Registry,
) -> None:
    """The grace is the push window: an index's children wait untagged for their index."""
    img = image("just-pushed")
    await push_image(registry, REPO, img)
    report = await registry.collect_garbage(
        grace=60.0, settle=0.0, collect_untagged=lambda repo, digest, mtime: True
    )
    assert report.revisions_removed == 0
    assert await image_complete(registry, REPO, img.digest)
