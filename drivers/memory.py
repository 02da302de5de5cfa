"""The in-memory driver (fsspec ``memory``): for tests and throwaway registries.

fsspec's MemoryFileSystem keeps its store on the class, shared by every
instance; each driver here gets a private store so two registries in one
process never see each other's objects. All calls run inline on the event
loop: they never block, and running them without an ``await`` in between is
what makes ``write_if_absent`` atomic.
"""

from __future__ import annotations

from fsspec.implementations.memory import MemoryFileSystem

from registry_core.storage.driver import PathNotFound

from .fsspec_driver import FsspecDriver


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

    async def move(self, source: str, destination: str) -> None:
        full = self._full(source)
        if full not in self.fs.store:
            raise PathNotFound(source)
        target = self._full(destination)
        self.fs.store[target] = self.fs.store.pop(full)
        self.fs.store[target].path = target


def open_memory(url: str, **options: object) -> MemoryDriver:
    """Factory for ``memory://[name]`` URLs: each call is a new, empty store."""
    from urllib.parse import urlsplit

    if options:
        raise ValueError(f"the memory driver takes no options (got {', '.join(options)})")
    parts = urlsplit(url)
    return MemoryDriver((parts.netloc + parts.path) or "cargohold")
