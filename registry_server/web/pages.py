"""What the website's image and manifest pages show, read from the library a page at a time.

Everything here is bounded by the page being drawn: a tag list reads the tag index (one
listing) and then only the manifests of the tags on the page; a manifest page reads that
manifest, its config and its referrers. Values come back as plain data for the templates,
which escape them; nothing here builds HTML, checks permissions or writes storage.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import attrs
import msgspec

from registry_core.attachments import is_attachment_tag
from registry_core.digest import Digest
from registry_core.errors import BlobUnknown, ManifestUnknown
from registry_core.lifecycle.retention import delete_with_attachments
from registry_core.manifest import descriptors_of
from registry_core.mediatypes import IMAGE_MANIFESTS, MANIFEST_TYPES
from registry_core.registry import Registry, Repository
from registry_core.storage.driver import PathNotFound
from registry_core.storage.tag_index import IndexedTag, SortKey, total_size

MAX_CONFIG_SIZE = 4 << 20
"""Configs larger than this are not shown (a page never reads a large blob)."""


def utc(moment: float | None) -> datetime | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC)


@attrs.frozen
class Page:
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def start(self) -> int:
        return (self.number - 1) * self.size

    def slice(self, items: list[Any]) -> list[Any]:
        return items[self.start : self.start + self.size]


def page_of(raw: str | None, size: int, total: int) -> Page:
    number = int(raw) if raw is not None and raw.isdigit() and len(raw) < 7 else 1
    last = max(1, -(-total // size))
    return Page(min(max(number, 1), last), size, total)


@attrs.frozen
class TagRow:
    name: str
    digest: str
    media_type: str
    platforms: list[str]
    size: int | None
    pushed: datetime | None
    created: str | None


class _ConfigProbe(msgspec.Struct, kw_only=True):
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    created: str | None = None


async def _config(repo: Repository, body: bytes) -> dict[str, Any] | None:
    """The image config a manifest names, when it is a small JSON object stored here."""
    try:
        doc = msgspec.json.decode(body, type=dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    config = doc.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        return None
    size = config.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_SIZE:
        return None
    try:
        digest = Digest.parse(config["digest"])
        raw = await repo.manifests.store.read_small(digest)
        value = msgspec.json.decode(raw, type=dict[str, Any])
    except (BlobUnknown, ValueError, msgspec.DecodeError, msgspec.ValidationError, PathNotFound):
        return None
    return value


_CONFIG_FACTS: OrderedDict[str, tuple[str, str | None] | None] = OrderedDict()
"""Platform and creation time by manifest digest, per process: immutable content, so it
never goes stale; bounded, oldest dropped first."""
_CONFIG_FACTS_MAX = 8192


async def _config_facts(
    repo: Repository, digest: Digest, body: bytes
) -> tuple[str, str | None] | None:
    key = str(digest)
    if key in _CONFIG_FACTS:
        _CONFIG_FACTS.move_to_end(key)
        return _CONFIG_FACTS[key]
    config = await _config(repo, body)
    facts = None
    if config:
        try:
            probe = msgspec.convert(config, _ConfigProbe, strict=False)
        except msgspec.ValidationError:
            probe = None
        if probe is not None:
            platform = _platform_text(probe.architecture, probe.os, probe.variant)
            facts = (platform, probe.created)
    _CONFIG_FACTS[key] = facts
    while len(_CONFIG_FACTS) > _CONFIG_FACTS_MAX:
        _CONFIG_FACTS.popitem(last=False)
    return facts


def _platform_text(arch: str, os: str, variant: str | None) -> str:
    return "/".join(part for part in (os, arch, variant) if part)


async def tag_row(repo: Repository, tag: IndexedTag) -> TagRow | None:
    try:
        stored = await repo.manifests.get(tag.name)
    except ManifestUnknown:
        return None  # deleted while the page was drawn
    if tag.pushed is None:
        tag = await repo.manifests.tag_index.entry(tag.name) or tag
    platforms: list[str] = []
    created = None
    if stored.media_type in IMAGE_MANIFESTS:
        facts = await _config_facts(repo, stored.digest, stored.body)
        if facts is not None:
            platforms.append(facts[0])
            created = facts[1]
    else:
        for descriptor in descriptors_of(stored.body):
            if descriptor.platform is not None:
                p = descriptor.platform
                platforms.append(_platform_text(p.architecture, p.os, p.variant))
    size = tag.size
    if size is None:

        async def load(child: Digest) -> tuple[str, bytes]:
            found = await repo.manifests.get(str(child))
            return found.media_type, found.body

        size = await total_size(stored.digest, stored.media_type, stored.body, load)
    return TagRow(
        name=tag.name,
        digest=str(stored.digest),
        media_type=stored.media_type,
        platforms=platforms,
        size=size,
        pushed=utc(tag.pushed),
        created=created,
    )


class Listings:
    """The large listings pages sort and slice, cached per process for a few seconds.

    An image's sorted tags (two listings) cost tens of milliseconds at ten thousand
    entries; paging through them should not pay that on every click (a registry's images
    come from its repository index instead). Entries expire after *ttl* seconds, and every
    manifest write or delete made by this process drops them at once (the link cache's
    generation), so changes made through other processes show within *ttl*. Per process
    only: nothing here is shared or persisted.
    """

    def __init__(self, registry: Registry, ttl: float = 10.0, max_entries: int = 256) -> None:
        self.registry = registry
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[Any, ...], tuple[float, int, Any]] = {}

    def _get(self, key: tuple[Any, ...]) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, generation, value = entry
        if expires < time.monotonic() or generation != self.registry.link_cache.generation:
            self._entries.pop(key, None)
            return None
        return value

    def _put(self, key: tuple[Any, ...], generation: int, value: Any) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, generation, value)

    async def tags(self, repo: Repository, key: SortKey, descending: bool) -> list[IndexedTag]:
        """The repository's tags (attachments left out) with what the index knows, sorted."""
        cache_key = ("tags", repo.name.value, key, descending)
        cached = self._get(cache_key)
        if cached is not None:
            return cached
        generation = self.registry.link_cache.generation
        manifests = repo.manifests
        if key == "name":
            # Names alone order the list: the page's rows read their index entries one by one
            # (tag_row), so the index folder is never listed for this order.
            names = await manifests.tags()  # sorted already
            make = tuple.__new__  # ten thousand of them: skip the named tuple's own __new__
            ordered = [make(IndexedTag, (t, None, None, None)) for t in _images(names)]
            if descending:
                ordered.reverse()
        else:
            names, known = await asyncio.gather(manifests.tags(), manifests.tag_index.entries())
            tags = _images(names)
            ordered = await manifests.tag_index.sorted_tags(
                tags, key, descending=descending, known=known
            )
        self._put(cache_key, generation, ordered)
        return ordered


def _images(tags: list[str]) -> list[str]:
    """*tags* without attachments (whose names start with a digest algorithm)."""
    return [t for t in tags if not (t.startswith("sha") and is_attachment_tag(t))]


async def tag_page(
    listings: Listings,
    repo: Repository,
    key: SortKey,
    descending: bool,
    raw_page: str | None,
    size: int,
) -> tuple[list[TagRow], Page]:
    """One page of the repository's tags (attachments left out), sorted by *key*."""
    ordered = await listings.tags(repo, key, descending)
    page = page_of(raw_page, size, len(ordered))
    rows = await asyncio.gather(*(tag_row(repo, t) for t in page.slice(ordered)))
    return [row for row in rows if row is not None], page


@attrs.frozen
class Layer:
    digest: str
    media_type: str
    size: int


@attrs.frozen
class ChildManifest:
    digest: str
    media_type: str
    size: int
    platform: str
    present: bool


@attrs.frozen
class ManifestView:
    digest: str
    media_type: str
    size: int
    total_size: int
    tags: list[str]
    annotations: dict[str, str]
    children: list[ChildManifest]
    layers: list[Layer]
    config: dict[str, Any] | None
    labels: dict[str, str]
    env: list[str]
    entrypoint: list[str]
    cmd: list[str]
    history: list[dict[str, str]]
    platform: str
    created: str | None
    referrers: list[dict[str, Any]]
    attachments: list[str]
    subject: str | None

    @property
    def is_index(self) -> bool:
        return bool(self.children)


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return []


async def manifest_view(repo: Repository, reference: str) -> ManifestView:
    """Everything the manifest page shows; ManifestUnknown when it is not in *repo*."""
    stored = await repo.manifests.get(reference)
    try:
        doc = msgspec.json.decode(stored.body, type=dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError):
        doc = {}

    async def load(child: Digest) -> tuple[str, bytes]:
        found = await repo.manifests.get(str(child))
        return found.media_type, found.body

    children: list[ChildManifest] = []
    layers: list[Layer] = []
    for descriptor in descriptors_of(stored.body):
        if descriptor.mediaType in MANIFEST_TYPES and stored.media_type not in IMAGE_MANIFESTS:
            p = descriptor.platform
            present = True
            try:
                await repo.manifests.resolve(descriptor.digest)
            except (ManifestUnknown, ValueError):
                present = False
            children.append(
                ChildManifest(
                    digest=descriptor.digest,
                    media_type=descriptor.mediaType,
                    size=descriptor.size,
                    platform=_platform_text(p.architecture, p.os, p.variant) if p else "",
                    present=present,
                )
            )
    layer_docs = doc.get("layers") if isinstance(doc.get("layers"), list) else []
    for layer in layer_docs:
        if isinstance(layer, dict):
            layers.append(
                Layer(
                    digest=str(layer.get("digest", "")),
                    media_type=str(layer.get("mediaType", "")),
                    size=layer.get("size") if isinstance(layer.get("size"), int) else 0,
                )
            )
    config = await _config(repo, stored.body) if stored.media_type in IMAGE_MANIFESTS else None
    inner = (config or {}).get("config") or {}
    if not isinstance(inner, dict):
        inner = {}
    labels = inner.get("Labels") if isinstance(inner.get("Labels"), dict) else {}
    history = []
    for entry in (config or {}).get("history") or []:
        if isinstance(entry, dict):
            history.append(
                {
                    "created": str(entry.get("created", "")),
                    "created_by": str(entry.get("created_by", "")),
                    "comment": str(entry.get("comment", "")),
                    "empty": "yes" if entry.get("empty_layer") else "",
                }
            )
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    subject = doc.get("subject") if isinstance(doc.get("subject"), dict) else None
    tags = await _tags_naming(repo, stored.digest)
    attachments = [
        t for t in await repo.manifests.tags() if is_attachment_tag(t) and _names(t, stored.digest)
    ]
    referrers = await repo.manifests.referrers(stored.digest)
    return ManifestView(
        digest=str(stored.digest),
        media_type=stored.media_type,
        size=stored.size,
        total_size=await total_size(stored.digest, stored.media_type, stored.body, load),
        tags=[t for t in tags if not is_attachment_tag(t)],
        annotations={str(k): str(v) for k, v in annotations.items()},
        children=children,
        layers=layers,
        config=config,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
        env=_strings(inner.get("Env")),
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        history=history,
        platform=_platform_text(
            str((config or {}).get("architecture", "")),
            str((config or {}).get("os", "")),
            (config or {}).get("variant"),
        ),
        created=str((config or {}).get("created")) if (config or {}).get("created") else None,
        referrers=referrers,
        attachments=attachments,
        subject=str(subject.get("digest")) if subject else None,
    )


async def _tags_naming(repo: Repository, digest: Digest) -> list[str]:
    """The tags that name *digest*, read through the tag index: only the candidates' links
    are read, never every tag's of a large repository (all of them only when some tag was
    never indexed). For display: deletion asks the library, which reads every link."""
    manifests = repo.manifests
    tags = await manifests.tags()
    candidates = await manifests.tag_index.candidates(digest, tags)
    if candidates is None:
        return await manifests.tags_pointing_at(digest)
    named = await asyncio.gather(*(_resolve_or_none(repo, tag) for tag in candidates))
    return [tag for tag, found in zip(candidates, named, strict=True) if found == digest]


async def _resolve_or_none(repo: Repository, tag: str) -> Digest | None:
    try:
        return await repo.manifests.resolve(tag)
    except ManifestUnknown:
        return None


def _names(tag: str, digest: Digest) -> bool:
    return tag.startswith(f"{digest.algorithm}-{digest.hex}.")


async def delete_manifest(repo: Repository, digest: Digest) -> int:
    """Delete a manifest by digest with its tags and attachments; how many manifests went."""
    return len(await delete_with_attachments(repo.manifests, digest))
