"""Scanning as background work: nudges, the catch-up walk, a shared queue, re-matching.

:class:`ScanService` subscribes to the manifest feed (the nudge only notes the
manifest in this process and wakes its scanning: nothing is written on the
request path) and registers jobs with a :class:`~registry_core.jobs.Scheduler`:

- ``scan`` (exclusive, under its lease): walk what the feed's cursor has not
  seen, attach the SBOM of what is already scanned and put the rest in the
  shared queue (one object per digest and repository), then re-match stored
  SBOMs when the vulnerability database changed;
- ``scan-work`` (shared: every server and ``cargohold worker`` process at once):
  scan what this process was nudged about, then what the shared queue holds,
  ``concurrency`` at a time. Per-digest claims (see :mod:`.scanner`) keep each
  digest scanned once however many processes take from the queue;
- ``vulndb-refresh`` when URLs are configured.

Attachments are never fed here. Failed scans stay queued and are retried with
backoff, up to ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import attrs
import msgspec

from .. import mediatypes as mt
from ..bounded import BoundedDict
from ..digest import Digest
from ..storage import layout
from ..storage.driver import PathNotFound
from .scanner import ScanBusy, ScanFailed, Scanner
from .vulndb import import_sources

if TYPE_CHECKING:
    from ..jobs import LeaseGuard, Scheduler
    from ..registry import Registry

log = logging.getLogger(__name__)

JOB = "scan"
WORK_JOB = "scan-work"
REFRESH_JOB = "vulndb-refresh"
_SCANNABLE = mt.MANIFEST_TYPES | {""}
MAX_QUEUED = 1000
"""Manifests noted for scanning in one process. A process that rarely gets the ``scan``
lease keeps noting them; beyond this the oldest are left to the catch-up walk (which
finds everything since its cursor), so the queue never grows with the push rate."""


def _queue() -> BoundedDict[tuple[str, Digest], None]:
    return BoundedDict(MAX_QUEUED)


class _QueueEntry(msgspec.Struct, kw_only=True):
    repository: str


def fetch_to_file(url: str, directory: str) -> str:
    """Download *url* into *directory*, streamed (blocking: run in a thread)."""
    name = os.path.basename(url.split("?", 1)[0]) or "download"
    target = os.path.join(directory, name)
    with urllib.request.urlopen(url, timeout=300) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return target


async def import_paths_or_urls(registry: Registry, items: Sequence[str]) -> list[object]:
    """``vulndb import``: local paths as they are, URLs fetched to a temporary folder first."""
    with tempfile.TemporaryDirectory(prefix="cargohold-osv-") as scratch:
        sources: list[tuple[str, list[str]]] = []
        for index, item in enumerate(items):
            if item.startswith(("http://", "https://")):
                folder = os.path.join(scratch, str(index))
                os.mkdir(folder)
                path = await asyncio.to_thread(fetch_to_file, item, folder)
                sources.append((item, [path]))
            else:
                if not os.path.exists(item):
                    raise FileNotFoundError(item)
                sources.append((os.path.abspath(item), [item]))
        return list(await import_sources(registry.driver, sources))


@attrs.frozen
class _Work:
    """One manifest to scan: nudged here (with its repository) or found in the shared queue."""

    digest: Digest
    repository: str | None = None
    force: bool = False
    entries: tuple[str, ...] = ()
    """Names of its entries in the shared queue (for work found there)."""


class ScanService:
    """Background scanning for one registry (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        scanner: Scanner | None = None,
        *,
        refresh_urls: Sequence[str] = (),
        refresh_interval: float = 86400.0,
        concurrency: int = 1,
    ) -> None:
        self.registry = registry
        self.scanner = scanner or Scanner(registry)
        self.refresh_urls = list(refresh_urls)
        self.refresh_interval = refresh_interval
        self.concurrency = max(1, concurrency)
        self.pending = _queue()
        self.forced = _queue()
        self._scheduler: Scheduler | None = None

    def install(self, scheduler: Scheduler, interval: float = 30.0, ttl: float = 120.0) -> None:
        """Subscribe to the feed and register the jobs with *scheduler*."""
        self._scheduler = scheduler
        self.registry.feed.subscribe(JOB, self.notice)
        scheduler.add(JOB, interval, self.run, ttl=ttl)
        scheduler.add_shared(WORK_JOB, interval, self.work)
        if self.refresh_urls:
            scheduler.add(REFRESH_JOB, min(self.refresh_interval, 3600.0), self.refresh, ttl=600.0)

    def _wake(self, job: str) -> None:
        if self._scheduler is not None:
            self._scheduler.nudge(job)

    def notice(self, repository: str, digest: Digest, media_type: str, tag: str | None) -> None:
        """The feed's nudge: note the manifest and wake this process's scanning (no I/O here)."""
        if media_type not in _SCANNABLE:
            return
        self.pending[(repository, digest)] = None
        self._wake(WORK_JOB)

    def request(self, repository: str, digest: Digest) -> None:
        """An on-demand scan: scanned again even when done, by this process's next run."""
        self.forced[(repository, digest)] = None
        self._wake(WORK_JOB)

    @property
    def queued(self) -> int:
        """Manifests noted in this process and not yet handled (for metrics)."""
        return len(self.pending) + len(self.forced)

    # -- finding work (one process at a time, under the job's lease) ----------------------

    async def run(self, guard: LeaseGuard) -> None:
        """The exclusive part: queue what the catch-up walk finds, then re-match if needed."""
        report = await self.registry.feed.catch_up(JOB, self.enqueue, guard)
        if report.handled:
            self._wake(WORK_JOB)
        await self.rematch_if_changed(guard)

    async def enqueue(self, repository: str, digest: Digest) -> None:
        """A manifest the walk found: attach its SBOM here when scanned, else queue it."""
        status = await self.scanner.status(digest)
        done = status is not None and status.status == "done"
        if done and await self.scanner.report(digest) is not None:
            await self.scanner.attach(repository, digest)
            return
        if status is not None and status.status == "failed" and status.retry_at is None:
            return  # gave up after MAX_ATTEMPTS; an on-demand scan can try again
        await self._put_entry(repository, digest)
        await self.scanner.mark_queued(digest)

    async def _put_entry(self, repository: str, digest: Digest) -> None:
        await self.registry.driver.write(
            layout.scan_queue_entry(digest, repository),
            msgspec.json.encode(_QueueEntry(repository=repository)),
        )

    # -- scanning (every process, several digests at once, each claimed) -------------------

    async def work(self) -> int:
        """Scan what this process was nudged about, then the shared queue; how many done.

        Runs in every process with no lease: ``concurrency`` scans at a time here, and
        the per-digest claims keep two processes from scanning one digest, so servers
        and ``cargohold worker`` processes share a long queue. A push nudged while the
        queue is worked goes before the rest of the queue.
        """
        queue = iter((await self.shared_queue()).items())
        done = 0

        async def worker() -> None:
            nonlocal done
            while (item := self._next(queue)) is not None:
                try:
                    done += await self._process(item)
                except Exception:
                    log.exception("scan of %s failed", item.digest)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return done

    def _next(self, queue: Iterator[tuple[Digest, list[str]]]) -> _Work | None:
        """On-demand requests first, then this process's nudges, then the shared queue."""
        for noted, force in ((self.forced, True), (self.pending, False)):
            if noted:
                repository, digest = next(iter(noted))
                del noted[(repository, digest)]
                return _Work(digest, repository, force=force)
        for digest, names in queue:
            return _Work(digest, entries=tuple(names))
        return None

    async def shared_queue(self) -> dict[Digest, list[str]]:
        """The shared queue: digest -> its entries' names, shuffled so processes spread out."""
        try:
            names = await self.registry.driver.list(layout.SCAN_QUEUE)
        except PathNotFound:
            return {}
        found: dict[Digest, list[str]] = {}
        for name in names:
            digest = layout.scan_queue_entry_digest(name)
            if digest is not None:
                found.setdefault(digest, []).append(name)
        order = list(found)
        random.shuffle(order)
        return {digest: found[digest] for digest in order}

    async def _queue_entries(self, digest: Digest, names: Iterable[str]) -> dict[str, str]:
        """``{repository: entry path}`` of the queue entries *names* of *digest*."""
        found: dict[str, str] = {}
        for name in names:
            path = layout.scan_queue_object(name)
            with contextlib.suppress(PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
                entry = msgspec.json.decode(await self.registry.driver.read(path), type=_QueueEntry)
                if layout.scan_queue_entry(digest, entry.repository) == path:
                    found[entry.repository] = path
        return found

    async def _process(self, item: _Work) -> int:
        """Scan one digest (unless done, failing with backoff, or claimed elsewhere), attach."""
        if item.repository is not None:
            repositories = [item.repository]
            entries = {}
        else:
            entries = await self._queue_entries(item.digest, item.entries)
            repositories = list(entries)
            if not repositories:
                return 0  # another process finished it since the listing
        if not item.force:
            status = await self.scanner.status(item.digest)
            if status is not None and status.status == "failed":
                if status.retry_at is None:
                    await self._drop(entries.values())
                    return 0  # gave up after MAX_ATTEMPTS; an on-demand scan can try again
                if status.retry_at > self.scanner.clock():
                    await self._requeue(item, entries)
                    return 0
        try:
            await self.scanner.scan(item.digest, force=item.force)
        except ScanBusy:
            await self._requeue(item, entries)  # attached here once the other one is done
            return 0
        except ScanFailed:
            if not item.force:
                await self._requeue(item, entries)  # retried with backoff
            return 0
        for repository in repositories:
            await self.scanner.attach(repository, item.digest)
        if item.repository is not None:  # the walk may have queued it too
            entries = {item.repository: layout.scan_queue_entry(item.digest, item.repository)}
        await self._drop(entries.values())
        return 1

    async def _requeue(self, item: _Work, entries: dict[str, str]) -> None:
        """A nudged manifest that could not be scanned now goes to the shared queue."""
        if item.repository is not None and not entries:
            await self._put_entry(item.repository, item.digest)

    async def _drop(self, paths: Iterable[str]) -> None:
        for path in paths:
            with contextlib.suppress(PathNotFound):
                await self.registry.driver.delete(path)

    async def rematch_if_changed(self, guard: LeaseGuard | None = None) -> int:
        """Re-match stored SBOMs once per database version (the last pass is recorded)."""
        state = await self.scanner.database.state(fresh=True)
        last = await self.scanner.last_rematch()
        if last is not None and last.version == state.version:
            return 0
        return await self.scanner.rematch_all(guard.check if guard is not None else None)

    async def refresh(self, guard: LeaseGuard) -> None:
        """Re-import the configured URLs when the last refresh is older than the interval."""
        path = layout.job_state(REFRESH_JOB, "last")
        with contextlib.suppress(PathNotFound, ValueError):
            last = float((await self.registry.driver.read(path)).decode())
            if time.time() - last < self.refresh_interval:
                return
        await import_paths_or_urls(self.registry, self.refresh_urls)
        await self.registry.driver.write(path, f"{time.time():.3f}".encode())
        if self._scheduler is not None:
            self._scheduler.nudge(JOB)
