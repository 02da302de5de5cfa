"""A manifest tagged again after GC's mark chose to collect it is never missing by digest.

The client story (the 16-client GC proof saw it twice in about 50 runs): an image is
untagged; a GC run that collects untagged manifests marks it for collection; the client
tags the same manifest again (a PUT of the same bytes under a new tag), whose last step
confirms the revision is linked; only then does GC's sweep remove the revision it planned
to. Nothing dangles for good (the run's re-check links it back, ``settle`` seconds later),
but in between a DELETE or GET by digest answered 404 for an image whose tag the client
had just set. GC re-reads the tags of each repository whose revisions it removed and links
back at once every revision a tag written since the mark names (lifecycle/gc.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.errors import ManifestUnknown
from registry_core.lifecycle.counting import CountingDriver
from registry_core.lifecycle.gc import GcReport, collect_garbage
from registry_core.storage import layout
from registry_core.storage.driver import FileInfo, WalkFilter
from tests.gc_support import image, image_complete, push_blob, push_image
from tests.helpers.images import Blob, Image

REPO = "acme/prod/app"
EVERY_UNTAGGED = {"collect_untagged": lambda repo, digest, mtime: True}
Step = Callable[[], Awaitable[None]]


class RetagAfterTheMark(CountingDriver):
    """GC's driver: *before* runs before the run's first destructive request (its mark is
    done, its plan made); *after* runs when the sweep has unlinked and set aside, and is
    about to re-read the repositories (its re-check, ``settle`` seconds later): what a
    client meets in that window."""

    def __init__(self, inner: LocalDriver, before: Step, after: Step) -> None:
        super().__init__(inner)
        self.before, self.after = before, after
        self.started = self.observed = False
        self.deleted: list[str] = []

    async def _first(self) -> None:
        if not self.started:
            self.started = True
            await self.before()

    async def delete(self, path: str) -> None:
        await self._first()
        self.deleted.append(path)
        await super().delete(path)

    async def delete_many(self, paths: Sequence[str]) -> None:
        await self._first()
        await super().delete_many(paths)

    async def _observed_walk(self, path: str, prune: WalkFilter | None) -> AsyncIterator[FileInfo]:
        self.observed = True
        await self.after()
        async for entry in super().walk(path, prune):
            yield entry

    def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        if self.started and not self.observed and path == layout.REPOSITORIES:
            return self._observed_walk(path, prune)  # the re-check's walk, after settle
        return super().walk(path, prune)


async def test_a_manifest_tagged_again_after_the_mark_reads_by_digest_in_the_settle_window(
    tmp_path: Path,
) -> None:
    inner = LocalDriver(str(tmp_path))
    img = image("retagged")
    digest = Digest.parse(img.digest)
    await push_image(Registry(inner), REPO, img, tag="1.0")
    await Registry(inner).repository(REPO).manifests.delete("1.0")  # untagged now
    # Other garbage, as a store always has: the run sets it aside and settles.
    await push_blob(Registry(inner), REPO, Blob("application/octet-stream", b"stray"))
    seen: dict[str, object] = {}

    async def retag() -> None:  # a client, in a process of its own
        await (
            Registry(inner).repository(REPO).manifests.put(img.manifest, img.media_type, tag="2.0")
        )

    async def read_by_digest() -> None:
        manifests = Registry(inner).repository(REPO).manifests
        seen["revisions"] = await manifests.revisions()
        seen["by digest"] = (await manifests.get(img.digest)).digest

    driver = RetagAfterTheMark(inner, retag, read_by_digest)
    report = await collect_garbage(driver, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert driver.started and driver.observed, "the re-tag and the read ran inside the sweep"
    revision = layout.revision_dir(Registry(inner).repository(REPO).manifests.name, digest)
    assert revision in driver.deleted, "the mark saw the manifest untagged and chose it"
    assert report.revisions_removed == 0, "and the sweep linked it back"
    assert digest in seen["revisions"]  # type: ignore[operator]
    assert seen["by digest"] == digest
    after = Registry(inner).repository(REPO).manifests
    assert digest in await after.revisions()
    assert await after.tags() == ["2.0"]
    assert await image_complete(Registry(inner), REPO, "2.0")
    # The client's DELETE by digest, which answered 404 in the proof.
    await after.delete(img.digest)
    assert await after.revisions() == []


async def test_a_manifest_untagged_for_good_is_still_collected(tmp_path: Path) -> None:
    """The re-read spares only what a tag written since the mark names."""
    inner = LocalDriver(str(tmp_path))
    img = image("untagged")
    await push_image(Registry(inner), REPO, img, tag="1.0")
    await Registry(inner).repository(REPO).manifests.delete("1.0")
    report = await collect_garbage(inner, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert report.revisions_removed == 1
    assert await Registry(inner).repository(REPO).manifests.revisions() == []


class ReadRightAfterTheRemoval(RetagAfterTheMark):
    """GC's driver: *before* as above; *between* runs right after the run removes
    *revision*, before its own relink re-reads the tags: the narrowest window, which
    only a reader can close (``registry_core.storage.removed_revisions``)."""

    def __init__(self, inner: LocalDriver, before: Step, between: Step, revision: str) -> None:
        super().__init__(inner, before, _nothing)
        self.between, self.revision = between, revision
        self.between_ran = False

    async def delete(self, path: str) -> None:
        await super().delete(path)
        if path == self.revision and not self.between_ran:
            self.between_ran = True
            await self.between()


async def _untagged(tmp_path: Path, label: str) -> tuple[LocalDriver, Image, Digest]:
    """A store holding one manifest pushed with a tag, then untagged."""
    inner = LocalDriver(str(tmp_path))
    img = image(label)
    await push_image(Registry(inner), REPO, img, tag="1.0")
    await Registry(inner).repository(REPO).manifests.delete("1.0")
    return inner, img, Digest.parse(img.digest)


def _retagger(inner: LocalDriver, img: Image) -> Step:
    """A client tagging the manifest again; its confirmation finds the revision still
    linked (the removal comes after it), so the client has its 201."""

    async def retag() -> None:
        manifests = Registry(inner).repository(REPO).manifests
        await manifests.put(img.manifest, img.media_type, tag="2.0")

    return retag


async def _nothing() -> None:
    return None


async def _collect_around_the_removal(
    inner: LocalDriver, digest: Digest, before: Step, between: Step
) -> GcReport:
    """A GC run collecting every untagged manifest, *before* and *between* run inside it
    (``ReadRightAfterTheRemoval``); asserts *between* ran."""
    name = Registry(inner).repository(REPO).manifests.name
    driver = ReadRightAfterTheRemoval(inner, before, between, layout.revision_dir(name, digest))
    report = await collect_garbage(driver, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert driver.between_ran, "it ran between the removal and the run's relink"
    return report


async def test_a_manifest_tagged_before_the_removal_reads_by_digest_before_the_relink(
    tmp_path: Path,
) -> None:
    inner, img, digest = await _untagged(tmp_path, "retagged")
    seen: dict[str, object] = {}

    async def read_by_digest() -> None:  # another process, no link cache
        manifests = Registry(inner).repository(REPO).manifests
        seen["linked before"] = await manifests.has_revision(digest)
        seen["by digest"] = (await manifests.get(img.digest)).digest
        seen["linked after"] = await manifests.has_revision(digest)

    await _collect_around_the_removal(inner, digest, _retagger(inner, img), read_by_digest)
    assert seen == {"linked before": False, "by digest": digest, "linked after": True}
    after = Registry(inner).repository(REPO).manifests
    assert await after.tags() == ["2.0"]
    assert await image_complete(Registry(inner), REPO, "2.0")
    assert not (tmp_path / layout.gc_trash_dir()).exists() or not any(
        p.is_file() for p in (tmp_path / layout.gc_trash_dir()).rglob("*")
    ), "the run's records are gone"
    await after.delete(img.digest)
    assert await after.revisions() == []


async def test_a_delete_by_digest_right_after_the_removal_deletes_the_retagged_manifest(
    tmp_path: Path,
) -> None:
    """The proof's symptom: the client's DELETE by digest of the manifest it just tagged."""
    inner, img, digest = await _untagged(tmp_path, "deleted")

    async def delete_by_digest() -> None:
        await Registry(inner).repository(REPO).manifests.delete(img.digest)

    report = await _collect_around_the_removal(
        inner, digest, _retagger(inner, img), delete_by_digest
    )
    after = Registry(inner).repository(REPO).manifests
    assert await after.tags() == [] and await after.revisions() == []
    assert report.revisions_removed == 1, "nothing linked it back after the client's DELETE"


async def test_a_removed_manifest_no_tag_names_stays_unknown_in_the_window(
    tmp_path: Path,
) -> None:
    """The reader links back only what a tag written since the mark names."""
    inner, img, digest = await _untagged(tmp_path, "untagged")
    seen: list[str] = []

    async def read_by_digest() -> None:
        try:
            await Registry(inner).repository(REPO).manifests.get(img.digest)
        except ManifestUnknown:
            seen.append("unknown")

    report = await _collect_around_the_removal(inner, digest, _nothing, read_by_digest)
    assert seen == ["unknown"]
    assert report.revisions_removed == 1
    assert await Registry(inner).repository(REPO).manifests.revisions() == []


async def test_a_killed_runs_record_is_removed_by_the_next_run(tmp_path: Path) -> None:
    inner = LocalDriver(str(tmp_path))
    name = Registry(inner).repository(REPO).manifests.name
    record = layout.gc_removed_revisions("1-deadbeef", name)
    await inner.write(record, b"0.0\nsha256:" + b"0" * 64)
    await collect_garbage(inner, grace=0.0, settle=0.0)
    assert not (tmp_path / record).exists()


async def test_runs_leave_no_folders_in_a_local_trash(tmp_path: Path) -> None:
    """Readers' trash lookups list the runs in the trash: an emptied run's folder left
    behind would cost them a lookup more per run, forever."""
    inner = LocalDriver(str(tmp_path))
    stale = tmp_path / layout.gc_trash_run("1-0badc0de") / "sha256"
    stale.mkdir(parents=True)  # what earlier versions left behind
    img = image("collected")
    await push_image(Registry(inner), REPO, img, tag="1.0")
    await push_image(Registry(inner), REPO, image("kept"), tag="2.0")
    await Registry(inner).repository(REPO).manifests.delete("1.0")
    report = await collect_garbage(inner, grace=0.0, settle=0.0, **EVERY_UNTAGGED)
    assert report.revisions_removed == 1 and report.blobs_deleted > 0
    trash = tmp_path / layout.gc_trash_dir()
    assert not trash.exists() or list(trash.iterdir()) == []
