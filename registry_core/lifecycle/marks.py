"""The mark phase of garbage collection: what storage holds, and what is reachable.

:func:`snapshot` walks every repository and the blob tree once (listings, plus
one read per tag and per distinct manifest body) into a :class:`Snapshot`;
:func:`reachable` decides from it which manifests each repository keeps and
which blobs the registry keeps. Reachability rules: tags, linked revisions
(unless the untagged policy collects them), an index's children, attachments
whose subject is kept (a manifest with ``subject``, or a cosign
``sha256-<hex>.sig|.att|.sbom`` tag), and anything younger than the grace
period. This module only reads storage; it never writes or deletes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import attrs
import msgspec

from ..attachments import attachment_subject
from ..digest import Digest
from ..errors import DigestInvalid
from ..names import RepositoryName
from ..storage import layout
from ..storage.driver import PathNotFound, StorageDriver

READ_CONCURRENCY = 32
YIELD_EVERY = 2000
"""Walked entries handled between two returns to the event loop (GC may run in a server)."""
"""Small reads in flight at once while marking (tag links, manifest bodies)."""

UntaggedPolicy = Callable[[str, Digest, float], bool]
"""``(repository, manifest digest, revision link mtime) -> True`` when an untagged manifest
may be collected. None (the default) keeps every untagged manifest."""


class _Descriptor(msgspec.Struct):
    digest: str = ""
    urls: list[str] | None = None


class _References(msgspec.Struct):
    config: _Descriptor | None = None
    layers: list[_Descriptor] = []
    manifests: list[_Descriptor] = []
    subject: _Descriptor | None = None


@attrs.frozen
class ManifestRefs:
    """What one stored manifest references."""

    blobs: tuple[Digest, ...]
    children: tuple[Digest, ...]
    subject: Digest | None


def _parse_digest(text: str) -> Digest | None:
    try:
        return Digest.parse(text)
    except DigestInvalid:
        return None


def manifest_refs(body: bytes) -> ManifestRefs:
    """Config, layers, children and subject of stored manifest bytes (unreadable: none)."""
    try:
        doc = msgspec.json.decode(body, type=_References)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ManifestRefs((), (), None)
    blobs = [doc.config] if doc.config is not None else []
    blobs += [layer for layer in doc.layers if not layer.urls]
    return ManifestRefs(
        tuple(d for d in (_parse_digest(b.digest) for b in blobs) if d is not None),
        tuple(d for d in (_parse_digest(m.digest) for m in doc.manifests) if d is not None),
        _parse_digest(doc.subject.digest) if doc.subject is not None else None,
    )


@attrs.define
class RepositoryState:
    """One repository's links as walked: path modification times by what they name."""

    layers: dict[Digest, float] = attrs.field(factory=dict)
    revisions: dict[Digest, float] = attrs.field(factory=dict)
    tags: dict[str, float] = attrs.field(factory=dict)
    tag_targets: dict[str, Digest | None] = attrs.field(factory=dict)
    referrers: dict[tuple[Digest, Digest], str] = attrs.field(factory=dict)
    """(subject, referrer) -> the entry's path."""


@attrs.define
class Snapshot:
    """Everything the mark phase saw, plus the path mtimes the re-check compares with."""

    repositories: dict[str, RepositoryState] = attrs.field(factory=dict)
    blobs: dict[Digest, tuple[int, float]] = attrs.field(factory=dict)
    """Blob digest -> (size, mtime)."""
    seen: dict[str, float] = attrs.field(factory=dict)
    """Every link path walked -> its mtime."""
    bodies: dict[Digest, ManifestRefs | None] = attrs.field(factory=dict)
    """Manifest digest -> its references (None: its bytes are missing)."""


async def walk_repositories(driver: StorageDriver, snapshot: Snapshot) -> list[tuple[str, str]]:
    """Fill *snapshot* with every repository link; return the tag links to read.

    No prune function: on object stores that lets the walk be one paged listing (1000
    keys a request) instead of a listing per directory; upload sessions are skipped here.
    """
    tag_links: list[tuple[str, str]] = []
    count = 0
    async for entry in driver.walk(layout.REPOSITORIES):
        count += 1
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a server process keeps answering requests meanwhile
        if entry.is_dir:
            continue
        found = layout.classify_repository_object(entry.path)
        if found is None:
            continue
        repo, kind, fields = found
        state = snapshot.repositories.setdefault(repo, RepositoryState())
        if kind in ("layer", "revision"):
            digest = _parse_digest(f"{fields[0]}:{fields[1]}")
            if digest is None:
                continue
            target = state.layers if kind == "layer" else state.revisions
            target[digest] = entry.mtime
        elif kind == "tag":
            state.tags[fields[0]] = entry.mtime
            tag_links.append((repo, fields[0]))
        elif kind == "referrer":
            subject = _parse_digest(f"{fields[0]}:{fields[1]}")
            referrer = _parse_digest(fields[2].replace("-", ":", 1))
            if subject is not None and referrer is not None:
                state.referrers[(subject, referrer)] = entry.path
        else:
            continue
        snapshot.seen[entry.path] = entry.mtime
    return tag_links


async def read_tag_targets(
    driver: StorageDriver, snapshot: Snapshot, tag_links: Iterable[tuple[str, str]]
) -> None:
    semaphore = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(repo: str, tag: str) -> None:
        path = layout.tag_current_link(_name(repo), tag)
        async with semaphore:
            try:
                text = (await driver.read(path)).decode(errors="replace").strip()
            except PathNotFound:
                text = ""
        snapshot.repositories[repo].tag_targets[tag] = _parse_digest(text)

    await asyncio.gather(*(one(repo, tag) for repo, tag in tag_links))


async def walk_blobs(driver: StorageDriver, snapshot: Snapshot) -> None:
    count = 0
    async for entry in driver.walk(layout.BLOBS):
        count += 1
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if entry.is_dir:
            continue
        found = layout.digest_from_blob_data(entry.path)
        if found is None:
            continue
        digest = _parse_digest(f"{found[0]}:{found[1]}")
        if digest is not None:
            snapshot.blobs[digest] = (entry.size, entry.mtime)


BodyLocator = Callable[[Digest], str]


async def load_bodies(
    driver: StorageDriver,
    snapshot: Snapshot,
    digests: Iterable[Digest],
    locate: BodyLocator = layout.blob_data,
) -> None:
    """Read and parse the manifests in *digests* not yet in ``snapshot.bodies``."""
    semaphore = asyncio.Semaphore(READ_CONCURRENCY)
    wanted = [d for d in dict.fromkeys(digests) if d not in snapshot.bodies]

    async def one(digest: Digest) -> None:
        async with semaphore:
            try:
                body = await driver.read(locate(digest))
            except PathNotFound:
                snapshot.bodies[digest] = None
                return
        snapshot.bodies[digest] = manifest_refs(body)

    await asyncio.gather(*(one(d) for d in wanted))


async def take_snapshot(driver: StorageDriver) -> Snapshot:
    """Walk repositories (links, tags, manifest bodies) and then the blob tree.

    Repositories first: a blob that appears after its repository was walked
    is in the blob listing without a known reference, which the sweep's
    re-check covers; the other order could not be covered.
    """
    snapshot = Snapshot()
    tag_links = await walk_repositories(driver, snapshot)
    await read_tag_targets(driver, snapshot, tag_links)
    await load_bodies(
        driver,
        snapshot,
        [d for state in snapshot.repositories.values() for d in state.revisions]
        + [
            d
            for state in snapshot.repositories.values()
            for d in state.tag_targets.values()
            if d is not None
        ],
    )
    await walk_blobs(driver, snapshot)
    return snapshot


@attrs.define
class Reachability:
    """What the mark decided: kept manifests per repository and kept blobs overall."""

    manifests: dict[str, set[Digest]] = attrs.field(factory=dict)
    repo_blobs: dict[str, set[Digest]] = attrs.field(factory=dict)
    """Blobs (config, layers) that kept manifests of each repository reference."""
    blobs: set[Digest] = attrs.field(factory=set)
    """Every blob to keep: kept manifests' bytes, their blobs, young blobs and young links."""


async def expand(
    driver: StorageDriver,
    snapshot: Snapshot,
    reach: Reachability,
    repo: str,
    roots: Iterable[Digest],
    locate: BodyLocator = layout.blob_data,
) -> set[Digest]:
    """Keep *roots* in *repo* with everything they reference; return the newly kept digests."""
    added: set[Digest] = set()
    kept = reach.manifests.setdefault(repo, set())
    repo_blobs = reach.repo_blobs.setdefault(repo, set())
    frontier = [d for d in roots if d not in kept]
    while frontier:
        await load_bodies(driver, snapshot, frontier, locate)
        following: list[Digest] = []
        for digest in frontier:
            if digest in kept:
                continue
            kept.add(digest)
            added.add(digest)
            reach.blobs.add(digest)
            refs = snapshot.bodies.get(digest)
            if refs is None:
                continue
            for blob in refs.blobs:
                repo_blobs.add(blob)
                if blob not in reach.blobs:
                    reach.blobs.add(blob)
                    added.add(blob)
            following.extend(child for child in refs.children if child not in kept)
        frontier = following
    return added


async def reachable(
    driver: StorageDriver,
    snapshot: Snapshot,
    *,
    young_after: float,
    collect_untagged: UntaggedPolicy | None = None,
) -> Reachability:
    """Apply the reachability rules (module docstring) to a snapshot."""
    reach = Reachability()
    deferred: dict[str, list[tuple[Digest, Digest]]] = {}
    for repo, state in snapshot.repositories.items():
        roots: list[Digest] = []
        waiting = deferred.setdefault(repo, [])
        for tag, target in state.tag_targets.items():
            if target is None:
                continue
            subject = attachment_subject(tag)
            if subject is not None and state.tags[tag] <= young_after:
                waiting.append((target, subject))
            else:
                roots.append(target)
        for digest, mtime in state.revisions.items():
            refs = snapshot.bodies.get(digest)
            young = mtime > young_after
            if refs is not None and refs.subject is not None and not young:
                waiting.append((digest, refs.subject))
            elif young or collect_untagged is None or not collect_untagged(repo, digest, mtime):
                roots.append(digest)
        await expand(driver, snapshot, reach, repo, roots)
    # Attachments follow their subject, also attachments of attachments: to a fixpoint.
    changed = True
    while changed:
        changed = False
        for repo, waiting in deferred.items():
            kept = reach.manifests.setdefault(repo, set())
            ready = [d for d, subject in waiting if subject in kept and d not in kept]
            if ready:
                await expand(driver, snapshot, reach, repo, ready)
                changed = True
    for digest, (_size, mtime) in snapshot.blobs.items():
        if mtime > young_after:
            reach.blobs.add(digest)
    for state in snapshot.repositories.values():
        for digest, mtime in state.layers.items():
            if mtime > young_after:
                reach.blobs.add(digest)
    return reach


def _name(repo: str) -> RepositoryName:
    return stored_name(repo)


def stored_name(repo: str) -> RepositoryName:
    """A repository name as found in storage: not re-validated, so GC also covers names a
    peer (Distribution) accepted that Cargohold's tenancy rules would refuse."""
    return RepositoryName(repo)
