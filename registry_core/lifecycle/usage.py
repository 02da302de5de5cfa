"""What each registry stores: a usage ledger of per-event deltas, compacted, recomputed exactly.

Storage has no compare-and-swap, so usage is never a read-modify-write of one
object (DESIGN, "Background work"). Per registry, under ``cargohold/usage/O/R``:

- ``charged/<alg>-<hex>``: one marker per blob counted in the registry, made
  create-if-absent when a blob is linked, so a layer shared by two images (or
  pushed twice, by two processes at once) is counted once;
- ``deltas/<ns>.<rand>.<bytes>.<images>``: one object per event (a newly
  charged blob, a tag created or deleted), its values in its name, so summing
  needs a listing and no reads;
- ``snapshot``: totals that the periodic ``usage`` job folds the deltas into.
  It names the deltas it absorbed before deleting them, so a crash between
  the two counts nothing twice.

Current usage = snapshot + deltas not absorbed; each process caches it for
``ttl`` seconds and adds its own events at once. Only registries under a quota
write markers and deltas (the others pay nothing on push; their usage is as of
the last recompute). :func:`recompute_usage` (every GC run, and whenever a
quota is set) measures a registry exactly from its repositories and rewrites
markers and snapshot, so drift (a blob unlinked, an event lost in a crash, a
process that had not yet seen a new quota) is corrected, never accumulated.

Bound on overshoot: a push is checked against the usage this process knows
before its bytes are stored. Concurrent pushes can each pass the same check,
so a quota can be exceeded by at most the bytes of the uploads in flight at
that moment in all processes, plus what other processes charged within the
last ``ttl`` seconds (their events are in storage but not yet in this
process's cache). Image counts overshoot the same way, by tags created
concurrently or within ``ttl`` elsewhere. The compaction and the recompute run
under the ``usage`` lease, so only one writer ever rewrites a snapshot; after
each compaction the job also stores the usage per owner, which every process
reads for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

from ..attachments import is_attachment_tag
from ..digest import Digest
from ..errors import DigestInvalid
from ..jobs import LeaseBusy, LeaseGuard, Leases
from ..names import Tenant
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver, delete_objects

if TYPE_CHECKING:
    from ..registry import Registry

log = logging.getLogger(__name__)

JOB = "usage"
"""The lease held by whoever rewrites snapshots (compaction, recompute)."""
LEASE_TTL = 120.0
_STAT_CONCURRENCY = 32


class Usage(msgspec.Struct, kw_only=True):
    """Stored bytes and images of a registry (or an owner's registries)."""

    bytes: int = 0
    images: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(bytes=self.bytes + other.bytes, images=self.images + other.images)


class Snapshot(msgspec.Struct, kw_only=True):
    bytes: int = 0
    images: int = 0
    measured_at: float | None = None
    """When the last exact recompute ran (None: never)."""
    absorbed: list[str] = msgspec.field(default_factory=list)


class Totals(msgspec.Struct, kw_only=True):
    """Usage summed per owner, written by the ``usage`` job for every process's /metrics."""

    measured_at: float
    owners: dict[str, Usage] = msgspec.field(default_factory=dict)
    owner_limits: dict[str, int] = msgspec.field(default_factory=dict)
    """Owners with a byte quota -> its limit."""


TOTALS_JOB_STATE = "totals"


def _delta_name(size: int, images: int) -> str:
    return f"{time.time_ns():020d}.{uuid.uuid4().hex[:12]}.{size}.{images}"


def _delta_values(name: str) -> tuple[int, int] | None:
    parts = name.split(".")
    if len(parts) != 4:
        return None
    try:
        return int(parts[2]), int(parts[3])
    except ValueError:
        return None


class UsageLedger:
    """Reads and appends to the usage ledgers of one storage backend (cached per process)."""

    def __init__(self, driver: StorageDriver, ttl: float = 10.0) -> None:
        self.driver = driver
        self.ttl = ttl
        self._cache: dict[Tenant, tuple[float, Usage]] = {}
        self._owners: dict[str, tuple[float, list[str]]] = {}

    def forget(self) -> None:
        self._cache.clear()
        self._owners.clear()

    async def snapshot(self, tenant: Tenant) -> Snapshot:
        try:
            raw = await self.driver.read(layout.usage_snapshot(tenant.owner, tenant.registry))
        except PathNotFound:
            return Snapshot()
        try:
            return msgspec.json.decode(raw, type=Snapshot)
        except msgspec.DecodeError:
            log.warning("usage snapshot of %s does not decode; counting from zero", tenant)
            return Snapshot()

    async def _deltas(self, tenant: Tenant) -> list[str]:
        try:
            return await self.driver.list(layout.usage_deltas_dir(tenant.owner, tenant.registry))
        except PathNotFound:
            return []

    async def measure(self, tenant: Tenant) -> tuple[Usage, Snapshot]:
        """Usage from storage (snapshot plus unabsorbed deltas), bypassing the cache."""
        # Deltas first: a compaction between the two reads then shows them as absorbed
        # by the newer snapshot (never as neither listed nor absorbed: an undercount).
        names = await self._deltas(tenant)
        snapshot = await self.snapshot(tenant)
        usage = Usage(bytes=snapshot.bytes, images=snapshot.images)
        absorbed = set(snapshot.absorbed)
        for name in names:
            values = _delta_values(name)
            if values is not None and name not in absorbed:
                usage.bytes += values[0]
                usage.images += values[1]
        self._cache[tenant] = (time.monotonic() + self.ttl, usage)
        return usage, snapshot

    async def current(self, tenant: Tenant) -> Usage:
        """The registry's usage as this process knows it (at most ``ttl`` seconds old)."""
        hit = self._cache.get(tenant)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return (await self.measure(tenant))[0]

    async def registries_of(self, owner: str) -> list[str]:
        """Registries of *owner* that hold content or a ledger (cached like usage)."""
        hit = self._owners.get(owner)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        found: set[str] = set()
        for folder in (f"{layout.REPOSITORIES}/{owner}", layout.usage_dir(owner)):
            with contextlib.suppress(PathNotFound):
                found.update(await self.driver.list(folder))
        names = sorted(found)
        self._owners[owner] = (time.monotonic() + self.ttl, names)
        return names

    async def owner_total(self, owner: str) -> Usage:
        """The sum of the usage of every registry of *owner*."""
        registries = await self.registries_of(owner)
        usages = await asyncio.gather(*(self.current(Tenant(owner, r)) for r in registries))
        total = Usage()
        for usage in usages:
            total = total + usage
        return total

    # -- events -------------------------------------------------------------------

    def _bump(self, tenant: Tenant, size: int, images: int) -> None:
        hit = self._cache.get(tenant)
        if hit is not None:
            hit[1].bytes += size
            hit[1].images += images

    async def is_charged(self, tenant: Tenant, digest: Digest) -> bool:
        try:
            await self.driver.stat(layout.usage_charged(tenant.owner, tenant.registry, digest))
        except PathNotFound:
            return False
        return True

    async def charge_blob(self, tenant: Tenant, digest: Digest, size: int) -> bool:
        """Count blob *digest* in the registry unless it already is; True when it was new."""
        marker = layout.usage_charged(tenant.owner, tenant.registry, digest)
        if not await self.driver.write_if_absent(marker, str(size).encode()):
            return False
        await self._append(tenant, size, 0)
        return True

    async def add_images(self, tenant: Tenant, count: int) -> None:
        if count:
            await self._append(tenant, 0, count)

    async def _append(self, tenant: Tenant, size: int, images: int) -> None:
        name = _delta_name(size, images)
        await self.driver.write(layout.usage_delta(tenant.owner, tenant.registry, name), b"")
        self._bump(tenant, size, images)

    # -- compaction (under the ``usage`` lease) ----------------------------------------

    async def tenants(self) -> list[Tenant]:
        """Every registry with a ledger."""
        found = []
        with contextlib.suppress(PathNotFound):
            for owner in await self.driver.list(layout.usage_owners()):
                with contextlib.suppress(PathNotFound):
                    for registry in await self.driver.list(layout.usage_dir(owner)):
                        found.append(Tenant(owner, registry))
        return found

    async def compact(self, tenant: Tenant, guard: LeaseGuard | None = None) -> Usage:
        """Fold the registry's deltas into its snapshot, then delete them."""
        names, snapshot = await asyncio.gather(self._deltas(tenant), self.snapshot(tenant))
        if not names:
            return Usage(bytes=snapshot.bytes, images=snapshot.images)
        absorbed = set(snapshot.absorbed)
        for name in names:
            values = _delta_values(name)
            if values is not None and name not in absorbed:
                snapshot.bytes += values[0]
                snapshot.images += values[1]
        snapshot.absorbed = sorted(names)
        if guard is not None:
            await guard.check()
        await self._write_snapshot(tenant, snapshot)
        await delete_objects(
            self.driver, [layout.usage_delta(tenant.owner, tenant.registry, n) for n in names]
        )
        return Usage(bytes=snapshot.bytes, images=snapshot.images)

    async def compact_all(self, guard: LeaseGuard | None = None) -> Totals:
        """Compact every ledger; return the usage per owner (see :meth:`write_totals`)."""
        totals = Totals(measured_at=time.time())
        for tenant in await self.tenants():
            if await self._deltas(tenant):
                usage = await self.compact(tenant, guard)
            else:
                snapshot = await self.snapshot(tenant)
                usage = Usage(bytes=snapshot.bytes, images=snapshot.images)
            totals.owners[tenant.owner] = totals.owners.get(tenant.owner, Usage()) + usage
        return totals

    async def write_totals(self, totals: Totals) -> None:
        """Store *totals* where every process's /metrics reads them."""
        await self.driver.write(
            layout.job_state(JOB, TOTALS_JOB_STATE), msgspec.json.encode(totals)
        )

    async def read_totals(self) -> Totals | None:
        """The totals the ``usage`` job last stored, or None before its first run."""
        try:
            return msgspec.json.decode(
                await self.driver.read(layout.job_state(JOB, TOTALS_JOB_STATE)), type=Totals
            )
        except (PathNotFound, msgspec.DecodeError):
            return None

    async def _write_snapshot(self, tenant: Tenant, snapshot: Snapshot) -> None:
        await self.driver.write(
            layout.usage_snapshot(tenant.owner, tenant.registry), msgspec.json.encode(snapshot)
        )
        self._cache.pop(tenant, None)


# -- exact recompute ----------------------------------------------------------------------


class Measured(msgspec.Struct, kw_only=True):
    """What a registry holds, measured from its repositories."""

    blobs: dict[str, int]
    """Digest -> size of every blob linked into one of its repositories (data present)."""
    images: int


async def _list_or_empty(driver: StorageDriver, path: str) -> list[str]:
    try:
        return await driver.list(path)
    except PathNotFound:
        return []


LIST_INSTEAD_OF_STAT = 100
"""A registry linking more blobs than this takes their sizes from one listing of the blob
tree (1000 sizes a request on object stores) instead of a HEAD each."""


class BlobSizes:
    """Every blob's size from one listing of the blob tree, made on first use and shared by
    the registries of one recompute (blob data is content-addressed: a size never changes)."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._found: dict[Digest, int] | None = None

    async def get(self) -> dict[Digest, int]:
        if self._found is None:
            from .marks import Snapshot as Listing
            from .marks import walk_blobs

            listing = Listing()
            await walk_blobs(self.driver, listing)
            self._found = {digest: size for digest, (size, _) in listing.blobs.items()}
        return self._found


def _walks_flat(driver: StorageDriver) -> bool:
    """Whether to walk without a prune function: an object store lists a whole tree in
    pages (1000 keys a request) but a pruned tree a directory at a time (a request per
    directory: per layer link and per tag); a folder walks directories either way, and
    pruning spares it the revisions."""
    return driver.local_path(layout.REPOSITORIES) is None


def _skipped(directory: str) -> bool:
    """Directories that hold no layer link or current tag link (revisions can be many)."""
    parent, _, base = directory.rpartition("/")
    if base in ("_uploads", "_referrers"):
        return True
    if base == "revisions" and parent.endswith("/_manifests"):
        return True
    return base == "index" and "/_manifests/tags/" in parent + "/"


def _below_skipped(path: str, root: str) -> bool:
    parts = path[len(root) + 1 :].split("/")[:-1]
    return any(_skipped("/".join([root, *parts[: n + 1]])) for n in range(len(parts)))


async def measure_tenant(
    registry: Registry, tenant: Tenant, blob_sizes: BlobSizes | None = None
) -> Measured:
    """Walk a registry's repositories: its linked blobs with their sizes, and its images.

    Repositories holding only uploaded blobs (no manifest yet) count too. Sizes come from
    *blob_sizes* (one listing) when the registry links many blobs, else a stat each.
    """
    driver = registry.driver
    linked: set[Digest] = set()
    images = 0
    root = layout.tenant_repositories(tenant)
    flat = _walks_flat(driver)
    async for entry in driver.walk(root, None if flat else _skipped):
        if entry.is_dir or (flat and _below_skipped(entry.path, root)):
            continue
        found = layout.classify_repository_object(entry.path)
        if found is None:
            continue
        _, kind, fields = found
        if kind == "layer":
            with contextlib.suppress(DigestInvalid):
                linked.add(Digest.parse(f"{fields[0]}:{fields[1]}"))
        elif kind == "tag" and not is_attachment_tag(fields[0]):
            images += 1
    known: dict[Digest, int] = {}
    if blob_sizes is not None and len(linked) > LIST_INSTEAD_OF_STAT:
        listed = await blob_sizes.get()
        known = {d: listed[d] for d in linked if d in listed}
    gate = asyncio.Semaphore(_STAT_CONCURRENCY)

    async def size_of(digest: Digest) -> tuple[str, int | None]:
        async with gate:
            try:
                return str(digest), (await driver.stat(layout.blob_data(digest))).size
            except PathNotFound:
                return str(digest), None  # a link to collected data: GC cleans it

    # A blob the listing did not show may have been stored since: asked for itself.
    sizes = await asyncio.gather(*(size_of(d) for d in linked if d not in known))
    return Measured(
        blobs={
            **{str(d): s for d, s in known.items()},
            **{d: s for d, s in sizes if s is not None},
        },
        images=images,
    )


async def all_tenants(registry: Registry) -> list[Tenant]:
    """Every registry with repositories or a usage ledger."""
    found = set(await registry.usage.tenants())
    for owner in await _list_or_empty(registry.driver, layout.REPOSITORIES):
        for name in await _list_or_empty(registry.driver, f"{layout.REPOSITORIES}/{owner}"):
            found.add(Tenant(owner, name))
    return sorted(found, key=str)


async def recompute_usage(
    registry: Registry,
    tenants: Iterable[Tenant] | None = None,
    *,
    guard: LeaseGuard | None = None,
    wait: float = 60.0,
) -> dict[Tenant, Usage]:
    """Measure registries exactly and make their ledgers say so (GC calls this each run).

    *tenants* None: every registry with repositories or a ledger. Holds the
    ``usage`` lease (waiting up to *wait* seconds for a compaction to end)
    unless the caller passes the *guard* of that lease. Markers are kept only
    for registries under a quota (they are what makes charging idempotent);
    the others get totals alone. Deltas listed before the walk are absorbed
    into the new snapshot; events that race with the walk may be counted
    twice until the next recompute (never accumulated).
    """
    if guard is not None:
        return await _recompute(registry, tenants, guard)
    leases = Leases(registry.driver)
    deadline = time.monotonic() + wait
    while True:
        try:
            async with leases.hold(JOB, LEASE_TTL) as held:
                return await _recompute(registry, tenants, held)
        except LeaseBusy:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _recompute(
    registry: Registry, tenants: Iterable[Tenant] | None, guard: LeaseGuard
) -> dict[Tenant, Usage]:
    from .policy import quota_applies

    chosen = list(tenants) if tenants is not None else await all_tenants(registry)
    ledger = registry.usage
    driver = registry.driver
    results: dict[Tenant, Usage] = {}
    blob_sizes = BlobSizes(driver) if _walks_flat(driver) else None
    for tenant in chosen:
        before = await ledger._deltas(tenant)
        measured = await measure_tenant(registry, tenant, blob_sizes)
        tracked = await quota_applies(registry.settings, tenant)
        charged_dir = layout.usage_charged_dir(tenant.owner, tenant.registry)
        existing = set(await _list_or_empty(driver, charged_dir))
        wanted = {d.replace(":", "-", 1): size for d, size in measured.blobs.items()}
        await guard.check()
        if tracked:
            missing = [(name, size) for name, size in wanted.items() if name not in existing]
            for start in range(0, len(missing), 64):
                await asyncio.gather(
                    *(
                        driver.write(f"{charged_dir}/{name}", str(size).encode())
                        for name, size in missing[start : start + 64]
                    )
                )
            await delete_objects(driver, [f"{charged_dir}/{n}" for n in existing - wanted.keys()])
        elif existing:
            with contextlib.suppress(PathNotFound):
                await driver.delete(charged_dir)
        usage = Usage(bytes=sum(measured.blobs.values()), images=measured.images)
        snapshot = Snapshot(
            bytes=usage.bytes, images=usage.images, measured_at=time.time(), absorbed=before
        )
        await ledger._write_snapshot(tenant, snapshot)
        await delete_objects(
            driver, [layout.usage_delta(tenant.owner, tenant.registry, n) for n in before]
        )
        results[tenant] = usage
    ledger._owners.clear()
    return results
