"""The per-repository tag index: every tag's push time and total size from one listing.

Each tag has one empty object named ``TAG@PUSHED_MS@SIZE@DIGEST16`` (the last part: the
first 16 hex digits of the digest it names) under the repository's index
folder, written when the tag is written and removed when it is deleted, plus a small
pointer object holding that name (so a rewrite removes the old entry without listing).
Listing the folder gives everything a tag list sorts by (name, date, size), and which tags
may name a given manifest, without reading a single manifest or tag link, which is what lets the website sort a repository of
thousands of tags. Storage has no compare-and-swap: two processes rewriting one tag at
once may leave two entries, so readers keep the newest entry of each tag, and drop
entries of tags that no longer exist. Tags written by other tools (or before the index
existed) have no entry: they list with unknown time and size. Attachment tags get none
(the website never lists them, and a signature would pay three requests for it). This module never decides
what a tag points at (the tag link does) and never reads manifests to list.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from operator import itemgetter
from typing import Literal, NamedTuple

from ..attachments import is_attachment_tag
from ..digest import Digest
from ..errors import ManifestUnknown
from ..manifest import descriptors_of
from ..mediatypes import IMAGE_MANIFESTS, MANIFEST_TYPES
from ..names import RepositoryName
from . import layout, steps
from .driver import PathNotFound, StorageDriver
from .steps import Step, run_steps

SortKey = Literal["name", "date", "size"]
_SEPARATOR = "@"  # never part of a tag name


class IndexedTag(NamedTuple):
    """A tag as the index knows it; ``pushed``/``size`` are None when it was never indexed.

    A named tuple, not an attrs class: a listing builds ten thousand of them per page view.
    """

    name: str
    pushed: float | None
    """Seconds since the epoch when the tag was last written."""
    size: int | None
    """The manifest plus everything it references, each blob once (compressed bytes)."""
    digest_prefix: str | None = None
    """The first hex digits of the digest the tag named when it was written."""


PREFIX_LENGTH = 16


def _entry_name(tag: str, pushed: float, size: int, digest: Digest) -> str:
    return _SEPARATOR.join((tag, str(int(pushed * 1000)), str(size), digest.hex[:PREFIX_LENGTH]))


def _parse_entry(entry: str) -> IndexedTag | None:
    parts = entry.split(_SEPARATOR)
    if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return IndexedTag(parts[0], int(parts[1]) / 1000, int(parts[2]), parts[3])


Loader = Callable[[Digest], Awaitable[tuple[str, bytes]]]
"""Loads a manifest of this repository by digest: (media type, body); ManifestUnknown if absent."""


async def total_size(digest: Digest, media_type: str, body: bytes, load: Loader) -> int:
    """The manifest's bytes plus those of everything it references, each digest once.

    For an index, the platform manifests' own references count too (those pushed here).
    """
    sizes = {str(digest): len(body)}
    children: list[str] = []
    for descriptor in descriptors_of(body):
        sizes.setdefault(descriptor.digest, descriptor.size)
        if descriptor.mediaType in MANIFEST_TYPES and media_type not in IMAGE_MANIFESTS:
            children.append(descriptor.digest)
    for child in children:
        try:
            _, child_body = await load(Digest.parse(child))
        except (ManifestUnknown, ValueError):
            continue  # an index may name platforms that were never pushed here
        for inner in descriptors_of(child_body):
            sizes.setdefault(inner.digest, inner.size)
    return sum(sizes.values())


class TagIndex:
    """The tag index of one repository."""

    def __init__(self, driver: StorageDriver, name: RepositoryName) -> None:
        self.driver = driver
        self.name = name

    async def pointer(self, tag: str) -> str | None:
        """The name of the tag's current entry (None: the tag has none)."""
        try:
            return (await self.driver.read(layout.tag_index_pointer(self.name, tag))).decode()
        except PathNotFound:
            return None

    @staticmethod
    def entry_for(tag: str, digest: Digest, size: int, pushed: float | None = None) -> str:
        """The entry name recording that *tag* names *digest* (*size* bytes in all)."""
        return _entry_name(tag, time.time() if pushed is None else pushed, size, digest)

    def pointer_step(self, tag: str) -> Step:
        """:meth:`pointer` as a storage step (``storage.steps``); see :meth:`pointer_from`."""
        return steps.read(layout.tag_index_pointer(self.name, tag))

    @staticmethod
    def pointer_from(outcome: object) -> str | None:
        """:meth:`pointer`, from the outcome of :meth:`pointer_step`."""
        return outcome.decode() if isinstance(outcome, bytes) else None

    def entry_steps(self, tag: str, entry: str) -> list[Step]:
        """The writes of :meth:`record_entry`, as storage steps (independent objects)."""
        return [
            steps.write(layout.tag_index_entry(self.name, entry), b""),
            steps.write(layout.tag_index_pointer(self.name, tag), entry.encode()),
        ]

    async def record_entry(self, tag: str, entry: str) -> None:
        """Write *entry* and the tag's pointer to it, together (independent objects)."""
        await run_steps(self.driver, [self.entry_steps(tag, entry)])

    async def drop_replaced(self, entry: str, previous: str | None) -> None:
        """Remove the entry *previous* once *entry* replaced it."""
        if previous is not None and previous != entry:
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(layout.tag_index_entry(self.name, previous))

    async def record(
        self, tag: str, digest: Digest, size: int, pushed: float | None = None
    ) -> None:
        """*tag* was just written and now names *digest*, content of *size* bytes in all."""
        entry = self.entry_for(tag, digest, size, pushed)
        previous = await self.pointer(tag)
        await self.record_entry(tag, entry)
        await self.drop_replaced(entry, previous)

    async def entry(self, tag: str) -> IndexedTag | None:
        """What the index knows of one tag, from its pointer (one small read, no listing)."""
        pointer = await self.pointer(tag)
        parsed = _parse_entry(pointer) if pointer is not None else None
        return parsed if parsed is not None and parsed.name == tag else None

    async def forget(self, tag: str) -> None:
        """*tag* was deleted."""
        entry = await self.pointer(tag)
        if entry is None:
            return
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.tag_index_entry(self.name, entry))
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.tag_index_pointer(self.name, tag))

    async def entries(self) -> dict[str, IndexedTag]:
        """The newest entry of every indexed tag (tags since deleted included)."""
        try:
            names = await self.driver.list(layout.tag_index_entries(self.name))
        except PathNotFound:
            return {}
        # Inlined _parse_entry: ten thousand entries per page view of a large repository.
        newest: dict[str, IndexedTag] = {}
        make = tuple.__new__
        for entry in names:
            parts = entry.split(_SEPARATOR)
            if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
                continue
            tag, pushed = parts[0], int(parts[1]) / 1000
            known = newest.get(tag)
            if known is None or (known.pushed or 0) < pushed:
                newest[tag] = make(IndexedTag, (tag, pushed, int(parts[2]), parts[3]))
        return newest

    async def sorted_tags(
        self,
        tags: list[str],
        key: SortKey,
        *,
        descending: bool = False,
        known: dict[str, IndexedTag] | None = None,
    ) -> list[IndexedTag]:
        """*tags* (the repository's current tags) with what the index knows, sorted by *key*.

        Tags the index does not know sort after the others whichever the direction. Pass
        *known* (from :meth:`entries`) when it was already read.
        """
        if known is None:
            known = await self.entries() if tags else {}
        make = tuple.__new__
        found = [known.get(tag) or make(IndexedTag, (tag, None, None, None)) for tag in tags]
        if key == "name":
            return sorted(found, key=itemgetter(0), reverse=descending)
        field = 1 if key == "date" else 2
        indexed = [t for t in found if t[field] is not None]
        missing = sorted((t for t in found if t[field] is None), key=itemgetter(0))
        indexed.sort(key=itemgetter(field, 0), reverse=descending)
        return indexed + missing

    async def candidates(self, digest: Digest, tags: list[str]) -> list[str] | None:
        """Tags of *tags* that may name *digest* (the caller verifies each); None when some
        tag has no entry, so only reading every tag link can tell.

        Attachment tags (``sha256-<hex>.sig``...) are not indexed: they are never listed
        by tag, and the manifest they name is found from its subject's digest, so they
        are left out here unless an older entry knows them.
        """
        known = await self.entries() if tags else {}
        tags = [tag for tag in tags if tag in known or not is_attachment_tag(tag)]
        if any(tag not in known for tag in tags):
            return None
        prefix = digest.hex[:PREFIX_LENGTH]
        return [tag for tag in tags if known[tag].digest_prefix == prefix]
