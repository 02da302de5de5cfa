"""A StorageDriver over an object store: what the S3, GCS and Azure drivers share.

This module owns the mapping of the driver contract onto a flat store of
immutable objects: paths become keys under a root prefix, directories are key
prefixes, appends are emulated where the store cannot append, and every backend
request goes through one retry loop (timeout, exponential backoff, then
:class:`StorageError`). It never speaks a cloud's wire protocol (an
:class:`ObjectStore` in ``s3.py``, ``gcs.py`` or ``azure.py`` does) and never
builds a registry path (the layout module does).

Appends. A store that can append (Azure: commit the block list again with new
blocks) says so with ``native_append``. For the others, each append session
stores its bytes as one *part object* beside the path::

    <path>~parts/<start offset: 20 digits>-<session opened at, µs: 17 digits>-<8 hex, random>

``~`` is outside the driver path alphabet, so no valid path collides with a part
and listings hide them. The object is its parts in offset order; for one offset
the newest session wins (the empty part that creates an upload is replaced by
its first chunk, a retried chunk replaces the attempt before it). ``stat`` sums
the parts, ``read_stream`` concatenates them, and ``move`` joins them with the
store's server-side operation when its rules allow (S3 multipart copy, GCS
compose), by streaming them through otherwise. A single part is moved with one
server-side copy, so a one-request upload costs one write of its bytes plus one
copy. A plain object at ``<path>`` wins over parts: stale parts are invisible
and are removed by ``move`` and ``delete``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import random
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from typing import Any, ClassVar, Protocol, TypeVar, cast
from urllib.parse import urlsplit

import attrs

from registry_core.storage.driver import (
    DriverSettings,
    FileInfo,
    FileWriter,
    InvalidPath,
    ObjectChanged,
    PathNotFound,
    StorageError,
    WalkFilter,
    check_path,
)

LOGGER = logging.getLogger("cargohold.storage")
T = TypeVar("T")

PARTS = "~parts"
"""Suffix of the hidden folder holding an emulated-append object's parts."""
_PART_NAME = re.compile(r"^(\d{20})-(\d{17})(?:-[0-9a-f]{8})?$")
"""A part's name; the random suffix (absent in parts of earlier versions) keeps two
sessions opened in one microsecond apart: a part is written once, by one writer, so its
key names its bytes (``_Layout.version`` rests on that)."""

READ_RANGE = 4 * 1024 * 1024
"""Bytes fetched by one ranged GET when a store streams by ranges."""
READ_CHUNK = 1024 * 1024
"""Bytes handed on at once while streaming an object out (small pieces are gathered)."""
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
SLOW_OPERATION_FACTOR = 10
"""Server-side copies and joins may take this many times the request timeout."""
SLOW_OPERATIONS = frozenset({"copy", "compose", "upload_part_copy", "complete"})
PARTS_HINTS = 4096
FANOUT = 16
"""Concurrent requests for one listing walk or bulk delete."""


# -- what a backend raises ---------------------------------------------------------


class KeyMissing(Exception):
    """The key does not exist (never retried; becomes PathNotFound)."""


class PreconditionFailed(Exception):
    """A conditional write found the key present."""


class TransientFault(Exception):
    """A fault worth retrying: timeout, connection reset, 5xx, throttling."""


@attrs.frozen
class ObjectInfo:
    key: str
    size: int
    mtime: float


Caller = Callable[..., Awaitable[Any]]
"""``call(operation_name, coroutine_function, *args, **kwargs)``: one retried request."""


class Upload(Protocol):
    """One object written in parts, published by ``complete``."""

    size: int
    """Bytes the object already holds (non-zero only for a native append)."""
    exists: bool
    """The object existed before (native append only)."""

    async def upload_part(self, number: int, offset: int, data: bytes) -> None:
        """Store one part (numbered from 1; *offset* counts the bytes of this upload)."""
        ...

    async def complete(self, number: int, offset: int, data: bytes) -> None:
        """Store the last part (possibly empty) and publish the object."""
        ...

    async def abort(self) -> None: ...


class ObjectStore(abc.ABC):
    """One bucket (or container) of one object store, the requests the driver needs.

    Every method is one request, or a short sequence that is safe to repeat, so
    the driver can retry it as a whole. Keys are full keys inside the bucket.
    Raise :class:`KeyMissing`, :class:`PreconditionFailed` or
    :class:`TransientFault` as they apply; anything else is a permanent failure.
    """

    name: ClassVar[str] = "object-store"
    min_part_size: ClassVar[int] = 1
    """Smallest size of every part but the last of an Upload."""
    part_alignment: ClassVar[int] = 1
    """Every part but the last of an Upload is a multiple of this."""
    max_parts_in_flight: ClassVar[int] = 2
    """Parts of one Upload sent concurrently (1: strictly in order)."""
    max_copy_size: ClassVar[int | None] = None
    """Largest object ``copy`` takes in one request; bigger ones go through ``compose``."""
    native_append: ClassVar[bool] = False
    """True when ``start_append`` continues an object in place (no part objects)."""

    @abc.abstractmethod
    async def head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` of an object (all of it without a range)."""

    async def stream(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of an object, in pieces, from as few requests as the store
        allows (this default: ranged ``get`` calls). The driver resumes a stream that
        breaks from where it stopped, so a store need not retry inside it."""
        for first in range(start, end, READ_RANGE):
            yield await self.get(key, first, min(first + READ_RANGE, end))

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None: ...

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, delimiter: str | None = None, limit: int | None = None
    ) -> tuple[list[ObjectInfo], list[str]]:
        """Objects under *prefix*, and with a delimiter the common prefixes (each ending in it)."""

    @abc.abstractmethod
    async def copy(self, source: str, destination: str) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete one object; a missing one is not an error."""

    async def delete_many(self, keys: Sequence[str]) -> None:
        await bounded(self.delete(key) for key in keys)

    @abc.abstractmethod
    async def start_upload(self, key: str) -> Upload: ...

    async def start_append(self, key: str) -> Upload:
        """Continue an object in place (only when ``native_append``)."""
        raise NotImplementedError

    async def compose(
        self, call: Caller, destination: str, sources: Sequence[ObjectInfo], scratch: str
    ) -> bool:
        """Join *sources* into *destination* server-side; False when the store's rules forbid.

        Each request goes through *call*; temporary objects, if any, go under
        *scratch* and are removed before returning.
        """
        return False

    async def signed_url(self, key: str, expires: int) -> str | None:
        return None

    async def close(self) -> None:
        return None


class FsspecObjectStore(ObjectStore):
    """An ObjectStore whose session is an async fsspec filesystem.

    The filesystem is created lazily on the running event loop with the user's
    storage options unchanged, and reused by every request of the process (one
    connection pool); on another loop (a test's next loop) a new one is made.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)
        self._fs: Any = None
        self._fs_loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[Any] | None = None

    @abc.abstractmethod
    async def connect(self, loop: asyncio.AbstractEventLoop) -> Any:
        """A new async filesystem bound to *loop*, ready for requests."""

    async def disconnect(self, fs: Any) -> None:
        """Close the filesystem's session."""

    async def filesystem(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._fs is not None and self._fs_loop is loop:
            return self._fs
        if self._connecting is None or self._connecting.get_loop() is not loop:
            self._connecting = loop.create_task(self.connect(loop))
        connecting = self._connecting
        try:
            fs = await asyncio.shield(connecting)
        except BaseException:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
            raise
        self._fs, self._fs_loop = fs, loop
        return fs

    async def close(self) -> None:
        fs, self._fs, self._connecting = self._fs, None, None
        loop, self._fs_loop = self._fs_loop, None
        if fs is not None and loop is asyncio.get_running_loop():
            await self.disconnect(fs)


# -- parts of an emulated append --------------------------------------------------------


def parts_prefix(key: str) -> str:
    return f"{key}{PARTS}/"


def part_key(key: str, offset: int, stamp: int) -> str:
    return f"{parts_prefix(key)}{offset:020d}-{stamp:017d}-{secrets.token_hex(4)}"


def _now_us() -> int:
    return time.time_ns() // 1000


@attrs.frozen
class Part:
    key: str
    offset: int
    size: int
    stamp: int


def parts_version(keys: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]


def assemble(infos: Iterable[ObjectInfo], prefix: str) -> list[Part]:
    """The parts that make up an object, in order: newest session per offset, no gaps."""
    newest: dict[int, Part] = {}
    for info in infos:
        found = _PART_NAME.match(info.key[len(prefix) :])
        if found is None:
            continue
        part = Part(info.key, int(found[1]), info.size, int(found[2]))
        held = newest.get(part.offset)
        if held is None or (part.stamp, part.key) > (held.stamp, held.key):
            newest[part.offset] = part
    chosen: list[Part] = []
    total = 0
    for offset in sorted(newest):
        if offset < total:
            continue  # inside a part already taken: an older, longer-lived attempt
        if offset > total:
            break  # a gap: nothing after it belongs to the object
        chosen.append(newest[offset])
        total += newest[offset].size
    return chosen


@attrs.frozen
class _Layout:
    """How an object is stored: plainly, as parts, or not at all."""

    plain: ObjectInfo | None
    parts: tuple[Part, ...] = ()
    stray: tuple[str, ...] = ()
    """Every key under the object's parts folder (cleanup)."""
    has_parts_folder: bool = False
    listed: tuple[ObjectInfo, ...] = ()
    """Every object under the parts folder (what a version after one more part needs)."""

    @classmethod
    def of_parts(cls, listed: Iterable[ObjectInfo], prefix: str) -> _Layout:
        """An object stored only as the parts *listed* under *prefix* (no plain object)."""
        listed = tuple(listed)
        return cls(None, tuple(assemble(listed, prefix)), (), True, listed)

    @property
    def version(self) -> str | None:
        """Which parts make the object: their keys are unique and each part is written
        once, so equal versions mean equal bytes (None: a plain object, or nothing)."""
        if self.plain is not None or not self.parts:
            return None
        return parts_version(part.key for part in self.parts)

    @property
    def exists(self) -> bool:
        return self.plain is not None or self.has_parts_folder

    @property
    def size(self) -> int:
        if self.plain is not None:
            return self.plain.size
        return sum(part.size for part in self.parts)

    @property
    def mtime(self) -> float:
        if self.plain is not None:
            return self.plain.mtime
        return max((part.stamp for part in self.parts), default=0) / 1e6

    def segments(self) -> list[tuple[str, int, int]]:
        """(key, offset in the object, size) of every stored piece, in order."""
        if self.plain is not None:
            return [(self.plain.key, 0, self.plain.size)]
        return [(part.key, part.offset, part.size) for part in self.parts if part.size]


# -- the driver ----------------------------------------------------------------------


class ObjectStoreDriver:
    """StorageDriver over one ObjectStore, rooted at a key prefix."""

    redirect_default = True
    """Blob GETs redirect to signed URLs unless the config says otherwise."""

    def __init__(
        self, store: ObjectStore, root: str = "", settings: DriverSettings | None = None
    ) -> None:
        root = root.strip("/")
        if root:
            check_path(root)
        self.store = store
        self.root = root
        self.settings = settings or DriverSettings()
        self.name = store.name
        alignment = max(store.part_alignment, 1)
        part_size = max(self.settings.part_size, store.min_part_size, alignment)
        self.part_size = -(-part_size // alignment) * alignment
        # Keys this process appended to lately: their stat and reads look for parts at
        # once instead of after a plain HEAD fails (a hint only: both are still asked).
        self._parts_hint: OrderedDict[str, None] = OrderedDict()
        self._appendable: Callable[[str], bool] | None = None
        self._leaf: Callable[[str], bool] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} root={self.root!r}>"

    def declare_layout(
        self, *, appendable: Callable[[str], bool], leaf: Callable[[str], bool]
    ) -> None:
        """Declare what the caller's layout guarantees about paths, to save requests by it.

        *appendable*: the paths that may ever be opened for append. Every other path is
        only ever written whole, so it never has parts: a read or stat that misses it, a
        delete of it and the lookup before a move of it skip the listing of its parts
        folder (on a push: every link or setting not there yet, every upload folder
        removed). Opening such a path for append is refused, as the caller's bug.

        *leaf*: paths that are never folders (nothing is ever stored below them): a stat
        that misses one needs no folder listing (a blob not stored yet: one HEAD), and a
        delete of one lists nothing below it.

        Without a declaration any path may have parts and be a folder, as before.
        """
        self._appendable, self._leaf = appendable, leaf

    def _whole(self, path: str) -> bool:
        """*path* is declared never appended to: a plain object or nothing, never parts."""
        return self._appendable is not None and not self._appendable(path)

    def _is_leaf(self, path: str) -> bool:
        """*path* is declared never to be a folder."""
        return self._leaf is not None and self._leaf(path)

    # -- keys ---------------------------------------------------------------------

    def _key(self, path: str) -> str:
        check_path(path)
        return f"{self.root}/{path}" if self.root else path

    def _prefix(self, path: str) -> str:
        """The key prefix of everything below *path* ("" means the root)."""
        key = self._key(path) if path else self.root
        return f"{key}/" if key else ""

    # -- one request, retried ------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        function: Callable[..., Awaitable[T]],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """Run one backend request with a timeout, retrying transient faults with backoff."""
        timeout = self.settings.timeout
        if operation in SLOW_OPERATIONS:
            timeout *= SLOW_OPERATION_FACTOR
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(timeout):
                    return await function(*args, **kwargs)
            except (KeyMissing, PreconditionFailed, StorageError):
                raise
            except (TransientFault, TimeoutError) as exc:
                attempt = await self._backoff(operation, attempt, exc)
            except Exception as exc:
                raise StorageError(f"{self.name} {operation}: {type(exc).__name__}: {exc}") from exc

    async def _backoff(self, operation: str, attempt: int, exc: BaseException) -> int:
        """Wait before retry number *attempt* + 1, or raise StorageError when retries are spent."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt >= self.settings.retries:
            raise StorageError(
                f"{self.name} {operation} failed {attempt + 1} times, last: {reason}"
            ) from exc
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
        LOGGER.warning(
            "%s %s failed (%s); retry %d/%d in %.2fs",
            self.name,
            operation,
            reason,
            attempt + 1,
            self.settings.retries,
            delay,
        )
        await asyncio.sleep(delay)
        return attempt + 1

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self._call("head", self.store.head, key)
        except KeyMissing:
            return None

    async def _list_all(self, prefix: str) -> list[ObjectInfo]:
        objects, _ = await self._call("list", self.store.list, prefix)
        return objects

    def _hint_parts(self, key: str) -> None:
        self._parts_hint[key] = None
        self._parts_hint.move_to_end(key)
        while len(self._parts_hint) > PARTS_HINTS:
            self._parts_hint.popitem(last=False)

    def _forget_parts(self, key: str) -> None:
        self._parts_hint.pop(key, None)
        below = f"{key}/"
        for hinted in [k for k in self._parts_hint if k.startswith(below)]:
            del self._parts_hint[hinted]

    async def _layout(self, key: str, *, plain_first: bool = True, whole: bool = False) -> _Layout:
        """Where *key*'s bytes are. *plain_first*: look at the parts only when no plain object
        (one request for plain objects), unless this process appended to *key* lately.
        *whole*: the key never has parts (``declare_layout``), only its object counts."""
        if self.store.native_append or whole:
            return _Layout(await self._head(key))
        if plain_first and key not in self._parts_hint:
            plain = await self._head(key)
            if plain is not None:
                return _Layout(plain)
            listed = await self._list_all(parts_prefix(key))
        else:
            plain, listed = await asyncio.gather(self._head(key), self._list_all(parts_prefix(key)))
        prefix = parts_prefix(key)
        return _Layout(
            plain,
            tuple(assemble(listed, prefix)),
            tuple(info.key for info in listed),
            bool(listed),
            tuple(listed),
        )

    async def _is_dir(self, key: str) -> bool:
        objects, prefixes = await self._call(
            "list", self.store.list, f"{key}/", delimiter="/", limit=1
        )
        return bool(objects or prefixes)

    # -- small objects ------------------------------------------------------------------

    async def read(self, path: str) -> bytes:
        key = self._key(path)
        try:
            return await self._call("get", self.store.get, key)
        except KeyMissing:
            if self.store.native_append or self._whole(path):
                raise PathNotFound(path) from None
        # The GET's miss answers what a HEAD would: only the parts are left to look at
        # (a missing object, most often a link or a setting never written, costs two
        # requests rather than three).
        prefix = parts_prefix(key)
        listed = await self._list_all(prefix)
        if not listed:
            raise PathNotFound(path)
        layout = _Layout.of_parts(listed, prefix)
        pieces = await asyncio.gather(
            *(self._call("get", self.store.get, k) for k, _, _ in layout.segments())
        )
        return b"".join(pieces)

    async def write(self, path: str, data: bytes) -> None:
        await self._call("put", self.store.put, self._key(path), bytes(data))

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        key = self._key(path)
        data = bytes(data)
        attempts = 0

        async def create() -> None:
            nonlocal attempts
            attempts += 1
            await self.store.put(key, data, if_absent=True)

        try:
            await self._call("put", create)
        except PreconditionFailed:
            if attempts == 1:
                return False
            # An earlier attempt may have landed before its answer was lost:
            # the object holding our bytes means this call created it.
            try:
                return await self._call("get", self.store.get, key) == data
            except KeyMissing:
                return False
        return True

    # -- streams -------------------------------------------------------------------------

    def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        # The next piece is fetched from the store while the caller sends this one on (a
        # proxied blob GET: the store's answer and the client's socket are both busy).
        return read_ahead(self._read_stream(path, offset, length))

    async def _read_stream(
        self, path: str, offset: int, length: int | None
    ) -> AsyncIterator[bytes]:
        key = self._key(path)
        layout = await self._layout(key, whole=self._whole(path))
        if not layout.exists:
            raise PathNotFound(path)
        end = layout.size if length is None else min(layout.size, offset + length)
        for segment, start, size in layout.segments():
            if start + size <= offset or start >= end:
                continue
            first = max(offset - start, 0)
            last = min(end - start, size)
            async for chunk in self._ranges(segment, first, last):
                yield chunk

    async def _ranges(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of one object, streamed; a broken stream resumes where it stopped.

        Each wait for the next piece has the request timeout; a transient fault or a
        timeout reopens the stream at the current offset, with the usual backoff (a
        piece received resets the count). Pieces are gathered to READ_CHUNK bytes.
        """
        position, attempt = start, 0
        gathered: list[bytes] = []
        size = 0
        while position < end:
            pieces = self.store.stream(key, position, end)
            try:
                while position < end:
                    try:
                        async with asyncio.timeout(self.settings.timeout):
                            piece = await anext(pieces, None)
                    except KeyMissing:
                        raise StorageError(f"{key} vanished while it was read") from None
                    except (TransientFault, TimeoutError) as exc:
                        attempt = await self._backoff("get", attempt, exc)
                        break  # reopen at *position*
                    except StorageError:
                        raise
                    except Exception as exc:
                        raise StorageError(f"{self.name} get: {type(exc).__name__}: {exc}") from exc
                    if piece is None:
                        raise StorageError(f"{key} ended at {position}, before {end}: it changed")
                    piece = piece[: end - position]
                    if not piece:
                        continue
                    attempt = 0
                    position += len(piece)
                    gathered.append(piece)
                    size += len(piece)
                    if size >= READ_CHUNK:
                        yield gathered[0] if len(gathered) == 1 else b"".join(gathered)
                        gathered, size = [], 0
            finally:
                await pieces.aclose()  # type: ignore[attr-defined]
        if gathered:
            yield b"".join(gathered)

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        key = self._key(path)
        if not append:
            return StreamWriter(self, key)
        if self._whole(path):
            raise InvalidPath(f"{path} is not declared appendable: it cannot be appended to")
        if self.store.native_append:
            upload = await self._call("start_append", self.store.start_append, key)
            return StreamWriter(
                self,
                key,
                upload=upload,
                base_size=upload.size,
                single_put=False,
                create_empty=not upload.exists,
            )
        layout = await self._layout(key, plain_first=False)
        if layout.plain is not None:
            layout = await self._plain_to_parts(key, layout)
        self._hint_parts(key)
        return StreamWriter(
            self,
            part_key(key, layout.size, _now_us()),
            base_size=layout.size,
            create_empty=not layout.exists,
            base_parts=(parts_prefix(key), layout.listed),
        )

    async def _plain_to_parts(self, key: str, layout: _Layout) -> _Layout:
        """Turn a plain object into its first part, so appends can follow it."""
        assert layout.plain is not None
        if layout.stray:
            await self._call("delete_many", self.store.delete_many, list(layout.stray))
        stamp = _now_us()
        first = part_key(key, 0, stamp)
        await self._copy(key, first, layout.plain.size)
        await self._call("delete", self.store.delete, key)
        part = Part(first, 0, layout.plain.size, stamp)
        listed = (ObjectInfo(first, layout.plain.size, stamp / 1e6),)
        return _Layout(None, (part,), (first,), True, listed)

    # -- metadata ---------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        key = self._key(path)
        if key in self._parts_hint:  # an upload this process writes: ask both ways at once
            plain, listed = await asyncio.gather(self._head(key), self._list_all(parts_prefix(key)))
            if plain is None and listed:
                layout = _Layout.of_parts(listed, parts_prefix(key))
                return FileInfo(path, layout.size, layout.mtime, version=layout.version)
        else:
            plain = await self._head(key)
        if plain is not None:
            return FileInfo(path, plain.size, plain.mtime)
        leaf = self._is_leaf(path)
        if self.store.native_append or self._whole(path):
            if not leaf and await self._is_dir(key):
                return FileInfo(path, 0, 0.0, True)
            raise PathNotFound(path)
        if leaf:
            listed, is_dir = await self._list_all(parts_prefix(key)), False
        else:
            listed, is_dir = await asyncio.gather(
                self._list_all(parts_prefix(key)), self._is_dir(key)
            )
        if listed:
            layout = _Layout.of_parts(listed, parts_prefix(key))
            return FileInfo(path, layout.size, layout.mtime, version=layout.version)
        if is_dir:
            return FileInfo(path, 0, 0.0, True)
        raise PathNotFound(path)

    async def list(self, path: str) -> list[str]:
        prefix = self._prefix(path)
        objects, prefixes = await self._call("list", self.store.list, prefix, delimiter="/")
        names: set[str] = set()
        for info in objects:
            name = info.key[len(prefix) :]
            if name and "~" not in name and "/" not in name:
                names.add(name)
        for common in prefixes:
            name = common[len(prefix) :].rstrip("/")
            if name.endswith(PARTS):
                name = name[: -len(PARTS)]
            if name and "~" not in name:
                names.add(name)
        if not names:
            raise PathNotFound(path)
        return sorted(names)

    async def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        base = self._prefix(path)
        if prune is None:
            for entry in _tree(await self._list_all(base), base, path):
                yield entry
            return
        queue: deque[str] = deque([path])
        while queue:
            batch = [queue.popleft() for _ in range(min(FANOUT, len(queue)))]
            levels = await asyncio.gather(*(self._level(directory) for directory in batch))
            for files, directories in levels:
                for entry in files:
                    yield entry
                for directory in directories:
                    yield FileInfo(directory, 0, 0.0, True)
                    if not prune(directory):
                        queue.append(directory)

    async def _level(self, path: str) -> tuple[list[FileInfo], list[str]]:
        """The objects directly in one directory, and its subdirectories."""
        prefix = self._prefix(path)
        objects, prefixes = await self._call("list", self.store.list, prefix, delimiter="/")
        join = (lambda name: f"{path}/{name}") if path else (lambda name: name)
        files: dict[str, FileInfo] = {}
        for info in objects:
            name = info.key[len(prefix) :]
            if name and "~" not in name and "/" not in name:
                files[name] = FileInfo(join(name), info.size, info.mtime)
        directories: list[str] = []
        multipart: list[str] = []
        for common in prefixes:
            name = common[len(prefix) :].rstrip("/")
            if name.endswith(PARTS):
                if name[: -len(PARTS)] and "~" not in name[: -len(PARTS)]:
                    multipart.append(name[: -len(PARTS)])
            elif name and "~" not in name:
                directories.append(join(name))
        pending = [name for name in multipart if name not in files]
        listings = await asyncio.gather(
            *(self._list_all(parts_prefix(prefix + name)) for name in pending)
        )
        for name, listed in zip(pending, listings, strict=True):
            layout = _Layout.of_parts(listed, parts_prefix(prefix + name))
            files[name] = FileInfo(join(name), layout.size, layout.mtime)
        return list(files.values()), directories

    # -- moving and deleting ---------------------------------------------------------------

    async def _copy(self, source: str, destination: str, size: int) -> None:
        limit = self.store.max_copy_size
        if limit is not None and size > limit:
            info = ObjectInfo(source, size, 0.0)
            if await self.store.compose(self._call, destination, [info], parts_prefix(source)):
                return
            raise StorageError(f"{self.name} cannot copy {size} bytes in one piece")
        await self._call("copy", self.store.copy, source, destination)

    async def move(self, source: str, destination: str) -> None:
        await self._move(source, destination, None)

    async def move_exact(
        self, source: str, destination: str, size: int, version: str | None = None
    ) -> None:
        """``move``, once the listing it makes anyway shows *source* holds *size* bytes
        (and, with *version*, the very parts a writer or a stat reported)."""
        await self._move(source, destination, size, version)

    async def move_whole(self, source: str, destination: str, size: int) -> None:
        """``move`` of an object written whole (never appended to: blob data), whose *size*
        a listing gave: a copy and a delete, without the lookups ``move`` makes first to
        find where the bytes are (a HEAD and a parts listing: half of a move's requests, and
        on emulators a listing costs a scan of the bucket). Parts-only objects (no plain
        object to copy) and objects gone since the listing take the full ``move``."""
        source_key, destination_key = self._key(source), self._key(destination)
        if source_key in self._parts_hint:
            await self._move(source, destination, None)
            return
        try:
            await self._copy(source_key, destination_key, size)
        except KeyMissing:  # no plain object: parts, or gone since the listing
            await self._move(source, destination, None)
            return
        await self._call("delete", self.store.delete, source_key)

    async def _move(
        self, source: str, destination: str, size: int | None, version: str | None = None
    ) -> None:
        source_key, destination_key = self._key(source), self._key(destination)
        layout = await self._layout(source_key, plain_first=False, whole=self._whole(source))
        if size is not None and layout.exists and layout.size != size:
            raise ObjectChanged(f"{source} holds {layout.size} bytes, not {size}")
        if version is not None and layout.exists and layout.version != version:
            # As many bytes, other parts: a racing append of the same offset won.
            raise ObjectChanged(f"{source} is no longer the parts it was")
        self._forget_parts(source_key)
        if layout.plain is not None:
            try:
                await self._copy(source_key, destination_key, layout.plain.size)
            except KeyMissing:  # moved or deleted by another writer since the listing
                raise PathNotFound(source) from None
            await self._call("delete", self.store.delete, source_key)
        elif layout.exists:
            await self._join(source_key, layout, destination_key)
        else:
            raise PathNotFound(source)
        if layout.stray:
            await self._call("delete_many", self.store.delete_many, list(layout.stray))

    async def _join(self, source: str, layout: _Layout, destination: str) -> None:
        """Write the concatenation of *layout*'s parts to *destination*, server-side if possible."""
        parts = [part for part in layout.parts if part.size]
        if not parts:
            await self._call("put", self.store.put, destination, b"")
            return
        if len(parts) == 1:
            await self._copy(parts[0].key, destination, parts[0].size)
            return
        sources = [ObjectInfo(part.key, part.size, part.stamp / 1e6) for part in parts]
        if await self.store.compose(self._call, destination, sources, parts_prefix(source)):
            return
        writer = StreamWriter(self, destination)
        try:
            for part in parts:
                async for chunk in self._ranges(part.key, 0, part.size):
                    await writer.write(chunk)
        except BaseException:
            await writer.cancel()
            raise
        await writer.commit()

    async def delete(self, path: str) -> None:
        key = self._key(path)
        self._forget_parts(key)
        lookups: list[Awaitable[Any]] = [self._head(key)]
        if not self._is_leaf(path):
            lookups.append(self._list_all(f"{key}/"))
        if not self.store.native_append and not self._whole(path):
            lookups.append(self._list_all(parts_prefix(key)))
        plain, *listings = await asyncio.gather(*lookups)
        keys = [info.key for listing in listings for info in listing]
        if plain is not None:
            keys.append(key)
        if not keys:
            raise PathNotFound(path)
        await self._call("delete_many", self.store.delete_many, keys)

    async def delete_many(self, paths: Sequence[str]) -> None:
        """Delete objects (never folders) by path, batched as the store allows (S3: 1000 a
        request); a missing object is not an error. Optional: callers discover it."""
        keys = [self._key(path) for path in paths]
        for key in keys:
            self._forget_parts(key)
        if keys:
            await self._call("delete_many", self.store.delete_many, keys)

    # -- optional abilities ----------------------------------------------------------------

    def local_path(self, path: str) -> str | None:
        return None

    async def signed_url(self, path: str, expires: int) -> str | None:
        return await self._call("sign", self.store.signed_url, self._key(path), expires)

    async def close(self) -> None:
        await self.store.close()


def _tree(objects: Sequence[ObjectInfo], base: str, path: str) -> list[FileInfo]:
    """Objects and the directories they imply, from one recursive listing below *base*."""
    join = (lambda rel: f"{path}/{rel}") if path else (lambda rel: rel)
    files: dict[str, FileInfo] = {}
    grouped: dict[str, list[ObjectInfo]] = {}
    directories: set[str] = set()
    for info in objects:
        relative = info.key[len(base) :]
        if not relative or relative.endswith("/"):
            continue
        components = relative.split("/")
        holder = next((i for i, c in enumerate(components) if c.endswith(PARTS)), None)
        if holder is not None:
            name = components[holder][: -len(PARTS)]
            if not name or any("~" in c for c in components[:holder]) or "~" in name:
                continue
            grouped.setdefault("/".join([*components[:holder], name]), []).append(info)
            parents = components[:holder]
        elif any("~" in c for c in components):
            continue
        else:
            files[relative] = FileInfo(join(relative), info.size, info.mtime)
            parents = components[:-1]
        for depth in range(1, len(parents) + 1):
            directories.add("/".join(parents[:depth]))
    for relative, listed in grouped.items():
        if relative in files:
            continue  # a plain object wins over stale parts
        layout = _Layout.of_parts(listed, parts_prefix(base + relative))
        files[relative] = FileInfo(join(relative), layout.size, layout.mtime)
    return [FileInfo(join(d), 0, 0.0, True) for d in sorted(directories)] + list(files.values())


# -- writers ---------------------------------------------------------------------------------


class StreamWriter:
    """Bytes of one object: held in memory up to one part, then sent as an Upload.

    A writer that never fills a part publishes with one ``put`` (unless
    *single_put* is False: a native append always goes through its Upload).
    Parts go out while the next one is being filled, a few at a time.
    """

    def __init__(
        self,
        driver: ObjectStoreDriver,
        key: str,
        *,
        upload: Upload | None = None,
        base_size: int = 0,
        single_put: bool = True,
        create_empty: bool = True,
        base_parts: tuple[str, Sequence[ObjectInfo]] | None = None,
    ) -> None:
        self._driver = driver
        self._base_parts = base_parts
        self.base_version: str | None = None
        """For an appended part: the parts version of what it continues."""
        if base_parts is not None:
            prefix, listed = base_parts
            self.base_version = _Layout.of_parts(listed, prefix).version
        self.version: str | None = None
        """For an appended part, once committed: the object's parts version with it."""
        self._key = key
        self._upload = upload
        self._base = base_size
        self._single_put = single_put
        self._create_empty = create_empty
        self._written = 0
        self._sent = 0
        self._number = 0
        self._buffer = bytearray()
        self._pending: deque[asyncio.Future[None]] = deque()
        self._done = False
        self._failed = False

    @property
    def size(self) -> int:
        return self._base + self._written

    async def write(self, data: bytes) -> None:
        if self._done:
            raise StorageError("write after commit or cancel")
        if self._failed:
            raise StorageError(f"an earlier write to {self._key} failed")
        self._buffer += data
        self._written += len(data)
        part_size = self._driver.part_size
        try:
            while len(self._buffer) > part_size:
                part = bytes(self._buffer[:part_size])
                del self._buffer[:part_size]
                await self._send(part)
        except BaseException:
            # A part is lost: committing now would publish an object with a hole.
            self._failed = True
            raise

    async def _start(self) -> Upload:
        if self._upload is None:
            driver = self._driver
            self._upload = await driver._call("start_upload", driver.store.start_upload, self._key)
        return self._upload

    async def _send(self, part: bytes) -> None:
        upload = await self._start()
        limit = max(self._driver.store.max_parts_in_flight, 1)
        while len(self._pending) >= limit:
            await self._pending.popleft()
        self._number += 1
        self._pending.append(
            asyncio.ensure_future(
                self._driver._call(
                    "upload_part", upload.upload_part, self._number, self._sent, part
                )
            )
        )
        self._sent += len(part)

    async def commit(self) -> None:
        if self._done:
            return
        self._done = True
        driver = self._driver
        try:
            if self._failed:
                raise StorageError(f"not publishing {self._key}: a part of it was lost")
            if self._written == 0 and not self._create_empty:
                await self._abort()
                self._note_version(stored=False)
                return
            if self._upload is None and self._single_put:
                await driver._call("put", driver.store.put, self._key, bytes(self._buffer))
                self._note_version(stored=True)
                return
            upload = await self._start()
            while self._pending:
                await self._pending.popleft()
            last = bytes(self._buffer)
            self._buffer = bytearray()
            await driver._call("complete", upload.complete, self._number + 1, self._sent, last)
        except PreconditionFailed as exc:
            # A native append commits only over the object it continued (Azure: its
            # ETag): another writer changed it since; nothing of this one was published.
            await self._abort()
            raise ObjectChanged(f"{self._key} changed while this writer appended to it") from exc
        except BaseException:
            await self._abort()
            raise
        self._note_version(stored=True)

    def _note_version(self, *, stored: bool) -> None:
        """The version a reader now finds: the parts listed when this writer opened, and
        this writer's own part if it stored one (as ``assemble`` would choose them)."""
        if self._base_parts is None:
            return
        prefix, listed = self._base_parts
        if stored:
            listed = [*listed, ObjectInfo(self._key, self._written, 0.0)]
        self.version = _Layout.of_parts(listed, prefix).version

    async def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        await self._abort()

    async def _abort(self) -> None:
        for task in self._pending:
            task.cancel()
        for task in self._pending:
            with contextlib.suppress(BaseException):
                await task
        self._pending.clear()
        self._buffer = bytearray()
        if self._upload is not None:
            try:
                await self._driver._call("abort", self._upload.abort)
            except Exception as exc:  # the store expires abandoned uploads itself
                LOGGER.warning(
                    "%s: abandoning upload of %s failed: %s", self._driver.name, self._key, exc
                )


# -- helpers for the concrete drivers -------------------------------------------------------------


async def bounded(coroutines: Iterable[Awaitable[Any]], limit: int = FANOUT) -> list[Any]:
    """Await *coroutines* with at most *limit* running at once; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


class _Failed:
    """What a read-ahead's producer raised, handed to the consumer to raise."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_END = object()


async def read_ahead(source: AsyncGenerator[bytes, None], depth: int = 1) -> AsyncIterator[bytes]:
    """The pieces of *source*, with up to *depth* more fetched while the consumer handles
    one (at most ``depth + 1`` pieces held: READ_CHUNK each for the driver's streams).

    Errors reach the consumer at the piece where they happened; a consumer that stops
    early (a client gone) cancels the fetching, which closes *source*.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def produce() -> None:
        try:
            async for piece in source:
                await queue.put(piece)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(_Failed(exc))
        else:
            await queue.put(_END)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.error
            yield cast(bytes, item)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        await source.aclose()


async def read_pieces(
    read: Callable[[int], Awaitable[bytes]], size: int = READ_CHUNK
) -> AsyncIterator[bytes]:
    """Pieces of *size* bytes (the last one shorter) from a ``read(n)`` that returns at most
    *n* bytes, ``b""`` at the end: HTTP bodies hand out whatever arrived, often 64 KiB."""
    while True:
        gathered: list[bytes] = []
        missing = size
        while missing:
            piece = await read(missing)
            if not piece:
                break
            gathered.append(piece)
            missing -= len(piece)
        if gathered:
            yield gathered[0] if len(gathered) == 1 else b"".join(gathered)
        if missing:
            return


def split_url(url: str, schemes: Sequence[str]) -> tuple[str, str]:
    """``scheme://bucket/prefix`` -> (bucket, prefix), checking the scheme and the prefix."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(
            f"storage URL {url!r} is not one of {', '.join(s + '://' for s in schemes)}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"storage URL {url!r} must not carry a query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"storage URL {url!r} names no bucket")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            check_path(prefix)
        except ValueError:
            raise ValueError(f"storage URL {url!r} has an invalid prefix {prefix!r}") from None
    return bucket, prefix
