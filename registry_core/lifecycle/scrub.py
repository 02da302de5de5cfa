"""Scrub: re-read stored blobs and links, report what is broken, optionally repair it.

A pass has two phases. *Blobs*: every blob's bytes are streamed and hashed
(bit rot, objects truncated by old crashes), in digest order, at most
``bytes_per_second``. *Links*: in every repository, each layer link must name
a blob whose data exists, each revision a manifest whose bytes exist, each
tag a linked revision (links younger than ``min_age`` are left for later: a push or a
GC sweep may be in the middle of them). The work is incremental: a cursor object in storage
(``cargohold/jobs/scrub/state/cursor``) says where the next step resumes, so
a scrub left on for a large bucket survives restarts and shares nothing but
that object. With ``repair``, a corrupt blob is moved into quarantine (kept for
inspection, never served again) and broken links are removed, so clients get
a clean 404 instead of a corrupt blob; a client's next push stores the blob
afresh. Scrub never deletes blob data and never touches upload sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import attrs
import msgspec

from ..digest import ALGORITHMS, Digest, Hasher
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver
from .counting import CountingDriver
from .marks import RepositoryState, Snapshot, read_tag_targets, stored_name, walk_repositories

log = logging.getLogger(__name__)

JOB = "scrub"
CURSOR = "cursor"


class Cursor(msgspec.Struct, kw_only=True):
    phase: str = "blobs"
    """``blobs`` or ``links``."""
    after: str = ""
    """The last blob digest (blobs) or repository name (links) already checked."""
    passes: int = 0
    """Complete passes so far."""


@attrs.frozen
class Problem:
    kind: str
    """``blob-corrupt``, ``layer-dangling``, ``revision-dangling``, ``revision-corrupt``,
    ``tag-dangling``."""
    where: str
    detail: str
    repaired: bool = False


@attrs.define
class ScrubReport:
    blobs_checked: int = 0
    bytes_read: int = 0
    repositories_checked: int = 0
    problems: list[Problem] = attrs.field(factory=list)
    pass_completed: bool = False
    duration: float = 0.0
    storage_requests: int = 0


Fence = Callable[[], Awaitable[None]]


async def _no_fence() -> None:
    return None


class Scrubber:
    """Runs scrub steps on a driver, resuming from the stored cursor."""

    def __init__(
        self,
        driver: StorageDriver,
        *,
        repair: bool = False,
        bytes_per_second: float = 32 * 1024 * 1024,
        min_age: float = 3600.0,
        fence: Fence = _no_fence,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver if isinstance(driver, CountingDriver) else CountingDriver(driver)
        self.repair = repair
        self.rate = bytes_per_second
        self.fence = fence
        # Links younger than this may belong to a push or a GC sweep in progress (a link
        # written before its data, or data set aside for a moment): not judged yet.
        self.min_age = min_age
        self.clock = clock

    async def load_cursor(self) -> Cursor:
        try:
            return msgspec.json.decode(
                await self.driver.read(layout.job_state(JOB, CURSOR)), type=Cursor
            )
        except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
            return Cursor()

    async def save_cursor(self, cursor: Cursor) -> None:
        await self.driver.write(layout.job_state(JOB, CURSOR), msgspec.json.encode(cursor))

    async def step(self, max_blobs: int = 500, max_repositories: int = 50) -> ScrubReport:
        """Check the next *max_blobs* blobs (or repositories, in the links phase)."""
        started = time.monotonic()
        report = ScrubReport()
        cursor = await self.load_cursor()
        if cursor.phase == "blobs":
            done = await self._blobs_step(cursor, report, max_blobs)
            if done:
                cursor.phase, cursor.after = "links", ""
        else:
            done = await self._links_step(cursor, report, max_repositories)
            if done:
                cursor.phase, cursor.after = "blobs", ""
                cursor.passes += 1
                report.pass_completed = True
        await self.save_cursor(cursor)
        report.duration = time.monotonic() - started
        report.storage_requests = self.driver.total
        return report

    async def full_pass(self, max_blobs: int = 500) -> ScrubReport:
        """Steps until the current pass completes (a fresh pass if the last one ended)."""
        total = ScrubReport()
        started = time.monotonic()
        while True:
            report = await self.step(max_blobs)
            total.blobs_checked += report.blobs_checked
            total.bytes_read += report.bytes_read
            total.repositories_checked += report.repositories_checked
            total.problems += report.problems
            if report.pass_completed:
                break
        total.pass_completed = True
        total.duration = time.monotonic() - started
        total.storage_requests = self.driver.total
        return total

    # -- blobs -------------------------------------------------------------------------------

    async def _list(self, path: str) -> list[str]:
        try:
            return sorted(await self.driver.list(path))
        except PathNotFound:
            return []

    async def _next_blobs(self, after: str, limit: int) -> tuple[list[tuple[Digest, int]], bool]:
        """Up to *limit* blobs after digest *after*, in order; True when none are left after."""
        found: list[tuple[Digest, int]] = []
        start = Digest.parse(after) if after else None
        for algorithm in await self._list(layout.BLOBS):
            if algorithm not in ALGORITHMS or (start and algorithm < start.algorithm):
                continue
            for prefix in await self._list(layout.blob_algorithm_dir(algorithm)):
                if start and algorithm == start.algorithm and prefix < start.hex[:2]:
                    continue
                entries = []
                async for entry in self.driver.walk(layout.blob_prefix_dir(algorithm, prefix)):
                    parsed = None if entry.is_dir else layout.digest_from_blob_data(entry.path)
                    if parsed is not None and parsed[0] == algorithm:
                        entries.append((Digest(algorithm, parsed[1]), entry.size))
                for digest, size in sorted(entries):
                    if start is not None and digest <= start:
                        continue
                    found.append((digest, size))
                    if len(found) >= limit:
                        return found, False
        return found, True

    async def _blobs_step(self, cursor: Cursor, report: ScrubReport, limit: int) -> bool:
        batch, done = await self._next_blobs(cursor.after, limit)
        for digest, size in batch:
            problem = await self._check_blob(digest, size, report)
            if problem is not None:
                report.problems.append(problem)
            report.blobs_checked += 1
            cursor.after = str(digest)
        return done

    async def _check_blob(self, digest: Digest, size: int, report: ScrubReport) -> Problem | None:
        path = layout.blob_data(digest)
        hasher = Hasher(digest.algorithm)
        began = time.monotonic()
        try:
            async for chunk in self.driver.read_stream(path):
                await asyncio.to_thread(hasher.update, chunk)
                report.bytes_read += len(chunk)
                if self.rate > 0:
                    # Pace to the rate limit: sleep until the bytes read so far are "due".
                    due = report.bytes_read / self.rate - (time.monotonic() - began)
                    if due > 0:
                        await asyncio.sleep(min(due, 1.0))
        except PathNotFound:
            return None  # collected meanwhile
        actual = hasher.digest()
        if actual == digest and hasher.size == size:
            return None
        detail = f"stored bytes hash to {actual} ({hasher.size} bytes, listed {size})"
        repaired = False
        if self.repair:
            await self.fence()
            with contextlib.suppress(PathNotFound):
                await self.driver.move(path, layout.scrub_quarantine(digest))
                repaired = True
        log.warning("scrub: blob %s is corrupt: %s%s", digest, detail, " (quarantined)" * repaired)
        return Problem("blob-corrupt", str(digest), detail, repaired)

    # -- links -------------------------------------------------------------------------------

    async def _links_step(self, cursor: Cursor, report: ScrubReport, limit: int) -> bool:
        snapshot = Snapshot()
        tag_links = await walk_repositories(self.driver, snapshot)
        names = sorted(name for name in snapshot.repositories if name > cursor.after)
        chosen = set(names[:limit])
        await read_tag_targets(self.driver, snapshot, [(r, t) for r, t in tag_links if r in chosen])
        for name in names[:limit]:
            report.problems += await self._check_repository(name, snapshot.repositories[name])
            report.repositories_checked += 1
            cursor.after = name
        return len(names) <= limit

    async def _exists(self, path: str) -> bool:
        try:
            await self.driver.stat(path)
        except PathNotFound:
            return False
        return True

    async def _check_repository(self, repo: str, state: RepositoryState) -> list[Problem]:
        name = stored_name(repo)
        problems: list[Problem] = []
        settled = self.clock() - self.min_age
        for digest, mtime in sorted(state.layers.items()):
            if mtime > settled:
                continue
            if not await self._exists(layout.blob_data(digest)):
                problems.append(
                    await self._broken(
                        "layer-dangling",
                        layout.layer_link_dir(name, digest),
                        f"{repo}: layer link {digest} names a blob that is not stored",
                    )
                )
        broken_revisions: set[Digest] = set()
        for digest, mtime in sorted(state.revisions.items()):
            if mtime > settled:
                continue
            try:
                body = await self.driver.read(layout.blob_data(digest))
            except PathNotFound:
                kind, detail = "revision-dangling", "names a manifest that is not stored"
            else:
                if Digest.of(body, digest.algorithm) == digest:
                    continue
                kind, detail = "revision-corrupt", "names a manifest whose bytes do not match"
            broken_revisions.add(digest)
            problems.append(
                await self._broken(
                    kind, layout.revision_dir(name, digest), f"{repo}: revision {digest} {detail}"
                )
            )
        for tag, target in sorted(state.tag_targets.items()):
            if state.tags[tag] > settled:
                continue
            # Asked again now: a push may have linked the revision after the walk.
            if (
                target is not None
                and target not in broken_revisions
                and await self._exists(layout.revision_link(name, target))
            ):
                continue
            problems.append(
                await self._broken(
                    "tag-dangling",
                    layout.tag_dir(name, tag),
                    f"{repo}:{tag} names {target or 'nothing'}, which is not a stored manifest",
                )
            )
        return problems

    async def _broken(self, kind: str, path: str, detail: str) -> Problem:
        repaired = False
        if self.repair:
            await self.fence()
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(path)
                repaired = True
        log.warning("scrub: %s%s", detail, " (removed)" * repaired)
        return Problem(kind, path, detail, repaired)
