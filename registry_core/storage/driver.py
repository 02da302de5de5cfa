"""The StorageDriver protocol every backend implements.

Paths are ``/``-separated, relative to the driver's root, ASCII only, with no
empty, ``.`` or ``..`` components (see :func:`check_path`). A driver never
interprets a path: the layout module decides what lives where.

Contract notes that matter to callers:

* "not found" is always :class:`PathNotFound`, whatever the backend says;
* ``read``/``write`` are for small objects (links, manifests, records) and
  ``write`` is atomic: a reader sees the old bytes or the new, never a mix;
* ``write_if_absent`` is the one primitive replicas use to agree on one-time
  state without a database: exactly one of several racing callers gets True;
* large data goes through ``open_writer`` (stream, then commit or cancel) and
  ``read_stream``;
* optional abilities (``local_path``, ``signed_url``) answer None when the
  backend does not have them. They are discovered, never assumed. So is
  ``delete_many(paths)`` (objects only, batched: S3 takes 1000 keys a request),
  which bulk deleters such as GC use when present and replace by single deletes
  when not. And ``move_exact(source, destination, size)``: ``move`` that first checks,
  in the same operation, that *source* holds exactly *size* bytes, raising
  :class:`ObjectChanged` (nothing moved) when another writer appended meanwhile;
  an upload commit uses it instead of re-reading the size before its move. A driver
  whose appends can replace stored bytes (an object store's racing parts) also gives
  its append writers a ``version`` once committed (and ``base_version``: what they
  continued) and ``FileInfo.version``, and ``move_exact`` then takes ``version=`` and
  refuses the move when the source is other bytes. And
  ``run_steps(groups)``: several small reads, stats and writes in one call, group after
  group (``storage.steps``; the local driver makes it one worker-thread hop).
  And ``commit_small_upload(record, pending, folder, destination, data)``, for an
  upload finished by one request that carried all its bytes (a push's small layer),
  in one operation: *record* must exist (else PathNotFound, nothing done); when
  *pending* exists, nothing is done and None is returned; otherwise *destination*
  is created with *data* if absent, then *folder* is deleted, then the optional
  ``then_write=(path, bytes)`` is written and ``then_delete`` deleted (if there), each
  step only after the one before succeeded, and *record*'s bytes are returned.
  Without it, the upload is appended to and moved as any other.
  And ``declare_layout(appendable=..., leaf=...)``: the registry tells the driver which
  paths may ever be opened for append and which are never folders
  (``layout.may_be_appended``, ``layout.is_leaf``), so an object store skips the parts
  and folder listings a miss would otherwise cost; a driver without it guesses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol, runtime_checkable

import attrs


class StorageError(Exception):
    """A backend failure that is not "not found" (retries already spent)."""


class PathNotFound(StorageError):
    """The object or directory does not exist."""

    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class ObjectChanged(StorageError):
    """The object is not as the caller last saw it: another writer changed it meanwhile."""


class InvalidPath(StorageError, ValueError):
    """A path that breaks the driver path rules."""


_PATH = re.compile(r"^[A-Za-z0-9._:@+=,-]+(?:/[A-Za-z0-9._:@+=,-]+)*$")


def check_path(path: str) -> str:
    """Return *path* if it obeys the driver path rules, else raise InvalidPath."""
    # A "." or ".." part shows as "/./" or "/../" once the path is framed by slashes
    # (string search: this runs on every storage call).
    framed = f"/{path}/"
    if not _PATH.fullmatch(path) or "/./" in framed or "/../" in framed:
        raise InvalidPath(f"invalid storage path: {path!r}")
    return path


@attrs.frozen
class DriverSettings:
    """Cargohold's own storage keys (``[storage]``) a driver may honour.

    They are never handed to the backend library: ``[storage.options]`` is, unchanged.
    A factory that accepts a ``settings`` keyword receives them.
    """

    part_size: int = 8 * 1024 * 1024
    """Bytes per part of a streamed upload (a store raises it to its own minimum)."""
    timeout: float = 60.0
    """Seconds one backend request may take before it is abandoned (and retried)."""
    retries: int = 5
    """Retries, with exponential backoff, of a request that failed transiently."""


@attrs.frozen
class FileInfo:
    path: str
    size: int
    mtime: float
    is_dir: bool = False
    version: str | None = None
    """Which bytes an object appended to holds, when the driver can tell (an object
    store: its parts); the same as a writer's ``version`` once that writer committed."""


class FileWriter(Protocol):
    """A stream of bytes into one object, made visible only by ``commit``.

    A writer opened with ``append=True`` continues an object whose bytes are
    already stored (a resumed upload); ``size`` counts all of them.
    """

    @property
    def size(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def cancel(self) -> None: ...


WalkFilter = Callable[[str], bool]
"""Given a directory's path, True means: do not descend into it."""


@runtime_checkable
class StorageDriver(Protocol):
    """One storage backend (see the module docstring for the contract)."""

    name: str

    async def read(self, path: str) -> bytes:
        """The whole content of a small object."""
        ...

    async def write(self, path: str, data: bytes) -> None:
        """Atomically create or replace a small object."""
        ...

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        """Create a small object only when it does not exist; True if this call created it."""
        ...

    def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream an object's bytes from *offset* (at most *length* of them)."""
        ...

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        """Open a writer for large data (see FileWriter)."""
        ...

    async def stat(self, path: str) -> FileInfo:
        """Size and modification time of an object (or a directory, is_dir=True)."""
        ...

    async def list(self, path: str) -> list[str]:
        """Names of the direct children of a directory (objects and directories)."""
        ...

    def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        """Every object and directory below *path*, recursively, in no set order.

        A directory for which *prune* answers True is yielded but not entered,
        which lets callers walk a tree without paying for the parts they skip.
        A missing *path* yields nothing.
        """
        ...

    async def move(self, source: str, destination: str) -> None:
        """Move an object, replacing any object at *destination*."""
        ...

    async def delete(self, path: str) -> None:
        """Delete an object, or a directory with everything under it."""
        ...

    def local_path(self, path: str) -> str | None:
        """A filesystem path for zero-copy sendfile, or None when the backend has none."""
        ...

    async def signed_url(self, path: str, expires: int) -> str | None:
        """A URL a client can GET the object from for *expires* seconds, or None."""
        ...

    async def close(self) -> None:
        """Release sessions and handles."""
        ...


DELETE_CONCURRENCY = 32
"""Single deletes in flight when a driver has no ``delete_many``."""


async def delete_objects(driver: StorageDriver, paths: Iterable[str]) -> None:
    """Delete objects (never folders) by path; a missing one is not an error.

    One ``delete_many`` call when the driver has it (an object store batches the keys
    and skips the lookups a ``delete`` makes to find folders and parts), otherwise
    single deletes, a bounded number at once.
    """
    pending = list(paths)
    if not pending:
        return
    delete_many = getattr(driver, "delete_many", None)
    if delete_many is not None:
        await delete_many(pending)
        return
    gate = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(path: str) -> None:
        async with gate:
            with contextlib.suppress(PathNotFound):
                await driver.delete(path)

    await asyncio.gather(*map(one, pending))
