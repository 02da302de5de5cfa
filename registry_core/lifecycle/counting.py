"""A storage driver wrapper that counts the requests a job makes, by operation.

Background jobs (GC, scrub) report their storage cost; wrapping the driver
once is cheaper and more honest than counting at every call site. It
forwards everything unchanged, never alters results and holds no state but
the counters of the one job that created it, and its optional
:class:`~.pacing.RequestPacer` (the same wrapper is where a job's requests
are paced, so no call site can forget it).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..storage.driver import FileInfo, FileWriter, PathNotFound, StorageDriver, WalkFilter
from .pacing import RequestPacer

WALK_PAGE = 1000
"""Walked entries counted as one more listing request when pacing (S3 lists 1000 keys a
page; the driver hides its pages)."""


_COUNTED_ABILITIES = {
    "move_exact": "move",
    "move_whole": "move",
    "commit_small_upload": "commit_small_upload",
}
"""Optional driver abilities, each one request-sized operation, by the count it adds to."""


class CountingDriver:
    """Forwards to *inner*, counting each operation (a walk counts once, plus its entries),
    each paced by *pacer* when given (a walk takes a token per :data:`WALK_PAGE` entries)."""

    def __init__(self, inner: StorageDriver, pacer: RequestPacer | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.counts: Counter[str] = Counter()
        self.pacer = pacer if pacer is not None else RequestPacer()

    @property
    def total(self) -> int:
        return sum(count for name, count in self.counts.items() if name != "walk-entries")

    def __getattr__(self, name: str) -> Any:
        if name == "run_steps":
            # Not passed on: storage.steps then makes each step an ordinary call of this
            # wrapper, counted and paced (and seen by the tests' subclasses) one by one.
            raise AttributeError(name)
        found = getattr(self.inner, name)
        counted_as = _COUNTED_ABILITIES.get(name)
        if counted_as is None:
            return found

        # Optional abilities: counted (and paced) as one request when the inner driver has them.
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[counted_as] += 1
            async with self.pacer.request(_kind(name, args, kwargs)):
                return await found(*args, **kwargs)

        return counted

    async def read(self, path: str) -> bytes:
        self.counts["read"] += 1
        async with self.pacer.request("read"):
            return await self.inner.read(path)

    async def write(self, path: str, data: bytes) -> None:
        self.counts["write"] += 1
        async with self.pacer.request("write"):
            await self.inner.write(path, data)

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        self.counts["write_if_absent"] += 1
        async with self.pacer.request("write_if_absent"):
            return await self.inner.write_if_absent(path, data)

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        self.counts["read_stream"] += 1
        await self.pacer.tick()
        async for chunk in self.inner.read_stream(path, offset, length):
            yield chunk

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        self.counts["open_writer"] += 1
        async with self.pacer.request("open_writer"):
            return await self.inner.open_writer(path, append=append)

    async def stat(self, path: str) -> FileInfo:
        self.counts["stat"] += 1
        async with self.pacer.request("stat"):
            return await self.inner.stat(path)

    async def list(self, path: str) -> list[str]:
        self.counts["list"] += 1
        async with self.pacer.request("list"):
            return await self.inner.list(path)

    async def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        self.counts["walk"] += 1
        await self.pacer.tick()
        async for entry in self.inner.walk(path, prune):
            self.counts["walk-entries"] += 1
            if self.counts["walk-entries"] % WALK_PAGE == 0:
                await self.pacer.tick()
            yield entry

    async def move(self, source: str, destination: str) -> None:
        self.counts["move"] += 1
        async with self.pacer.request("move"):
            await self.inner.move(source, destination)

    async def delete(self, path: str) -> None:
        self.counts["delete"] += 1
        async with self.pacer.request("delete"):
            await self.inner.delete(path)

    def has_delete_many(self) -> bool:
        return callable(getattr(self.inner, "delete_many", None))

    async def delete_many(self, paths: Sequence[str]) -> None:
        """Batched deletes where the driver has them (discovered), else one by one."""
        batched = getattr(self.inner, "delete_many", None)
        if callable(batched):
            self.counts["delete_many"] += 1
            async with self.pacer.request("delete_many"):
                await batched(list(paths))
            return
        for path in paths:
            self.counts["delete"] += 1
            async with self.pacer.request("delete"):
                await _delete_quietly(self.inner, path)

    def local_path(self, path: str) -> str | None:
        return self.inner.local_path(path)

    async def signed_url(self, path: str, expires: int) -> str | None:
        return await self.inner.signed_url(path, expires)

    async def close(self) -> None:
        await self.inner.close()


SIZED_COPY_MIB = 1 << 20
"""Copies of objects up to this size are one kind of request to a latency-following pacer;
larger ones are a kind per doubling (a server-side copy's time grows with the size, and a
1 GiB layer's copy is no sign of a busy store)."""


def _kind(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The kind a paced request is timed as: the ability, and for a sized move its size class."""
    if name not in ("move_exact", "move_whole"):  # (source, destination, size)
        return name
    size = kwargs.get("size", args[2] if len(args) > 2 else None)
    if not isinstance(size, int) or size <= SIZED_COPY_MIB:
        return name
    return f"{name}/{(size // SIZED_COPY_MIB).bit_length()}"


async def _delete_quietly(driver: StorageDriver, path: str) -> None:
    with contextlib.suppress(PathNotFound):
        await driver.delete(path)
