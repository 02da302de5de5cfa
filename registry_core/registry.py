"""The library's front door: a Registry over one StorageDriver, and its repositories.

Everything a server, the command line, an archive importer or a proxy needs
goes through here; none of it speaks HTTP.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .lifecycle.policy import LifecyclePolicy
from .lifecycle.usage import UsageLedger
from .manifest_feed import ManifestFeed
from .mediatypes import MAX_MANIFEST_SIZE
from .names import RepositoryName, Tenant
from .settings import SettingsStore
from .storage import layout
from .storage.blobs import BlobStore, RepositoryBlobs
from .storage.cache import DEFAULT_CACHE_BYTES, ContentCache, LinkCache
from .storage.driver import PathNotFound, StorageDriver, StorageError
from .storage.manifests import ManifestStore
from .storage.repo_index import RepositoryIndex

if TYPE_CHECKING:
    from .jobs import LeaseGuard
    from .lifecycle.gc import GcReport
    from .lifecycle.marks import UntaggedPolicy
    from .lifecycle.pacing import RequestPacer


class Tags:
    """The tags of one repository."""

    def __init__(self, manifests: ManifestStore) -> None:
        self._manifests = manifests

    async def list(self) -> AsyncIterator[str]:
        for tag in await self._manifests.tags():
            yield tag

    async def page(self, n: int | None = None, last: str | None = None) -> list[str]:
        """Tags in lexical order after *last*, at most *n* of them."""
        return paginate(await self._manifests.tags(), n, last)


class Repository:
    """One repository: ``blobs``, ``manifests`` and ``tags``."""

    def __init__(self, registry: Registry, name: RepositoryName) -> None:
        self.name = name
        self.blobs = RepositoryBlobs(registry.blob_store, name, policy=registry.policy)
        self.manifests = ManifestStore(
            registry.driver,
            registry.blob_store,
            self.blobs,
            name,
            registry.manifest_cache,
            registry.link_cache,
            strict_index=registry.strict_index,
            max_size=registry.max_manifest_size,
            policy=registry.policy,
            on_stored=registry.feed.publish,
            repo_index=registry.repo_index,
        )
        self.tags = Tags(self.manifests)


class Registry:
    """A registry over one storage driver."""

    def __init__(
        self,
        driver: StorageDriver,
        *,
        strict_index: bool = False,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        link_cache_ttl: float = 0.0,
        settings_ttl: float = 10.0,
    ) -> None:
        self.driver = driver
        # What the layout guarantees, told to a driver that saves requests by it (an
        # object store: no parts or folder listing after a miss where there can be none).
        declare = getattr(driver, "declare_layout", None)
        if declare is not None:
            declare(appendable=layout.may_be_appended, leaf=layout.is_leaf)
        self.blob_store = BlobStore(driver)
        self.manifest_cache = ContentCache(cache_bytes)
        self.link_cache = LinkCache(link_cache_ttl)
        self.strict_index = strict_index
        self.max_manifest_size = max_manifest_size
        # Per-tenant settings and usage, cached per process for settings_ttl (auth.cache_ttl).
        self.settings = SettingsStore(driver, settings_ttl)
        self.usage = UsageLedger(driver, settings_ttl)
        self.policy = LifecyclePolicy(driver, self.settings, self.usage)
        # New image manifests for background consumers (signing, scanning).
        self.feed = ManifestFeed(self)
        # Every registry's image names, sorted and sharded (the website's listings).
        self.repo_index = RepositoryIndex(driver)

    def repository(self, name: str | RepositoryName) -> Repository:
        parsed = name if isinstance(name, RepositoryName) else RepositoryName.parse(name)
        return Repository(self, parsed)

    async def repositories(self, tenant: Tenant | None = None) -> list[str]:
        """Every repository with manifests (of *tenant* only, if given), sorted.

        Walks names only, never the blob tree.
        """
        if tenant is None:
            cached = self.link_cache.catalog()
            if cached is not None:
                return list(cached)
        generation = self.link_cache.generation
        names = []
        top = layout.REPOSITORIES if tenant is None else layout.tenant_repositories(tenant)
        async for entry in self.driver.walk(top, layout.is_repository_internal):
            if entry.is_dir:
                name = layout.repository_from_manifests_dir(entry.path)
                if name is not None:
                    names.append(name)
        names.sort()
        if tenant is None:
            self.link_cache.put_catalog(names, generation)
        return names

    async def catalog(self, n: int | None = None, last: str | None = None) -> list[str]:
        return paginate(await self.repositories(), n, last)

    async def purge_uploads(self, older_than: float, now: float | None = None) -> int:
        """Delete upload sessions idle for more than *older_than* seconds; return how many."""
        deadline = (time.time() if now is None else now) - older_than
        sessions: dict[str, float] = {}

        def prune(directory: str) -> bool:
            base = directory.rsplit("/", 1)[-1]
            return base.startswith("_") and base != "_uploads"

        async for entry in self.driver.walk(layout.REPOSITORIES, prune):
            if entry.is_dir or "/_uploads/" not in entry.path:
                continue
            session = entry.path.rsplit("/", 1)[0]
            sessions[session] = max(sessions.get(session, 0.0), entry.mtime)
        purged = 0
        for session, last_active in sessions.items():
            if last_active < deadline:
                try:
                    await self.driver.delete(session)
                    purged += 1
                except PathNotFound:
                    pass
        return purged

    async def collect_garbage(
        self,
        *,
        grace: float = 3600.0,
        settle: float = 30.0,
        dry_run: bool = False,
        collect_untagged: UntaggedPolicy | None = None,
        lease_ttl: float = 60.0,
        wait: float = 0.0,
        recompute_usage: bool = True,
        guard: LeaseGuard | None = None,
        rate: float | None = None,
        concurrency: int | None = None,
        pacer: RequestPacer | None = None,
    ) -> GcReport:
        """One online GC run (see ``registry_core.lifecycle.gc``); safe while clients push.

        Holds the ``gc`` lease, waiting up to *wait* seconds for another run to
        end (then ``jobs.LeaseBusy``); a dry run only reads and takes no lease.
        *collect_untagged* is the retention hook: untagged manifests it answers
        True for are collected (by default every one is kept), never one younger than
        *grace* (the protection of pushes in flight, see ``lifecycle.gc``). A caller that already
        holds the ``gc`` lease (the scheduler) passes its *guard*. *rate* and *concurrency*
        cap its storage requests (``[gc] rate``, ``[gc] concurrency``; None: unlimited rate,
        the driver's default concurrency); within them an object store's run follows its
        response time (``lifecycle.gc_pacing``). A caller that wants to watch or tune the
        pacing (the CLI's report, the server's metrics) passes its own *pacer* instead.
        """
        from .jobs import LeaseBusy, Leases
        from .lifecycle.counting import CountingDriver
        from .lifecycle.gc import collect_garbage
        from .lifecycle.gc_pacing import gc_pacer

        paced = CountingDriver(self.driver, pacer or gc_pacer(self.driver, rate, concurrency))

        if dry_run:
            return await collect_garbage(
                paced,
                grace=grace,
                dry_run=True,
                collect_untagged=collect_untagged,
                rate=rate,
                concurrency=concurrency,
            )
        leases = Leases(self.driver)
        deadline = time.monotonic() + wait
        while guard is None:
            try:
                async with leases.hold("gc", lease_ttl) as held:
                    report = await collect_garbage(
                        paced,
                        grace=grace,
                        settle=settle,
                        collect_untagged=collect_untagged,
                        fence=held.check,
                        rate=rate,
                        concurrency=concurrency,
                    )
                    break
            except LeaseBusy:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(1.0, lease_ttl / 10))
        else:
            report = await collect_garbage(
                paced,
                grace=grace,
                settle=settle,
                collect_untagged=collect_untagged,
                fence=guard.check,
                rate=rate,
                concurrency=concurrency,
            )
        if recompute_usage:
            await self._recompute_usage_after_gc()
        self.link_cache.generation += 1
        return report

    async def _recompute_usage_after_gc(self) -> None:
        """Correct quota usage drift exactly after a GC run, when the quotas module has it."""
        try:
            from .lifecycle import usage
        except ImportError:
            return
        recompute = getattr(usage, "recompute_usage", None)
        if recompute is None:
            return
        try:
            await recompute(self)
        except Exception:
            # GC itself succeeded; the next run (or the usage job) corrects the totals.
            logging.getLogger(__name__).warning("usage recompute after GC failed", exc_info=True)

    async def check(self) -> None:
        """Raise StorageError unless storage takes a write and gives it back (readiness).

        A listing alone cannot tell an empty store from a vanished one; a small
        probe object can, and it also catches a store that went read-only.
        """
        probe = f"{time.time():.6f}".encode()
        try:
            await self.driver.write(layout.readiness_probe(), probe)
            if await self.driver.read(layout.readiness_probe()) != probe:
                raise StorageError("storage returned other bytes than were written")
        except PathNotFound as exc:
            raise StorageError(f"storage is not reachable: {exc}") from None

    async def close(self) -> None:
        await self.driver.close()


def paginate(items: list[str], n: int | None, last: str | None) -> list[str]:
    """The spec's pagination: items sorted lexically after *last*, at most *n*."""
    start = bisect.bisect_right(items, last) if last else 0
    end = len(items) if n is None else start + n
    return items[start:end]
