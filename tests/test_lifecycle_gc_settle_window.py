"""Reads between GC's set-aside and its re-check: content linked after the mark is served.

A manifest pushed while a GC run marks is kept by the run's re-check (lifecycle/gc.py),
but its data may be set aside for the ``settle`` seconds in between. A reader that finds
a link (a revision, a layer link) next to missing data moves the data back at once
(``BlobStore.recover_set_aside``), so a pull or a DELETE by digest of such an image does
not answer 404 meanwhile. Each race is made to happen deterministically by a driver that
runs the client's step at the worst moment of the GC run it wraps.
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
from tests.gc_support import image, image_complete, push_blob, push_image, readable_in

REPO = "acme/prod/app"
Step = Callable[[], Awaitable[None]]


class GcWithHooks(CountingDriver):
    """GC's driver: *before_first_destruction* runs before the run's first unlink (after
    its mark, and before it lists a repository's revisions again to spare those pushed
    to); *after_set_aside* runs once the data of *watched* has moved to the trash."""

    def __init__(
        self,
        inner: LocalDriver,
        watched: str,
        before_first_destruction: Step,
        after_set_aside: Step,
    ) -> None:
        super().__init__(inner)
        self.watched = watched
        self.before = before_first_destruction
        self.after = after_set_aside
        self.destroyed = False
        self.observed = False

    async def _first(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            await self.before()

    async def delete(self, path: str) -> None:
        await self._first()
        await super().delete(path)

    async def _walk_after(self, path: str, prune: WalkFilter | None) -> AsyncIterator[FileInfo]:
        await self._first()
        async for entry in super().walk(path, prune):
            yield entry

    def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        if path.endswith("/_manifests/revisions"):  # the sweep's look before unlinking
            return self._walk_after(path, prune)
        return super().walk(path, prune)

    async def delete_many(self, paths: Sequence[str]) -> None:
        await self._first()
        await super().delete_many(paths)

    async def move(self, source: str, destination: str) -> None:
        await self._first()
        await super().move(source, destination)
        if not self.observed and destination.endswith(self.watched) and "/trash/" in destination:
            self.observed = True
            await self.after()


async def test_a_manifest_pushed_during_the_mark_reads_in_the_settle_window(
    tmp_path: Path,
) -> None:
    client = Registry(LocalDriver(str(tmp_path)))
    img = image("pushed-again")
    # Pushed once and deleted by digest: at the mark its bytes and layers are garbage.
    await push_image(client, REPO, img, tag="0.9")
    await client.repository(REPO).manifests.delete(img.digest)
    seen: list[bytes] = []

    async def push_manifest() -> None:  # pushed again after the mark, before any unlink
        await client.repository(REPO).manifests.put(img.manifest, img.media_type, tag="1.0")

    async def pull_then_delete() -> None:  # the manifest's bytes are in the trash now
        reader = Registry(LocalDriver(str(tmp_path)))  # another process: a cold cache
        stored = await reader.repository(REPO).manifests.get("1.0")
        seen.append(stored.body)
        await reader.repository(REPO).manifests.delete(img.digest)

    driver = GcWithHooks(
        LocalDriver(str(tmp_path)), Digest.parse(img.digest).hex, push_manifest, pull_then_delete
    )
    report = await collect_garbage(driver, grace=0.0, settle=0.0)
    assert driver.destroyed and driver.observed
    assert seen == [img.manifest]  # served from where the run had set it aside
    assert report.layer_links_removed == 0  # spared: the repository was pushed to
    assert report.blobs_deleted == 0  # the manifest's bytes were moved back by the pull
    # Deleted by digest in the window: gone with its tag, and the next run reclaims all.
    assert "1.0" not in await client.repository(REPO).manifests.tags()
    await collect_garbage(LocalDriver(str(tmp_path)), grace=0.0, settle=0.0)
    digests = [img.digest, *(b.digest for b in img.blobs())]
    assert not [d for d in digests if await client.blob_store.exists(Digest.parse(d))]


async def test_a_blob_linked_again_during_the_sweep_reads_in_the_settle_window(
    tmp_path: Path,
) -> None:
    client = Registry(LocalDriver(str(tmp_path)))
    img = image("relinked", layers=1)
    layer = img.blobs()[-1]
    await push_blob(client, "acme/prod/old", layer)
    await client.repository("acme/prod/old").blobs.delete(Digest.parse(layer.digest))
    sizes: list[int] = []

    async def nothing() -> None:
        return None

    async def relink_then_read() -> None:
        # A client commits the same bytes: their data was there when it looked, so its
        # commit only links them; then it asks for the blob while the data is set aside.
        await client.repository(REPO).blobs.link(Digest.parse(layer.digest))
        reader = Registry(LocalDriver(str(tmp_path)))
        info = await reader.repository(REPO).blobs.stat(Digest.parse(layer.digest))
        sizes.append(info.size)

    watched = Digest.parse(layer.digest).hex
    driver = GcWithHooks(LocalDriver(str(tmp_path)), watched, nothing, relink_then_read)
    report = await collect_garbage(driver, grace=0.0, settle=0.0)
    assert driver.observed and sizes == [len(layer.data)]
    assert report.blobs_deleted == 0  # moved back by the reader: nothing of it deleted
    assert await readable_in(client, REPO, layer.digest)
    trash = tmp_path / layout.gc_trash_dir()
    assert not trash.exists() or not any(p.is_file() for p in trash.rglob("*"))


async def test_a_repository_pushed_to_after_the_mark_keeps_its_layer_links(
    tmp_path: Path,
) -> None:
    client = Registry(LocalDriver(str(tmp_path)))
    garbage = image("garbage", layers=1).blobs()[-1]
    await push_blob(client, "acme/prod/old", garbage)
    await client.repository("acme/prod/old").blobs.delete(Digest.parse(garbage.digest))
    img = image("uploaded-before-the-mark")
    for blob in img.blobs():  # links with no manifest yet: garbage at the mark (grace 0s)
        await push_blob(client, REPO, blob)
    complete: list[bool] = []

    async def push_manifest() -> None:
        await client.repository(REPO).manifests.put(img.manifest, img.media_type, tag="1.0")

    async def pull() -> None:  # links are unlinked and data set aside by now, or spared
        complete.append(await image_complete(Registry(LocalDriver(str(tmp_path))), REPO, "1.0"))

    watched = Digest.parse(garbage.digest).hex
    driver = GcWithHooks(LocalDriver(str(tmp_path)), watched, push_manifest, pull)
    report = await collect_garbage(driver, grace=0.0, settle=0.0)
    assert driver.observed and complete == [True]
    assert report.layer_links_removed == 0
    assert report.blobs_deleted == 1  # the garbage; the new image's blobs were spared
    assert await image_complete(client, REPO, "1.0")
