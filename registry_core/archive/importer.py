"""Import an archive into one tenant: plan, verify every byte, then store, then tag.

The order is what makes an import all or nothing. First the archive is
indexed and every image's metadata read (:mod:`.reader`); then every layer is
hashed (and, when it arrived uncompressed, compressed deterministically into
a temporary file) and checked against its digest and ``rootfs.diff_ids``.
Only when the whole archive has passed does storage see anything: blobs, then
manifests, and tags last. A bad archive therefore leaves no blob link,
manifest or tag behind, and its temporary files (one private directory per
import) are always removed. All blocking work (tar, gzip, zstd, hashing) runs
in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, Literal

import attrs

from .. import mediatypes as mt
from ..digest import Digest, Hasher
from ..errors import ManifestBlobUnknown, ManifestUnknown, NameInvalid
from ..names import RepositoryName, Tenant
from ..registry import Registry, Repository
from .compression import (
    DOCKER_CONFIG,
    OCI_CONFIG,
    Compression,
    Decompressor,
    compressor,
    detect,
    layer_compression,
    layer_media_type,
    zstandard_module,
)
from .errors import ArchiveInvalid
from .reader import ArchiveReader, ImagePlan, IndexPlan, LayerPlan, Target
from .references import SourceName, checked_tag, parse_tag_option, repository_in
from .tarfile_index import CHUNK, ArchiveFile

GiB: Final = 1 << 30
UNKNOWN_PLATFORM: Final = "unknown/unknown"
STORE_ATTEMPTS: Final = 3
"""Times an image is stored (and tagged) when a GC run collects its content meanwhile."""


@attrs.frozen
class ImportOptions:
    """Limits and choices of one import (the server fills them from ``[archives]``)."""

    max_size: int = 16 * GiB
    """The archive, as sent and as unpacked."""
    max_layer_size: int = 8 * GiB
    """One layer, compressed or not."""
    max_metadata_size: int = 16 << 20
    """manifest.json, index.json, manifests and configs."""
    temp_dir: str | None = None
    compression: Literal["gzip", "zstd"] = "gzip"
    """How layers that arrive uncompressed are compressed."""
    workers: int = 0
    """Layers prepared in parallel (0: one per CPU, at most 4)."""


@attrs.frozen
class ImportedImage:
    repository: str
    tags: tuple[str, ...]
    digest: str
    media_type: str
    config_digests: tuple[str, ...]
    platforms: tuple[str, ...]
    layers: int
    size: int
    """Manifest, config and layers as stored, in bytes."""
    verbatim: bool
    """True when the archive's own manifest was stored byte for byte."""
    source: str

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {
            "tags": list(self.tags),
            "config_digests": list(self.config_digests),
            "platforms": list(self.platforms),
        }


@attrs.frozen
class ImportResult:
    images: tuple[ImportedImage, ...]
    blobs_stored: int
    """Blobs written to storage by this import."""
    blobs_existing: int
    """Blobs that storage already had (only linked)."""
    bytes_stored: int
    archive_compression: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [image.to_dict() for image in self.images],
            "blobs_stored": self.blobs_stored,
            "blobs_existing": self.blobs_existing,
            "bytes_stored": self.bytes_stored,
            "archive_compression": self.archive_compression,
        }


class Workspace:
    """A private temporary directory for one import, removed with everything in it."""

    def __init__(self, temp_dir: str | None = None) -> None:
        if temp_dir:
            os.makedirs(temp_dir, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="cargohold-import-", dir=temp_dir or None)
        self.cancelled = threading.Event()

    def file(self, suffix: str = "") -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.path, suffix=suffix)

    def close(self) -> None:
        self.cancelled.set()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- prepared blobs ---------------------------------------------------------------------------


@attrs.define
class PreparedBlob:
    """A layer ready to store: its final digest and where its bytes are."""

    digest: Digest
    size: int
    compression: Compression | None
    """None for a blob that is no filesystem tar (artifacts)."""
    media_type: str | None
    """The archive's media type, kept when the blob is stored as it came."""
    path: str | None = None
    """A temporary file holding the bytes (layers compressed here)..."""
    member: Any = None
    """...or the archive entry that holds them."""
    changed: bool = False
    """True when the stored bytes differ from the archive's (compressed here)."""


def _prepare_layer(
    archive: ArchiveFile,
    layer: LayerPlan,
    target: Compression,
    options: ImportOptions,
    workspace: Workspace,
    rebuild_allowed: bool,
) -> PreparedBlob:
    """Hash (and maybe compress) one layer, checking digest, size and diff_id. Blocking."""
    blob = layer.blob
    member = blob.member
    entry = blob.entry
    if member.size > options.max_layer_size:
        raise ArchiveInvalid(
            f"layer {entry!r} is {member.size} bytes; the limit is {options.max_layer_size} "
            "(archives.max_layer_size)",
            detail={"entry": entry},
        )
    if blob.size is not None and blob.size != member.size:
        raise ArchiveInvalid(
            f"layer {entry!r} is {member.size} bytes; its manifest says {blob.size}",
            detail={"entry": entry},
        )
    if layer.media_type is not None:
        source = layer_compression(layer.media_type)
    else:
        found = detect(archive.head(member))
        if found not in ("none", "gzip", "zstd"):
            raise ArchiveInvalid(
                f"layer {entry!r} is {found}-compressed, which registries do not serve",
                detail={"entry": entry},
            )
        source = found  # type: ignore[assignment]
    compress = source == "none" and rebuild_allowed
    stored = Hasher(blob.digest.algorithm if blob.digest else "sha256")
    original = Hasher(blob.digest.algorithm) if blob.digest and compress else None
    uncompressed = Hasher(layer.diff_id.algorithm if layer.diff_id else "sha256")
    decompressor = Decompressor(source, entry) if source not in (None, "none") else None
    out_path = None
    out = None
    if compress:
        if target == "zstd":
            zstandard_module()
        fd, out_path = workspace.file(".layer")
        out = os.fdopen(fd, "wb")
        packer = compressor(target, member.size)
    unpacked = 0
    try:
        for chunk in archive.chunks(member):
            if workspace.cancelled.is_set():
                raise ArchiveInvalid("import cancelled")
            if compress:
                assert out is not None
                if original is not None:
                    original.update(chunk)
                uncompressed.update(chunk)
                data = packer.compress(chunk)
                stored.update(data)
                out.write(data)
            else:
                stored.update(chunk)
                if decompressor is not None and layer.diff_id is not None:
                    data = decompressor.feed(chunk)
                    unpacked += len(data)
                    if unpacked > options.max_layer_size:
                        raise ArchiveInvalid(
                            f"layer {entry!r} unpacks to more than {options.max_layer_size} "
                            "bytes (archives.max_layer_size)",
                            detail={"entry": entry},
                        )
                    uncompressed.update(data)
                elif source == "none":
                    uncompressed.update(chunk)
        if compress:
            assert out is not None
            data = packer.flush()
            stored.update(data)
            out.write(data)
            out.close()
        elif decompressor is not None and layer.diff_id is not None:
            decompressor.finish()
        as_found = original if original is not None else stored
        if blob.digest is not None and as_found.digest() != blob.digest:
            raise ArchiveInvalid(
                f"layer {entry!r} hashes to {as_found.digest()}, the archive says {blob.digest}",
                detail={"entry": entry},
            )
        if (
            layer.diff_id is not None
            and source is not None
            and uncompressed.digest() != layer.diff_id
        ):
            raise ArchiveInvalid(
                f"layer {entry!r}: diff_id mismatch: its uncompressed content hashes to "
                f"{uncompressed.digest()}, the config's rootfs.diff_ids says {layer.diff_id}",
                detail={"entry": entry},
            )
    except BaseException:
        if out is not None:
            out.close()
        if out_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out_path)
        raise
    if compress:
        return PreparedBlob(stored.digest(), stored.size, target, None, path=out_path, changed=True)
    return PreparedBlob(
        stored.digest(), stored.size, source, layer.media_type, member=member, changed=False
    )


# -- the import -----------------------------------------------------------------------------------


@attrs.define
class _Stored:
    """The outcome of one plan: the manifest to store, and the blobs it needs."""

    body: bytes
    media_type: str
    digest: Digest
    verbatim: bool
    blobs: list[tuple[Digest, int, bytes | PreparedBlob]]
    children: list[_Stored]
    platforms: list[str]
    config_digests: list[str]
    layers: int


class _Importer:
    def __init__(
        self,
        registry: Registry,
        tenant: Tenant,
        archive: ArchiveFile,
        options: ImportOptions,
        workspace: Workspace,
    ) -> None:
        self.registry = registry
        self.tenant = tenant
        self.archive = archive
        self.options = options
        self.workspace = workspace
        self.prepared: dict[tuple[str, str | None, bool], asyncio.Future[PreparedBlob]] = {}
        workers = options.workers or min(4, os.cpu_count() or 1)
        self.slots = asyncio.Semaphore(max(1, workers))
        self.tasks: list[asyncio.Task[PreparedBlob]] = []

    def layer(self, layer: LayerPlan, rebuild_allowed: bool) -> asyncio.Future[PreparedBlob]:
        key = (layer.blob.member.name, layer.media_type, rebuild_allowed)
        future = self.prepared.get(key)
        if future is None:

            async def run() -> PreparedBlob:
                async with self.slots:
                    return await asyncio.to_thread(
                        _prepare_layer,
                        self.archive,
                        layer,
                        self.options.compression,
                        self.options,
                        self.workspace,
                        rebuild_allowed,
                    )

            task = asyncio.ensure_future(run())
            self.tasks.append(task)
            self.prepared[key] = future = task
        return future

    async def plan(self, plan: ImagePlan | IndexPlan) -> _Stored:
        if isinstance(plan, IndexPlan):
            return await self._index(plan)
        return await self._image(plan)

    async def _image(self, plan: ImagePlan) -> _Stored:
        rebuild_allowed = plan.is_image
        prepared = await asyncio.gather(
            *(self.layer(layer, rebuild_allowed) for layer in plan.layers)
        )
        blobs: list[tuple[Digest, int, bytes | PreparedBlob]] = [
            (plan.config_digest, len(plan.config), plan.config)
        ]
        blobs += [(p.digest, p.size, p) for p in prepared]
        changed = any(p.changed for p in prepared)
        if plan.manifest is not None and plan.manifest_media_type and not changed:
            body, media_type, verbatim = plan.manifest, plan.manifest_media_type, True
        else:
            body, media_type = _build_manifest(plan, prepared)
            verbatim = False
        return _Stored(
            body=body,
            media_type=media_type,
            digest=Digest.of(body),
            verbatim=verbatim,
            blobs=blobs,
            children=[],
            platforms=[plan.platform] if plan.platform else [],
            config_digests=[str(plan.config_digest)],
            layers=len(plan.layers),
        )

    async def _index(self, plan: IndexPlan) -> _Stored:
        present = [
            (descriptor, child)
            for descriptor, child in zip(plan.descriptors, plan.children, strict=True)
            if child is not None
        ]
        if not present:
            raise ArchiveInvalid(
                f"{plan.entry}: none of the index's {len(plan.children)} manifests is in the "
                "archive",
                detail={"entry": plan.entry},
            )
        children = [await self.plan(child) for _, child in present]
        if len(present) < len(plan.children):
            images = [
                c
                for (d, _), c in zip(present, children, strict=True)
                if _platform_of(d) != UNKNOWN_PLATFORM
            ]
            if len(images) == 1 and not images[0].children:
                # Docker's containerd store saves the index of every platform but the
                # blobs of one: that one image is what the archive really holds.
                return images[0]
        unchanged = len(present) == len(plan.children) and all(
            child.digest == Digest.parse(descriptor["digest"])
            for (descriptor, _), child in zip(present, children, strict=True)
        )
        if unchanged:
            body, verbatim = plan.body, True
        else:
            body, verbatim = _build_index(plan, present, children), False
        return _Stored(
            body=body,
            media_type=plan.media_type,
            digest=Digest.of(body),
            verbatim=verbatim,
            blobs=[],
            children=children,
            platforms=[p for c in children for p in c.platforms],
            config_digests=[d for c in children for d in c.config_digests],
            layers=sum(c.layers for c in children),
        )

    async def settle(self) -> None:
        """Wait for every layer task, so no worker thread outlives a failed import."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _platform_of(descriptor: dict[str, Any]) -> str:
    platform = descriptor.get("platform") or {}
    return f"{platform.get('os', 'unknown')}/{platform.get('architecture', 'unknown')}"


def _manifest_json(document: dict[str, Any]) -> bytes:
    # Docker's own layout: three-space indent, fields in the order the registry writes them.
    return json.dumps(document, indent=3).encode()


def _build_manifest(plan: ImagePlan, prepared: Sequence[PreparedBlob]) -> tuple[bytes, str]:
    """A Docker schema 2 manifest when every layer is gzip, otherwise an OCI manifest."""
    docker = all(p.compression == "gzip" for p in prepared)
    media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    layers = []
    for layer, blob in zip(plan.layers, prepared, strict=True):
        if blob.compression is None:
            descriptor = dict(layer.descriptor or {})
            descriptor.update(mediaType=blob.media_type, size=blob.size, digest=str(blob.digest))
        else:
            descriptor = {
                "mediaType": layer_media_type(blob.compression, docker),
                "size": blob.size,
                "digest": str(blob.digest),
            }
        layers.append(descriptor)
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "size": len(plan.config),
            "digest": str(plan.config_digest),
        },
        "layers": layers,
    }
    return _manifest_json(document), media_type


def _build_index(
    plan: IndexPlan, present: list[tuple[dict[str, Any], Any]], children: list[_Stored]
) -> bytes:
    document = json.loads(plan.body)
    manifests = []
    for (descriptor, _), child in zip(present, children, strict=True):
        updated = dict(descriptor)
        updated.update(mediaType=child.media_type, size=len(child.body), digest=str(child.digest))
        manifests.append(updated)
    document["manifests"] = manifests
    return _manifest_json(document)


# -- naming ------------------------------------------------------------------------------------


def resolve_names(
    targets: Sequence[Target], tenant: Tenant, tags: Sequence[str]
) -> list[list[tuple[RepositoryName, str]]]:
    """The ``(repository, tag)`` pairs each target gets; NameInvalid when one has none."""
    options = [parse_tag_option(tag) for tag in tags]
    if options and len(targets) > 1:
        raise NameInvalid(
            f"the archive holds {len(targets)} images; --tag can only name the image of a "
            "single-image archive (import without --tag to use the names the archive carries)",
            detail={"images": [t.entry for t in targets]},
        )
    result = []
    for target in targets:
        archive_tags = list(dict.fromkeys(n.tag for n in target.names if n.tag))
        pairs: list[tuple[str, str]] = []
        if options:
            for option in options:
                assert option.path is not None
                for tag in [option.tag] if option.tag else archive_tags or ["latest"]:
                    pairs.append((option.path, tag))
        else:
            full = [n for n in target.names if n.path]
            if not full:
                raise NameInvalid(_unnamed_message(target), detail={"entry": target.entry})
            pairs = [(n.path, n.tag or "latest") for n in full if n.path]
        named = []
        for path, tag in dict.fromkeys(pairs):
            named.append((repository_in(tenant, path), checked_tag(tag)))
        result.append(named)
    return result


def _unnamed_message(target: Target) -> str:
    configs = ", ".join(sorted(str(d) for d in target.config_digests()))
    tags = [n.tag for n in target.names if n.tag and not n.path]
    if tags:
        return (
            f"{target.entry} (config {configs}) names only the tag {tags[0]!r}, no repository: "
            "pass --tag NAME[:TAG] (API: ?tag=NAME[:TAG])"
        )
    return (
        f"{target.entry} (config {configs}) carries no name: pass --tag NAME:TAG "
        "(API: ?tag=NAME:TAG)"
    )


# -- storing ------------------------------------------------------------------------------------


async def _chunks(archive: ArchiveFile, blob: PreparedBlob) -> AsyncIterator[bytes]:
    def open_chunks() -> Iterator[bytes]:
        if blob.path is not None:
            with open(blob.path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk
        else:
            yield from archive.chunks(blob.member)

    iterator = open_chunks()
    done = object()
    while True:
        chunk = await asyncio.to_thread(next, iterator, done)
        if chunk is done:
            return
        yield chunk  # type: ignore[misc]


async def _store_blob(
    repo: Repository, archive: ArchiveFile, digest: Digest, size: int, data: bytes | PreparedBlob
) -> bool:
    """Link or upload one verified blob; True when its bytes were written."""
    if await repo.blobs.exists(digest):
        return False
    if await repo.blobs.store.exists(digest):
        # The archive's bytes hash to this digest (checked above), so whoever sent it holds
        # the content: linking is what a verified upload of the same bytes would end in.
        await repo.blobs.link(digest)
        return False
    async with repo.blobs.upload() as upload:
        if isinstance(data, bytes):
            await upload.write(data)
        else:
            await upload.append(_chunks(archive, data))
        await upload.commit(digest, size)
    return True


async def import_archive(
    registry: Registry,
    tenant: Tenant | str,
    path: str | os.PathLike[str],
    *,
    tags: Sequence[str] = (),
    options: ImportOptions | None = None,
    workspace: Workspace | None = None,
    delete_source: bool = False,
    authorize: Callable[[RepositoryName], Awaitable[None]] | None = None,
) -> ImportResult:
    """Import the archive at *path* into *tenant* (``OWNER/REGISTRY``).

    *tags* are ``NAME[:TAG]`` names inside the tenant that replace the ones
    the archive carries (single-image archives only). *delete_source*: *path*
    is a temporary file the import may remove as soon as it has unpacked it.
    *authorize* is awaited with every repository the archive would write to,
    before any layer is read; it raises to refuse.
    """
    options = options or ImportOptions()
    if isinstance(tenant, str):
        owner, _, name = tenant.partition("/")
        RepositoryName.parse(f"{owner}/{name}/x")
        tenant = Tenant(owner, name)
    own_workspace = workspace is None
    workspace = workspace or Workspace(options.temp_dir)
    try:
        archive = await asyncio.to_thread(
            ArchiveFile.open,
            path,
            max_size=options.max_size,
            temp_dir=workspace.path,
            delete_source=delete_source,
        )
        try:
            return await _import(registry, tenant, archive, tags, options, workspace, authorize)
        finally:
            await asyncio.to_thread(archive.close)
    finally:
        if own_workspace:
            await asyncio.to_thread(workspace.close)


async def _import(
    registry: Registry,
    tenant: Tenant,
    archive: ArchiveFile,
    tags: Sequence[str],
    options: ImportOptions,
    workspace: Workspace,
    authorize: Callable[[RepositoryName], Awaitable[None]] | None,
) -> ImportResult:
    reader = ArchiveReader(archive, max_metadata_size=options.max_metadata_size)
    targets = await asyncio.to_thread(reader.targets)
    names = resolve_names(targets, tenant, tags)
    if authorize is not None:
        for repository in dict.fromkeys(name for pairs in names for name, _ in pairs):
            await authorize(repository)
    importer = _Importer(registry, tenant, archive, options, workspace)
    try:
        stored = [await importer.plan(target.plan) for target in targets]
    finally:
        await importer.settle()

    # Everything is verified: now storage. Blobs and manifests of every image first...
    blobs_stored = blobs_existing = bytes_stored = 0

    async def store_image(repository: RepositoryName, outcome: _Stored) -> None:
        """Blobs, then manifests; again when GC set a blob aside meanwhile (the manifest
        PUT refuses then, as it refuses a client: lifecycle/gc.py)."""
        nonlocal blobs_stored, blobs_existing, bytes_stored
        repo = registry.repository(repository)
        for attempt in range(STORE_ATTEMPTS):
            for digest, size, data in _all_blobs(outcome):
                if await _store_blob(repo, archive, digest, size, data):
                    blobs_stored += 1
                    bytes_stored += size
                else:
                    blobs_existing += 1
            try:
                for manifest in _manifests_children_first(outcome):
                    await repo.manifests.put(manifest.body, manifest.media_type)
                return
            except ManifestBlobUnknown:
                if attempt == STORE_ATTEMPTS - 1:
                    raise

    for outcome, pairs in zip(stored, names, strict=True):
        for repository in dict.fromkeys(name for name, _ in pairs):
            await store_image(repository, outcome)
    # ...and only then the tags. Until then the manifests are untagged: a GC run may
    # collect them (a policy collecting untagged manifests with a short grace). tag()
    # confirms after writing, as a push does, and refuses rather than leave a tag naming
    # missing content; the image is then stored again from the archive and tagged again.
    images = []
    for target, outcome, pairs in zip(targets, stored, names, strict=True):
        by_repository: dict[RepositoryName, list[str]] = {}
        for repository, tag in pairs:
            manifests = registry.repository(repository).manifests
            for attempt in range(STORE_ATTEMPTS):
                try:
                    await manifests.tag(tag, outcome.digest)
                    break
                except (ManifestUnknown, ManifestBlobUnknown):
                    if attempt == STORE_ATTEMPTS - 1:
                        raise
                    await store_image(repository, outcome)
            by_repository.setdefault(repository, []).append(tag)
        size = len(outcome.body) + sum(size for _, size, _ in _all_blobs(outcome))
        size += sum(len(m.body) for m in _manifests_children_first(outcome)) - len(outcome.body)
        for repository, repo_tags in by_repository.items():
            images.append(
                ImportedImage(
                    repository=str(repository),
                    tags=tuple(repo_tags),
                    digest=str(outcome.digest),
                    media_type=outcome.media_type,
                    config_digests=tuple(dict.fromkeys(outcome.config_digests)),
                    platforms=tuple(outcome.platforms),
                    layers=outcome.layers,
                    size=size,
                    verbatim=outcome.verbatim and all(c.verbatim for c in outcome.children),
                    source=target.source,
                )
            )
    return ImportResult(
        images=tuple(images),
        blobs_stored=blobs_stored,
        blobs_existing=blobs_existing,
        bytes_stored=bytes_stored,
        archive_compression=archive.compression,
    )


def _all_blobs(outcome: _Stored) -> list[tuple[Digest, int, bytes | PreparedBlob]]:
    seen: dict[Digest, tuple[Digest, int, bytes | PreparedBlob]] = {}
    for child in outcome.children:
        for item in _all_blobs(child):
            seen.setdefault(item[0], item)
    for item in outcome.blobs:
        seen.setdefault(item[0], item)
    return list(seen.values())


def _manifests_children_first(outcome: _Stored) -> list[_Stored]:
    ordered: list[_Stored] = []
    for child in outcome.children:
        ordered.extend(_manifests_children_first(child))
    ordered.append(outcome)
    return ordered


# Re-exported for the server and tests.
__all__ = [
    "ImportOptions",
    "ImportResult",
    "ImportedImage",
    "SourceName",
    "Workspace",
    "import_archive",
    "resolve_names",
]
