"""How background work finds new image manifests: in-process nudges plus a catch-up walk.

A push already writes a revision link and, for a tag, a tag link; their mtimes
tell a later walk what is new, so the request path pays no extra storage write
for queueing (DESIGN, "Background work"). Two ways in for a consumer (signing,
scanning): :meth:`ManifestFeed.subscribe` registers a listener that the
manifest store calls synchronously, in the process that stored the manifest,
with ``(repository, digest, media_type, tag)`` — it must only note the work
and wake its own worker, never block or touch storage inline; and
:meth:`ManifestFeed.catch_up`, run from a periodic job under that consumer's
lease, walks the links written since the consumer's cursor (kept in storage
under ``layout.job_state``) and hands each image manifest or index to the
consumer, so what a nudge missed (a crash, another process) is found. Delivery
is at least once: consumers must be idempotent. Attachments (cosign
``sha256-<hex>.sig`` tags, manifests with a ``subject``) are never fed. This
module never imports a driver or aiohttp and never builds a storage path
itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
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
_SKIPPED_DIRS = frozenset({"_layers", "_uploads", "_referrers", "_proxy", "_signatures"})
DEFAULT_OVERLAP = 120.0
"""Seconds a walk looks back before its cursor: writes that were committed while
the previous walk ran, and small clock differences between storage writers."""


class _Cursor(msgspec.Struct, kw_only=True):
    since: float


@attrs.define
class CatchUpReport:
    """What one catch-up walk saw and did."""

    walked: int = 0
    handled: int = 0
    skipped_attachments: int = 0
    failed: int = 0
    cursor: float | None = None


def _prune(directory: str) -> bool:
    """Skip what can never hold a manifest link, and the per-tag history of every tag."""
    parts = directory.rsplit("/", 4)
    if parts[-1] in _SKIPPED_DIRS:
        return True
    return len(parts) >= 4 and parts[-1] == "index" and parts[-3] == "tags"


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

    async def cursor(self, name: str) -> float | None:
        """The storage mtime up to which *name* has handled everything (None: never ran)."""
        try:
            raw = await self.registry.driver.read(layout.job_state(_check_consumer(name), "feed"))
            return msgspec.json.decode(raw, type=_Cursor).since
        except PathNotFound:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # a torn cursor costs one full walk, never a missed manifest

    async def reset(self, name: str) -> None:
        """Forget *name*'s cursor: the next catch-up walks everything again."""
        with contextlib.suppress(PathNotFound):
            await self.registry.driver.delete(layout.job_state(_check_consumer(name), "feed"))

    async def catch_up(
        self,
        name: str,
        handle: ManifestHandler,
        guard: LeaseGuard | None = None,
        *,
        full: bool = False,
    ) -> CatchUpReport:
        """Hand every image manifest written since *name*'s cursor to *handle*, then move it.

        *full* ignores the cursor (``sign-missing``). The cursor only moves when
        every handled manifest succeeded, so a failure is retried on the next walk.
        *guard* (the consumer's lease) is checked before each manifest.
        """
        _check_consumer(name)
        report = CatchUpReport()
        cursor = None if full else await self.cursor(name)
        since = None if cursor is None else cursor - self.overlap
        newest = cursor
        revisions: dict[tuple[str, Digest], None] = {}
        tag_links: list[tuple[str, str]] = []
        driver = self.registry.driver
        async for entry in driver.walk(layout.REPOSITORIES, _prune):
            if entry.is_dir:
                continue
            found = layout.classify_repository_object(entry.path)
            if found is None:
                continue
            repository, kind, fields = found
            if kind not in ("revision", "tag"):
                continue
            report.walked += 1
            if since is not None and entry.mtime < since:
                continue
            newest = entry.mtime if newest is None else max(newest, entry.mtime)
            if kind == "tag":
                tag_links.append((repository, fields[0]))
                continue
            with contextlib.suppress(DigestInvalid):
                revisions[(repository, Digest.parse(f"{fields[0]}:{fields[1]}"))] = None
        attachments: set[tuple[str, Digest]] = set()
        for repository, tag in tag_links:
            digest = await self._tag_target(repository, tag)
            if digest is None:
                continue
            if attachment_subject(tag) is not None:
                attachments.add((repository, digest))
            else:
                revisions.setdefault((repository, digest), None)
        for repository, digest in revisions:
            if (repository, digest) in attachments or await self._is_attachment(repository, digest):
                report.skipped_attachments += 1
                continue
            if guard is not None:
                await guard.check()
            try:
                await handle(repository, digest)
                report.handled += 1
            except Exception:
                report.failed += 1
                log.exception("%s: handling %s@%s failed", name, repository, digest)
        if report.failed == 0 and newest is not None:
            await driver.write(
                layout.job_state(name, "feed"), msgspec.json.encode(_Cursor(since=newest))
            )
            report.cursor = newest
        else:
            report.cursor = cursor
        return report

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
