"""Revisions a running GC is removing, recorded so that a reader can link back one that a
client tagged meanwhile.

The window this closes (``registry_core.lifecycle.gc``, step 4): a manifest PUT writes its
revision, then its tag, then confirms the revision is still linked. A GC mark that falls
between the revision and the tag sees the manifest untagged and, under a policy that
collects untagged manifests, removes the revision *after* the PUT confirmed it (the client
has its 201). The run then re-reads the repository's tags and links the revision back, but
a GET, HEAD or DELETE by digest between that removal and the relink answered 404 for a
manifest the client had just tagged.

So before it removes any revision, a run writes one record per repository naming the
revisions it is about to remove and when its mark started; it deletes the records once its
own relink is done (after that, every tag a client was told of names a linked revision:
its write confirmed after the removal, or the run's relink saw it). A reader whose digest
misses lists the runs in progress (usually none: one listing, on this rare path only),
reads this repository's record in each (:func:`removal_mark`), and if one names the
digest, reads the tags written since that mark: one naming the digest gets its revision
linked back at once (``ManifestStore.resolve``), exactly what the run's relink would
write a moment later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..digest import Digest
from ..names import RepositoryName
from . import layout
from .driver import PathNotFound, StorageDriver

MTIME_SLACK = 2.0
"""Seconds before a mark's start from which a tag counts as written since the mark (stores
keep whole-second mtimes; small clock skew between processes and the store)."""


def record_body(mark_started: float, digests: Iterable[Digest]) -> bytes:
    """A record: the mark's start on the first line, then one digest per line."""
    return "\n".join([repr(mark_started), *sorted(str(d) for d in digests)]).encode()


async def tags_written_since(
    driver: StorageDriver,
    name: RepositoryName,
    since: float,
    seen: Mapping[str, float] | None = None,
) -> list[str]:
    """Tags of *name* whose link was written at or after *since*, or (with *seen*, what a
    mark listed) whose link is not the one the mark saw; one listing of the tags folder."""
    found: list[str] = []
    try:
        async for entry in driver.walk(layout.tags_dir(name)):
            kind = None if entry.is_dir else layout.classify_repository_object(entry.path)
            if kind is None or kind[1] != "tag":
                continue
            if entry.mtime >= since or (seen is not None and seen.get(entry.path) != entry.mtime):
                found.append(kind[2][0])
    except PathNotFound:
        return []
    return found


async def removal_mark(driver: StorageDriver, name: RepositoryName, digest: Digest) -> float | None:
    """When the mark started of a running GC that is removing *digest* from *name* (the
    earliest, less :data:`MTIME_SLACK`), or None when no run is: one listing of the runs,
    then a read of this repository's record in each."""
    try:
        runs = await driver.list(layout.gc_trash_dir())
    except PathNotFound:
        return None
    marks: list[float] = []
    for run in runs:
        try:
            record = await driver.read(layout.gc_removed_revisions(run, name))
        except PathNotFound:
            continue
        lines = record.decode(errors="replace").split("\n")
        if str(digest) in lines[1:]:
            try:
                marks.append(float(lines[0]) - MTIME_SLACK)
            except ValueError:
                marks.append(0.0)
    return min(marks) if marks else None
