"""The pull-through cache: local content first, then the registry's upstreams in order.

Owns the decisions of a proxied pull: whether a tag is local (pushed here:
never refreshed), cached and fresh (served without asking anybody), cached and
stale (asked again, served stale when the upstream fails), or missing (asked
in priority order); blobs streamed to every waiting client while they are
written to storage and hashed; one upstream fetch per process for concurrent
identical misses (single-flight, per process by design: processes share only
storage); a brief per-process memory of upstream 404s. A blob whose bytes do
not match its digest is never committed, and the last byte of every stream
is held back until the digest is verified, so a client of a corrupt blob sees
its stream cut. It speaks to upstreams only through :class:`UpstreamClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import attrs
import msgspec

from ..digest import Digest, Hasher
from ..errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
)
from ..names import Reference, RepositoryName
from ..registry import Registry, Repository
from ..secrets import SecretsError
from ..storage import layout
from ..storage.driver import PathNotFound
from ..storage.manifests import StoredManifest
from .client import UpstreamClient, UpstreamFailure, UpstreamResponse
from .remote import Backoff, RemoteRepository, UpstreamUnavailable, client_error
from .settings import Upstream, UpstreamStore
from .tokens import Credentials, TokenFlow

LOGGER = logging.getLogger("cargohold.proxy")
SUBSCRIBER_QUEUE = 16
"""Pieces (each at most the client's read size, 1 MiB) a slow client may lag behind a
fetch before it is switched to reading storage: the memory one reader can hold."""
STORAGE_QUEUE = 8
"""Pieces read from an upstream that may wait for storage (bounds memory per fetch)."""
_MAX_NEGATIVE = 10_000
_MAX_COMMITTED = 10_000
_COMMITTED_MEMORY = 5.0
"""Seconds a fetch's commit is remembered: longer than a request takes from its local
miss to the cache, short enough that a blob deleted meanwhile is soon fetched again (until
then its GET is the local BLOB_UNKNOWN)."""
_MAX_ORIGINS = 100_000


class ProxyObserver(Protocol):
    """Where the cache reports what it did (the server's Prometheus counters)."""

    def hit(self, upstream: str) -> None: ...
    def miss(self, upstream: str) -> None: ...
    def fetched(self, upstream: str, size: int) -> None: ...
    def error(self, upstream: str, kind: str) -> None: ...
    def stale(self, upstream: str) -> None: ...


class NullObserver:
    def hit(self, upstream: str) -> None:
        pass

    def miss(self, upstream: str) -> None:
        pass

    def fetched(self, upstream: str, size: int) -> None:
        pass

    def error(self, upstream: str, kind: str) -> None:
        pass

    def stale(self, upstream: str) -> None:
        pass


class TagOrigin(msgspec.Struct, kw_only=True):
    """Where a cached tag came from: stored beside the repository, absent for pushed tags."""

    upstream: str
    digest: str
    fetched: float


@attrs.define
class ProxiedBlob:
    """A blob being fetched from an upstream: its size when known, and its bytes."""

    size: int | None
    chunks: AsyncGenerator[bytes, None]
    upstream: str


class _End:
    pass


_END = _End()


class BlobFlight:
    """One upstream fetch of one blob into one repository, fanned out to its readers.

    Readers that joined before the first piece went out get every piece live;
    a reader that joins later, or lags more than SUBSCRIBER_QUEUE pieces
    behind, reads the rest from storage once the blob is committed. Nothing
    here holds more than the queued pieces in memory.
    """

    def __init__(self, repo: Repository, digest: Digest, upstream: Upstream) -> None:
        self.repo = repo
        self.digest = digest
        self.upstream = upstream
        self.size: int | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done = asyncio.Event()
        self.error: BaseException | None = None
        self.sent_any = False
        self.readers: list[_Reader] = []
        self.task: asyncio.Task[None] | None = None

    def broadcast(self, item: bytes | _End | BaseException) -> None:
        self.sent_any = True
        for reader in list(self.readers):
            try:
                reader.queue.put_nowait(item)
            except asyncio.QueueFull:
                # Too slow to follow live: it finishes from storage (or learns the error).
                self.readers.remove(reader)
                reader.overflowed = True

    async def read(self) -> AsyncGenerator[bytes, None]:
        reader = _Reader(asyncio.Queue(SUBSCRIBER_QUEUE))
        offset = 0
        if not self.sent_any and not self.done.is_set():
            self.readers.append(reader)
            try:
                while not (reader.overflowed and reader.queue.empty()):
                    item = await reader.queue.get()
                    if isinstance(item, _End):
                        return
                    if isinstance(item, BaseException):
                        raise item
                    offset += len(item)
                    yield item
            finally:
                with contextlib.suppress(ValueError):
                    self.readers.remove(reader)
        await self.done.wait()
        if self.error is not None:
            raise self.error
        async for chunk in self.repo.blobs.read(self.digest, offset):
            yield chunk


@attrs.define
class _Reader:
    queue: asyncio.Queue[bytes | _End | BaseException]
    overflowed: bool = False


class PullThrough:
    """Proxied reads of the registry's repositories; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        upstreams: UpstreamStore,
        client: UpstreamClient,
        *,
        negative_ttl: float = 30.0,
        observer: ProxyObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.client = client
        self.negative_ttl = negative_ttl
        self.observer: ProxyObserver = observer or NullObserver()
        self.clock = clock
        self.tokens = TokenFlow(client)
        self.backoff = Backoff(clock)
        self._negative: dict[tuple[str, ...], float] = {}
        self._manifest_flights: dict[tuple[str, ...], asyncio.Future[StoredManifest]] = {}
        self._blob_flights: dict[tuple[str, str], BlobFlight] = {}
        self._origins: dict[tuple[str, str], tuple[float, TagOrigin | None]] = {}
        self._committed: dict[tuple[str, str], float] = {}
        """Blobs a fetch of this process committed lately (monotonic time): a request that
        missed them locally just before the commit is served from storage, not fetched
        again, without asking storage a second time."""
        self.upstream_fetches = 0
        """Upstream blob GETs this process started (tests and metrics)."""

    async def close(self) -> None:
        for flight in list(self._blob_flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        await self.client.close()

    # -- which upstreams ------------------------------------------------------------------

    async def candidates(self, name: RepositoryName, ns: str | None = None) -> list[Upstream]:
        """The upstreams that may serve *name*, in priority order (``ns``: containerd's host)."""
        found = await self.upstreams.list(name.tenant)
        image = name.image
        chosen = [u for u in found if u.serves(image)]
        if ns:
            chosen = [u for u in chosen if u.matches_namespace(ns)]
        return chosen

    def _remote(self, name: RepositoryName, upstream: Upstream) -> RemoteRepository:
        try:
            password = self.upstreams.password(name.tenant, upstream)
        except SecretsError:
            raise UpstreamFailure(
                "other",
                f"upstream {upstream.name}: its password was sealed with another secrets key "
                "(every server needs the same [secrets] key)",
            ) from None
        credentials = (
            Credentials(upstream.username or "", password) if password is not None else None
        )
        return RemoteRepository(
            upstream, name.image, credentials, self.client, self.tokens, self.backoff
        )

    def _failed(self, upstream: Upstream, failure: UpstreamFailure) -> None:
        """Count a failure and tell the operator (messages never carry a credential)."""
        self.observer.error(upstream.name, _metric_kind(failure.kind))
        LOGGER.warning("%s", failure.message)

    def _negative_hit(self, key: tuple[str, ...]) -> bool:
        until = self._negative.get(key)
        if until is None:
            return False
        if until <= self.clock():
            self._negative.pop(key, None)
            return False
        return True

    def _remember_missing(self, key: tuple[str, ...]) -> None:
        if self.negative_ttl <= 0:
            return
        if len(self._negative) >= _MAX_NEGATIVE:
            now = self.clock()
            self._negative = {k: v for k, v in self._negative.items() if v > now}
            if len(self._negative) >= _MAX_NEGATIVE:
                self._negative.clear()
        self._negative[key] = self.clock() + self.negative_ttl

    # -- tag origins ----------------------------------------------------------------------

    async def _origin(self, repo: Repository, tag: str) -> TagOrigin | None:
        # Cached as briefly as tag links are (manifests.link_cache_ttl): an origin read
        # late only makes a refresh come a little early, or a pushed tag's origin
        # linger until the digest it names no longer matches the tag.
        key = (repo.name.value, tag)
        ttl = self.registry.link_cache.ttl
        hit = self._origins.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            raw = await self.registry.driver.read(layout.proxy_tag_origin(repo.name, tag))
            origin: TagOrigin | None = msgspec.json.decode(raw, type=TagOrigin)
        except (PathNotFound, msgspec.MsgspecError):
            origin = None
        if ttl > 0:
            self._remember_origin(key, origin, ttl)
        return origin

    def _remember_origin(self, key: tuple[str, str], origin: TagOrigin | None, ttl: float) -> None:
        if len(self._origins) >= _MAX_ORIGINS:
            self._origins.clear()
        self._origins[key] = (time.monotonic() + ttl, origin)

    async def _write_origin(self, repo: Repository, tag: str, origin: TagOrigin) -> None:
        await self.registry.driver.write(
            layout.proxy_tag_origin(repo.name, tag), msgspec.json.encode(origin)
        )
        self._origins.pop((repo.name.value, tag), None)

    async def pushed(self, repo: Repository, tag: str | None) -> None:
        """A client pushed *tag* here: it is local from now on, never refreshed from upstream."""
        if tag is None or not await self.upstreams.list(repo.name.tenant):
            return
        with contextlib.suppress(PathNotFound):
            await self.registry.driver.delete(layout.proxy_tag_origin(repo.name, tag))
        self._origins.pop((repo.name.value, tag), None)

    # -- manifests --------------------------------------------------------------------------

    async def manifest(
        self, repo: Repository, reference: Reference, ns: str | None = None
    ) -> StoredManifest:
        upstreams = await self.candidates(repo.name, ns)
        if not upstreams:
            return await repo.manifests.get(str(reference))
        if reference.digest is not None:
            try:
                return await repo.manifests.get(str(reference.digest))
            except ManifestUnknown:
                return await self._fetch_manifest(repo, reference, upstreams)
        tag = reference.tag
        assert tag is not None
        try:
            digest = await repo.manifests.resolve(tag)
        except ManifestUnknown:
            return await self._fetch_manifest(repo, reference, upstreams)
        origin = await self._origin(repo, tag)
        if origin is None or origin.digest != str(digest):
            return await repo.manifests.get_by_digest(digest)  # pushed here: local wins
        source = next((u for u in upstreams if u.name == origin.upstream), None)
        if source is not None and self.clock() - origin.fetched < source.tag_ttl:
            self.observer.hit(source.name)
            return await repo.manifests.get_by_digest(digest)
        try:
            return await self._refresh(repo, tag, digest, source, upstreams)
        except (RegistryError, UpstreamFailure):
            # Stale is better than a broken build: serve what we have, and count it.
            self.observer.stale(origin.upstream)
            return await repo.manifests.get_by_digest(digest)

    async def _refresh(
        self,
        repo: Repository,
        tag: str,
        digest: Digest,
        source: Upstream | None,
        upstreams: list[Upstream],
    ) -> StoredManifest:
        """A cached tag past its TTL: ask (HEAD first); unchanged means just fresh again."""
        if source is not None:
            try:
                current: Digest | None = await self._remote(repo.name, source).manifest_digest(tag)
            except UpstreamFailure as failure:
                if failure.kind != "other":
                    self._failed(source, failure)
                    raise client_error(source, failure) from None
                current = None  # e.g. HEAD not allowed there: a GET decides
            if current == digest:
                self.observer.hit(source.name)
                origin = TagOrigin(upstream=source.name, digest=str(digest), fetched=self.clock())
                await self._write_origin(repo, tag, origin)
                return await repo.manifests.get_by_digest(digest)
        return await self._fetch_manifest(repo, Reference(tag=tag), upstreams, refresh=True)

    async def _fetch_manifest(
        self,
        repo: Repository,
        reference: Reference,
        upstreams: list[Upstream],
        *,
        refresh: bool = False,
    ) -> StoredManifest:
        key = (repo.name.value, str(reference), *(u.name for u in upstreams))
        if not refresh and self._negative_hit(key):
            raise ManifestUnknown(detail={"reference": str(reference)})
        flight = self._manifest_flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._ask_manifest(repo, reference, upstreams, key))
            self._manifest_flights[key] = flight
            flight.add_done_callback(lambda _: self._manifest_flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _ask_manifest(
        self,
        repo: Repository,
        reference: Reference,
        upstreams: list[Upstream],
        key: tuple[str, ...],
    ) -> StoredManifest:
        failures: list[tuple[Upstream, UpstreamFailure]] = []
        for upstream in upstreams:
            try:
                got = await self._remote(repo.name, upstream).manifest(str(reference))
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                failures.append((upstream, failure))
                continue
            if got is None:
                continue
            self.observer.miss(upstream.name)
            self.observer.fetched(upstream.name, len(got.body))
            stored = StoredManifest(got.digest, got.media_type or "", got.body)
            if upstream.cache:
                stored = await self._store_manifest(repo, reference, upstream, got.body, stored)
            return stored
        if failures:
            raise client_error(*failures[0])
        self._remember_missing(key)
        raise ManifestUnknown(detail={"reference": str(reference)})

    async def _store_manifest(
        self,
        repo: Repository,
        reference: Reference,
        upstream: Upstream,
        body: bytes,
        fetched: StoredManifest,
    ) -> StoredManifest:
        try:
            try:
                parsed = await repo.manifests.put(
                    body, fetched.media_type or None, check_references=False
                )
            except ManifestInvalid:
                # Some upstreams label manifests loosely; the body's own type decides then.
                parsed = await repo.manifests.put(body, None, check_references=False)
        except RegistryError as exc:
            # Served as the upstream sent it, just not cached (e.g. a type we do not store).
            LOGGER.info("not caching a manifest from upstream %s: %s", upstream.name, exc.message)
            return fetched
        if reference.tag is not None:
            # The origin first: a crash before the tag leaves an origin no tag matches.
            origin = TagOrigin(
                upstream=upstream.name, digest=str(parsed.digest), fetched=self.clock()
            )
            await self._write_origin(repo, reference.tag, origin)
            await repo.manifests.tag(reference.tag, parsed.digest)
        return await repo.manifests.get_by_digest(parsed.digest)

    # -- blobs ----------------------------------------------------------------------------------

    async def blob(
        self,
        repo: Repository,
        digest: Digest,
        ns: str | None = None,
        *,
        head: bool = False,
        local_checked: bool = False,
    ) -> ProxiedBlob | int | None:
        """None: the blob is local (serve it as usual). For HEAD: its size at the upstream.

        Otherwise the blob streamed from the first upstream that has it.
        ``local_checked``: the caller has just found the blob missing here, so storage is
        not asked again before the upstream (a storage round trip less before the first
        byte; a blob committed in between is fetched once more and stored once).
        """
        upstreams = await self.candidates(repo.name, ns)
        if not upstreams:  # the local miss stands, without asking storage again
            raise BlobUnknown(detail={"digest": str(digest)})
        if not local_checked and await repo.blobs.exists(digest):
            return None  # local content (or BLOB_UNKNOWN) is the usual path's answer
        key = (repo.name.value, str(digest), *(u.name for u in upstreams))
        if self._negative_hit(key):
            raise BlobUnknown(detail={"digest": str(digest)})
        if head:
            return await self._head_blob(repo, digest, upstreams, key)
        flight = self._blob_flights.get((repo.name.value, str(digest)))
        if flight is not None:
            await asyncio.shield(flight.ready)
            return ProxiedBlob(flight.size, flight.read(), flight.upstream.name)
        if self._recently_committed((repo.name.value, str(digest))):
            return None
        failures: list[tuple[Upstream, UpstreamFailure]] = []
        for upstream in upstreams:
            # A blob stored already for another repository is fetched again all the same:
            # only its bytes prove that this upstream holds it (a HEAD costs an upstream
            # nothing to claim), and linking on a claim would give this repository any
            # blob whose digest its admins know. The commit stores no second copy.
            flight_key = (repo.name.value, str(digest))
            if upstream.cache:
                flight = self._blob_flights.get(flight_key)
                if flight is not None:
                    await asyncio.shield(flight.ready)
                    return ProxiedBlob(flight.size, flight.read(), flight.upstream.name)
                flight = BlobFlight(repo, digest, upstream)
                self._blob_flights[flight_key] = flight
            try:
                response = await self._remote(repo.name, upstream).blob(digest)
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                failures.append((upstream, failure))
                if flight is not None:
                    self._end_flight(flight_key, flight, client_error(upstream, failure))
                    flight = None
                continue
            if response is None:
                if flight is not None:
                    self._end_flight(flight_key, flight, BlobUnknown())
                    flight = None
                continue
            self.observer.miss(upstream.name)
            self.upstream_fetches += 1
            size = _content_length(response)
            if flight is None:
                return ProxiedBlob(
                    size, self._stream_through(upstream, digest, response), upstream.name
                )
            flight.size = size
            flight.task = asyncio.ensure_future(self._fill(flight_key, flight, response))
            flight.ready.set_result(None)
            return ProxiedBlob(size, flight.read(), upstream.name)
        if failures:
            raise client_error(*failures[0])
        self._remember_missing(key)
        raise BlobUnknown(detail={"digest": str(digest)})

    def _recently_committed(self, key: tuple[str, str]) -> bool:
        at = self._committed.get(key)
        return at is not None and time.monotonic() - at < _COMMITTED_MEMORY

    def _remember_committed(self, key: tuple[str, str]) -> None:
        now = time.monotonic()
        if len(self._committed) >= _MAX_COMMITTED:
            self._committed = {
                k: at for k, at in self._committed.items() if now - at < _COMMITTED_MEMORY
            }
            if len(self._committed) >= _MAX_COMMITTED:
                self._committed.clear()
        self._committed[key] = now

    def _end_flight(self, key: tuple[str, str], flight: BlobFlight, error: BaseException) -> None:
        if self._blob_flights.get(key) is flight:
            del self._blob_flights[key]
        flight.error = error
        if not flight.ready.done():
            flight.ready.set_exception(error)
            flight.ready.exception()  # retrieved: waiters re-raise it themselves
        flight.done.set()

    async def _head_blob(
        self,
        repo: Repository,
        digest: Digest,
        upstreams: list[Upstream],
        key: tuple[str, ...],
    ) -> int:
        failures: list[tuple[Upstream, UpstreamFailure]] = []
        for upstream in upstreams:
            try:
                response = await self._remote(repo.name, upstream).blob(digest, "HEAD")
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                failures.append((upstream, failure))
                continue
            if response is None:
                continue
            size = _content_length(response)
            await response.release()
            if size is not None:
                return size
        if failures:
            raise client_error(*failures[0])
        self._remember_missing(key)
        raise BlobUnknown(detail={"digest": str(digest)})

    async def _fill(
        self, key: tuple[str, str], flight: BlobFlight, response: UpstreamResponse
    ) -> None:
        """Stream the upstream's body to the readers and into storage; verify; commit.

        Reading the upstream runs ahead of storage by at most STORAGE_QUEUE pieces,
        so readers get bytes at once, while the upload session is still being opened.
        """
        upstream = flight.upstream
        held: list[bytes] = []
        received = 0
        to_storage: asyncio.Queue[bytes | None] = asyncio.Queue(STORAGE_QUEUE)

        async def read_upstream() -> None:
            nonlocal received
            try:
                async for chunk in response.chunks():
                    received += len(chunk)
                    # The last byte goes out only after the digest is checked, so a client
                    # of a corrupt blob never has it all; everything before it goes at once.
                    if flight.size is not None and received < flight.size:
                        flight.broadcast(chunk)  # not the end yet: nothing to hold back
                    else:
                        if held:
                            flight.broadcast(held.pop())
                        if len(chunk) > 1:
                            flight.broadcast(chunk[:-1])
                        held.append(chunk[-1:])
                    await to_storage.put(chunk)
            finally:
                await to_storage.put(None)

        async def stored_pieces() -> AsyncIterator[bytes]:
            while (piece := await to_storage.get()) is not None:
                yield piece

        error: BaseException | None = None
        reader = asyncio.ensure_future(read_upstream())
        try:
            async with flight.repo.blobs.upload() as upload:
                await upload.append(stored_pieces())
                await reader  # the upstream's own failure (truncated, timeout), if any
                if flight.size is not None and received != flight.size:
                    raise UpstreamFailure(
                        "truncated",
                        f"upstream {upstream.name}: sent {received} of {flight.size} bytes",
                    )
                try:
                    await upload.commit(flight.digest)
                except DigestInvalid:
                    raise UpstreamFailure(
                        "corrupt",
                        f"upstream {upstream.name}: blob does not match its digest",
                    ) from None
            self.observer.fetched(upstream.name, received)
            self._remember_committed(key)
        except UpstreamFailure as failure:
            self._failed(upstream, failure)
            error = client_error(upstream, failure)
        except asyncio.CancelledError:
            error = UpstreamUnavailable(f"upstream {upstream.name}: fetch cancelled")
            raise
        except Exception as exc:  # a storage failure: readers must not hang
            LOGGER.exception(
                "caching blob %s from upstream %s failed", flight.digest, upstream.name
            )
            error = UpstreamUnavailable(
                f"upstream {upstream.name}: caching failed ({type(exc).__name__})"
            )
        finally:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await reader  # reported above already, or cancelled here
            await response.release()
            if self._blob_flights.get(key) is flight:
                del self._blob_flights[key]
            flight.error = error
            if error is None:
                for piece in held:
                    flight.broadcast(piece)
                flight.broadcast(_END)
            else:
                flight.broadcast(error)
            flight.done.set()

    async def _stream_through(
        self, upstream: Upstream, digest: Digest, response: UpstreamResponse
    ) -> AsyncGenerator[bytes, None]:
        """Caching off: pass the bytes on, hashed, holding the last byte until verified."""
        hasher = Hasher(digest.algorithm)
        size = _content_length(response)
        held: bytes | None = None
        received = 0
        try:
            try:
                async for chunk in response.chunks():
                    received += len(chunk)
                    await asyncio.to_thread(hasher.update, chunk)
                    if size is not None and received < size:
                        yield chunk  # not the end yet: nothing to hold back
                        continue
                    if held is not None:
                        yield held
                    if len(chunk) > 1:
                        yield chunk[:-1]
                    held = chunk[-1:]
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                raise client_error(upstream, failure) from None
            if hasher.digest() != digest:
                self.observer.error(upstream.name, "corrupt")
                raise UpstreamUnavailable(
                    f"upstream {upstream.name}: blob does not match its digest"
                )
            self.observer.fetched(upstream.name, received)
            if held is not None:
                yield held
        finally:
            await response.release()

    # -- listings ---------------------------------------------------------------------------------

    async def tags(self, repo: Repository, ns: str | None = None) -> list[str]:
        """Local tags merged with every matching upstream's (NAME_UNKNOWN when nobody has it)."""
        local = await repo.manifests.tags()
        upstreams = await self.candidates(repo.name, ns)
        known = bool(local) or await repo.manifests.exists()
        if not upstreams:
            if not known:
                raise NameUnknown(detail={"name": repo.name.value})
            return local
        merged = set(local)
        failures: list[tuple[Upstream, UpstreamFailure]] = []
        for upstream in upstreams:
            try:
                found = await self._remote(repo.name, upstream).tags()
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                failures.append((upstream, failure))
                continue
            if found is not None:
                known = True
                merged.update(found)
        if not known:
            if failures:
                raise client_error(*failures[0])
            raise NameUnknown(detail={"name": repo.name.value})
        return sorted(merged)

    async def referrers(
        self, repo: Repository, subject: Digest, ns: str | None = None
    ) -> list[dict[str, Any]]:
        """Local referrers, then those of the upstreams that answer the referrers API."""
        found = await repo.manifests.referrers(subject)
        seen = {d.get("digest") for d in found}
        for upstream in await self.candidates(repo.name, ns):
            try:
                remote = await self._remote(repo.name, upstream).referrers(subject)
            except UpstreamFailure as failure:
                self._failed(upstream, failure)
                continue
            for descriptor in remote or []:
                if isinstance(descriptor, dict) and descriptor.get("digest") not in seen:
                    seen.add(descriptor.get("digest"))
                    found.append(descriptor)
        return found


def _content_length(response: UpstreamResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _metric_kind(kind: str) -> str:
    return "refused" if kind == "forbidden_network" else kind
