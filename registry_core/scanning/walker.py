"""The layer walker: an image's final files, as analyzers want them, from layer streams.

Layers are read in order as streams straight from storage (never unpacked to
disk, never held whole in memory): each is decompressed (gzip, zstd or none,
told apart by its first bytes, not by a media type clients get wrong) and read
as a tar stream in a worker thread, pulling chunks from the event loop, so the
loop never blocks and there is one hop per chunk. Only files some analyzer
wants are kept; whiteouts (``.wh.NAME``) and opaque directories
(``.wh..wh..opq``) remove what lower layers put there, and a later layer's file
(or a link put in its place) shadows a lower one. This module never parses a
package format (analyzers do) and never builds a storage path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import posixpath
import tarfile
from collections.abc import AsyncIterator, Callable
from typing import IO

import attrs

from .analyzers import ANALYZERS, MAX_FILE, OS_RELEASE_PATHS, parse_os_release
from .inventory import Inventory, Package

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"


class LayerUnreadable(Exception):
    """A layer that is not a (compressed) tar stream."""


class _AsyncStreamReader(io.RawIOBase):
    """A blocking file over an async byte iterator, read from a worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._buffer = memoryview(b"")
        self._done = False
        self.aborted = False
        self.compressed_bytes = 0

    def readable(self) -> bool:
        return True

    def abort(self) -> None:
        """Make the reading thread stop at its next chunk (the scan was cancelled)."""
        self.aborted = True

    def _fetch(self) -> bytes | None:
        if self.aborted:
            raise OSError("layer read aborted")
        future = asyncio.run_coroutine_threadsafe(_next_chunk(self._chunks), self._loop)
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                # A cancelled scan (or a stopped loop) must not leave this thread waiting.
                if self.aborted or self._loop.is_closed():
                    future.cancel()
                    raise OSError("layer read aborted") from None

    def _fill(self) -> bool:
        while not self._buffer and not self._done:
            chunk = self._fetch()
            if chunk is None:
                self._done = True
            else:
                self.compressed_bytes += len(chunk)
                self._buffer = memoryview(chunk)
        return bool(self._buffer)

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def peek(self, size: int) -> bytes:
        data = b""
        while len(data) < size and self._fill():
            take = self._buffer[: size - len(data)].tobytes()
            data += take
            # Put back only after collecting: keep the peeked bytes at the front.
            self._buffer = self._buffer[len(take) :]
        self._buffer = memoryview(data + self._buffer.tobytes())
        return data


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


@attrs.define
class _LayerChanges:
    added: dict[str, bytes] = attrs.field(factory=dict)
    replaced: set[str] = attrs.field(factory=set)
    """Non-directory entries: each hides a lower file at its path."""
    deleted: list[str] = attrs.field(factory=list)
    opaque: list[str] = attrs.field(factory=list)
    compressed_bytes: int = 0


def _normalise(name: str) -> str:
    name = posixpath.normpath("/" + name).lstrip("/")
    return "" if name == "." else name


def _decompressed(raw: _AsyncStreamReader) -> IO[bytes]:
    magic = raw.peek(4)
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    if magic.startswith(_GZIP):
        import gzip

        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if magic.startswith(_ZSTD):
        try:
            import zstandard
        except ImportError:
            raise LayerUnreadable(
                "a zstd layer needs the zstandard package (cargohold[zstd])"
            ) from None

        return zstandard.ZstdDecompressor().stream_reader(buffered, read_size=1 << 20)  # type: ignore[return-value]
    return buffered


def _read_layer(
    raw: _AsyncStreamReader, wants: Callable[[str], bool], lower: dict[str, bytes]
) -> _LayerChanges:
    changes = _LayerChanges()
    try:
        with tarfile.open(fileobj=_decompressed(raw), mode="r|", bufsize=1 << 20) as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                tar.members = []  # stream mode keeps every header otherwise
                _take(tar, member, wants, lower, changes)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise LayerUnreadable(str(exc)) from None
    changes.compressed_bytes = raw.compressed_bytes
    return changes


def _take(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    wants: Callable[[str], bool],
    lower: dict[str, bytes],
    changes: _LayerChanges,
) -> None:
    path = _normalise(member.name)
    if not path:
        return
    directory, base = posixpath.split(path)
    if base == OPAQUE:
        changes.opaque.append(directory)
        return
    if base.startswith(WHITEOUT):
        changes.deleted.append(posixpath.join(directory, base[len(WHITEOUT) :]))
        return
    if member.isdir():
        return
    changes.replaced.add(path)
    if not wants(path):
        return
    if member.isfile() and member.size <= MAX_FILE:
        handle = tar.extractfile(member)
        if handle is not None:
            changes.added[path] = handle.read()
    elif member.islnk():
        target = _normalise(member.linkname)
        content = changes.added.get(target, lower.get(target))
        if content is not None:
            changes.added[path] = content


def _apply(files: dict[str, bytes], changes: _LayerChanges) -> None:
    for directory in changes.opaque:
        prefix = directory + "/" if directory else ""
        for path in [p for p in files if p.startswith(prefix)]:
            del files[path]
    for gone in changes.deleted:
        for path in [p for p in files if p == gone or p.startswith(gone + "/")]:
            del files[path]
    for path in changes.replaced:
        files.pop(path, None)
    files.update(changes.added)


def wanted(path: str) -> bool:
    """True for a path the OS detection or any registered analyzer reads."""
    return path in OS_RELEASE_PATHS or any(a.wants(path) for a in ANALYZERS.values())


@attrs.define
class WalkStats:
    layers: int = 0
    compressed_bytes: int = 0


async def final_files(
    layers: list[AsyncIterator[bytes]] | list[Callable[[], AsyncIterator[bytes]]],
    wants: Callable[[str], bool] = wanted,
    stats: WalkStats | None = None,
) -> dict[str, bytes]:
    """The wanted files of the image the layers (bottom first) stack up to."""
    loop = asyncio.get_running_loop()
    files: dict[str, bytes] = {}
    for layer in layers:
        chunks = layer() if callable(layer) else layer
        raw = _AsyncStreamReader(chunks, loop)
        try:
            changes = await loop.run_in_executor(None, _read_layer, raw, wants, files)
        except BaseException:
            # Cancelled (or failed): stop the thread; the stream is left to the garbage
            # collector, since closing it while the thread may be reading it would fail.
            raw.abort()
            raise
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
        _apply(files, changes)
        if stats is not None:
            stats.layers += 1
            stats.compressed_bytes += changes.compressed_bytes
    return files


def inventory_of(files: dict[str, bytes], platform: str = "") -> Inventory:
    """Run every analyzer over its files (run it off the event loop for big images)."""
    os_info = None
    for path in OS_RELEASE_PATHS:
        if path in files:
            os_info = parse_os_release(files[path])
            if os_info is not None:
                break
    packages: list[Package] = []
    for analyzer in ANALYZERS.values():
        mine = {path: data for path, data in files.items() if analyzer.wants(path)}
        if mine:
            packages.extend(analyzer.analyze(mine))
    packages.sort(key=lambda p: (p.kind, p.name, p.version, p.path))
    return Inventory(os=os_info, packages=tuple(packages), platform=platform)
