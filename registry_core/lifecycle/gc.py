"""Online garbage collection: mark and sweep over storage while clients push and pull.

The protocol, and why no push ever ends with a tag pointing at missing content:

1. *Lease.* A run holds the ``gc`` job lease (``registry_core.jobs``); it
   checks the lease (fencing) before every destructive batch.
2. *Recover.* Blob data a killed earlier run left set aside (the trash) is
   put back first; restoring is always safe, and the mark below re-links any
   blob a kept manifest references but its repository lost the link to.
3. *Mark.* Walk every repository (layer links, revisions, tags, referrers,
   each with its mtime), read each tag link and each distinct manifest body
   once, then walk the blob tree. Kept: tagged manifests, linked revisions
   (untagged ones unless ``collect_untagged`` says otherwise), index children,
   attachments whose subject is kept, the blobs all of them reference, and
   every blob, link and revision younger than ``grace``.
4. *Unlink.* Remove what the mark did not keep: attachment tags whose subject
   is gone, tags naming missing manifests, collected revisions with their
   referrer entries, and layer links to blobs no kept manifest of that
   repository references. Then the tags of each repository that lost a revision
   are read again: a revision that a tag written since the mark names (a client
   tagged the untagged manifest again) is linked back at once, with its blobs
   spared, so a read by digest never misses it for the ``settle`` seconds until
   the re-check. Before the first revision goes, the run records per repository
   which revisions it removes, until that relink is done: a read by digest that
   misses in between links the revision back itself if such a tag names it
   (``registry_core.storage.removed_revisions``).
5. *Set aside.* Move the data of every unkept blob into the trash
   (``cargohold/jobs/gc/trash/<run>``). From now on every existence check a
   writer makes (upload commit, mount, manifest PUT's blob check) sees the
   blob missing: commits store their own copy, mounts and manifest PUTs fail
   cleanly instead of linking it.
6. *Settle, then re-check.* Wait ``settle`` seconds, then walk every
   repository again. Every layer link, revision or tag that is new or changed
   since the mark (or written around its start: stores keep whole-second
   mtimes) is expanded like a root, and whatever it reaches is rescued:
   trashed data moves back, removed links are rewritten.
7. *Delete.* Delete the trash that was not rescued (batched where the driver
   has ``delete_many``: 1000 keys a request on S3).

Why a manifest PUT can never end with a tag naming missing content: the
manifest store writes the revision link, *then* checks the referenced blobs
(links and data) once more and stores its own bytes again if they are gone,
and only then writes the tag. GC sets data aside (5) *before* it re-reads the
repositories (6). Either the PUT's second check comes after the set-aside and
sees the blob missing: with its link gone (unlinked in 4) it refuses the push
(removing its revision), with its link there (written after the mark) it moves
the data back from the trash and goes on (``BlobStore.recover_set_aside``); or
the check came before, so the revision was already visible when GC re-read, and
GC kept and re-linked everything it references. No timing assumption is needed for this,
only read-after-write and list-after-write consistency (local folders, S3,
GCS and Azure all give it). Upload commits and mounts need none either: if
they race a set-aside, the link they write names missing data, and the
manifest PUT that would use it is refused (the client pushes the blob again).

The same holds for the one moment a manifest is untagged inside a single push,
between its revision and its tag (a policy collecting untagged manifests, or a
retention rule, may remove the revision then): the manifest store writes the tag,
*then* confirms the revision is still linked. If it is, any run that unlinks it
later re-reads the repositories after that, sees the tag as new, and re-links and
rescues what it names. If it is not, the store links it again and checks its blobs
(and an index's children) as in the PUT above, or removes its tag and refuses the
write. ``ManifestStore.tag`` (re-tagging a stored revision: the archive importer,
the proxy) follows the same protocol. So no request's safety depends on
``settle``; it only lets pulls that started before the set-aside finish.

What no single request can protect is a push made of several requests: a client
uploads blobs, then an index's child manifests (untagged, referenced by nothing
yet), then the index. That is what ``grace`` is for, and the one protection of
untagged manifests: nothing younger than ``grace`` is collected, whatever the
policy, so ``grace`` must exceed the longest push a client makes (default 1 h;
``0s`` for tests, or in an emergency with no push in flight). Retention's
untagged rule honours the same grace. A push slower than ``grace`` fails
cleanly (a manifest PUT naming a collected blob is refused; an index naming a
collected child is not, unless the registry checks indexes strictly).

A kill at any step leaves storage consistent: links are removed only for
unkept content, data is only ever moved into the trash (restored by the next
run) or deleted after the re-check. Readers that find a link next to missing
data move the data back from the trash at once (``BlobStore.recover_set_aside``:
a revision's bytes, a linked layer), so a manifest pushed during the mark reads
and deletes by digest inside the settle window. The worst a racing client sees
is a failed push it retries (a blob it skipped uploading was unlinked and set
aside) or, inside the settle window, a pull of a just-pushed image missing a
layer whose link this run removed, for seconds, until the re-check rewrites it.

Pacing: every storage request of a run goes through one
:class:`~.pacing.RequestPacer` (``[gc] rate`` and ``[gc] concurrency``): on an
object store a run keeps at most a few requests in flight (by default
:data:`OBJECT_STORE_CONCURRENCY`), so the clients sharing the bucket keep most of
what it answers. Pacing only delays requests; nothing above depends on timing.
What follows a run (``Registry.collect_garbage``'s usage recompute) is not paced, and is
kept small instead: paged listings of the repositories and of the blob sizes (a dozen
requests on a 400-manifest store, where a HEAD per blob and a listing per directory made
about 2,000).

This module never imports a driver or aiohttp, never builds a storage path
itself (layout does) and never deletes anything during a dry run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import attrs

from ..digest import Digest
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver
from ..storage.removed_revisions import MTIME_SLACK, record_body, tags_written_since
from ..storage.repo_index import RepositoryIndex
from .counting import CountingDriver
from .marks import (
    Reachability,
    RepositoryState,
    Snapshot,
    UntaggedPolicy,
    expand,
    reachable,
    read_tag_targets,
    stored_name,
    take_snapshot,
    walk_repositories,
)
from .pacing import RequestPacer

log = logging.getLogger(__name__)

JOB = "gc"
BATCH = 1000
"""Objects per destructive batch (S3's DeleteObjects limit); fenced before each."""
CONCURRENCY = 32
"""Requests in flight on a local folder (the default there; tasks started per batch too)."""
OBJECT_STORE_CONCURRENCY = 2
"""Requests in flight on an object store by default: a bucket (and its emulators) answers
requests about in arrival order, so this bounds the run's share against the clients'."""
LeaseCheck = Callable[[], Awaitable[None]]
T = TypeVar("T")


async def _no_fence() -> None:
    return None


@attrs.define
class GcReport:
    """What one run did (or, in a dry run, would do)."""

    dry_run: bool
    run: str
    blobs_total: int = 0
    blobs_deleted: int = 0
    bytes_deleted: int = 0
    blobs_rescued: int = 0
    layer_links_removed: int = 0
    revisions_removed: int = 0
    tags_removed: int = 0
    referrers_removed: int = 0
    links_repaired: int = 0
    trash_recovered: int = 0
    mark_seconds: float = 0.0
    sweep_seconds: float = 0.0
    duration: float = 0.0
    storage_requests: int = 0
    requests_by_operation: dict[str, int] = attrs.field(factory=dict)
    deleted: list[tuple[str, int]] = attrs.field(factory=list)
    """``(digest, size)`` of every blob deleted (or that would be)."""

    @property
    def objects_reclaimed(self) -> int:
        return (
            self.blobs_deleted
            + self.layer_links_removed
            + self.revisions_removed
            + self.tags_removed
            + self.referrers_removed
        )

    def summary(self) -> dict[str, object]:
        data = attrs.asdict(self)
        data.pop("deleted")
        data["objects_reclaimed"] = self.objects_reclaimed
        return data


@attrs.define
class _Plan:
    tags: list[tuple[str, str]] = attrs.field(factory=list)
    revisions: list[tuple[str, Digest]] = attrs.field(factory=list)
    referrers: list[tuple[str, str]] = attrs.field(factory=list)
    layers: list[tuple[str, Digest]] = attrs.field(factory=list)
    repairs: list[tuple[str, Digest]] = attrs.field(factory=list)
    blobs: list[Digest] = attrs.field(factory=list)


def _plan(snapshot: Snapshot, reach: Reachability, young_after: float) -> _Plan:
    plan = _Plan()
    for repo, state in sorted(snapshot.repositories.items()):
        kept = reach.manifests.get(repo, set())
        repo_blobs = reach.repo_blobs.get(repo, set())
        for tag, target in sorted(state.tag_targets.items()):
            if state.tags[tag] > young_after:
                continue
            if target is None or target not in kept or snapshot.bodies.get(target) is None:
                plan.tags.append((repo, tag))
        for digest, mtime in sorted(state.revisions.items()):
            if mtime > young_after:
                continue
            if digest not in kept or snapshot.bodies.get(digest) is None:
                plan.revisions.append((repo, digest))
        removed_revisions = {d for r, d in plan.revisions if r == repo}
        for (_subject, referrer), path in sorted(state.referrers.items()):
            if referrer in removed_revisions or (
                referrer not in state.revisions and snapshot.seen.get(path, 0.0) <= young_after
            ):
                plan.referrers.append((repo, path))
        for digest, mtime in sorted(state.layers.items()):
            if mtime <= young_after and (digest not in repo_blobs or digest not in snapshot.blobs):
                plan.layers.append((repo, digest))
        # Only for the repository's own revisions: an index may name children of another
        # repository (sparse indexes), and linking their blobs here would leak them.
        wanted: set[Digest] = set()
        for digest in state.revisions:
            refs = snapshot.bodies.get(digest)
            if digest in kept and refs is not None:
                wanted.update(refs.blobs)
        for digest in sorted(wanted):
            if digest not in state.layers and digest in snapshot.blobs:
                plan.repairs.append((repo, digest))
    plan.blobs = sorted(d for d in snapshot.blobs if d not in reach.blobs)
    return plan


async def _bounded(calls: Iterable[Awaitable[object]], limit: int = CONCURRENCY) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Awaitable[object]) -> None:
        async with semaphore:
            with contextlib.suppress(PathNotFound):
                await call

    await asyncio.gather(*(one(c) for c in calls))


def _by_repository(pairs: Iterable[tuple[str, Digest]]) -> dict[str, set[Digest]]:
    grouped: dict[str, set[Digest]] = {}
    for repo, digest in pairs:
        grouped.setdefault(repo, set()).add(digest)
    return grouped


def _batches(items: list[T], size: int = BATCH) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class GarbageCollector:
    """One GC run over a driver; see the module docstring for the protocol."""

    def __init__(
        self,
        driver: StorageDriver,
        *,
        grace: float = 3600.0,
        settle: float = 30.0,
        dry_run: bool = False,
        collect_untagged: UntaggedPolicy | None = None,
        fence: LeaseCheck = _no_fence,
        clock: Callable[[], float] = time.time,
        rate: float | None = None,
        concurrency: int | None = None,
    ) -> None:
        if isinstance(driver, CountingDriver):
            self.driver = driver
        else:
            pacer = RequestPacer(rate, concurrency or default_concurrency(driver))
            self.driver = CountingDriver(driver, pacer)
        self.grace = grace
        self.settle = settle
        self.dry_run = dry_run
        self.collect_untagged = collect_untagged
        self.fence = fence
        self.clock = clock
        self.run_id = f"{int(clock())}-{uuid.uuid4().hex[:8]}"
        self.mark_started = clock()

    async def run(self) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run=self.dry_run, run=self.run_id)
        if not self.dry_run:
            report.trash_recovered = await self._recover_trash()
        self.mark_started = self.clock()
        young_after = self.mark_started - self.grace
        snapshot = await take_snapshot(self.driver)
        reach = await reachable(
            self.driver,
            snapshot,
            young_after=young_after,
            collect_untagged=self.collect_untagged,
        )
        # Pure CPU over the whole snapshot: off the event loop (GC may run inside a server).
        plan = await asyncio.to_thread(_plan, snapshot, reach, young_after)
        report.blobs_total = len(snapshot.blobs)
        report.mark_seconds = time.monotonic() - started
        sweep_started = time.monotonic()
        report.tags_removed = len(plan.tags)
        report.revisions_removed = len(plan.revisions)
        report.referrers_removed = len(plan.referrers)
        report.layer_links_removed = len(plan.layers)
        report.links_repaired = len(plan.repairs)
        if self.dry_run:
            deleted = plan.blobs
        else:
            deleted = await self._sweep(snapshot, plan, report)
        report.deleted = [(str(d), snapshot.blobs[d][0]) for d in deleted]
        report.blobs_deleted = len(deleted)
        report.bytes_deleted = sum(size for _, size in report.deleted)
        report.sweep_seconds = time.monotonic() - sweep_started
        report.duration = time.monotonic() - started
        report.requests_by_operation = dict(self.driver.counts)
        report.storage_requests = self.driver.total
        return report

    # -- recovery of a killed run ------------------------------------------------------------

    async def _recover_trash(self) -> int:
        entries = []
        records = []
        folders = False
        async for entry in self.driver.walk(layout.gc_trash_dir()):
            if entry.is_dir:
                folders = True
                continue
            found = layout.digest_from_trash(entry.path)
            if found is not None:
                entries.append((entry.path, Digest(found[1], found[2])))
            else:  # a killed run's record of the revisions it was removing
                records.append(entry.path)
        if entries or records:
            await self.fence()
            await _bounded(self._restore(path, digest) for path, digest in entries)
            if records:
                await self.driver.delete_many(records)
        if folders:
            await self._remove_empty_folders(layout.gc_trash_dir())
        return len(entries)

    async def _remove_empty_folders(self, path: str) -> None:
        """On a store with real folders (a local one), remove the trash's emptied folders:
        left behind, every run would add one that readers' trash lookups
        (``BlobStore.recover_set_aside``, ``removed_revisions``) list from then on. Called
        only once everything below *path* is restored or deleted; object stores have no
        empty folders, and pay nothing."""
        if self.driver.local_path(path) is None:
            return
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(path)

    async def _restore(self, trash_path: str, digest: Digest) -> None:
        """Put set-aside data back, unless a client stored the blob again meanwhile."""
        target = layout.blob_data(digest)
        try:
            await self.driver.stat(target)
        except PathNotFound:
            # A reader may have moved it back already (BlobStore.recover_set_aside).
            with contextlib.suppress(PathNotFound):
                await self.driver.move(trash_path, target)
            return
        await self.driver.delete_many([trash_path])

    # -- the sweep ---------------------------------------------------------------------------

    async def _sweep(self, snapshot: Snapshot, plan: _Plan, report: GcReport) -> list[Digest]:
        driver = self.driver
        for batch in _batches(plan.repairs):
            await self.fence()
            await _bounded(
                driver.write(layout.layer_link(stored_name(r), d), str(d).encode())
                for r, d in batch
            )
        for batch in _batches(plan.tags):
            await self.fence()
            await _bounded(driver.delete(layout.tag_dir(stored_name(r), t)) for r, t in batch)
        for batch in _batches(plan.referrers):
            await self.fence()
            await driver.delete_many([path for _, path in batch])
        records = await self._record_removed_revisions(plan)
        for batch in _batches(plan.revisions):
            await self.fence()
            await _bounded(driver.delete(layout.revision_dir(stored_name(r), d)) for r, d in batch)
            # A collected manifest's simple signatures go with it (its cosign tag goes above).
            await _bounded(
                driver.delete(layout.simple_signatures_dir(stored_name(r), d)) for r, d in batch
            )
        await self._relink_revisions_tagged_since_the_mark(snapshot, plan, report)
        if records:
            await driver.delete_many(records)
            await self._remove_empty_folders(layout.gc_trash_run(self.run_id))
        # A repository left without a manifest leaves the website's repository index.
        index = RepositoryIndex(driver)
        for repo in sorted({r for r, _ in plan.revisions}):
            name = stored_name(repo)
            if not await index.has_manifests(name):
                await index.emptied(name)
        await self._spare_repositories_pushed_to(snapshot, plan, report)
        for batch in _batches(plan.layers):
            await self.fence()
            await driver.delete_many([layout.layer_link(stored_name(r), d) for r, d in batch])
        trashed: dict[Digest, str] = {}
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def set_aside(digest: Digest) -> str | None:
            async with semaphore:
                return await self._set_aside(digest, snapshot.blobs[digest][0])

        for batch in _batches(plan.blobs):
            await self.fence()
            moved = await asyncio.gather(*(set_aside(d) for d in batch))
            trashed.update((d, path) for d, path in zip(batch, moved, strict=True) if path)
        if not trashed and not plan.layers and not plan.revisions and not plan.tags:
            return []
        await asyncio.sleep(self.settle)
        rescued = await self._recheck(snapshot, plan, trashed)
        report.blobs_rescued = len(rescued)
        # What readers moved back meanwhile (BlobStore.recover_set_aside) is not deleted,
        # nor counted: one listing of this run's trash says what is still in it.
        still = {e.path async for e in driver.walk(layout.gc_trash_run(self.run_id))}
        doomed = [d for d in trashed if d not in rescued and trashed[d] in still]
        for batch in _batches(doomed):
            await self.fence()
            await driver.delete_many([trashed[d] for d in batch])
        await self._remove_empty_folders(layout.gc_trash_run(self.run_id))
        return doomed

    async def _record_removed_revisions(self, plan: _Plan) -> list[str]:
        """Name, per repository, the revisions this run is about to remove, for readers
        whose digest misses until the relink below is done
        (``registry_core.storage.removed_revisions``); one write per repository."""
        records = {
            layout.gc_removed_revisions(self.run_id, stored_name(repo)): digests
            for repo, digests in _by_repository(plan.revisions).items()
        }
        if records:
            await self.fence()
            await _bounded(
                self.driver.write(path, record_body(self.mark_started, digests))
                for path, digests in records.items()
            )
        return sorted(records)

    async def _relink_revisions_tagged_since_the_mark(
        self, snapshot: Snapshot, plan: _Plan, report: GcReport
    ) -> None:
        """Link back at once the revisions just removed that a tag written since the mark
        names (a client tagged the untagged manifest again meanwhile).

        The tag's write confirmed its revision before this run removed it, so only this run
        can notice. The re-check would link it back too, but ``settle`` seconds later: a
        GET or DELETE by digest in between answered 404 for an image the client had just
        tagged. One listing of tags per repository that lost a revision, and a read of each
        tag written since the mark. The revision's own blobs stay out of this run's
        set-aside; a tag written after this listing is left to the re-check (docstring).
        """
        removed = _by_repository(plan.revisions)
        if not removed:
            return
        recent = self.mark_started - MTIME_SLACK
        again = Snapshot()
        fresh: list[tuple[str, str]] = []
        for repo in sorted(removed):
            again.repositories[repo] = RepositoryState()
            tags = await tags_written_since(self.driver, stored_name(repo), recent, snapshot.seen)
            fresh.extend((repo, tag) for tag in tags)
        await read_tag_targets(self.driver, again, fresh)
        relink = sorted(
            {
                (repo, target)
                for repo, state in again.repositories.items()
                for target in state.tag_targets.values()
                if target is not None and target in removed[repo]
            }
        )
        if not relink:
            return
        await _bounded(
            self.driver.write(layout.revision_link(stored_name(r), d), str(d).encode())
            for r, d in relink
        )
        kept: dict[str, set[Digest]] = {}
        for repo, digest in relink:
            refs = snapshot.bodies.get(digest)
            kept.setdefault(repo, set()).update([digest, *(refs.blobs if refs else ())])
        back = set(relink)
        plan.revisions = [rd for rd in plan.revisions if rd not in back]
        plan.layers = [(r, d) for r, d in plan.layers if d not in kept.get(r, ())]
        spared = set().union(*kept.values())
        plan.blobs = [d for d in plan.blobs if d not in spared]
        report.revisions_removed = len(plan.revisions)
        report.layer_links_removed = len(plan.layers)
        log.info(
            "gc %s: %d revision(s) tagged again since the mark linked back", self.run_id, len(back)
        )

    async def _spare_repositories_pushed_to(
        self, snapshot: Snapshot, plan: _Plan, report: GcReport
    ) -> None:
        """Keep this run's hands off the layer links (and their blobs) of a repository that
        gained a manifest since the mark.

        Such a manifest passed its blob checks while the links were still there; unlinking
        them now would leave it unpullable until the re-check rewrites them, ``settle``
        seconds later. One listing of revisions per repository that has links to remove;
        what is spared stays garbage for the next run. A manifest written between this
        listing and the unlink is still protected by the re-check (module docstring).
        """
        if not plan.layers:
            return
        removed = set(plan.revisions)

        async def pushed_to(repo: str) -> bool:
            known = snapshot.repositories[repo].revisions
            async for entry in self.driver.walk(layout.revisions_root(stored_name(repo))):
                found = None if entry.is_dir else layout.classify_repository_object(entry.path)
                if found is None or found[1] != "revision":
                    continue
                digest = Digest(found[2][0], found[2][1])
                if digest not in known or (repo, digest) in removed:
                    return True
            return False

        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def bounded(repo: str) -> bool:
            async with semaphore:
                return await pushed_to(repo)

        repos = sorted({r for r, _ in plan.layers})
        changed = await asyncio.gather(*(bounded(r) for r in repos))
        spared = {r for r, hit in zip(repos, changed, strict=True) if hit}
        if not spared:
            return
        kept_links = {d for r, d in plan.layers if r in spared}
        plan.layers = [(r, d) for r, d in plan.layers if r not in spared]
        plan.blobs = [d for d in plan.blobs if d not in kept_links]
        report.layer_links_removed = len(plan.layers)
        log.info("gc: %d repositories pushed to since the mark keep their layer links", len(spared))

    async def _set_aside(self, digest: Digest, size: int) -> str | None:
        """Move one blob's data into the trash. Blob data is written whole, and the mark's
        listing gave its size, so where the driver can (``move_whole``: an object store)
        the move skips its lookups: a copy and a delete instead of four requests."""
        path = layout.gc_trash(self.run_id, digest)
        move_whole = getattr(self.driver, "move_whole", None)
        try:
            if move_whole is not None:
                await move_whole(layout.blob_data(digest), path, size)
            else:
                await self.driver.move(layout.blob_data(digest), path)
        except PathNotFound:
            return None
        return path

    async def _recheck(
        self,
        snapshot: Snapshot,
        plan: _Plan,
        trashed: dict[Digest, str],
    ) -> set[Digest]:
        """Walk repositories again; rescue whatever links written since the mark reach."""
        again = Snapshot()
        tag_links = await walk_repositories(self.driver, again)
        # New or changed since the mark; and, since stores keep mtimes in whole seconds (S3),
        # anything written around the mark's start, which a same-second rewrite can hide in.
        recent = self.mark_started - MTIME_SLACK
        fresh = {
            path
            for path, mtime in again.seen.items()
            if snapshot.seen.get(path) != mtime or mtime >= recent
        }
        # Bodies read by the mark are immutable; those it found missing may exist now, and a
        # set-aside manifest is read from the trash.
        view = Snapshot(bodies={d: refs for d, refs in snapshot.bodies.items() if refs})

        def locate(digest: Digest) -> str:
            return trashed.get(digest) or layout.blob_data(digest)

        removed_layers = {(r, d) for r, d in plan.layers}
        removed_revisions = {(r, d) for r, d in plan.revisions}
        needed: set[Digest] = set()
        relink: list[tuple[str, Digest]] = []
        unrevoke: list[tuple[str, Digest]] = []
        fresh_tags = [
            (repo, tag)
            for repo, tag in tag_links
            if layout.tag_current_link(stored_name(repo), tag) in fresh
        ]
        await read_tag_targets(self.driver, again, fresh_tags)
        for repo, state in again.repositories.items():
            roots: list[Digest] = []
            name = stored_name(repo)
            for digest in state.layers:
                if layout.layer_link(name, digest) in fresh:
                    needed.add(digest)
            for digest in state.revisions:
                if layout.revision_link(name, digest) in fresh:
                    roots.append(digest)
            for tag in state.tags:
                target = state.tag_targets.get(tag)
                if target is not None:
                    roots.append(target)
            if not roots:
                continue
            # A fresh Reachability: the whole closure, also of manifests the mark kept.
            local = Reachability()
            await expand(self.driver, view, local, repo, roots, locate)
            needed |= local.blobs
            for digest in local.manifests.get(repo, set()):
                if (repo, digest) in removed_revisions:
                    unrevoke.append((repo, digest))
            relink.extend(
                (repo, d) for d in local.repo_blobs.get(repo, set()) if (repo, d) in removed_layers
            )
        rescued = {d for d in needed if d in trashed}
        if rescued:
            log.info(
                "gc %s: %d blob(s) rescued by writes during the sweep", self.run_id, len(rescued)
            )
        await _bounded(self._restore(trashed[d], d) for d in rescued)
        await _bounded(
            self.driver.write(layout.revision_link(stored_name(r), d), str(d).encode())
            for r, d in unrevoke
        )
        await _bounded(
            self.driver.write(layout.layer_link(stored_name(r), d), str(d).encode())
            for r, d in relink
        )
        return rescued


IN_PROCESS_DRIVERS = frozenset({"memory"})
"""Drivers whose requests never leave this process: nobody shares them, no pacing needed."""


def default_concurrency(driver: StorageDriver) -> int:
    """Requests in flight when ``[gc] concurrency`` is 0 (auto): many on a local folder (or
    in memory), few on a remote store (see the module docstring, "Pacing")."""
    if driver.local_path(layout.BLOBS) is not None or driver.name in IN_PROCESS_DRIVERS:
        return CONCURRENCY
    return OBJECT_STORE_CONCURRENCY


async def collect_garbage(
    driver: StorageDriver,
    *,
    grace: float = 3600.0,
    settle: float = 30.0,
    dry_run: bool = False,
    collect_untagged: UntaggedPolicy | None = None,
    fence: LeaseCheck = _no_fence,
    rate: float | None = None,
    concurrency: int | None = None,
) -> GcReport:
    """Run one GC pass (the caller holds the ``gc`` lease, and passes its check as *fence*);
    *rate* (requests per second) and *concurrency* pace its storage requests (None or 0:
    unlimited rate, :func:`default_concurrency`)."""
    collector = GarbageCollector(
        driver,
        grace=grace,
        settle=settle,
        dry_run=dry_run,
        collect_untagged=collect_untagged,
        fence=fence,
        rate=rate,
        concurrency=concurrency,
    )
    report = await collector.run()
    log.info(
        "gc %s%s: %d blob(s) and %d byte(s) reclaimed, %d link(s) removed, %d rescued, "
        "%d storage request(s), %.2fs",
        report.run,
        " (dry run)" if dry_run else "",
        report.blobs_deleted,
        report.bytes_deleted,
        report.objects_reclaimed - report.blobs_deleted,
        report.blobs_rescued,
        report.storage_requests,
        report.duration,
    )
    return report


__all__ = ["JOB", "GarbageCollector", "GcReport", "collect_garbage", "default_concurrency"]
