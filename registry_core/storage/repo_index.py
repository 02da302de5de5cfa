"""The per-registry repository index: a registry's image names, sorted, in bounded reads.

The website lists, counts and searches the images of a registry (``OWNER/REGISTRY``) of
thousands of repositories. Walking the repositories folder costs one listing per
repository; this index answers a page from a few small objects instead. It owns, under
``cargohold/repo-index/OWNER/REGISTRY/`` (layout.py):

- ``shards/<hash>``: sorted image names (``IMAGE[/MORE]``), up to ``2 * SHARD_SIZE`` per
  shard, named by the hash of their content, so a shard never changes once written and
  every process may cache it for good;
- ``summary``: the shards in name order with their first and last names and counts, plus
  the names recently found gone (see "stale caches" below). Only the ``repo-index`` job,
  under its storage lease (registry_core/jobs.py), writes it and the shards;
- ``hints/<image>@<ns>.<rand>.<add|del>``: one empty object per change, with a unique
  name (so concurrent writers never overwrite each other: no entry is lost to a race),
  written *after* the change is visible in storage: ``add`` when a process writes a
  manifest into a repository it does not know, ``del`` when a delete left a repository
  without manifests. Plus one ``_dirty/OWNER@REGISTRY`` marker (create-if-absent) so the
  job finds the registries with hints in one listing.

Readers list the hints *first*, then read the summary and the shards a page needs, and
overlay the hints (the newest hint of a name wins). The job deletes the dirty marker,
lists the hints, checks each named repository in storage (any manifest revision?),
writes the changed shards and then the summary, and only then deletes the hints it
listed. A reader that lists hints before the job deletes them sees them; one that lists
after reads the summary the job wrote before deleting. The job trusts storage, not the
hints, so their order across processes does not matter, and it is idempotent.

Push path cost: none once a process knows a repository (an in-process set): a push into
an unknown repository pays one hint write and one create-if-absent of the dirty marker.
Stale caches: a process may still "know" a repository another process has emptied and
the job has dropped; a later push there writes no hint. So the known set forgets names
after ``KNOWN_TTL`` seconds, and the job re-checks every name it dropped for
``RECHECK_WINDOW`` (> ``KNOWN_TTL``) seconds, re-adding it if it has manifests again.

A registry with no summary (a store written before the index existed, or by
Distribution) is indexed from one walk of its repositories, by the job or by the first
reader (which then holds the lease, or, when it is busy, answers from the walk without
writing). At its first run in a process and then every ``RECONCILE_INTERVAL``, the job
also walks again every registry last walked longer ago than that, which picks up
repositories a peer such as Distribution wrote into the same storage without hints. This module never decides what a repository contains beyond "has a manifest
revision", and never reads a manifest.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
import msgspec

from ..names import RepositoryName, Tenant
from . import layout
from .driver import PathNotFound, StorageDriver, delete_objects

if TYPE_CHECKING:
    from ..jobs import LeaseGuard, Scheduler

log = logging.getLogger(__name__)

JOB = "repo-index"
JOB_INTERVAL = 10.0
"""Seconds between compactions (only registries with hints are visited)."""
JOB_TTL = 120.0
SHARD_SIZE = 1000
"""Names per shard when a registry is (re)built; a shard splits at twice this."""
SEARCH_SHARD_LIMIT = 64
"""A substring search reads at most this many shards; larger registries search by prefix."""
RECONCILE_INTERVAL = 6 * 3600.0
"""How often the job indexes every registry again from a walk of its folder."""
KNOWN_TTL = 1800.0
RECHECK_WINDOW = 2 * KNOWN_TTL + 4 * JOB_INTERVAL
_CHECK_CONCURRENCY = 32
_CACHED_SHARDS = 512


class ShardRef(msgspec.Struct, frozen=True):
    name: str
    first: str
    last: str
    count: int


class Summary(msgspec.Struct, kw_only=True):
    built_at: float
    walked_at: float = 0.0
    """When the registry's folder was last walked (the job walks it again after a while)."""
    shards: list[ShardRef] = msgspec.field(default_factory=list)
    previous: list[str] = msgspec.field(default_factory=list)
    """Shards of the summary before this one: readers may still hold it, so kept one round."""
    recheck: dict[str, float] = msgspec.field(default_factory=dict)
    """Names found gone -> when: checked again each run until RECHECK_WINDOW passes."""

    @property
    def count(self) -> int:
        return sum(shard.count for shard in self.shards)


def _escape(image: str) -> str:
    return image.replace("/", "+")  # '+' is never part of a repository name


def _hint_name(image: str, added: bool) -> str:
    kind = "add" if added else "del"
    return f"{_escape(image)}@{time.time_ns():020d}.{uuid.uuid4().hex[:8]}.{kind}"


def _parse_hint(name: str) -> tuple[str, int, bool] | None:
    image, _, rest = name.partition("@")
    parts = rest.split(".")
    if not image or len(parts) != 3 or not parts[0].isdigit() or parts[2] not in ("add", "del"):
        return None
    return image.replace("+", "/"), int(parts[0]), parts[2] == "add"


def _latest(hints: Iterable[str]) -> dict[str, bool]:
    """Image -> present? by the newest hint of each image."""
    newest: dict[str, tuple[int, bool]] = {}
    for hint in hints:
        parsed = _parse_hint(hint)
        if parsed is None:
            continue
        image, ns, added = parsed
        if image not in newest or newest[image][0] < ns:
            newest[image] = (ns, added)
    return {image: added for image, (_, added) in newest.items()}


def _encode_shard(names: list[str]) -> bytes:
    return "\n".join(names).encode()


def _shard_ref(names: list[str]) -> tuple[ShardRef, bytes]:
    body = _encode_shard(names)
    digest = hashlib.sha256(body).hexdigest()[:32]
    return ShardRef(digest, names[0], names[-1], len(names)), body


@attrs.define
class _Group:
    """One shard of the summary with the hints that fall in its name range."""

    ref: ShardRef | None
    adds: set[str] = attrs.field(factory=set)
    removes: set[str] = attrs.field(factory=set)

    @property
    def count(self) -> int:
        return (self.ref.count if self.ref else 0) + len(self.adds) - len(self.removes)


class IndexView:
    """A registry's image names as of one read: summary, hints, and shards on demand."""

    def __init__(self, index: RepositoryIndex, tenant: Tenant, groups: list[_Group]) -> None:
        self.index = index
        self.tenant = tenant
        self.groups = groups
        self.total = sum(group.count for group in groups)

    async def _names(self, group: _Group) -> list[str]:
        base = await self.index._shard(self.tenant, group.ref) if group.ref else ()
        if not group.adds and not group.removes:
            return list(base)
        return sorted((set(base) - group.removes) | group.adds)

    async def slice(self, offset: int, limit: int) -> list[str]:
        """Names ``offset`` to ``offset + limit`` in name order (reads only their shards)."""
        chosen: list[_Group] = []
        skipped = 0
        position = 0
        for group in self.groups:
            end = position + group.count
            if end > offset and position < offset + limit:
                if not chosen:
                    skipped = position
                chosen.append(group)
            position = end
        names: list[str] = []
        for found in await asyncio.gather(*(self._names(g) for g in chosen)):
            names.extend(found)
        return names[offset - skipped : offset - skipped + limit]

    async def search(self, query: str) -> tuple[list[str], bool]:
        """Every name containing *query* (and True), or, in a registry of more than
        SEARCH_SHARD_LIMIT shards, every name starting with it (and False)."""
        query = query.lower()
        if len(self.groups) <= SEARCH_SHARD_LIMIT:
            chosen, substring = self.groups, True
        else:
            chosen, substring = self._prefix_groups(query), False
        found: list[str] = []
        for names in await asyncio.gather(*(self._names(g) for g in chosen)):
            if substring:
                found.extend(name for name in names if query in name)
            else:
                found.extend(name for name in names if name.startswith(query))
        return found, substring

    def _prefix_groups(self, prefix: str) -> list[_Group]:
        chosen = []
        for number, group in enumerate(self.groups):
            first = group.ref.first if group.ref else ""
            following = self.groups[number + 1] if number + 1 < len(self.groups) else None
            next_first = following.ref.first if following and following.ref else None
            # The group holds names from its first up to (not including) the next one's first.
            if next_first is not None and next_first < prefix:
                continue
            if first > prefix and not first.startswith(prefix) and number > 0:
                break
            chosen.append(group)
        return chosen


class RepositoryIndex:
    """The repository indexes of every registry of one storage backend (one per process)."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._known: OrderedDict[str, float] = OrderedDict()
        self._known_max = 100_000
        self._shards: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._next_sweep = 0.0

    # -- the write path: hints -------------------------------------------------------------

    async def written(self, name: RepositoryName) -> None:
        """A manifest of *name* is now stored (call after it is visible)."""
        now = time.monotonic()
        expires = self._known.get(name.value)
        if expires is not None and expires > now:
            return
        await self._hint(name, added=True)
        self._known[name.value] = now + KNOWN_TTL
        self._known.move_to_end(name.value)
        while len(self._known) > self._known_max:
            self._known.popitem(last=False)

    async def relinked(self, name: RepositoryName) -> None:
        """A manifest of *name* was linked again after GC took it (ManifestStore's tag
        confirmation): GC may have dropped the repository meanwhile, so always hint."""
        self._known.pop(name.value, None)
        await self.written(name)

    async def emptied(self, name: RepositoryName) -> None:
        """The last manifest of *name* was just deleted."""
        self._known.pop(name.value, None)
        await self._hint(name, added=False)

    async def _hint(self, name: RepositoryName, *, added: bool) -> None:
        tenant = name.tenant
        await self.driver.write(layout.repo_index_hint(tenant, _hint_name(name.image, added)), b"")
        await self.driver.write_if_absent(layout.repo_index_dirty(tenant), b"")

    # -- reading ---------------------------------------------------------------------------

    async def _hints(self, tenant: Tenant) -> list[str]:
        try:
            return await self.driver.list(layout.repo_index_hints(tenant))
        except PathNotFound:
            return []

    async def summary(self, tenant: Tenant) -> Summary | None:
        try:
            raw = await self.driver.read(layout.repo_index_summary(tenant))
        except PathNotFound:
            return None
        try:
            return msgspec.json.decode(raw, type=Summary)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("repository index summary of %s does not decode; rebuilding", tenant)
            return None

    async def _shard(self, tenant: Tenant, ref: ShardRef) -> tuple[str, ...]:
        path = layout.repo_index_shard(tenant, ref.name)
        cached = self._shards.get(path)
        if cached is not None:
            self._shards.move_to_end(path)
            return cached
        raw = await self.driver.read(path)
        names = tuple(raw.decode().split("\n")) if raw else ()
        self._shards[path] = names
        while len(self._shards) > _CACHED_SHARDS:
            self._shards.popitem(last=False)
        return names

    async def view(self, tenant: Tenant) -> IndexView:
        """The registry's names now: hints (listed first, see the module doc), then summary."""
        for attempt in range(3):
            hints = await self._hints(tenant)
            summary = await self.summary(tenant)
            if summary is None:
                summary = await self._build_missing(tenant)
            try:
                return await self._view(tenant, summary, _latest(hints))
            except PathNotFound:
                # A shard replaced twice since our summary was read: read it again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _view(self, tenant: Tenant, summary: Summary, latest: dict[str, bool]) -> IndexView:
        groups = [_Group(ref) for ref in summary.shards] or [_Group(None)]
        firsts = [g.ref.first if g.ref else "" for g in groups]
        placed: dict[int, list[tuple[str, bool]]] = {}
        for image, present in latest.items():
            number = max(0, bisect.bisect_right(firsts, image) - 1)
            placed.setdefault(number, []).append((image, present))
        numbers = [n for n in placed if groups[n].ref is not None]
        contents = await asyncio.gather(
            *(self._shard(tenant, groups[n].ref) for n in numbers)  # type: ignore[arg-type]
        )
        members = {n: set(c) for n, c in zip(numbers, contents, strict=True)}
        for number, changes in placed.items():
            inside = members.get(number, set())
            for image, present in changes:
                if present and image not in inside:
                    groups[number].adds.add(image)
                elif not present and image in inside:
                    groups[number].removes.add(image)
        return IndexView(self, tenant, groups)

    async def count(self, tenant: Tenant) -> int:
        return (await self.view(tenant)).total

    # -- building and compacting (the job, under its lease) --------------------------------

    async def _build_missing(self, tenant: Tenant) -> Summary:
        """Index a registry that has no summary: under the lease if free, else in memory."""
        from ..jobs import LeaseBusy, Leases

        try:
            async with Leases(self.driver).hold(JOB, JOB_TTL) as guard:
                existing = await self.summary(tenant)  # built meanwhile by the holder before us
                # The hints stay for the job to delete: a page view writes little.
                return existing or await self.rebuild(tenant, guard, drop_hints=False)
        except LeaseBusy:
            summary = Summary(built_at=time.time())
            for chunk in _chunks(await self.walk(tenant)):
                ref = _shard_ref(chunk)[0]
                summary.shards.append(ref)
                self._shards[layout.repo_index_shard(tenant, ref.name)] = tuple(chunk)
            return summary

    async def walk(self, tenant: Tenant) -> list[str]:
        """Images of *tenant* with at least one manifest revision, from one walk, sorted."""
        top = layout.tenant_repositories(tenant)

        def prune(directory: str) -> bool:
            parent, _, base = directory.rpartition("/")
            if parent.endswith("/_manifests/revisions"):
                return False  # an algorithm's folder: its revisions are what we look for
            if parent.rpartition("/")[0].endswith("/_manifests/revisions"):
                return True  # one revision: seen, never entered
            if parent.endswith("/_manifests"):
                return base != "revisions"  # tags are not needed
            return base.startswith("_") and base != "_manifests"

        found: set[str] = set()
        async for entry in self.driver.walk(top, prune):
            head, marker, rest = entry.path.partition("/_manifests/revisions/")
            if entry.is_dir and marker and "/" in rest and head.startswith(top + "/"):
                found.add(head[len(top) + 1 :])
        return sorted(found)

    async def has_manifests(self, name: RepositoryName) -> bool:
        try:
            algorithms = await self.driver.list(layout.revisions_root(name))
        except PathNotFound:
            return False
        for algorithm in algorithms:
            with contextlib.suppress(PathNotFound):
                if await self.driver.list(layout.revisions_dir(name, algorithm)):
                    return True
        return False

    async def rebuild(
        self, tenant: Tenant, guard: LeaseGuard, *, drop_hints: bool = True
    ) -> Summary:
        """Index *tenant* from a walk of its repositories (hints listed before it absorbed)."""
        hints = await self._hints(tenant)
        images = await self.walk(tenant)
        old = await self.summary(tenant)
        now = time.time()
        # Names found gone stay to be checked: a walk cannot see a stale cache's next push.
        seen = set(images)
        recheck = {i: t for i, t in (old.recheck if old else {}).items() if i not in seen}
        summary = Summary(built_at=now, walked_at=now, recheck=recheck)
        await self._write(tenant, summary, _chunks(images), old, guard)
        if drop_hints:
            await self._delete_hints(tenant, hints, guard)
        elif hints:
            await self.driver.write_if_absent(layout.repo_index_dirty(tenant), b"")
        return summary

    async def compact(self, tenant: Tenant, guard: LeaseGuard) -> Summary:
        """Fold *tenant*'s hints (checked against storage) into its shards."""
        hints = await self._hints(tenant)
        old = await self.summary(tenant)
        if old is None:
            return await self.rebuild(tenant, guard)
        now = time.time()
        recheck = {i: t for i, t in old.recheck.items() if now - t < RECHECK_WINDOW}
        wanted = set(_latest(hints)) | set(recheck)
        gate = asyncio.Semaphore(_CHECK_CONCURRENCY)

        async def check(image: str) -> bool:
            async with gate:
                return await self.has_manifests(RepositoryName(f"{tenant}/{image}"))

        ordered = sorted(wanted)
        present = dict(zip(ordered, await asyncio.gather(*map(check, ordered)), strict=True))
        groups = [list(await self._shard(tenant, ref)) for ref in old.shards]
        firsts = [ref.first for ref in old.shards]
        changed = False
        for image, here in present.items():
            if here:
                recheck.pop(image, None)
            elif image not in recheck:
                recheck[image] = now
            if not groups:
                groups.append([])
            number = max(0, bisect.bisect_right(firsts, image) - 1)
            names = groups[number]
            at = bisect.bisect_left(names, image)
            inside = at < len(names) and names[at] == image
            if here and not inside:
                names.insert(at, image)
                changed = True
            elif not here and inside:
                del names[at]
                changed = True
        summary = Summary(built_at=now, walked_at=old.walked_at, recheck=recheck)
        if changed or recheck != old.recheck:
            chunks = [piece for names in groups for piece in _split(names)]
            await self._write(tenant, summary, chunks, old, guard)
        else:
            summary = old
        await self._delete_hints(tenant, hints, guard)
        if recheck:  # come back next run to look at the names found gone
            await self.driver.write_if_absent(layout.repo_index_dirty(tenant), b"")
        return summary

    async def _write(
        self,
        tenant: Tenant,
        summary: Summary,
        chunks: list[list[str]],
        old: Summary | None,
        guard: LeaseGuard,
    ) -> None:
        kept = {ref.name for ref in old.shards} if old else set()
        written: list[tuple[str, bytes]] = []
        for chunk in chunks:
            ref, body = _shard_ref(chunk)
            summary.shards.append(ref)
            if ref.name not in kept:
                written.append((layout.repo_index_shard(tenant, ref.name), body))
        await guard.check()  # before any write is even started (a lost lease writes nothing)
        await asyncio.gather(*(self.driver.write(path, body) for path, body in written))
        current = {ref.name for ref in summary.shards}
        summary.previous = sorted(kept - current)
        await guard.check()
        await self.driver.write(layout.repo_index_summary(tenant), msgspec.json.encode(summary))
        if old is not None:  # shards two summaries old: no reader can still need them
            stale = [name for name in old.previous if name not in current]
            await delete_objects(self.driver, [layout.repo_index_shard(tenant, n) for n in stale])

    async def _delete_hints(self, tenant: Tenant, hints: list[str], guard: LeaseGuard) -> None:
        if hints:
            await guard.check()
            await delete_objects(self.driver, [layout.repo_index_hint(tenant, h) for h in hints])

    async def run(self, guard: LeaseGuard) -> int:
        """The job: compact every registry with a dirty marker; once per process and then
        every RECONCILE_INTERVAL, index again from a walk every registry never indexed or
        walked longer ago than that. Returns how many registries it visited."""
        tenants: list[Tenant] = []
        walk: set[Tenant] = set()
        if time.monotonic() >= self._next_sweep:
            walk = set(await self._stale())
            tenants += sorted(walk, key=str)
            self._next_sweep = time.monotonic() + RECONCILE_INTERVAL
        try:
            markers = await self.driver.list(layout.repo_index_dirty_dir())
        except PathNotFound:
            markers = []
        for marker in markers:
            owner, _, registry = marker.partition("@")
            if owner and registry:
                with contextlib.suppress(PathNotFound):
                    # Deleted before the hints are listed: a hint written after this point
                    # re-creates the marker, one written before is in the listing.
                    await self.driver.delete(layout.repo_index_dirty(Tenant(owner, registry)))
                tenants.append(Tenant(owner, registry))
        for tenant in dict.fromkeys(tenants):
            await guard.check()
            if tenant in walk:
                await self.rebuild(tenant, guard)
            else:
                await self.compact(tenant, guard)
        return len(tenants)

    async def _stale(self) -> list[Tenant]:
        """Registries with repositories whose index is missing or was walked long ago (a
        peer such as Distribution may have written repositories without hints)."""
        found = []
        now = time.time()
        for owner in await _list_or_empty(self.driver, layout.REPOSITORIES):
            for name in await _list_or_empty(self.driver, f"{layout.REPOSITORIES}/{owner}"):
                tenant = Tenant(owner, name)
                summary = await self.summary(tenant)
                if summary is None or now - summary.walked_at >= RECONCILE_INTERVAL:
                    found.append(tenant)
        return found

    def add_job(self, scheduler: Scheduler, interval: float = JOB_INTERVAL) -> None:
        scheduler.add(JOB, interval, self.run, ttl=JOB_TTL)


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[i : i + SHARD_SIZE] for i in range(0, len(names), SHARD_SIZE)]


def _split(names: list[str]) -> list[list[str]]:
    if not names:
        return []
    if len(names) <= 2 * SHARD_SIZE:
        return [names]
    return _chunks(names)


async def _list_or_empty(driver: StorageDriver, path: str) -> list[str]:
    try:
        return await driver.list(path)
    except PathNotFound:
        return []
