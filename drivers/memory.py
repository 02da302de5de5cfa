"""The in-memory driver (fsspec ``memory``): for tests and throwaway registries.

fsspec's MemoryFileSystem keeps its store on the class, shared by every
instance; each driver here gets a private store so two registries in one
process never see each other's objects. All calls run inline on the event
loop: they never block, and running them without an ``await`` in between is
what makes ``write_if_absent`` atomic.

fsspec's memory files are shared, live objects (opening one for writing
publishes it at once; every reader shares one file position), so writers
here gather their bytes and publish a new object on commit, and readers
slice a snapshot: an object in the store is replaced, never changed in place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fsspec.implementations.memory import MemoryFileSystem

from registry_core.storage.driver import FileWriter, ObjectChanged, PathNotFound

from .fsspec_driver import READ_CHUNK, FsspecDriver


class MemoryWriter:
    """Gathers bytes; commit publishes them (after any existing ones when appending)."""

    def __init__(self, driver: MemoryDriver, full: str, size: int, append: bool) -> None:
        self._driver = driver
        self._full = full
        self._size = size
        self._append = append
        self._parts: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self._size += len(data)

    async def commit(self) -> None:
        store = self._driver.fs.store
        existing = store.get(self._full) if self._append else None
        head = existing.getvalue() if existing is not None else b""
        await self._driver._call(
            self._driver.fs.pipe_file, self._full, head + b"".join(self._parts)
        )
        self._parts = []

    async def cancel(self) -> None:
        self._parts = []


class MemoryDriver(FsspecDriver):
    name = "memory"

    def __init__(self, root: str = "/cargohold") -> None:
        fs = MemoryFileSystem(skip_instance_cache=True)
        fs.store = {}
        fs.pseudo_dirs = [""]
        super().__init__(fs, "/" + root.strip("/"), blocking=False)

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        full = self._full(path)
        if full in self.fs.store:
            return False
        self.fs.pipe_file(full, data)
        return True

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        full = self._full(path)
        existing = self.fs.store.get(full) if append else None
        return MemoryWriter(self, full, existing.size if existing is not None else 0, append)

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        stored = self.fs.store.get(self._full(path))
        if stored is None:
            raise PathNotFound(path)
        end = stored.size if length is None else min(stored.size, offset + length)
        for start in range(offset, end, READ_CHUNK):
            yield bytes(stored.getbuffer()[start : min(start + READ_CHUNK, end)])

    async def move(self, source: str, destination: str) -> None:
        full = self._full(source)
        if full not in self.fs.store:
            raise PathNotFound(source)
        target = self._full(destination)
        self.fs.store[target] = self.fs.store.pop(full)
        self.fs.store[target].path = target

    async def move_exact(self, source: str, destination: str, size: int) -> None:
        """``move``, once *source* is seen to hold *size* bytes (one process owns this
        store, and nothing awaits between the check and the move: one step)."""
        full = self._full(source)
        entry = self.fs.store.get(full)
        if entry is None:
            raise PathNotFound(source)
        held = len(entry.getbuffer())
        if held != size:
            raise ObjectChanged(f"{source} holds {held} bytes, not {size}")
        await self.move(source, destination)


def open_memory(url: str, **options: object) -> MemoryDriver:
    """Factory for ``memory://[name]`` URLs: each call is a new, empty store."""
    from urllib.parse import urlsplit

    if options:
        raise ValueError(f"the memory driver takes no options (got {', '.join(options)})")
    parts = urlsplit(url)
    return MemoryDriver((parts.netloc + parts.path) or "cargohold")
