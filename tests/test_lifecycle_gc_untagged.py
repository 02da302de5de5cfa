"""Untagged manifests: what protects a push in flight when a policy collects them.

A single request is protected by protocol (the tag is written, then its revision
confirmed; lifecycle/gc.py), at any grace; a push of several requests (an index's
children before the index) by the grace period alone, which ``--grace 0s`` turns off.
Each race is made to happen, deterministically, by a driver that runs a whole GC pass
at the worst moment of the write it wraps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.archive import import_archive
from registry_core.errors import ManifestBlobUnknown, ManifestUnknown
from registry_core.lifecycle.counting import CountingDriver
from registry_core.lifecycle.gc import collect_garbage
from registry_core.lifecycle.retention import RetentionRules, run_retention
from registry_core.names import Tenant
from tests.gc_support import (
    blob_present,
    image,
    image_complete,
    push_blob,
    push_image,
)
from tests.helpers.archives import write_oci_archive
from tests.helpers.images import REF_NAME_ANNOTATION, build_index, sample_image

REPO = "acme/prod/app"
TENANT = Tenant("acme", "prod")
EVERY_UNTAGGED = {"collect_untagged": lambda repo, digest, mtime: True}


def backdate(root: Path, seconds: float) -> None:
    """Make everything stored so far look *seconds* old (links and blobs alike)."""
    moment = time.time() - seconds
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(folder, name), (moment, moment))


class GcAtTheWorstMoment(CountingDriver):
    """Runs one GC pass (untagged manifests collected, grace 0s) on the wrapped driver just
    before the first write whose path contains *before_write*."""

    def __init__(self, inner: LocalDriver, before_write: str) -> None:
        super().__init__(inner)
        self.before_write = before_write
        self.reports: list[object] = []
        self.armed = True

    async def write(self, path: str, data: bytes) -> None:
        if self.armed and self.before_write in path:
            self.armed = False
            report = await collect_garbage(self.inner, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
            self.reports.append(report)
        await super().write(path, data)


async def test_a_policy_collects_an_untagged_manifest_at_once_with_grace_0s(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path)))
    img = image("fresh")
    await push_image(registry, REPO, img)  # untagged, seconds old: no fixed age floor
    report = await registry.collect_garbage(grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert report.revisions_removed == 1
    assert not await blob_present(registry, img.digest)
    assert not any([await blob_present(registry, b.digest) for b in img.blobs()])


async def test_a_retention_rule_with_a_small_age_deletes_an_untagged_manifest(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path)))
    old = image("old")
    await push_image(registry, REPO, old, tag="1.0")
    await push_image(registry, REPO, image("new"), tag="1.0")  # old is untagged now
    rules = RetentionRules(delete_untagged_after=1.0)
    report = await run_retention(registry, TENANT, rules, now=time.time() + 5, grace=0.0)
    assert report.manifests == [f"{REPO}@{old.digest}"]
    await registry.collect_garbage(grace=0.0, settle=0.0)
    assert not await blob_present(registry, old.digest)
    assert await image_complete(registry, REPO, "1.0")


async def test_children_pushed_before_their_index_survive_rules_within_the_grace(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path)))
    old = image("old-untagged")
    await push_image(registry, REPO, old)
    backdate(tmp_path, 7200)
    index = build_index([image("amd64"), image("arm64")])
    for child in index.images:  # the index push is in flight: children first, untagged
        await push_image(registry, REPO, child)
    rules = RetentionRules(delete_untagged_after=1.0)
    later = time.time() + 5  # the children are older than the rule's age ...
    # ... so without the grace they would go (the dry run shows it) ...
    exposed = await run_retention(registry, TENANT, rules, dry_run=True, now=later, grace=0.0)
    assert {f"{REPO}@{c.digest}" for c in index.images} <= set(exposed.manifests)
    # ... and within it only the old manifest goes, by the rule and by GC's own policy.
    report = await run_retention(registry, TENANT, rules, now=later, grace=60.0)
    assert report.manifests == [f"{REPO}@{old.digest}"]
    await registry.collect_garbage(grace=60.0, settle=0.0, **EVERY_UNTAGGED)
    assert not await blob_present(registry, old.digest)
    await registry.repository(REPO).manifests.put(index.manifest, index.media_type, tag="multi")
    await registry.collect_garbage(grace=60.0, settle=0.0, **EVERY_UNTAGGED)
    assert await image_complete(registry, REPO, "multi")


async def test_a_gc_between_a_manifests_revision_and_its_tag_never_leaves_a_dangling_tag(
    tmp_path: Path,
) -> None:
    driver = GcAtTheWorstMoment(LocalDriver(str(tmp_path)), "/_manifests/tags/1.0/current/link")
    registry = Registry(driver)
    img = image("racing")
    for blob in img.blobs():
        await push_blob(registry, REPO, blob)
    manifests = registry.repository(REPO).manifests
    # GC collected the untagged revision and its blobs before the tag was written: the
    # PUT's confirmation finds the revision gone, cannot link it again, and refuses.
    with pytest.raises(ManifestBlobUnknown):
        await manifests.put(img.manifest, img.media_type, tag="1.0")
    assert driver.reports and driver.reports[0].revisions_removed == 1  # type: ignore[attr-defined]
    assert "1.0" not in await manifests.tags()
    # The client pushes again, as it does on MANIFEST_BLOB_UNKNOWN: complete.
    await push_image(registry, REPO, img, tag="1.0")
    assert await image_complete(registry, REPO, "1.0")


async def test_a_gc_between_a_tag_and_its_confirmation_keeps_the_image(tmp_path: Path) -> None:
    # Here GC's mark already sees the tag: the manifest is kept with all it references.
    driver = GcAtTheWorstMoment(LocalDriver(str(tmp_path)), "no write ends like this")
    registry = Registry(driver)
    img = image("kept")
    await push_image(registry, REPO, img)
    manifests = registry.repository(REPO).manifests
    original = manifests._keep_tagged

    async def gc_first(*args: object, **kwargs: object) -> None:
        driver.reports.append(
            await collect_garbage(driver.inner, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
        )
        await original(*args, **kwargs)  # type: ignore[arg-type]

    manifests._keep_tagged = gc_first  # type: ignore[method-assign]
    await manifests.tag("1.0", Digest.parse(img.digest))
    assert driver.reports[0].revisions_removed == 0  # type: ignore[attr-defined]
    assert await image_complete(registry, REPO, "1.0")


@pytest.mark.parametrize("moment", ["/current/link", "team/job/_manifests/revisions/"])
async def test_an_archive_import_racing_gc_ends_with_complete_images(
    tmp_path: Path, moment: str
) -> None:
    """GC collects the importer's untagged manifests just before it tags them (or just
    before the second image's manifest is linked, taking the first's): the import stores
    the image again and tags it."""
    driver = GcAtTheWorstMoment(LocalDriver(str(tmp_path / "store")), moment)
    registry = Registry(driver)
    first, second = sample_image("svc"), sample_image("job")
    path = write_oci_archive(
        tmp_path / "two.tar",
        [
            (first, {REF_NAME_ANNOTATION: "team/svc:1"}),
            (second, {REF_NAME_ANNOTATION: "team/job:2"}),
        ],
    )
    result = await import_archive(registry, "acme/prod", path)
    assert driver.reports, "the GC pass ran during the import"
    assert len(result.images) == 2
    await registry.collect_garbage(grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert await image_complete(registry, "acme/prod/team/svc", "1")
    assert await image_complete(registry, "acme/prod/team/job", "2")


async def test_tag_refuses_when_gc_took_the_revision_and_its_content(tmp_path: Path) -> None:
    driver = GcAtTheWorstMoment(LocalDriver(str(tmp_path)), "/_manifests/tags/1.0/current/link")
    registry = Registry(driver)
    img = image("gone")
    await push_image(registry, REPO, img)
    # A registry that never read the manifest (no cached bytes), as another process is.
    manifests = Registry(driver).repository(REPO).manifests
    with pytest.raises((ManifestUnknown, ManifestBlobUnknown)):
        await manifests.tag("1.0", Digest.parse(img.digest))
    assert "1.0" not in await manifests.tags()


class GcAfterUntag(CountingDriver):
    """Runs one GC pass collecting untagged manifests right after a tag folder is deleted."""

    def __init__(self, inner: LocalDriver) -> None:
        super().__init__(inner)
        self.armed = False

    async def delete(self, path: str) -> None:
        await super().delete(path)
        if self.armed and "/_manifests/tags/" in path:
            self.armed = False
            await collect_garbage(self.inner, grace=0.0, settle=0.0, **EVERY_UNTAGGED)


async def test_a_delete_by_digest_racing_gcs_collection_of_the_manifest_succeeds(
    tmp_path: Path,
) -> None:
    driver = GcAfterUntag(LocalDriver(str(tmp_path)))
    registry = Registry(driver)
    img = image("deleted")
    await push_image(registry, REPO, img, tag="1.0")
    driver.armed = True  # its tag goes first, then GC takes the untagged manifest
    await registry.repository(REPO).manifests.delete(img.digest)
    assert not driver.armed, "the GC pass ran between the tag's and the revision's delete"
    assert await registry.repository(REPO).manifests.revisions() == []
