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
from registry_core.lifecycle.counting import CountingDriver
from registry_core.lifecycle.gc import collect_garbage
from registry_core.storage import layout
from registry_core.storage.driver import FileInfo, WalkFilter
from tests.gc_support import image, image_complete, push_blob, push_image
from tests.helpers.images import Blob

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
