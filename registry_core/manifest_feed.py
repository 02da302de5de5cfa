"""How background work finds new image manifests: in-process nudges plus a catch-up walk.

A push already writes a revision link and, for a tag, a tag link; their mtimes
tell a later walk what is new, so the request path pays no extra storage write
for queueing (DESIGN, "Background work"). Two ways in for a consumer (signing,
scanning): :meth:`ManifestFeed.subscribe` registers a listener that the
manifest store calls synchronously, in the process that stored the manifest,
with ``(repository, digest, media_type, tag)`` — it must only note the work
and wake its own worker, never block or touch storage inline; and
:meth:`ManifestFeed.catch_up`, run from a periodic job under that consumer's
lease, hands each image manifest or index written since the consumer's cursor
(kept in storage under ``layout.job_state``) to the consumer, so what a nudge
missed (a crash, another process) is found. Delivery is at least once:
consumers must be idempotent. Attachments (cosign ``sha256-<hex>.sig`` tags,
manifests with a ``subject``) are never fed. This module never imports a
driver or aiohttp and never builds a storage path itself.

What a catch-up pass costs. Nothing a push writes is ordered by time across
repositories (that would be an extra write per push), so the walk has to look
at every repository; what keeps a pass bounded on a huge bucket is that it
never looks at all of them at once. The repositories tree is walked in
*rounds*, in name order, one folder listing at a time: a pass spends at most
``budget`` listings (one per folder of the tree, one per repository's
``_manifests``, which an object store answers with one flat listing holding a
few keys per revision and tag) and stores where it stopped; the next pass
resumes there, re-listing only the few folders above that point. Each
repository is visited once per round, and a visit hands over the links newer
than the start of the *previous* round (less ``overlap``), so nothing written
between two visits is missed. Link objects and manifests are read only for
links newer than that: an unchanged repository costs its two listings and
nothing else. A pass therefore makes at most ``budget`` + (tree depth) + 4
storage requests, plus reads for what changed, whatever the number of
repositories; a round over N repositories takes about 2N / ``budget`` passes,
which bounds how late a manifest that *no* nudge saw (a process killed
between storing and signing) is found. A failed handler is kept in the
cursor's retry list (retried first by every pass) without holding the round
back; only when that list is full does the round wait at the failing folder.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import msgspec

from .attachments import attachment_subject, is_attachment_manifest
from .digest import Digest
from .errors import DigestInvalid, RegistryError
from .manifest import parse_manifest
from .storage import layout
from .storage.driver import PathNotFound

if TYPE_CHECKING:
    from .jobs import LeaseGuard
    from .registry import Registry

log = logging.getLogger(__name__)

ManifestListener = Callable[[str, Digest, str, "str | None"], None]
"""``(repository, digest, media_type, tag or None)``; called on the request path: keep it light."""

ManifestHandler = Callable[[str, Digest], Awaitable[object]]
"""What a consumer does with one manifest found by a catch-up walk (idempotent)."""

_CONSUMER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_OVERLAP = 120.0
"""Seconds a walk looks back before its cursor: writes that were committed while
the previous walk ran, and small clock differences between storage writers."""


DEFAULT_BUDGET = 500
"""Storage listings one catch-up pass may spend (see the module doc)."""
MAX_RETRIES = 1000
"""Failed manifests a cursor remembers; beyond that, a round waits at the failing folder."""


class _Retry(msgspec.Struct, array_like=True, frozen=True):
    repository: str
    digest: str


class _Cursor(msgspec.Struct, kw_only=True):
    since: float | None = None
    """Storage time from which (less the overlap) links are handed over: the start of the
    last complete round (None: no round completed yet, everything is new)."""
    started: float | None = None
    """Storage time at which the round in progress started: ``since`` once it completes."""
    position: list[str] | None = None
    """The last folder of the repositories tree the round in progress visited (None: no
    round in progress)."""
    retry: list[_Retry] = msgspec.field(default_factory=list)
    """Manifests whose handler failed, handed over again by every pass until it succeeds."""


@attrs.define
class CatchUpReport:
    """What one catch-up pass saw and did."""

    walked: int = 0
    handled: int = 0
    skipped_attachments: int = 0
    failed: int = 0
    cursor: float | None = None
    repositories: int = 0
    """Repositories visited by this pass."""
    listings: int = 0
    """Storage listings spent (the budget bounds them)."""
    complete: bool = False
    """This pass finished a round: every repository was visited since the previous one."""


@attrs.define
class _Pass:
    """One pass's working state: the lower mtime bound, the budget and what failed."""

    name: str
    handle: ManifestHandler
    guard: LeaseGuard | None
    since: float | None
    report: CatchUpReport
    budget: int | None
    retry: dict[_Retry, None] = attrs.field(factory=dict)
    retried: set[_Retry] = attrs.field(factory=set)
    """The retry list's manifests this pass handed over first (the walk often finds them
    again). Only those: a pass remembering everything it handed over held every manifest
    of its window at once (7,700 on the soak's store, ~2 MB), a peak that, freed, left the
    worker's heap fragmented (issue 14)."""


class ManifestFeed:
    """New image manifests of one registry, for background consumers (see the module doc)."""

    def __init__(self, registry: Registry, *, overlap: float = DEFAULT_OVERLAP) -> None:
        self.registry = registry
        self.overlap = overlap
        self._listeners: dict[str, ManifestListener] = {}

    # -- the in-process nudge ------------------------------------------------------------

    def subscribe(self, name: str, callback: ManifestListener) -> None:
        """Call *callback* for every image manifest stored or tagged in this process."""
        self._listeners[_check_consumer(name)] = callback

    def unsubscribe(self, name: str) -> None:
        self._listeners.pop(name, None)

    @property
    def consumers(self) -> list[str]:
        return sorted(self._listeners)

    def publish(self, repository: str, digest: Digest, media_type: str, tag: str | None) -> None:
        """Tell every listener about a stored manifest (the manifest store calls this).

        A failing listener is logged and never fails the request that stored the manifest.
        """
        if tag is not None and attachment_subject(tag) is not None:
            return
        for name, listener in list(self._listeners.items()):
            try:
                listener(repository, digest, media_type, tag)
            except Exception:
                log.exception("manifest feed listener %s failed", name)

    # -- the catch-up walk ---------------------------------------------------------------

    async def _state(self, name: str) -> _Cursor:
        try:
            raw = await self.registry.driver.read(layout.job_state(_check_consumer(name), "feed"))
            return msgspec.json.decode(raw, type=_Cursor)
        except PathNotFound:
            return _Cursor()
        except (msgspec.DecodeError, msgspec.ValidationError):
            return _Cursor()  # a torn cursor costs one full round, never a missed manifest

    async def cursor(self, name: str) -> float | None:
        """The storage mtime from which *name*'s passes hand links over (None: never ran)."""
        return (await self._state(name)).since

    async def reset(self, name: str) -> None:
        """Forget *name*'s cursor: the next round hands everything over again."""
        with contextlib.suppress(PathNotFound):
            await self.registry.driver.delete(layout.job_state(_check_consumer(name), "feed"))

    async def catch_up(
        self,
        name: str,
        handle: ManifestHandler,
        guard: LeaseGuard | None = None,
        *,
        full: bool = False,
        budget: int | None = DEFAULT_BUDGET,
    ) -> CatchUpReport:
        """Hand image manifests written since *name*'s cursor to *handle*; move the cursor.

        One pass of the current round (the module doc gives its cost): it retries what
        failed before, visits repositories in name order from the stored position until
        *budget* listings are spent (None: no limit), and stores the new position, or
        the new ``since`` when the round is complete. *full* (``sign-missing``) walks
        every repository and hands over every manifest, leaving the cursor as it is.
        *guard* (the consumer's lease) is checked before each manifest.
        """
        _check_consumer(name)
        report = CatchUpReport()
        if full:
            report.complete, _ = await self._walk(_Pass(name, handle, guard, None, report, None))
            return report
        driver = self.registry.driver
        path = layout.job_state(name, "feed")
        state = await self._state(name)
        since = None if state.since is None else state.since - self.overlap
        work = _Pass(name, handle, guard, since, report, budget)
        for item in state.retry:
            with contextlib.suppress(DigestInvalid):
                await self._hand_over(work, item.repository, Digest.parse(item.digest))
            work.retried.add(item)
        if state.position is None:
            # A new round: when it starts, by the storage's clock, is the next round's since.
            state.position, state.started = [], None
            await driver.write(path, msgspec.json.encode(state))
            state.started = (await driver.stat(path)).mtime
        complete, position = await self._walk(work, tuple(state.position))
        state.retry = list(work.retry)
        if complete:
            state.since, state.started, state.position = state.started, None, None
        else:
            state.position = list(position)
        await driver.write(path, msgspec.json.encode(state))
        report.cursor = state.since
        report.complete = complete
        return report

    async def _walk(
        self, work: _Pass, after: tuple[str, ...] | None = None
    ) -> tuple[bool, tuple[str, ...]]:
        """Visit the repositories past *after*: (round complete, last folder visited)."""
        position = after or ()
        async with contextlib.aclosing(self._folders(work.report, (), after)) as folders:
            async for parts, is_repository in folders:
                if is_repository:
                    work.report.repositories += 1
                    work.report.listings += 1
                    if not await self._visit(work, parts):
                        return False, position  # the retry list is full: wait here
                position = parts
                if work.budget is not None and work.report.listings >= work.budget:
                    return False, position
        return True, position

    async def _folders(
        self, report: CatchUpReport, parts: tuple[str, ...], after: tuple[str, ...] | None
    ) -> AsyncIterator[tuple[tuple[str, ...], bool]]:
        """The folders of the repositories tree from *parts* down, in name order, as
        ``(parts, holds a repository)``, leaving out *after* and what precedes it.

        One listing per folder; a folder is listed only when the walk gets to it.
        """
        try:
            names = await self.registry.driver.list(layout.repository_tree(parts))
        except PathNotFound:
            names = []
        report.listings += 1
        children = sorted(n for n in names if not n.startswith("_"))
        depth = len(parts)
        on_the_way = after is not None and depth < len(after)
        if after is None and parts:
            yield parts, layout.MANIFESTS_DIR in names
        elif on_the_way:
            assert after is not None
            children = [n for n in children if n >= after[depth]]
        for child in children:
            inner = after if on_the_way and after is not None and child == after[depth] else None
            async for found in self._folders(report, (*parts, child), inner):
                yield found

    async def _visit(self, work: _Pass, parts: tuple[str, ...]) -> bool:
        """Hand over one repository's links newer than the pass's bound (False: stop).

        What is held meanwhile is what the window holds: the new revisions and tag links,
        as digest and tag strings (the repository's name once, not once a link).
        """
        revisions: dict[str, None] = {}
        tags: list[str] = []
        repository = ""
        async for entry in self.registry.driver.walk(layout.repository_tree_manifests(parts)):
            if entry.is_dir:
                continue
            found = layout.classify_repository_object(entry.path)
            if found is None:
                continue
            name, kind, fields = found
            if kind not in ("revision", "tag"):
                continue
            work.report.walked += 1
            if work.since is not None and entry.mtime < work.since:
                continue
            repository = repository or name
            if kind == "tag":
                tags.append(fields[0])
            else:
                revisions[f"{fields[0]}:{fields[1]}"] = None
        attachments: set[str] = set()
        for tag in tags:
            digest = await self._tag_target(repository, tag)
            if digest is None:
                continue
            if attachment_subject(tag) is not None:
                attachments.add(str(digest))
            else:
                revisions.setdefault(str(digest), None)
        del tags
        for text in revisions:
            if text in attachments:
                work.report.skipped_attachments += 1
                continue
            try:
                digest = Digest.parse(text)
            except DigestInvalid:
                continue
            if not await self._hand_over(work, repository, digest):
                return False
        return True

    async def _hand_over(self, work: _Pass, repository: str, digest: Digest) -> bool:
        """Give one manifest to the handler; a failure is kept for retry (False: no room)."""
        if work.retried and _Retry(repository, str(digest)) in work.retried:
            return True
        if await self._is_attachment(repository, digest):
            work.report.skipped_attachments += 1
            return True
        if work.guard is not None:
            await work.guard.check()
        try:
            await work.handle(repository, digest)
        except Exception:
            work.report.failed += 1
            log.exception("%s: handling %s@%s failed", work.name, repository, digest)
            if len(work.retry) >= MAX_RETRIES:
                return False
            work.retry[_Retry(repository, str(digest))] = None
            return True
        work.report.handled += 1
        return True

    async def _tag_target(self, repository: str, tag: str) -> Digest | None:
        try:
            return await self.registry.repository(repository).manifests.resolve(tag)
        except (RegistryError, ValueError):
            return None

    async def _is_attachment(self, repository: str, digest: Digest) -> bool:
        """True for a manifest with a subject; a missing or unreadable one is skipped too."""
        try:
            stored = await self.registry.repository(repository).manifests.get_by_digest(digest)
            parsed = parse_manifest(
                stored.body, stored.media_type, max_size=self.registry.max_manifest_size
            )
        except (RegistryError, ValueError):
            return True
        return is_attachment_manifest(parsed)


def _check_consumer(name: str) -> str:
    if not _CONSUMER.fullmatch(name):
        raise ValueError(f"invalid feed consumer name {name!r}")
    return name
