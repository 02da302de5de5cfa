"""Scanning as background work: the feed's nudges and catch-up walk, re-matching, refresh.

:class:`ScanService` subscribes to the manifest feed (the nudge only notes the
manifest in this process and wakes the ``scan`` job: nothing is written on the
request path) and registers periodic jobs with a :class:`~registry_core.jobs.Scheduler`:
``scan`` (scan what was nudged, then walk what the feed's cursor has not seen,
then re-match stored SBOMs when the vulnerability database changed) and, when
URLs are configured, ``vulndb-refresh``. Each runs under its lease in whichever
process (server or ``cargohold worker``) takes it; per-digest claims keep even
on-demand scans from running twice. Attachments are never fed here. Failed
scans are retried by later walks with backoff, up to ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

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
REFRESH_JOB = "vulndb-refresh"
_SCANNABLE = mt.MANIFEST_TYPES | {""}
MAX_QUEUED = 1000
"""Manifests noted for scanning in one process. A process that rarely gets the ``scan``
lease keeps noting them; beyond this the oldest are left to the catch-up walk (which
finds everything since its cursor), so the queue never grows with the push rate."""


def _queue() -> BoundedDict[tuple[str, Digest], None]:
    return BoundedDict(MAX_QUEUED)


class _Rematched(msgspec.Struct, kw_only=True):
    version: str


class ScanRetryLater(Exception):
    """A scan failed and waits for its backoff: the feed keeps its cursor to come back."""


def fetch_to_file(url: str, directory: str) -> str:
    """Download *url* into *directory*, streamed (blocking: run in a thread)."""
    name = os.path.basename(url.split("?", 1)[0]) or "download"
    target = os.path.join(directory, name)
    with urllib.request.urlopen(url, timeout=300) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return target


async def import_paths_or_urls(registry: Registry, items: Sequence[str]) -> list[object]:
    """``vulndb import``: local paths as they are, URLs fetched to a temporary folder first."""
    import asyncio

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


class ScanService:
    """Background scanning for one registry (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        scanner: Scanner | None = None,
        *,
        refresh_urls: Sequence[str] = (),
        refresh_interval: float = 86400.0,
    ) -> None:
        self.registry = registry
        self.scanner = scanner or Scanner(registry)
        self.refresh_urls = list(refresh_urls)
        self.refresh_interval = refresh_interval
        self.pending = _queue()
        self.forced = _queue()
        self._scheduler: Scheduler | None = None

    def install(self, scheduler: Scheduler, interval: float = 30.0, ttl: float = 120.0) -> None:
        """Subscribe to the feed and register the jobs with *scheduler*."""
        self._scheduler = scheduler
        self.registry.feed.subscribe(JOB, self.notice)
        scheduler.add(JOB, interval, self.run, ttl=ttl)
        if self.refresh_urls:
            scheduler.add(REFRESH_JOB, min(self.refresh_interval, 3600.0), self.refresh, ttl=600.0)

    def notice(self, repository: str, digest: Digest, media_type: str, tag: str | None) -> None:
        """The feed's nudge: note the manifest and wake the job (no I/O here)."""
        if media_type not in _SCANNABLE:
            return
        self.pending[(repository, digest)] = None
        if self._scheduler is not None:
            self._scheduler.nudge(JOB)

    def request(self, repository: str, digest: Digest) -> None:
        """An on-demand scan: scanned again even when done, by this process's next run."""
        self.forced[(repository, digest)] = None
        if self._scheduler is not None:
            self._scheduler.nudge(JOB)

    @property
    def queued(self) -> int:
        """Manifests noted in this process and not yet handled (for metrics)."""
        return len(self.pending) + len(self.forced)

    async def handle(self, repository: str, digest: Digest) -> None:
        """Scan *digest* once (whoever asks) and attach its SBOM in *repository*."""
        status = await self.scanner.status(digest)
        if status is not None and status.status == "failed":
            if status.retry_at is None:
                return  # gave up after MAX_ATTEMPTS; an on-demand scan can try again
            if status.retry_at > time.time():
                raise ScanRetryLater(str(digest))
        try:
            await self.scanner.scan(digest)
        except ScanBusy:
            raise ScanRetryLater(str(digest)) from None
        except ScanFailed:
            raise ScanRetryLater(str(digest)) from None
        await self.scanner.attach(repository, digest)

    async def run(self, guard: LeaseGuard) -> None:
        forced, self.forced = list(self.forced), _queue()
        for repository, digest in forced:
            await guard.check()
            try:
                await self.scanner.scan(digest, force=True)
                await self.scanner.attach(repository, digest)
            except (ScanBusy, ScanFailed):
                pass  # the failure is stored with its reason; a busy scan is someone else's
            except Exception:
                log.exception("scan of %s@%s failed", repository, digest)
        pending, self.pending = list(self.pending), _queue()
        for _repository, digest in pending:
            await self.scanner.mark_queued(digest)
        for repository, digest in pending:
            await guard.check()
            try:
                await self.handle(repository, digest)
            except ScanRetryLater:
                pass  # the catch-up walk comes back to it
            except Exception:
                log.exception("scan of %s@%s failed", repository, digest)
        await self.registry.feed.catch_up(JOB, self.handle, guard)
        await self.rematch_if_changed(guard)

    async def rematch_if_changed(self, guard: LeaseGuard | None = None) -> int:
        """Re-match stored SBOMs once per database version (the version seen is kept)."""
        state = await self.scanner.database.state(fresh=True)
        path = layout.job_state(JOB, "rematched")
        with contextlib.suppress(PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
            seen = msgspec.json.decode(await self.registry.driver.read(path), type=_Rematched)
            if seen.version == state.version:
                return 0
        changed = await self.scanner.rematch_all(guard.check if guard is not None else None)
        await self.registry.driver.write(
            path, msgspec.json.encode(_Rematched(version=state.version))
        )
        return changed

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
