"""A StorageDriver over any synchronous fsspec filesystem.

The generic half every fsspec-backed driver shares: path mapping, error
translation and running blocking calls off the event loop. Backends override
what their filesystem can do better (atomic create, local paths, appends).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import fsspec

from registry_core.storage.driver import (
    FileInfo,
    FileWriter,
    PathNotFound,
    StorageError,
    WalkFilter,
    check_path,
)

T = TypeVar("T")
READ_CHUNK = 1 << 20


class FsspecWriter:
    """A writer over an fsspec file object opened for writing or appending."""

    def __init__(self, driver: FsspecDriver, handle: Any, size: int) -> None:
        self._driver = driver
        self._handle = handle
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        await self._driver._call(self._handle.write, data)
        self._size += len(data)

    async def commit(self) -> None:
        await self._driver._call(self._handle.close)

    async def cancel(self) -> None:
        await self._driver._call(self._handle.close)


class FsspecDriver:
    """StorageDriver over a synchronous fsspec filesystem rooted at *root*."""

    name = "fsspec"

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, *, blocking: bool = True) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self._blocking = blocking

    def _full(self, path: str) -> str:
        """The backend path of an object (never the root: "" is not an object)."""
        return f"{self.root}/{check_path(path)}"

    def _dir(self, path: str) -> str:
        """The backend path of a directory to list or walk; "" is the driver's root."""
        return self._full(path) if path else self.root

    def _relative(self, full: str) -> str:
        full = full.rstrip("/")
        prefix = self.root + "/"
        return full[len(prefix) :] if full.startswith(prefix) else full.lstrip("/")

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a filesystem call: off the loop for real I/O, inline for memory."""
        try:
            if self._blocking:
                return await asyncio.to_thread(functools.partial(func, *args, **kwargs))
            return func(*args, **kwargs)
        except FileNotFoundError as exc:
            raise PathNotFound(str(exc.filename or (args[0] if args else ""))) from None
        except (PathNotFound, StorageError):
            raise
        except OSError as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    async def read(self, path: str) -> bytes:
        full = self._full(path)
        try:
            return await self._call(self.fs.cat_file, full)
        except IsADirectoryError:
            raise PathNotFound(path) from None

    async def write(self, path: str, data: bytes) -> None:
        await self._call(self.fs.pipe_file, self._full(path), data)

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        full = self._full(path)
        if await self._call(self.fs.exists, full):
            return False
        await self._call(self.fs.pipe_file, full, data)
        return True

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        handle = await self._call(self.fs.open, self._full(path), "rb")
        try:
            if offset:
                await self._call(handle.seek, offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await self._call(handle.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await self._call(handle.close)

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        full = self._full(path)
        size = 0
        if append:
            try:
                size = (await self.stat(path)).size
            except PathNotFound:
                size = 0
        handle = await self._call(self.fs.open, full, "ab" if append else "wb")
        return FsspecWriter(self, handle, size)

    async def stat(self, path: str) -> FileInfo:
        info = await self._call(self.fs.info, self._dir(path))
        return _file_info(path, info)

    async def list(self, path: str) -> list[str]:
        full = self._dir(path)
        entries = await self._call(self.fs.ls, full, detail=False)
        names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]
        if names == [full.rsplit("/", 1)[-1]] and not await self._call(self.fs.isdir, full):
            raise PathNotFound(path)
        return names

    async def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        def collect() -> list[FileInfo]:
            found: list[FileInfo] = []
            full = self._dir(path)
            if not self.fs.isdir(full):
                return found
            for directory, dirs, files in self.fs.walk(full, detail=True, topdown=True):
                for name in list(dirs):
                    relative = self._relative(f"{directory}/{name}")
                    found.append(_file_info(relative, dirs[name]))
                    if prune is not None and prune(relative):
                        del dirs[name]
                for name, info in files.items():
                    found.append(_file_info(self._relative(f"{directory}/{name}"), info))
            return found

        for entry in await self._call(collect):
            yield entry

    async def move(self, source: str, destination: str) -> None:
        await self._call(self.fs.mv, self._full(source), self._full(destination))

    async def delete(self, path: str) -> None:
        full = self._full(path)
        if not await self._call(self.fs.exists, full):
            raise PathNotFound(path)
        await self._call(self.fs.rm, full, recursive=True)

    def local_path(self, path: str) -> str | None:
        return None

    async def signed_url(self, path: str, expires: int) -> str | None:
        return None

    async def close(self) -> None:
        return None


def _file_info(path: str, info: dict[str, Any]) -> FileInfo:
    mtime = info.get("mtime") or info.get("created") or 0.0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return FileInfo(
        path=path,
        size=int(info.get("size") or 0),
        mtime=float(mtime),
        is_dir=info.get("type") == "directory",
    )
