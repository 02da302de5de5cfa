"""Blobs: one content-addressed copy each, reachable only through repository links.

``BlobStore`` owns the shared data (``blobs/<alg>/<xx>/<hex>/data``);
``RepositoryBlobs`` is one repository's view of it: a blob is visible to a
repository only when the repository holds a link to it, which it gets by an
upload or a mount. Uploads stream into ``_uploads/<id>/data`` while being
hashed, and become a blob only after the digest (and size, when given) are
verified, by one move into place. A crash at any point leaves no partial blob
visible: either the move happened or the data is still an upload.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from ..digest import DEFAULT_ALGORITHM, Digest, Hasher
from ..errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    RangeInvalid,
    RegistryError,
    SizeInvalid,
    TooManyRequests,
)
from ..names import RepositoryName
from . import layout, steps
from .driver import (
    FileWriter,
    ObjectChanged,
    PathNotFound,
    StorageDriver,
    StorageError,
    delete_objects,
)
from .policy import RepositoryPolicy, WritePolicy
from .steps import Step

WRITE_BUFFER = 1 << 20
"""Bytes gathered before one write+hash step: large enough that thread hops are cheap."""

INLINE_HASH = 32 * 1024
"""Bytes hashed on the event loop itself (about 20 µs of SHA-256; a thread hop costs more)."""

_MAX_HASH_STATES = 4096

MOUNT_BATCH = 32
"""Repositories asked at once whether they link a blob, for a mount without ``from``."""


@attrs.frozen
class UploadLimits:
    """Open upload sessions allowed per repository and per tenant (0: no limit).

    Sessions are counted from one empty marker object per session in a folder of the
    tenant (one listing answers both counts, in every process); a marker older than
    *stale_after* (the purge age) is a session that was never finished, and no longer
    counts. Concurrent starts in several processes may overshoot a limit by their number,
    or, when they see each other's markers, be refused together.
    """

    per_repository: int = 0
    per_tenant: int = 0
    stale_after: float = 24 * 3600.0

    @property
    def enabled(self) -> bool:
        return self.per_repository > 0 or self.per_tenant > 0


@attrs.frozen
class BlobInfo:
    digest: Digest
    size: int


@attrs.frozen
class _HashState:
    """An upload's hash state kept between its requests (see ``BlobStore``)."""

    hasher: Hasher
    size: int
    """Bytes hashed once *pending* is done (until then ``hasher.size`` may be lower)."""
    pending: concurrent.futures.Future[None] | None = None
    """The hash of the previous request's last buffers, still running on a thread."""
    version: str | None = None
    """Which stored bytes were hashed, as the driver's writer named them (an object
    store: the parts; None: a driver whose appends can never replace stored bytes)."""


class BlobStore:
    """The registry-wide, deduplicated blob data. Callers go through RepositoryBlobs."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        # Hash state of uploads this process has been writing, keyed by upload
        # path. Python cannot persist a hashlib state, so an upload continued
        # elsewhere (another process, after a restart) is re-read instead.
        self._hash_states: OrderedDict[str, _HashState] = OrderedDict()
        self._upload_locks: dict[str, asyncio.Lock] = {}

    async def stat(self, digest: Digest) -> BlobInfo:
        try:
            info = await self.driver.stat(layout.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None
        return BlobInfo(digest, info.size)

    async def exists(self, digest: Digest) -> bool:
        try:
            await self.driver.stat(layout.blob_data(digest))
        except PathNotFound:
            return False
        return True

    async def read_small(self, digest: Digest) -> bytes:
        try:
            return await self.driver.read(layout.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None

    async def put_small(self, data: bytes, digest: Digest) -> None:
        """Store a small payload whose digest the caller has computed (manifests)."""
        await self.driver.write_if_absent(layout.blob_data(digest), data)

    async def recover_set_aside(self, digest: Digest) -> bool:
        """Move a blob's data back from a running GC's trash; True if it is in place now.

        Called only when a repository links content whose data is missing. A GC run
        removes the links it does not keep *before* it sets data aside
        (``registry_core.lifecycle.gc``), so a link next to set-aside data was written
        after the run's mark: its re-check would rescue the data after ``settle``, and
        this does the same at once, so that reads of a just-pushed or just re-tagged
        image do not answer 404 in between. The run's own rescue and its final delete
        of the trash both tolerate the data having moved back. Costs one listing of the
        trash (runs in progress, usually none) plus a move per run, on this rare path only.
        """
        try:
            runs = await self.driver.list(layout.gc_trash_dir())
        except PathNotFound:
            return False
        target = layout.blob_data(digest)
        for run in runs:
            try:
                await self.driver.move(layout.gc_trash(run, digest), target)
            except PathNotFound:
                continue
            return True
        return False

    # -- hash states of in-flight uploads -------------------------------------

    async def _take_hash_state(
        self, key: str, size: int | None
    ) -> tuple[Hasher, str | None] | None:
        """The kept hash state of upload *key*, and the version of the bytes it hashed, if
        it has hashed *size* bytes (None: any number, which ``hasher.size`` then tells);
        one whose last bytes are still being hashed is waited for (None: rehash from
        storage). The caller compares the version with the stored one's."""
        state = self._hash_states.pop(key, None)
        if state is None or (size is not None and state.size != size):
            return None
        if state.pending is not None:
            try:
                # Shielded: a cancelled request must not cancel the digest (its thread
                # gives the receiving buffers back when it ends).
                await asyncio.shield(asyncio.wrap_future(state.pending))
            except Exception:
                return None
        return (state.hasher, state.version) if state.hasher.size == state.size else None

    def _keep_hash_state(
        self,
        key: str,
        hasher: Hasher,
        size: int | None = None,
        pending: concurrent.futures.Future[None] | None = None,
        version: str | None = None,
    ) -> None:
        """Keep *hasher* (of the bytes *version* names) for the upload's next request;
        with *pending*, it reaches *size* bytes when that future is done."""
        self._hash_states[key] = _HashState(
            hasher, hasher.size if size is None else size, pending, version
        )
        while len(self._hash_states) > _MAX_HASH_STATES:
            self._hash_states.popitem(last=False)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._upload_locks.get(key)
        if lock is None:
            lock = self._upload_locks[key] = asyncio.Lock()
        return lock

    def _release_lock(self, key: str) -> None:
        lock = self._upload_locks.get(key)
        # A woken waiter has not re-taken the lock yet, so look at the queue too.
        if lock is not None and not lock.locked() and not getattr(lock, "_waiters", None):
            del self._upload_locks[key]

    @contextlib.asynccontextmanager
    async def upload_lock(self, key: str) -> AsyncIterator[None]:
        """Serialise work on one upload within this process (clients may race PATCHes)."""
        try:
            async with self._lock(key):
                yield
        finally:
            self._release_lock(key)


class RepositoryBlobs:
    """One repository's view of the blob store."""

    def __init__(
        self, store: BlobStore, name: RepositoryName, policy: WritePolicy | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.driver = store.driver
        self.policy = policy

    async def rules(self) -> RepositoryPolicy | None:
        """The registry's quota rules for one write (None: none apply, from a cache)."""
        return None if self.policy is None else await self.policy.of(self.name)

    async def _linked(self, digest: Digest) -> bool:
        try:
            content = await self.driver.read(layout.layer_link(self.name, digest))
        except PathNotFound:
            return False
        return content.strip() == str(digest).encode()

    async def stat(self, digest: Digest, *, together: bool = False) -> BlobInfo:
        """Size of a blob this repository links; BLOB_UNKNOWN otherwise.

        *together*: read the link and stat the data side by side, one round trip instead
        of two for a blob that is there (a pull's GET, on an object store), at the cost
        of a wasted stat for one that is not (so not for a push's HEAD checks).
        """
        if together:
            linked, info = await asyncio.gather(
                self._linked(digest), self._data(digest), return_exceptions=True
            )
            if isinstance(linked, BaseException):
                raise linked
        else:
            linked, info = await self._linked(digest), None
        if not linked:
            raise BlobUnknown(detail={"digest": str(digest)})
        if not together:
            info = await self._data(digest)
        if isinstance(info, BaseException):
            raise info
        if info is not None:
            return info
        if not await self.store.recover_set_aside(digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        return await self.store.stat(digest)

    async def _data(self, digest: Digest) -> BlobInfo | None:
        """The data's size and the like, None when it is not in place."""
        try:
            return await self.store.stat(digest)
        except BlobUnknown:
            return None

    async def exists(self, digest: Digest) -> bool:
        """True when this repository links the blob and its data is there (checked together;
        data a running GC set aside after this link was written is moved back)."""
        linked, present = await asyncio.gather(self._linked(digest), self.store.exists(digest))
        if linked and not present:
            present = await self.store.recover_set_aside(digest)
        return linked and present

    def exists_steps(self, digest: Digest) -> list[Step]:
        """What :meth:`exists` reads, as storage steps (``storage.steps``): many blobs
        checked in one call; :meth:`exists_from` answers from their outcomes."""
        return [
            steps.read(layout.layer_link(self.name, digest)),
            steps.stat(layout.blob_data(digest)),
        ]

    async def exists_from(self, digest: Digest, link: object, data: object) -> bool:
        """:meth:`exists`, from the outcomes of :meth:`exists_steps`."""
        linked = isinstance(link, bytes) and link.strip() == str(digest).encode()
        present = not isinstance(data, PathNotFound)
        if linked and not present:
            present = await self.store.recover_set_aside(digest)
        return linked and present

    def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a blob the caller has already checked with :meth:`stat`."""
        return self.driver.read_stream(layout.blob_data(digest), offset, length)

    def local_path(self, digest: Digest) -> str | None:
        return self.driver.local_path(layout.blob_data(digest))

    async def signed_url(self, digest: Digest, expires: int) -> str | None:
        return await self.driver.signed_url(layout.blob_data(digest), expires)

    async def link(self, digest: Digest) -> None:
        await self.driver.write(layout.layer_link(self.name, digest), str(digest).encode())

    async def delete(self, digest: Digest) -> None:
        """Remove this repository's link; the data stays for garbage collection."""
        if not await self._linked(digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        await self.driver.delete(layout.layer_link_dir(self.name, digest))

    async def mount(self, digest: Digest, source: RepositoryBlobs) -> BlobInfo | None:
        """Link a blob *source* holds; None when it does not (the caller uploads instead)."""
        try:
            info = await source.stat(digest)
        except BlobUnknown:
            return None
        rules = await self.rules()
        if rules is not None:
            await rules.check_bytes(info.size, digest)
        await self.link(digest)
        if rules is not None:
            await rules.blob_linked(digest, info.size)
        return info

    async def mount_from_any(
        self, digest: Digest, sources: list[RepositoryBlobs]
    ) -> RepositoryBlobs | None:
        """Mount the blob from the first of *sources* that links it; None when none does.

        The caller chooses the sources (those the client may read, in its own tenant):
        the blob's existence anywhere else is never consulted, so the answer cannot
        reveal it. Sources are asked a batch at a time, in order.
        """
        if await self._linked(digest) and await self.store.exists(digest):
            return self
        for start in range(0, len(sources), MOUNT_BATCH):
            batch = [s for s in sources[start : start + MOUNT_BATCH] if s.name != self.name]
            linked = await asyncio.gather(*(source._linked(digest) for source in batch))
            for source, found in zip(batch, linked, strict=True):
                if found and await self.mount(digest, source) is not None:
                    return source
        return None

    # -- uploads ---------------------------------------------------------------

    async def start_upload(self, limits: UploadLimits | None = None) -> Upload:
        """A new session; with *limits*, refused with 429 when too many are open."""
        now = time.time()
        upload_id = _new_upload_id(now)
        tracked = limits is not None and limits.enabled
        # The session is its start-time record; the data object appears with the
        # first bytes (an absent one holds zero bytes), which saves two storage
        # round trips on every push.
        record = self.driver.write(
            layout.upload_started_at(self.name, upload_id), _format_time(now).encode()
        )
        if tracked:
            assert limits is not None
            # Marker, record and the count of open sessions in one step (the local driver:
            # one shared thread hop, not a listing's hop and then the writes'). The count
            # leaves this session out, so what is seen is what a count before the writes
            # would see, plus sessions started meanwhile: concurrent starts may overshoot a
            # limit by their number, or, seeing each other, be refused together.
            marker = self._marker(upload_id, now)
            _, _, markers = await asyncio.gather(
                self.driver.write(marker, b""), record, self._session_markers()
            )
            try:
                await self._check_session_limits(limits, now, markers, upload_id)
            except TooManyRequests:
                with contextlib.suppress(PathNotFound, StorageError):
                    await asyncio.gather(
                        self.driver.delete(marker),
                        self.driver.delete(layout.upload_dir(self.name, upload_id)),
                    )
                raise
        else:
            await record
        return Upload(self, upload_id, 0, now, tracked=tracked)

    async def _session_markers(self) -> list[str]:
        try:
            return await self.driver.list(layout.upload_markers_dir(self.name.tenant))
        except PathNotFound:
            return []

    def _repository_key(self) -> str:
        return _repository_key(self.name.value)

    def _marker(self, upload_id: str, started_at: float) -> str:
        name = f"{int(started_at)}-{self._repository_key()}-{upload_id}"
        return layout.upload_marker(self.name.tenant, name)

    async def _check_session_limits(
        self, limits: UploadLimits, now: float, markers: list[str], upload_id: str
    ) -> None:
        """Refuse session *upload_id* (429) when *markers* show the limits reached without it."""
        tenant = self.name.tenant
        own = f"{self._repository_key()}-{upload_id}"
        live: list[str] = []
        stale: list[str] = []
        for marker in markers:
            started, _, rest = marker.partition("-")
            if not started.isdigit() or rest == own:
                continue
            if now - int(started) > limits.stale_after:
                stale.append(marker)
            else:
                live.append(rest)
        # Sessions nobody finished: tidy a few per start (markers are plain objects: one
        # batched request on an object store).
        await delete_objects(self.driver, [layout.upload_marker(tenant, m) for m in stale[:100]])
        if limits.per_tenant and len(live) >= limits.per_tenant:
            raise TooManyRequests(
                f"{tenant} has {len(live)} open upload sessions, the limit; finish or cancel "
                "some first",
                detail={"limit": "uploads_per_tenant", "open": len(live)},
            )
        key = self._repository_key() + "-"
        here = sum(1 for rest in live if rest.startswith(key))
        if limits.per_repository and here >= limits.per_repository:
            raise TooManyRequests(
                f"this repository has {here} open upload sessions, the limit; finish or "
                "cancel some first",
                detail={"limit": "uploads_per_repository", "open": here},
            )

    @contextlib.asynccontextmanager
    async def upload(self) -> AsyncIterator[Upload]:
        """A new upload that is cancelled unless committed inside the block."""
        session = await self.start_upload()
        try:
            yield session
        finally:
            if not session.committed:
                await session.cancel()

    async def get_upload(
        self, upload_id: str, limits: UploadLimits | None = None, *, with_size: bool = True
    ) -> Upload:
        """An existing upload session of this repository; BLOB_UPLOAD_UNKNOWN otherwise.

        ``with_size=False`` skips reading the stored size, for callers that append
        (the append writer learns it) or commit (which reads it) right after.
        """
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise BlobUploadUnknown(detail={"uuid": upload_id[:64]}) from None
        started_at = _read_or_none(self.driver, layout.upload_started_at(self.name, upload_id))
        if with_size:
            started, size = await asyncio.gather(
                started_at, _size_or_zero(self.driver, layout.upload_data(self.name, upload_id))
            )
        else:
            started, size = await started_at, 0
        if started is None:
            raise BlobUploadUnknown(detail={"uuid": upload_id})
        tracked = limits is not None and limits.enabled
        upload = Upload(self, upload_id, size, _parse_time(started.decode()), tracked=tracked)
        upload.size_known = with_size
        return upload

    async def commit_whole(
        self,
        upload_id: str,
        digest: Digest,
        source: AsyncIterator[bytes],
        limits: UploadLimits | None = None,
    ) -> BlobInfo:
        """Finish upload *upload_id* with *source*, a small body that ends it, as *digest*.

        Most small blobs are pushed as POST, then PUT ?digest= carrying every byte. The
        body is gathered first; with a driver that has ``commit_small_upload``, a body
        that matches its digest is stored as the blob (create-if-absent) in the same
        storage operation that checks the session and ends it: the PUT costs two thread
        hops instead of seven, and no data object is written only to be moved. Every
        other case (bytes sent to the session before, a quota to check, a digest that
        does not match, another driver) appends the body and commits like any upload,
        with the same answers. A body that breaks off keeps what arrived, as an append
        does, so the client can resume.
        """
        parts: list[bytes] = []
        try:
            async for chunk in source:
                parts.append(chunk)
        except Exception:
            if parts:
                with contextlib.suppress(RegistryError, StorageError):
                    upload = await self.get_upload(upload_id, limits, with_size=False)
                    await upload.append(_each(parts))
            raise
        body = b"".join(parts)
        commit_small = getattr(self.driver, "commit_small_upload", None)
        if (
            commit_small is not None
            and await self.rules() is None
            and Digest.of(body, digest.algorithm) == digest
        ):
            info = await self._commit_small(commit_small, upload_id, digest, body, limits)
            if info is not None:
                return info
        upload = await self.get_upload(upload_id, limits, with_size=False)
        await upload.append(_each([body]), None, len(body))
        return await upload.commit(digest)

    async def _commit_small(
        self,
        commit_small: Callable[[str, str, str, str, bytes], Awaitable[bytes | None]],
        upload_id: str,
        digest: Digest,
        body: bytes,
        limits: UploadLimits | None,
    ) -> BlobInfo | None:
        try:
            uuid.UUID(upload_id)
        except ValueError:
            raise BlobUploadUnknown(detail={"uuid": upload_id[:64]}) from None
        pending = layout.upload_data(self.name, upload_id)
        tracked = limits is not None and limits.enabled
        second = _started_second(upload_id)
        # The link and the marker's removal go with the commit (one step) when the marker's
        # name is known without the record: always, but for sessions of older versions.
        marker = self._marker(upload_id, second) if tracked and second is not None else None
        folded = not tracked or marker is not None
        link = (layout.layer_link(self.name, digest), str(digest).encode())
        async with self.store.upload_lock(pending):  # this process's PATCHes of the session
            try:
                started = await commit_small(
                    layout.upload_started_at(self.name, upload_id),
                    pending,
                    layout.upload_dir(self.name, upload_id),
                    layout.blob_data(digest),
                    body,
                    then_write=link if folded else None,
                    then_delete=marker,
                )
            except PathNotFound:
                raise BlobUploadUnknown(detail={"uuid": upload_id}) from None
            if started is None:
                return None  # the session holds bytes already: appended to as usual
            if not folded:
                upload = Upload(self, upload_id, len(body), 0.0)
                # The marker's name holds the start time; an unreadable one is left to
                # go stale, as a marker whose delete failed is.
                with contextlib.suppress(BlobUploadInvalid, UnicodeDecodeError):
                    upload.started_at = _parse_time(started.decode())
                    upload.tracked = True
                await asyncio.gather(self.link(digest), upload._untrack())
        return BlobInfo(digest, len(body))


class Upload:
    """One resumable upload session."""

    def __init__(
        self,
        blobs: RepositoryBlobs,
        upload_id: str,
        size: int,
        started_at: float,
        *,
        tracked: bool = False,
    ) -> None:
        self.blobs = blobs
        self.tracked = tracked
        """Whether a session marker counts this upload (removed when it ends)."""
        self.id = upload_id
        self.size = size
        self.started_at = started_at
        self._data = layout.upload_data(blobs.name, upload_id)
        self.committed = False
        self.size_known = True
        """False when ``size`` was not read (``get_upload(with_size=False)``)."""
        self._appended = False
        """This object appended under the upload lock, so ``size`` is the stored size
        unless another request of this process appended since (its hash state says so)."""

    @property
    def _store(self) -> BlobStore:
        return self.blobs.store

    async def append(
        self, source: AsyncIterator[bytes], start: int | None = None, length: int | None = None
    ) -> int:
        """Stream *source* onto the end of the upload; return the bytes appended.

        *start* is the client's idea of the current offset (Content-Range):
        anything else is refused with 416 and the stored offset, so the client
        can resume. When the source fails midway (a client disconnect), the
        bytes already stored stay stored and the error propagates. A quota
        refuses *length* announced bytes before any is stored, and a source of
        unknown length once it is stored; either way the upload is deleted.
        """
        rules = await self.blobs.rules()
        if rules is not None and length is not None:
            if not self.size_known:
                self.size = await _size_or_zero(self.blobs.driver, self._data)
            await self._within_quota(rules, self.size + length)
        appended = await self._append(source, start)
        if rules is not None and length is None:
            await self._within_quota(rules, self.size)
        return appended

    async def _within_quota(
        self, rules: RepositoryPolicy, size: int, digest: Digest | None = None
    ) -> None:
        try:
            await rules.check_bytes(size, digest)
        except Denied:
            await self.cancel()  # nothing half-stored stays behind a refusal
            raise

    async def _append(self, source: AsyncIterator[bytes], start: int | None) -> int:
        store = self._store
        async with store.upload_lock(self._data):
            # An append writer knows the stored size: no separate stat.
            writer = await self.blobs.driver.open_writer(self._data, append=True)
            self.size = writer.size
            if start is not None and start != self.size:
                await writer.cancel()
                raise RangeInvalid(
                    f"chunk starts at {start} but the upload holds {self.size} bytes",
                    headers=_range_headers(self.size),
                )
            # A state kept for other bytes than the writer continues (a racing append of
            # the same offset won on another process meanwhile) is no use: rehash.
            taken = await store._take_hash_state(self._data, self.size)
            continues = getattr(writer, "base_version", None)
            hasher = taken[0] if taken is not None and taken[1] == continues else None
            if hasher is None:
                hasher = (
                    Hasher(DEFAULT_ALGORITHM)
                    if self.size == 0
                    else await self._rehash(DEFAULT_ALGORITHM)
                )
            before = self.size
            pending = None
            try:
                try:
                    pending = await _pump(source, writer, hasher)
                finally:
                    await writer.commit()
            except ObjectChanged:
                # Another process appended to, or committed, this upload at the same time
                # (the local driver checks before each write): this request's bytes were
                # not stored after theirs. The client learns the stored offset and resumes.
                self.size = await _size_or_zero(self.blobs.driver, self._data)
                raise RangeInvalid(
                    "another request changed this upload at the same time; "
                    f"it holds {self.size} bytes",
                    headers=_range_headers(self.size),
                ) from None
            self.size = writer.size
            self.size_known = True
            if pending is not None or hasher.size == self.size:
                version = getattr(writer, "version", None)
                store._keep_hash_state(self._data, hasher, self.size, pending, version)
                self._appended = True
            return self.size - before

    async def write(self, data: bytes) -> None:
        """Append one chunk held in memory (library callers; the server streams)."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.append(one())

    async def _rehash(self, algorithm: str) -> Hasher:
        hasher = Hasher(algorithm)
        try:
            async for chunk in self.blobs.driver.read_stream(self._data):
                await asyncio.to_thread(hasher.update, chunk)
        except PathNotFound:
            pass  # no data object yet: nothing was sent
        return hasher

    async def commit(self, digest: Digest, size: int | None = None) -> BlobInfo:
        """Verify and publish the upload as blob *digest*, linked into this repository."""
        store = self._store
        driver = self.blobs.driver
        move_exact = getattr(driver, "move_exact", None)
        async with store.upload_lock(self._data):
            # With a driver whose move checks the stored size (and version) in the same
            # step (move_exact), this process's hash state is used as it stands, without
            # reading the stored size first (on S3: a HEAD and a listing): this process's
            # appends keep that state current under this lock, and storage changed by
            # another process since fails the move's check. A state not kept by this very
            # request is *unchecked* until storage confirms it: whatever would fail or
            # publish without a move reads the size first, and a state found stale is
            # dropped and the bytes read again (nothing was published meanwhile).
            taken = (
                await store._take_hash_state(self._data, None) if move_exact is not None else None
            )
            hasher, version = taken if taken is not None else (None, None)
            unchecked = hasher is not None and not self._appended
            moved = False
            while True:
                if hasher is None:
                    self.size, version = await _size_and_version(driver, self._data)
                    taken = await store._take_hash_state(self._data, self.size)
                    if taken is not None and taken[1] == version:
                        hasher = taken[0]
                    if size is not None and size != self.size:
                        if hasher is not None:
                            store._keep_hash_state(self._data, hasher, version=version)
                        raise SizeInvalid(
                            f"upload holds {self.size} bytes, the client declared {size}"
                        )
                else:
                    self.size = hasher.size
                if hasher is None or hasher.algorithm != digest.algorithm:
                    if unchecked:  # the version of what is read now, not of the state
                        self.size, version = await _size_and_version(driver, self._data)
                    hasher, unchecked = await self._rehash(digest.algorithm), False
                    self.size = hasher.size
                actual = hasher.digest()
                failing = actual != digest or (size is not None and size != self.size)
                exists = False if failing else await store.exists(digest)
                if unchecked and (failing or exists or self.size == 0):
                    unchecked = False
                    if await _size_and_version(driver, self._data) != (self.size, version):
                        hasher = None  # storage changed since the state: read it again
                        continue
                if size is not None and size != self.size:
                    store._keep_hash_state(self._data, hasher, version=version)
                    raise SizeInvalid(f"upload holds {self.size} bytes, the client declared {size}")
                if actual != digest:
                    # Keep the state: the client may still send the right digest.
                    store._keep_hash_state(self._data, hasher, version=version)
                    raise DigestInvalid(detail={"expected": str(digest), "actual": str(actual)})
                rules = await self.blobs.rules()
                if rules is not None:
                    await self._within_quota(rules, self.size, digest)
                if exists:
                    pass
                elif self.size == 0:
                    await driver.write_if_absent(layout.blob_data(digest), b"")
                elif move_exact is not None:
                    # The version only when there is one: drivers whose appends cannot
                    # replace stored bytes (local) take (source, destination, size).
                    extra = {} if version is None else {"version": version}
                    try:
                        await move_exact(self._data, layout.blob_data(digest), self.size, **extra)
                        moved = True
                    except ObjectChanged:
                        if unchecked:  # changed by another process since: read it again
                            hasher, unchecked = None, False
                            continue
                        # Another process appended meanwhile (or won a race for the same
                        # offset): the stored bytes are not the ones hashed. Nothing was
                        # published; the session stays as it is.
                        raise DigestInvalid(
                            "another request appended to this upload at the same time; its "
                            "bytes no longer match the digest",
                            detail={"expected": str(digest)},
                        ) from None
                else:
                    await driver.move(self._data, layout.blob_data(digest))
                    moved = True
                break
            await self._end(digest, moved=moved)
            if rules is not None:
                await rules.blob_linked(digest, self.size)
        self.committed = True
        return BlobInfo(digest, self.size)

    async def _end(self, digest: Digest, *, moved: bool) -> None:
        """End the committed session: its folder and marker go, the repository's link comes."""
        driver = self.blobs.driver
        if moved and getattr(driver, "delete_many", None) is not None:
            # The move took the data and its parts away. On an object store a folder is
            # only its objects, so the session's record (and its marker) are all that is
            # left: one batched delete instead of a HEAD, a listing and a delete for the
            # folder and another delete for the marker. Anything else in the folder (a
            # stray of an earlier version) goes with the idle purge.
            ended = [layout.upload_started_at(self.blobs.name, self.id)]
            if self.tracked:
                ended.append(self.blobs._marker(self.id, self.started_at))
            await asyncio.gather(self.blobs.link(digest), delete_objects(driver, ended))
            return
        try:
            await driver.delete(layout.upload_dir(self.blobs.name, self.id))
        except PathNotFound:
            raise BlobUploadUnknown(detail={"uuid": self.id}) from None
        await asyncio.gather(self.blobs.link(digest), self._untrack())

    async def cancel(self) -> None:
        self._store._hash_states.pop(self._data, None)
        with contextlib.suppress(PathNotFound):  # already gone (a refusal cancelled it)
            await self.blobs.driver.delete(layout.upload_dir(self.blobs.name, self.id))
        await self._untrack()

    async def _untrack(self) -> None:
        # A marker left behind only counts until it is stale; failing a commit that
        # already published the blob over it would be worse.
        if self.tracked:
            with contextlib.suppress(StorageError):
                # A plain object: deleted as one, without a folder's lookups.
                marker = self.blobs._marker(self.id, self.started_at)
                await delete_objects(self.blobs.driver, [marker])


def _new_upload_id(now: float) -> str:
    """A random session id (a UUID of version 8) whose first 32 bits are its start second.

    A request finishing the session can then name the session's marker (whose name holds
    that second) without reading the session's record first. 90 bits stay random.
    """
    bits = (int(now) & 0xFFFFFFFF) << 96 | secrets.randbits(96)
    bits = (bits & ~(0xF << 76)) | (0x8 << 76)  # version 8
    bits = (bits & ~(0x3 << 62)) | (0x2 << 62)  # the RFC 9562 variant
    return str(uuid.UUID(int=bits))


def _started_second(upload_id: str) -> int | None:
    """The start second in an id from :func:`_new_upload_id` (None: an id of another kind,
    such as the version-4 ids of earlier versions)."""
    if len(upload_id) == 36 and upload_id[14] == "8":
        try:
            return int(upload_id[:8], 16)
        except ValueError:
            return None
    return None


@functools.lru_cache(maxsize=1024)
def _repository_key(name: str) -> str:
    """A repository's part of its session markers' names (a hash: names hold slashes)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


async def _each(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read_or_none(driver: StorageDriver, path: str) -> bytes | None:
    try:
        return await driver.read(path)
    except PathNotFound:
        return None


async def _size_or_zero(driver: StorageDriver, path: str) -> int:
    return (await _size_and_version(driver, path))[0]


async def _size_and_version(driver: StorageDriver, path: str) -> tuple[int, str | None]:
    """An upload's stored size and the version of its bytes (``FileInfo.version``)."""
    try:
        info = await driver.stat(path)
    except PathNotFound:
        return 0, None
    return info.size, info.version


async def _pump(
    source: AsyncIterator[bytes], writer: FileWriter, hasher: Hasher
) -> concurrent.futures.Future[None] | None:
    """Copy *source* into *writer* and *hasher* in large steps, overlapping network and disk.

    While one batch of chunks is written and hashed (both off the event loop, on
    separate threads), the next one is read from the network. Chunks are handed
    on as they arrived, never joined into a copy, to writers that take a list.

    A body received straight off the socket returns once written, possibly with the
    hash of its last buffers still running: the future of that hash (None: done).
    """
    pending: asyncio.Future[None] | None = None
    parts: list[bytes] = []
    gathered = 0

    write_parts = getattr(writer, "write_parts", None)
    receive = getattr(source, "receive", None)
    taker = getattr(writer, "taker", None)
    if (
        receive is not None
        and taker is not None
        and await receive(taker(), hasher.update, writer.size, defer_digest=True)
    ):
        # Read off the socket and written on a thread, hashed beside it; the hash of
        # the last buffers may still run while the client gets its answer.
        return getattr(source, "digest_pending", None)

    async def step(batch: list[bytes], size: int) -> None:
        if size <= INLINE_HASH:
            # Hashing a few KiB takes less time than the hop to a thread would.
            _hash_all(hasher, batch)
            await _write_all(writer, batch)
        elif write_parts is not None:
            # The local driver's writer hashes on its own thread, in the hop that writes:
            # one wake-up per batch; on two cores shared with the client, running hash
            # and write side by side on two threads saved no time and cost CPU.
            await write_parts(batch, functools.partial(_hash_all, hasher, batch))
        else:
            await asyncio.gather(
                _write_all(writer, batch), asyncio.to_thread(_hash_all, hasher, batch)
            )

    try:
        async for chunk in source:
            if not chunk:
                continue
            parts.append(chunk)
            gathered += len(chunk)
            if gathered >= WRITE_BUFFER:
                batch, size = parts, gathered
                parts, gathered = [], 0
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(step(batch, size))
    finally:
        # Also when the source fails (a client gone mid-body): every byte that
        # arrived is stored, so the client can resume from the stored offset.
        if pending is not None:
            await pending
        if parts:
            await step(parts, gathered)


def _hash_all(hasher: Hasher, parts: list[bytes]) -> None:
    for part in parts:
        hasher.update(part)


async def _write_all(writer: FileWriter, parts: list[bytes]) -> None:
    write_parts = getattr(writer, "write_parts", None)
    if write_parts is not None:  # the local driver's writer: no joined copy
        await write_parts(parts)
    else:
        await writer.write(parts[0] if len(parts) == 1 else b"".join(parts))


def _range_headers(size: int) -> dict[str, str]:
    return {"Range": f"0-{max(size - 1, 0)}"}


def upload_range(size: int) -> str:
    """The spec's Range value for an upload holding *size* bytes."""
    return f"0-{max(size - 1, 0)}"


def _format_time(moment: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e9):09d}Z"
    )


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        main, _, fraction = text.rstrip("Z").partition(".")
        if len(main) != 19 or main[10] != "T":
            raise ValueError(main)
        # fromisoformat is C code; time.strptime costs tens of µs on every upload request.
        moment = datetime.datetime.fromisoformat(main).replace(tzinfo=datetime.UTC)
        return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)
    except ValueError:
        raise BlobUploadInvalid("upload session has an unreadable start time") from None
