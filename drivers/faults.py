"""Fault injection for object stores: fail chosen requests, count every request.

:class:`FaultyStore` wraps an :class:`~drivers.object_store.ObjectStore` and
sits *beneath* the driver's retry loop, so a test sees exactly what a flaky or
dead backend would cause: a transient fault on some calls (retried, invisible
to the client), a persistent one (retries spent, ``StorageError``, 503), or a
request that hangs until the driver's timeout cuts it. It also counts calls
and bytes per operation, which is how tests measure what an upload costs.

For tests and experiments only: nothing in the server imports it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from .object_store import Caller, ObjectInfo, ObjectStore, TransientFault, Upload

__all__ = ["FaultyStore", "FaultyUpload"]

STALL_SECONDS = 3600.0


class FaultyUpload:
    """An Upload whose requests go through the FaultyStore's fault plan."""

    def __init__(self, store: FaultyStore, inner: Upload, key: str) -> None:
        self._store = store
        self._inner = inner
        self._key = key
        self.size = inner.size
        self.exists = inner.exists

    async def upload_part(self, number: int, offset: int, data: bytes) -> None:
        await self._store._enter("upload_part", self._key, len(data))
        await self._inner.upload_part(number, offset, data)

    async def complete(self, number: int, offset: int, data: bytes) -> None:
        await self._store._enter("complete", self._key, len(data))
        await self._inner.complete(number, offset, data)

    async def abort(self) -> None:
        await self._store._enter("abort")
        await self._inner.abort()


class FaultyStore(ObjectStore):
    """An ObjectStore that fails on a plan.

    *every*: the Nth, 2Nth, 3Nth... call of each operation fails once with a
    transient fault (0: never). *down*: operations that always fail (an
    outage). *stall*: operations whose every-Nth call hangs instead of failing
    (the driver's timeout must cut it). *only*: restrict *every* and *stall*
    to these operations. *cut_streams*: every download stream breaks (a transient
    fault) after delivering this many bytes. Operation names: head, get, put, list, copy, delete,
    delete_many, start_upload, start_append, upload_part, complete, abort,
    sign, and the sub-requests of a join (``compose``, ``upload_part_copy``...).
    """

    def __init__(
        self,
        inner: ObjectStore,
        *,
        every: int = 0,
        down: Iterable[str] = (),
        stall: Iterable[str] = (),
        only: Iterable[str] | None = None,
        cut_streams: int | None = None,
    ) -> None:
        self.inner = inner
        self.every = every
        self.down = set(down)
        self.stall = set(stall)
        self.only = None if only is None else set(only)
        self.cut_streams = cut_streams
        self.name = inner.name
        self.min_part_size = inner.min_part_size
        self.part_alignment = inner.part_alignment
        self.max_parts_in_flight = inner.max_parts_in_flight
        self.max_copy_size = inner.max_copy_size
        self.native_append = inner.native_append
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        """Bytes sent to the store, by key (put, upload_part, complete)."""
        self.read: Counter[str] = Counter()
        """Bytes read from the store, by key."""
        self.copies: list[tuple[str, str]] = []
        """(source, destination) of every server-side copy."""

    @property
    def read_bytes(self) -> int:
        return sum(self.read.values())

    def reset_counts(self) -> None:
        self.calls.clear()
        self.faults.clear()
        self.written.clear()
        self.read.clear()
        self.copies.clear()

    async def _enter(self, operation: str, key: str = "", written: int = 0) -> None:
        self.calls[operation] += 1
        if operation in self.down:
            self.faults[operation] += 1
            raise TransientFault(f"injected outage of {operation}")
        targeted = self.only is None or operation in self.only
        if targeted and self.every and self.calls[operation] % self.every == 0:
            self.faults[operation] += 1
            if operation in self.stall:
                await asyncio.sleep(STALL_SECONDS)
            raise TransientFault(f"injected fault in {operation} call {self.calls[operation]}")
        if written:
            self.written[key] += written

    def _faulty(self, call: Caller) -> Caller:
        """A request gateway that injects faults into each sub-request of a join."""

        async def faulty_call(operation: str, function: Any, *args: Any, **kwargs: Any) -> Any:
            async def attempt(*inner_args: Any, **inner_kwargs: Any) -> Any:
                await self._enter(operation)
                return await function(*inner_args, **inner_kwargs)

            return await call(operation, attempt, *args, **kwargs)

        return faulty_call

    async def head(self, key: str) -> ObjectInfo:
        await self._enter("head")
        return await self.inner.head(key)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        await self._enter("get")
        data = await self.inner.get(key, start, end)
        self.read[key] += len(data)
        return data

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        await self._enter("get")
        pieces = self.inner.stream(key, start, end)
        delivered = 0
        try:
            async for piece in pieces:
                if self.cut_streams is not None and delivered + len(piece) > self.cut_streams:
                    piece = piece[: self.cut_streams - delivered]
                    if piece:
                        self.read[key] += len(piece)
                        yield piece
                    self.faults["stream"] += 1
                    raise TransientFault(f"injected: stream cut after {self.cut_streams} bytes")
                delivered += len(piece)
                self.read[key] += len(piece)
                yield piece
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        await self._enter("put", key, len(data))
        await self.inner.put(key, data, if_absent=if_absent)

    async def list(
        self, prefix: str, *, delimiter: str | None = None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], list[str]]:
        await self._enter("list")
        return await self.inner.list(prefix, delimiter=delimiter, limit=limit)

    async def copy(self, source: str, destination: str) -> None:
        await self._enter("copy")
        await self.inner.copy(source, destination)
        self.copies.append((source, destination))

    async def delete(self, key: str) -> None:
        await self._enter("delete")
        await self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._enter("delete_many")
        await self.inner.delete_many(keys)

    async def start_upload(self, key: str) -> Upload:
        await self._enter("start_upload")
        return FaultyUpload(self, await self.inner.start_upload(key), key)

    async def start_append(self, key: str) -> Upload:
        await self._enter("start_append")
        return FaultyUpload(self, await self.inner.start_append(key), key)

    async def compose(
        self, call: Caller, destination: str, sources: Sequence[ObjectInfo], scratch: str
    ) -> bool:
        self.calls["join"] += 1
        return await self.inner.compose(self._faulty(call), destination, sources, scratch)

    async def signed_url(self, key: str, expires: int) -> str | None:
        await self._enter("sign")
        return await self.inner.signed_url(key, expires)

    async def close(self) -> None:
        await self.inner.close()
