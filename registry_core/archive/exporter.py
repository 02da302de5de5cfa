"""Export one image as a ``docker save`` tarball that ``docker load`` and skopeo read.

The tarball is the classic format: ``manifest.json``, the config as
``<hex>.json`` and every layer uncompressed as ``<diff_id hex>.tar``. Layers
are fetched through a :class:`ImageSource` (the library's repositories, or an
HTTP client the command line plugs in), checked against their digest, then
decompressed into a temporary file and checked against the config's
``rootfs.diff_ids`` before they go into the tarball. The tarball is a stream
(the server sends it as it is made); written to a file, it goes next to its
destination and is renamed into place only when complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import attrs
import msgspec

from .. import mediatypes as mt
from ..digest import Digest, Hasher
from ..errors import ManifestInvalid, ManifestUnknown
from ..registry import Repository
from .compression import Decompressor, layer_compression

GATHER: int = 1 << 20
Progress = Callable[[int], None]


class ImageSource(Protocol):
    """Where an exported image comes from."""

    async def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest bytes and media type that *reference* (a tag or digest) names."""
        ...

    def blob(self, digest: Digest) -> AsyncIterator[bytes]:
        """The blob's bytes as a stream."""
        ...


class RepositorySource:
    """An :class:`ImageSource` over a repository of this library (no HTTP)."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    async def manifest(self, reference: str) -> tuple[bytes, str]:
        stored = await self.repository.manifests.get(reference)
        return stored.body, stored.media_type

    async def blob(self, digest: Digest) -> AsyncIterator[bytes]:
        await self.repository.blobs.stat(digest)
        async for chunk in self.repository.blobs.read(digest):
            yield chunk


@attrs.frozen
class ExportedImage:
    repo_tag: str
    manifest_digest: str
    config_digest: str
    diff_ids: tuple[str, ...]
    platform: str

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self) | {"diff_ids": list(self.diff_ids)}


class _Descriptor(msgspec.Struct):
    mediaType: str = ""
    digest: str = ""
    size: int = 0
    platform: dict[str, Any] | None = None
    urls: list[str] | None = None


class _Manifest(msgspec.Struct):
    config: _Descriptor | None = None
    layers: list[_Descriptor] = []
    manifests: list[_Descriptor] = []


class _Config(msgspec.Struct):
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    rootfs: dict[str, Any] | None = None


def _matches(platform: dict[str, Any], wanted: str) -> bool:
    parts = wanted.split("/")
    have = [platform.get("os", ""), platform.get("architecture", ""), platform.get("variant", "")]
    return all(a == b for a, b in zip(parts, have, strict=False))


async def _resolve_image(
    source: ImageSource, reference: str, platform: str | None
) -> tuple[bytes, Digest, _Manifest]:
    body, media_type = await source.manifest(reference)
    doc = msgspec.json.decode(body, type=_Manifest)
    if media_type in mt.INDEXES or doc.manifests:
        candidates = [
            d for d in doc.manifests if d.platform and d.platform.get("os") not in (None, "unknown")
        ]
        wanted = platform or "linux/amd64"
        chosen = [d for d in candidates if _matches(d.platform or {}, wanted)]
        if not chosen and platform is None and len(candidates) == 1:
            chosen = candidates
        if not chosen:
            available = sorted(
                "/".join(
                    p
                    for p in (
                        d.platform.get("os"),
                        d.platform.get("architecture"),
                        d.platform.get("variant"),
                    )
                    if p
                )
                for d in candidates
                if d.platform
            )
            raise ManifestUnknown(
                f"{reference} has no image for platform {wanted}; it has {', '.join(available)}",
                detail={"platforms": available},
            )
        body, media_type = await source.manifest(chosen[0].digest)
        doc = msgspec.json.decode(body, type=_Manifest)
    if doc.config is None:
        raise ManifestInvalid(f"{reference} is not an image manifest")
    return body, Digest.of(body), doc


async def _read_all(source: ImageSource, digest: Digest, limit: int) -> bytes:
    parts = []
    size = 0
    async for chunk in source.blob(digest):
        size += len(chunk)
        if size > limit:
            raise ManifestInvalid(f"config {digest} is over {limit} bytes")
        parts.append(chunk)
    data = b"".join(parts)
    if Digest.of(data, digest.algorithm) != digest:
        raise ManifestInvalid(f"config blob does not match its digest {digest}")
    return data


async def _spool_layer(
    source: ImageSource,
    descriptor: _Descriptor,
    diff_id: Digest,
    directory: str,
    progress: Progress | None,
) -> str:
    """The layer, uncompressed, in a temporary file; checked against digest and diff_id."""
    digest = Digest.parse(descriptor.digest)
    kind = layer_compression(descriptor.mediaType)
    if kind is None:
        raise ManifestInvalid(f"layer {digest} has media type {descriptor.mediaType!r}, not a tar")
    decompressor = Decompressor(kind, f"layer {digest}")
    compressed = Hasher(digest.algorithm)
    uncompressed = Hasher(diff_id.algorithm)
    fd, path = tempfile.mkstemp(prefix="cargohold-layer-", suffix=".tar", dir=directory)
    out = os.fdopen(fd, "wb")

    def step(buffer: bytes) -> None:
        compressed.update(buffer)
        data = decompressor.feed(buffer)
        uncompressed.update(data)
        out.write(data)

    try:
        parts: list[bytes] = []
        gathered = 0
        async for chunk in source.blob(digest):
            parts.append(chunk)
            gathered += len(chunk)
            if progress is not None:
                progress(len(chunk))
            if gathered >= GATHER:
                await asyncio.to_thread(step, b"".join(parts))
                parts, gathered = [], 0
        if parts:
            await asyncio.to_thread(step, b"".join(parts))
        await asyncio.to_thread(decompressor.finish)
        out.close()
        if compressed.digest() != digest:
            raise ManifestInvalid(f"layer blob does not match its digest {digest}")
        if uncompressed.digest() != diff_id:
            raise ManifestInvalid(
                f"layer {digest} unpacks to {uncompressed.digest()}, the config says {diff_id}"
            )
    except BaseException:
        out.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return path


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _entry(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + _padding(len(data))


@attrs.define
class DockerArchiveStream:
    """A ``docker save`` tarball being produced: what it holds, and its bytes.

    The image is resolved (manifest, platform, config) before the first byte,
    so a missing image is an error, not a broken tarball; layers are fetched,
    verified and unpacked one at a time while ``chunks`` is iterated.
    """

    image: ExportedImage
    chunks: AsyncIterator[bytes]


async def docker_archive_stream(
    source: ImageSource | Repository,
    reference: str,
    *,
    repo_tag: str | None = None,
    platform: str | None = None,
    temp_dir: str | None = None,
    progress: Progress | None = None,
) -> DockerArchiveStream:
    """The image *reference* names as a ``docker save`` tarball, streamed.

    *repo_tag* is the name ``docker load`` gives it (default for a repository:
    its name and *reference*, when that is a tag). *platform*
    (``os/arch[/variant]``) picks an image out of an index (default
    ``linux/amd64``, or the only one). Each layer passes through one temporary
    file in *temp_dir* (its uncompressed size must precede it in the tar).
    """
    if isinstance(source, Repository):
        if repo_tag is None and ":" not in reference:
            repo_tag = f"{source.name}:{reference}"
        source = RepositorySource(source)
    _body, manifest_digest, doc = await _resolve_image(source, reference, platform)
    assert doc.config is not None
    config_digest = Digest.parse(doc.config.digest)
    config = await _read_all(source, config_digest, 16 << 20)
    try:
        config_doc = msgspec.json.decode(config, type=_Config)
        diff_ids = [Digest.parse(d) for d in ((config_doc.rootfs or {}).get("diff_ids") or [])]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestInvalid(f"config {config_digest} is not an image config: {exc}") from None
    layers = [d for d in doc.layers if not d.urls]
    if len(diff_ids) != len(layers):
        raise ManifestInvalid(f"the config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
    platform_text = "/".join(
        p for p in (config_doc.os, config_doc.architecture, config_doc.variant) if p
    )
    image = ExportedImage(
        repo_tag=repo_tag or "",
        manifest_digest=str(manifest_digest),
        config_digest=str(config_digest),
        diff_ids=tuple(str(d) for d in diff_ids),
        platform=platform_text,
    )
    image_source = source

    async def chunks() -> AsyncIterator[bytes]:
        yield _entry(f"{config_digest.hex}.json", config)
        work = await asyncio.to_thread(tempfile.mkdtemp, prefix="cargohold-export-", dir=temp_dir)
        try:
            written: set[str] = set()
            names = []
            for descriptor, diff_id in zip(layers, diff_ids, strict=True):
                name = f"{diff_id.hex}.tar"
                names.append(name)
                if name in written:
                    continue
                path = await _spool_layer(image_source, descriptor, diff_id, work, progress)
                try:
                    size = os.path.getsize(path)
                    yield _header(name, size)
                    with open(path, "rb") as fh:
                        while data := await asyncio.to_thread(fh.read, GATHER):
                            yield data
                    yield _padding(size)
                finally:
                    os.unlink(path)
                written.add(name)
        finally:
            await asyncio.to_thread(_rmtree, work)
        entry: dict[str, Any] = {
            "Config": f"{config_digest.hex}.json",
            "RepoTags": [repo_tag] if repo_tag else None,
            "Layers": names,
        }
        yield _entry("manifest.json", json.dumps([entry]).encode())
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    return DockerArchiveStream(image, chunks())


async def export_docker_archive(
    source: ImageSource | Repository,
    reference: str,
    dest: str | os.PathLike[str],
    *,
    repo_tag: str | None = None,
    platform: str | None = None,
    temp_dir: str | None = None,
    progress: Progress | None = None,
) -> ExportedImage:
    """Write :func:`docker_archive_stream` to *dest* (renamed into place when complete)."""
    dest = os.fspath(dest)
    stream = await docker_archive_stream(
        source,
        reference,
        repo_tag=repo_tag,
        platform=platform,
        temp_dir=temp_dir or os.path.dirname(os.path.abspath(dest)),
        progress=progress,
    )
    partial = dest + ".part"
    try:
        out = await asyncio.to_thread(open, partial, "wb")
        try:
            async for chunk in stream.chunks:
                await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
        os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return stream.image


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "DockerArchiveStream",
    "ExportedImage",
    "ImageSource",
    "RepositorySource",
    "docker_archive_stream",
    "export_docker_archive",
]
