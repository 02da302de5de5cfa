"""The local folder driver (fsspec ``file``), tuned for the paths that matter.

Small writes are write-then-rename, create-if-absent is a hard link of a
finished temporary file (so a racing reader never sees a half-written
object and exactly one creator wins), and each operation is a single hop to
a worker thread (a writer's small data goes with its commit's hop; small operations
started together share one hop). Blobs have a real path, which lets the server use sendfile.

Large upload bodies received on a thread (``LocalWriter.taker``) are written with
``O_DIRECT`` where the file system allows it, and so are the large batches of bodies
that come through aiohttp's parser (chunked transfer encoding, as docker's push sends
every layer; TLS), copied into a page-aligned staging buffer first
(``LocalWriter.write_parts``): in this kind of VM, every page-cache page
a buffered write allocates costs a fault once the host has taken freed pages back
(virtio-balloon free page reporting), about 2 s of kernel time per GiB, against 0.04 s
for the same GiB written from a reused page-aligned buffer with ``O_DIRECT``. Only
whole blocks at aligned file offsets from aligned memory go that way, through a
second descriptor on the same open file; anything else (a body's unaligned start or
tail, small writes) is written as before, and a file system that refuses ``O_DIRECT``
(tmpfs) gets buffered writes throughout. Durability and what readers see do not
change: the same locks, checks, close and rename, and Linux keeps buffered and direct
writes of one file coherent. ``CARGOHOLD_DIRECT_IO=0`` in the environment turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import mmap
import os
import shutil
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fsspec.implementations.local import LocalFileSystem

from registry_core.storage.driver import (
    FileInfo,
    FileWriter,
    ObjectChanged,
    PathNotFound,
    StorageError,
    WalkFilter,
)
from registry_core.storage.steps import Step

from .fsspec_driver import READ_CHUNK, FsspecDriver
from .threads import Workers, settle, shared_workers

T = TypeVar("T")


_TEMPORARY_PREFIX = ""
_temporary_numbers = itertools.count()


def _new_temporary_names() -> None:
    """A fresh prefix and counter for this process's temporary files, also after a fork.

    ``--workers`` processes fork from a parent that imported this module: with the
    parent's prefix and counter, two workers writing one object at once (one manifest
    pushed under many tags) named the same temporary file, and one worker's link or
    rename found it gone (a 503) or took the other's bytes.
    """
    global _TEMPORARY_PREFIX, _temporary_numbers
    _TEMPORARY_PREFIX = f"{os.getpid():x}-{uuid.uuid4().hex[:8]}"
    _temporary_numbers = itertools.count()


_new_temporary_names()
os.register_at_fork(after_in_child=_new_temporary_names)


def _temporary(path: str) -> str:
    # Unique per process (pid + random) and per call (a counter): cheaper than a UUID each.
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.tmp-{_TEMPORARY_PREFIX}-{next(_temporary_numbers)}")


def _with_parent(path: str, action: Callable[[], T]) -> T:
    """Run *action*; if it fails for want of *path*'s folder, make the folder and retry.

    Most writes land in folders that exist: trying first saves a makedirs (and
    the exception it raises internally) on every small write.
    """
    try:
        return action()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return action()


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _write_atomic(path: str, data: bytes) -> None:
    if not data:
        # A new empty object has no half-written state a reader could see: created in
        # place, without a temporary file and a rename (a push's session marker). One
        # that exists is replaced by the rename below (emptying it in place could cut a
        # reader of its old bytes short).
        try:
            _with_parent(path, lambda: os.close(os.open(path, _CREATE_NEW, 0o666)))
            return
        except FileExistsError:
            pass
    temporary = _temporary(path)
    _with_parent(path, lambda: _write_file(temporary, data))
    os.replace(temporary, path)


def _create_if_absent(path: str, data: bytes) -> bool:
    temporary = _temporary(path)
    _with_parent(path, lambda: _write_file(temporary, data))
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def _open_append(path: str) -> tuple[object, int]:
    handle = _with_parent(path, lambda: open(path, "ab", buffering=0))  # noqa: SIM115 - closed by the writer
    return handle, handle.seek(0, os.SEEK_END)


def _move(source: str, destination: str) -> None:
    try:
        os.replace(source, destination)
    except FileNotFoundError:
        if not os.path.lexists(source):
            raise PathNotFound(source) from None
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(source, destination)
    except NotADirectoryError:
        if os.path.exists(source):
            raise
        raise PathNotFound(source) from None  # a parent of the source is an object


def _move_exact(source: str, destination: str, size: int) -> None:
    """``_move``, once *source* is seen to hold *size* bytes under its lock (see _append_to)."""
    try:
        descriptor = os.open(source, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        raise PathNotFound(source) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        held = os.fstat(descriptor).st_size
        if held != size:
            raise ObjectChanged(f"{source} holds {held} bytes, not {size}")
        _move(source, destination)
    finally:
        os.close(descriptor)  # and the lock with it


def _append_to(
    handle: Any, path: str, expected: int, parts: list[bytes], direct: int | None = None
) -> None:
    """Append *parts* to an upload's data, if it is still where and as this writer left it.

    Another process may append to the same upload, or commit (move) it, at the same
    moment: the lock (flock, shared by every process on this machine) makes this check
    and write one step against the commit's size check and move (_move_exact), so bytes
    never land in a file that was moved into the blob tree, nor after someone else's.
    With *direct* (an ``O_DIRECT`` descriptor of the same file), the one aligned part
    is written through it, at *expected*, under the same lock and checks.
    """
    descriptor = handle.fileno()
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        held = os.fstat(descriptor)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != held.st_ino or held.st_size != expected:
            raise ObjectChanged(f"{path} changed while this writer appended to it")
        if direct is not None:
            _write_direct(direct, descriptor, parts[0], expected)
        else:
            _write_all(handle, parts)
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


def _read_file(full: str, path: str) -> bytes:
    try:
        with open(full, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PathNotFound(path) from None


def _stat_file(full: str, path: str) -> FileInfo:
    try:
        result = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        raise PathNotFound(path) from None
    is_dir = stat.S_ISDIR(result.st_mode)
    return FileInfo(path, 0 if is_dir else result.st_size, result.st_mtime, is_dir)


def _run_steps(groups: list[list[tuple[Step, str]]]) -> list[list[Any]]:
    """The local driver's ``run_steps``: one step after the other, in the order given."""
    outcomes: list[list[Any]] = []
    for group in groups:
        results: list[Any] = []
        for step, full in group:
            operation = step.operation
            try:
                if operation == "read":
                    results.append(_read_file(full, step.path))
                elif operation == "stat":
                    results.append(_stat_file(full, step.path))
                elif operation == "write":
                    results.append(_write_atomic(full, step.data))
                elif operation == "write_if_absent":
                    results.append(_create_if_absent(full, step.data))
                else:
                    raise ValueError(f"unknown storage step {operation!r}")
            except PathNotFound as exc:
                results.append(exc)
        outcomes.append(results)
    return outcomes


def _commit_small_upload(
    record: str,
    pending: str,
    folder: str,
    destination: str,
    data: bytes,
    then_write: tuple[str, bytes] | None,
    then_delete: str | None,
) -> bytes | None:
    """``LocalDriver.commit_small_upload`` in one thread hop: the session's record read,
    its data object looked for, the blob created if absent, the session folder removed,
    then the link written and the session's marker removed.

    Each step only once the one before succeeded: a failure or a crash between them
    leaves the session (the client may PUT again) or an unlinked blob (as a commit
    interrupted after its move does), never a half-written blob or a dangling link.
    """
    try:
        with open(record, "rb") as handle:
            started = handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise PathNotFound(record) from None
    if os.path.lexists(pending):
        return None  # bytes sent before (a PATCH): the caller appends to them
    if not os.path.exists(destination):
        _create_if_absent(destination, data)
    try:
        _delete_small(folder)
    except _NotSmall:
        _delete(folder)
    if then_write is not None:
        _write_atomic(*then_write)
    if then_delete is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(then_delete)
    return started


FOLDER_DELETE_ATTEMPTS = 20
"""Bounded: a writer adds at most a few links to a folder being deleted."""


def _ignore_missing(function: Any, name: str, exc_info: Any) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _rmtree(path: str) -> None:
    """``shutil.rmtree`` that two removers can run at once (entries another one removed
    are skipped) and that a concurrent writer cannot fail (a file added while the folder
    was being emptied: the folder is emptied again). Either order of a delete and a write
    racing on one folder is a valid outcome; a storage error is not."""
    for attempt in range(FOLDER_DELETE_ATTEMPTS):
        try:
            shutil.rmtree(path, onerror=_ignore_missing)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or attempt == FOLDER_DELETE_ATTEMPTS - 1:
                raise


def _remove_folder(path: str) -> None:
    """Remove a folder; the common case (a few files, no subfolders) without rmtree's walk."""
    with os.scandir(path) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    if any(is_dir for _, is_dir in names):
        _rmtree(path)
        return
    for name, _ in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return  # another remover finished first
    except OSError:
        _rmtree(path)  # something was added meanwhile


SMALL_FOLDER = 16
"""A folder of at most this many files (and no subfolder) is removed in a shared hop."""


SMALL_LISTING = 1024
"""A folder listing of fewer names than this runs in a shared hop. Reading 1,024 names
takes about as long as a hop of its own costs (0.1-0.2 ms), so a repository's 1,000 tags
are listed in the shared hop (tags/list: 1.36 -> 1.24 ms); longer ones go on in a hop of
their own, so the small operations batched with them wait no longer than that."""


class _NotSmall(Exception):
    """The object to delete is a folder too big for a shared hop: delete it on its own."""


def _delete_small(path: str) -> None:
    """``_delete`` of a file or of a small flat folder (an upload session's); anything
    bigger raises :class:`_NotSmall` before touching it, so one large delete never holds
    up the small operations batched with it."""
    try:
        os.unlink(path)
        return
    except IsADirectoryError:
        pass
    except (FileNotFoundError, NotADirectoryError):
        raise PathNotFound(path) from None
    try:
        with os.scandir(path) as entries:
            names = [entry.name for entry in itertools.islice(entries, SMALL_FOLDER + 1)]
    except (FileNotFoundError, NotADirectoryError):
        raise PathNotFound(path) from None
    if len(names) > SMALL_FOLDER:
        raise _NotSmall(path)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            try:
                os.unlink(os.path.join(path, name))
            except IsADirectoryError:
                raise _NotSmall(path) from None  # a subfolder: rmtree's walk
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return  # another remover finished first
    except OSError:
        raise _NotSmall(path) from None  # something was added meanwhile


def _delete(path: str) -> None:
    try:
        os.unlink(path)
    except IsADirectoryError:
        try:
            _remove_folder(path)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
    except (FileNotFoundError, NotADirectoryError):
        raise PathNotFound(path) from None


WALK_BATCH = 2048
"""Entries one thread hop of a walk gathers. A walk of the whole repository tree (the
feed's catch-up passes) must not hold every link of the registry at once: that peak
grows with the data stored and, once freed, leaves the heap fragmented."""


class _WalkState:
    """Where a walk stands between two thread hops: one open directory listing per level.

    A listing is read one entry at a time, so a walk holds its depth's listings, never a
    wide folder's entries (a repository's revisions, a registry's blobs) all at once.
    Only one thread reads it at a time: the walk awaits each hop before the next. A walk
    abandoned during a hop (its task cancelled) leaves the closing to that hop.
    """

    __slots__ = ("abandoned", "busy", "levels", "lock", "pending")

    def __init__(self, top: str) -> None:
        self.pending: str | None = top
        self.levels: list[Any] = []
        self.lock = threading.Lock()
        self.busy = False
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self.pending is None and not self.levels

    def hop_done(self) -> None:
        """The end of a hop (worker thread): close everything if the walk was abandoned."""
        with self.lock:
            self.busy = False
            if self.abandoned:
                self._close()

    def abandon(self) -> None:
        """The walk ends (event loop): close its listings now, or after the hop in flight."""
        with self.lock:
            self.abandoned = True
            if not self.busy:
                self._close()

    def _close(self) -> None:
        while self.levels:
            self.levels.pop().close()
        self.pending = None


def _open_listing(state: _WalkState, directory: str) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        state.levels.append(os.scandir(directory))


def _scan(state: _WalkState, root: str, prune: WalkFilter | None, limit: int) -> list[FileInfo]:
    """Walk on (depth first) until *limit* entries are found or the walk is done."""
    try:
        return _scan_batch(state, root, prune, limit)
    finally:
        state.hop_done()


def _scan_batch(
    state: _WalkState, root: str, prune: WalkFilter | None, limit: int
) -> list[FileInfo]:
    found: list[FileInfo] = []
    cut = len(root) + 1
    if state.pending is not None:
        top, state.pending = state.pending, None
        _open_listing(state, top)
    levels = state.levels
    while levels and len(found) < limit:
        try:
            entry = next(levels[-1])
        except StopIteration:
            levels.pop().close()
            continue
        except FileNotFoundError:  # the folder went while it was read
            levels.pop().close()
            continue
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            continue
        relative = entry.path[cut:]
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if is_dir:
            # Directory entries carry no useful size, and their mtime is not part of the
            # contract: skipping the stat keeps name-only walks (the catalog) at one
            # readdir per directory.
            found.append(FileInfo(relative, 0, 0.0, True))
            if prune is None or not prune(relative):
                _open_listing(state, entry.path)
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        found.append(FileInfo(relative, stat.st_size, stat.st_mtime, False))
    return found


SMALL_WRITE = 64 * 1024
"""A writer holds back up to this many bytes and writes them with its commit: a small
object (a push's 4 KiB layer) costs one thread hop for write, close and rename, not one
per step. Larger data goes out at once, so memory stays bounded."""


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_all(handle: Any, parts: list[bytes]) -> None:
    """Write *parts* in order with as few ``writev`` calls as the kernel allows.

    One syscall (and one release of the GIL) for a whole batch of network chunks
    instead of one each: an upload's chunks arrive as 16-256 KiB pieces.
    """
    descriptor = handle.fileno()
    for first in range(0, len(parts), _IOV_MAX):
        group = parts[first : first + _IOV_MAX]
        wanted = sum(len(part) for part in group)
        written = os.writev(descriptor, group)
        if written < wanted:  # a short write (a full disk stops the next call with ENOSPC)
            rest = memoryview(b"".join(group))[written:]
            while rest:
                rest = rest[os.write(descriptor, rest) :]


DIRECT_IO = os.environ.get("CARGOHOLD_DIRECT_IO", "1") != "0"
"""Write whole aligned blocks of received bodies with ``O_DIRECT`` (see the module's
docstring); ``CARGOHOLD_DIRECT_IO=0`` writes everything through the page cache."""

DIRECT_ALIGN = 4096
"""File offsets, lengths and addresses of ``O_DIRECT`` writes are multiples of this:
safe on every Linux file system that takes ``O_DIRECT`` (the real rule is the file
system's logical block size, at most the page size on the file systems we run on)."""


class DirectIOStats:
    """What this process wrote with ``O_DIRECT``, for ``/metrics`` (and tests, which can
    only tell the direct path ran from outside the server process this way)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes = 0
        """Bytes written with ``O_DIRECT``."""
        self.refusals = 0
        """Writers whose file refused ``O_DIRECT`` (and wrote buffered instead)."""

    def add(self, size: int = 0, refusals: int = 0) -> None:
        with self._lock:  # several receiving threads at once
            self.bytes += size
            self.refusals += refusals


direct_io = DirectIOStats()


def _address(view: memoryview) -> int | None:
    """Where *view*'s bytes are in memory (None: read-only memory, which is never a
    receiving buffer, so never aligned for ``O_DIRECT`` as far as writes here go)."""
    if view.readonly or not view.nbytes:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _open_direct(descriptor: int) -> int | None:
    """A second, ``O_DIRECT`` descriptor on the file open as *descriptor* (the very same
    file, even if renamed or replaced since: reopened through ``/proc/self/fd``), or
    None where that is refused (tmpfs answers EINVAL)."""
    try:
        return os.open(f"/proc/self/fd/{descriptor}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _write_direct(direct: int, buffered: int, view: memoryview, offset: int) -> None:
    """Write all of *view* at *offset* through *direct*; the rest of a short write (a
    nearly full disk: its remainder is no longer aligned) through *buffered*."""
    while view:
        written = os.pwrite(direct, view, offset)
        if not written:
            raise OSError(errno.ENOSPC, "no space left for an O_DIRECT write")
        view, offset = view[written:], offset + written
        if view and (written % DIRECT_ALIGN):
            while view:
                written = os.pwrite(buffered, view, offset)
                view, offset = view[written:], offset + written


STAGED_MIN = 256 * 1024
"""Batches of ``write_parts`` of at least this many bytes are staged for ``O_DIRECT``."""

STAGING_BUFFERS = 8
"""Staging buffers in use at once per process (one per writer that stages); a writer
that finds none to spare writes through the page cache, as before."""

STAGING_UNIT = 1 << 20
"""Staging buffers are whole MiB, so that the batches of one upload (1 MiB and a piece)
share one size."""

SPARE_STAGING = 2
"""Staging buffers kept mapped between uploads (each 1-2 MiB)."""

_staging_lock = threading.Lock()
_staging_in_use = 0
_spare_staging: list[mmap.mmap] = []


def _take_staging(size: int) -> mmap.mmap | None:
    """A page-aligned buffer of at least *size* bytes: a spare one or a new one."""
    global _staging_in_use
    with _staging_lock:
        if _staging_in_use >= STAGING_BUFFERS:
            return None
        _staging_in_use += 1
        for index, spare in enumerate(_spare_staging):
            if len(spare) >= size:
                return _spare_staging.pop(index)
    return mmap.mmap(-1, -(-size // STAGING_UNIT) * STAGING_UNIT)


def _give_staging(staging: mmap.mmap) -> None:
    global _staging_in_use
    with _staging_lock:
        _staging_in_use -= 1
        if len(_spare_staging) < SPARE_STAGING:
            _spare_staging.append(staging)
            return
    with contextlib.suppress(BufferError):
        staging.close()


def _cut(views: list[memoryview], size: int) -> tuple[list[memoryview], list[memoryview]]:
    """*views* split after their first *size* bytes (no copies)."""
    head: list[memoryview] = []
    while size and views:
        view = views[0]
        if len(view) <= size:
            head.append(views.pop(0))
            size -= len(view)
        else:
            head.append(view[:size])
            views[0] = view[size:]
            size = 0
    return head, views


class LocalWriter:
    """Appends go straight to the file; a new object is a temporary file renamed on commit."""

    def __init__(
        self,
        workers: Workers,
        handle: object,
        size: int,
        final: str | None,
        temporary: str | None,
        path: str | None = None,
    ) -> None:
        self._workers = workers
        self._handle = handle
        self._size = size
        self._final = final
        self._temporary = temporary
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._path = path
        """Appending: the object's path (its bytes are checked before each write)."""
        self._stored = size
        """Bytes in the file once this writer's writes so far are done."""
        self._direct: int | None = None
        """The file's ``O_DIRECT`` descriptor, once a taker wrote an aligned buffer."""
        self._direct_refused = not DIRECT_IO
        self._staging: mmap.mmap | None = None
        """A page-aligned buffer that batches of ``write_parts`` are copied into, to be
        written with ``O_DIRECT`` (``_write_staged``); given back when the writer closes."""

    def _write(self, parts: list[bytes], alongside: Callable[[], None] | None = None) -> None:
        if self._path is not None:
            _append_to(self._handle, self._path, self._stored, parts)
        else:
            _write_all(self._handle, parts)
        self._stored += sum(len(part) for part in parts)
        if alongside is not None:
            alongside()

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        await self.write_parts([data])

    async def write_parts(
        self, parts: list[bytes], alongside: Callable[[], None] | None = None
    ) -> None:
        """Write several pieces in one thread hop, without joining them into a copy.

        *alongside* (an upload's hashing of the same parts) runs in that same hop,
        once the parts are written: one thread wake-up per batch instead of two.
        When the parts are only held back (small data), it runs here and now.
        """
        size = sum(len(part) for part in parts)
        if self._held_bytes + size <= SMALL_WRITE:
            self._held.extend(parts)
            self._held_bytes += size
            if alongside is not None:
                alongside()
        else:
            total = self._held_bytes + size
            parts, self._held, self._held_bytes = [*self._held, *parts], [], 0
            if self._direct_refused or total < STAGED_MIN:
                await self._workers.run(functools.partial(self._write, parts, alongside))
            else:
                carry = await self._workers.run(
                    functools.partial(self._write_staged, parts, alongside)
                )
                if carry:  # an unaligned tail: written with the next batch or the commit
                    self._held, self._held_bytes = [carry], len(carry)
        self._size += size

    def _write_staged(self, parts: list[bytes], alongside: Callable[[], None] | None) -> bytes:
        """Write *parts* the way a received body's buffers are: whole aligned blocks copied
        into a page-aligned staging buffer and written with ``O_DIRECT`` (a body that
        came through aiohttp's parser: chunked transfer encoding, TLS, compression).

        Bytes before the file's next aligned offset are written as they are; the tail
        after the last whole block (under ``DIRECT_ALIGN`` bytes) is returned, to go
        first in the next batch or with the commit. Without a staging buffer to spare or
        an ``O_DIRECT`` descriptor, everything is written as it is.
        """
        total = sum(len(part) for part in parts)
        lead = (-self._stored) % DIRECT_ALIGN
        whole = max(total - lead, 0) // DIRECT_ALIGN * DIRECT_ALIGN
        staging = self._staging_for(whole) if whole and self._direct_ready() else None
        if staging is None:
            self._write(parts, alongside)
            return b""
        views = [memoryview(part) for part in parts]
        head, views = _cut(views, lead)
        body, views = _cut(views, whole)
        if head:
            self._write(head)  # type: ignore[arg-type]
        position = 0
        for view in body:
            staging[position : position + len(view)] = view
            position += len(view)
        with memoryview(staging) as whole_view, whole_view[:whole] as aligned:
            self._write_aligned(aligned)
        tail = b"".join(views)
        if alongside is not None:
            alongside()
        return tail

    def _staging_for(self, size: int) -> mmap.mmap | None:
        """This writer's staging buffer, at least *size* bytes (None: none to spare)."""
        if self._staging is not None and len(self._staging) >= size:
            return self._staging
        self._give_staging()
        self._staging = _take_staging(size)
        return self._staging

    def _give_staging(self) -> None:
        if self._staging is not None:
            staging, self._staging = self._staging, None
            _give_staging(staging)

    def _direct_ready(self) -> bool:
        """Whether this writer has its ``O_DIRECT`` descriptor (opened here the first time;
        a refusal is counted once per writer)."""
        if self._direct_refused:
            return False
        if self._direct is None:
            self._direct = _open_direct(self._handle.fileno())  # type: ignore[attr-defined]
            if self._direct is None:
                self._direct_refused = True
                direct_io.add(refusals=1)
                return False
        return True

    def taker(self) -> Callable[[memoryview], None]:
        """A function that writes one buffer on the calling thread: for a body received
        there straight off the socket (``RequestBody.receive``), which reuses the buffer
        once this returns."""
        if self._held:  # not written yet: they go first, on the loop, as usual
            raise RuntimeError("a writer holding small writes cannot take buffers")

        def take(view: memoryview) -> None:
            size = len(view)
            whole = self._direct_part(view)
            if whole:
                self._write_aligned(view[:whole])
                view = view[whole:]
            if view:
                self._write([view])  # type: ignore[list-item]
            self._size += size

        return take

    def _direct_part(self, view: memoryview) -> int:
        """How many of *view*'s first bytes to write with ``O_DIRECT`` (whole blocks,
        from an aligned address to an aligned file offset; 0: none)."""
        whole = len(view) - len(view) % DIRECT_ALIGN
        if self._direct_refused or not whole or self._stored % DIRECT_ALIGN:
            return 0
        address = _address(view)
        if address is None or address % DIRECT_ALIGN:
            return 0
        return whole if self._direct_ready() else 0

    def _write_aligned(self, view: memoryview) -> None:
        """One aligned block run through the ``O_DIRECT`` descriptor, at the end of what
        this writer stored (an append: under ``_append_to``'s lock and checks)."""
        assert self._direct is not None
        buffered = self._handle.fileno()  # type: ignore[attr-defined]
        try:
            if self._path is not None:
                _append_to(self._handle, self._path, self._stored, [view], self._direct)  # type: ignore[list-item]
            else:
                _write_direct(self._direct, buffered, view, self._stored)
                # The buffered descriptor's own offset (a new object's file is not
                # opened to append) follows, for the buffered writes after this one.
                os.lseek(buffered, self._stored + len(view), os.SEEK_SET)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Stricter alignment than DIRECT_ALIGN: nothing was written; buffered from now.
            self._close_direct()
            self._direct_refused = True
            direct_io.add(refusals=1)
            self._write([view])  # type: ignore[list-item]
            return
        self._stored += len(view)
        direct_io.add(len(view))

    def _close_direct(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            os.close(direct)

    async def commit(self) -> None:
        parts, self._held, self._held_bytes = self._held, [], 0

        def finish() -> None:
            try:
                if parts:
                    self._write(parts)
            finally:
                self._give_staging()
                self._close_direct()
                self._handle.close()  # type: ignore[attr-defined]
            if self._temporary is not None and self._final is not None:
                os.replace(self._temporary, self._final)

        await self._workers.run(finish)

    async def cancel(self) -> None:
        parts, self._held, self._held_bytes = self._held, [], 0

        def drop() -> None:
            try:
                if self._temporary is None and parts:  # appended bytes stay, as if written
                    self._write(parts)
            finally:
                self._give_staging()
                self._close_direct()
                self._handle.close()  # type: ignore[attr-defined]
            if self._temporary is not None:
                os.unlink(self._temporary)

        await self._workers.run(drop)


class _Batches:
    """Small operations started in the same event-loop turn share one worker-thread hop.

    A manifest PUT checks every referenced blob at once (a link read and a data stat
    each) and writes a tag's two links together: run one by one, each is a hop to the
    pool, a thread wake-up and a loop wake-up, which cost more than the syscalls. Only
    small, bounded operations are batched (reads and writes of small objects, stats,
    renames); walks, listings, deletes and writers keep their own hop.
    Results and errors reach each caller as if it had hopped alone.
    """

    def __init__(self, workers: Workers) -> None:
        self._workers = workers
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Callable[[], Any], Any]]] = {}

    def run(self, func: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            loop.call_soon(self._flush, loop)  # first: if it raises, no batch waits on it
            pending = self._pending[loop] = []
        pending.append((func, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        if not batch:
            return

        def run_all() -> list[tuple[bool, Any]]:
            outcomes: list[tuple[bool, Any]] = []
            for func, _ in batch:
                try:
                    outcomes.append((True, func()))
                except Exception as exc:
                    outcomes.append((False, exc))
            return outcomes

        def deliver(ok: bool, result: Any) -> None:
            outcomes = result if ok else [(False, result)] * len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                settle(future, ok, value)  # skips a caller cancelled meanwhile

        try:
            self._workers.submit(run_all, deliver)
        except BaseException as exc:
            # No hop (a worker thread could not start): each caller hears why, instead
            # of awaiting an outcome that nothing will ever deliver.
            for _, future in batch:
                settle(future, False, exc)
            if not isinstance(exc, Exception):
                raise


_STEP_METHODS = ("read", "stat", "write", "write_if_absent")


class LocalDriver(FsspecDriver):
    """Objects are files under one folder."""

    name = "file"

    def __init__(self, root: str) -> None:
        root = os.path.abspath(root)
        os.makedirs(root, exist_ok=True)
        super().__init__(LocalFileSystem(), root, blocking=True)
        self._workers = shared_workers()
        self._batches = _Batches(self._workers)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass that changes a step's operation (tests inject races that way) and not
        # run_steps gets every step as a call of its own methods (storage.steps' path for
        # drivers without run_steps): its override then sees each call, in the same order.
        super().__init_subclass__(**kwargs)
        if "run_steps" not in cls.__dict__ and any(name in cls.__dict__ for name in _STEP_METHODS):
            cls.run_steps = None  # type: ignore[assignment]

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One blocking call on a worker thread (``drivers.threads``: a light hop)."""
        return await _mapped(
            self._workers.run(functools.partial(func, *args, **kwargs)), args[0] if args else ""
        )

    async def _small(self, func: Callable[..., T], *args: Any) -> T:
        """Like ``_call``, for a small operation: batched with others of this loop turn."""
        return await _mapped(
            self._batches.run(functools.partial(func, *args)), args[0] if args else ""
        )

    async def read(self, path: str) -> bytes:
        return await self._small(_read_file, self._full(path), path)

    async def write(self, path: str, data: bytes) -> None:
        if len(data) > SMALL_WRITE:
            await self._call(_write_atomic, self._full(path), data)
        else:
            await self._small(_write_atomic, self._full(path), data)

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        if len(data) > SMALL_WRITE:
            return await self._call(_create_if_absent, self._full(path), data)
        return await self._small(_create_if_absent, self._full(path), data)

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        full = self._full(path)
        try:
            handle = await self._workers.run(functools.partial(open, full, "rb"))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise PathNotFound(path) from None
        try:
            if offset:
                handle.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await self._workers.run(functools.partial(handle.read, want))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def open_writer(self, path: str, *, append: bool = False) -> FileWriter:
        full = self._full(path)
        if append:
            handle, size = await self._small(_open_append, full)
            return LocalWriter(self._workers, handle, size, None, None, full)
        temporary = _temporary(full)

        def create() -> object:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            return open(temporary, "wb", buffering=0)

        return LocalWriter(self._workers, await self._call(create), 0, full, temporary)

    async def stat(self, path: str) -> FileInfo:
        return await self._small(_stat_file, self._dir(path), path)

    async def run_steps(self, groups: list[list[Step]]) -> list[list[Any]]:
        """``registry_core.storage.steps.run_steps`` in one hop, every step in the order
        given (batched with this loop turn's other small operations unless a write is
        large)."""
        prepared = [
            [
                (step, self._dir(step.path) if step.operation == "stat" else self._full(step.path))
                for step in group
            ]
            for group in groups
        ]
        small = all(len(step.data) <= SMALL_WRITE for group in groups for step in group)
        call = self._small if small else self._call
        return await call(_run_steps, prepared)

    async def list(self, path: str) -> list[str]:
        full = self._dir(path)

        def start(full: str) -> tuple[list[str], Any]:
            """The first SMALL_LISTING names, and the open listing if there are more."""
            try:
                entries = os.scandir(full)
            except (FileNotFoundError, NotADirectoryError):
                raise PathNotFound(path) from None
            names = [entry.name for entry in itertools.islice(entries, SMALL_LISTING)]
            if len(names) < SMALL_LISTING:
                entries.close()
                return names, None
            return names, entries

        def rest(full: str, entries: Any) -> list[str]:
            with entries:
                return [entry.name for entry in entries]

        # Mostly a short folder (a tenant's open upload sessions, a repository's tags):
        # batched with this loop turn's small operations; a long one goes on from where
        # the shared hop stopped, in a hop of its own (not listed again from the start).
        names, more = await self._small(start, full)
        if more is not None:
            names += await self._call(rest, full, more)
        return [name for name in names if not (name.startswith(".") and ".tmp-" in name)]

    async def walk(self, path: str, prune: WalkFilter | None = None) -> AsyncIterator[FileInfo]:
        state = _WalkState(self._dir(path))
        try:
            while not state.done:
                # One batch per hop; the state is only touched by the thread while we
                # await it.
                state.busy = True
                for entry in await self._call(_scan, state, self.root, prune, WALK_BATCH):
                    yield entry
        finally:
            state.abandon()

    async def move(self, source: str, destination: str) -> None:
        await self._small(_move, self._full(source), self._full(destination))

    async def move_exact(self, source: str, destination: str, size: int) -> None:
        """``move``, checking in the same step that *source* holds *size* bytes."""
        await self._small(_move_exact, self._full(source), self._full(destination), size)

    async def commit_small_upload(
        self,
        record: str,
        pending: str,
        folder: str,
        destination: str,
        data: bytes,
        *,
        then_write: tuple[str, bytes] | None = None,
        then_delete: str | None = None,
    ) -> bytes | None:
        """An upload finished by one request holding all of *data*, in one thread hop
        (see ``registry_core.storage.driver``: an optional ability)."""
        return await self._small(
            _commit_small_upload,
            self._full(record),
            self._full(pending),
            self._full(folder),
            self._full(destination),
            data,
            None if then_write is None else (self._full(then_write[0]), then_write[1]),
            None if then_delete is None else self._full(then_delete),
        )

    async def delete(self, path: str) -> None:
        # Mostly a link or an upload session (a file, a few files): batched with the
        # small operations of this loop turn (a commit's marker delete rides with its
        # link write). A big folder is handed back and removed in a hop of its own.
        full = self._full(path)
        try:
            await self._small(_delete_small, full)
        except _NotSmall:
            await self._call(_delete, full)

    def local_path(self, path: str) -> str | None:
        return self._full(path)


async def _mapped(call: asyncio.Future[T], path: object) -> T:
    """The outcome of a worker-thread call, with OS errors mapped to the driver's."""
    try:
        return await call
    except FileNotFoundError as exc:
        raise PathNotFound(str(exc.filename or path)) from None
    except (PathNotFound, StorageError):
        raise
    except OSError as exc:
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc


def open_local(url: str, **options: object) -> LocalDriver:
    """Factory for ``file:///abs/path`` URLs and plain paths."""
    from pathlib import Path
    from urllib.parse import urlsplit

    if options:
        raise ValueError(f"the local driver takes no options (got {', '.join(options)})")
    path = urlsplit(url).path if url.startswith("file://") else url
    if not path:
        raise ValueError(f"storage URL {url!r} names no folder")
    return LocalDriver(str(Path(path).expanduser()))
