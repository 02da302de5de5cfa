"""The ``/v2/`` routes of the distribution spec 1.1: parse, call the library, answer.

Repository names contain slashes, so one catch-all route hands the path to
:func:`match_route`, which matches the fixed suffixes (``/blobs/uploads/``,
``/manifests/<ref>``...) from the right. Handlers build no storage path and
hold no registry logic; library errors propagate to the error middleware.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlencode

import attrs
import msgspec
from aiohttp import web

from registry_core import Registry, RegistryError
from registry_core.digest import Digest
from registry_core.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    DigestInvalid,
    NameUnknown,
    NotFound,
    RangeInvalid,
    SizeInvalid,
    TooLarge,
    TooManyRequests,
    Unsupported,
)
from registry_core.mediatypes import OCI_INDEX
from registry_core.names import Reference, RepositoryName
from registry_core.proxy import ProxiedBlob, PullThrough
from registry_core.registry import Repository, paginate
from registry_core.storage.blobs import RepositoryBlobs, Upload, UploadLimits, upload_range
from registry_core.storage.manifests import StoredManifest

from ..domains import Domains
from ..state import state_of
from .bodies import RequestBody, count_limit, request_chunks
from .guard import OPEN_ACCESS, Guard
from .sendfile import BlobFileResponse

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
LOGGER = logging.getLogger("cargohold.server")
MAX_PAGE = 10000
WHOLE_BODY = 64 * 1024
"""An upload-finishing PUT body up to this size is read whole, then stored in one step."""

Handler = Callable[[web.Request, "Route"], Awaitable[web.StreamResponse]]


@attrs.frozen
class Route:
    """A matched ``/v2/`` path: which endpoint, and its path parameters."""

    kind: str
    name: str | None = None
    reference: str | None = None


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("uploads", re.compile(r"^(?P<name>.+)/blobs/uploads/?$")),
    ("upload", re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)$")),
    ("blob", re.compile(r"^(?P<name>.+)/blobs/(?P<ref>[^/]+)$")),
    ("manifest", re.compile(r"^(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^(?P<name>.+)/tags/list$")),
    ("referrers", re.compile(r"^(?P<name>.+)/referrers/(?P<ref>[^/]+)$")),
)


def match_route(tail: str) -> Route | None:
    """Which endpoint a path below ``/v2/`` names (None: no such endpoint)."""
    if tail == "":
        return Route("base")
    if tail == "_catalog":
        return Route("catalog")
    for kind, pattern in _PATTERNS:
        found = pattern.match(tail)
        if found:
            return Route(kind, found["name"], found.groupdict().get("ref"))
    return None


def _visible(request: web.Request, repo: Repository) -> str:
    """The repository's name as this request's client knows it (custom domains)."""
    mapper = state_of(request).mapper
    return (mapper.external(repo.name.value) if mapper else None) or repo.name.value


def _page_size(request: web.Request) -> int | None:
    raw = request.query.get("n")
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise PaginationInvalid(f"n must be a number, not {raw[:20]!r}") from None
    if n < 0:
        raise PaginationInvalid("n must not be negative")
    return min(n, MAX_PAGE)


class PaginationInvalid(SizeInvalid):
    code = "PAGINATION_NUMBER_INVALID"
    default_message = "invalid number of results requested"


def _next_link(path: str, n: int | None, page: list[str], complete: bool) -> dict[str, str]:
    if n is None or complete or not page:
        return {}
    query = urlencode({"n": n, "last": page[-1]})
    return {"Link": f'<{path}?{query}>; rel="next"'}


def _json(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _content_range_start(request: web.Request) -> int | None:
    header = request.headers.get("Content-Range")
    if not header:
        return None
    found = re.fullmatch(r"(?:bytes[ =])?(\d+)-(\d+)(?:/\d+|/\*)?", header.strip())
    if not found:
        raise RangeInvalid(f"malformed Content-Range {header[:60]!r}")
    start, end = int(found[1]), int(found[2])
    if end < start:
        raise RangeInvalid(f"Content-Range {header!r} ends before it starts")
    length = request.content_length
    if length is not None and length != end - start + 1:
        raise SizeInvalid(
            f"Content-Range {header!r} covers {end - start + 1} bytes but Content-Length is "
            f"{length}"
        )
    return start


class PullGateLike(Protocol):
    async def check(self, request: web.Request, name: RepositoryName, digest: Digest) -> None: ...


class V2Routes:
    """Handlers for every ``/v2/`` endpoint, bound to one Registry."""

    def __init__(
        self,
        registry: Registry,
        guard: Guard | None = None,
        domains: Domains | None = None,
        *,
        redirect_expires: int | None = None,
        upload_limits: UploadLimits | None = None,
        body_timeout: float | None = None,
        proxy: PullThrough | None = None,
    ) -> None:
        self.registry = registry
        self.proxy = proxy
        self.pull_gate: PullGateLike | None = None
        """The scanning pull policy (``scanning_api.PullGate``), checked on manifest GETs."""
        """Pull-through to the registries' upstreams (None: local content only)."""
        self.upload_limits = upload_limits
        """Open upload sessions allowed per repository and tenant (None: no limit)."""
        self.body_timeout = body_timeout
        """Seconds an upload body may stall before 408 (None: no limit)."""
        self.redirect_expires = redirect_expires
        """Blob GETs redirect to signed URLs valid this long (None: never redirect)."""
        self.guard = guard
        self.domains = domains or Domains({}, [])
        self.uploads_in_flight = 0
        self._handlers: dict[tuple[str, str], Handler] = {
            ("base", "GET"): self.base,
            ("base", "HEAD"): self.base,
            ("catalog", "GET"): self.catalog,
            ("tags", "GET"): self.tags,
            ("manifest", "GET"): self.get_manifest,
            ("manifest", "HEAD"): self.get_manifest,
            ("manifest", "PUT"): self.put_manifest,
            ("manifest", "DELETE"): self.delete_manifest,
            ("blob", "GET"): self.get_blob,
            ("blob", "HEAD"): self.get_blob,
            ("blob", "DELETE"): self.delete_blob,
            ("uploads", "POST"): self.start_upload,
            ("upload", "GET"): self.upload_status,
            ("upload", "PATCH"): self.patch_upload,
            ("upload", "PUT"): self.finish_upload,
            ("upload", "DELETE"): self.cancel_upload,
            ("referrers", "GET"): self.referrers,
        }

    def add_to(self, app: web.Application) -> None:
        if self.guard is not None:
            app.router.add_route("GET", "/v2/token", self.token)
            app.router.add_route("POST", "/v2/token", self.token)
        app.router.add_route("*", "/v2", self.dispatch)
        app.router.add_route("*", "/v2/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        route = match_route(request.match_info.get("tail", ""))
        if route is None:
            state_of(request).route = "unknown"
            raise NotFound(f"no endpoint at {request.path[:200]}")
        state = state_of(request)
        state.route = route.kind
        mapper = state.mapper = self.domains.mapper(request)
        name = None
        if route.name is not None:
            route = Route(route.kind, mapper.internal(route.name), route.reference)
            state.repository = route.name
        handler = self._handlers.get((route.kind, request.method))
        if handler is None:
            allowed = sorted(method for kind, method in self._handlers if kind == route.kind)
            raise Unsupported(
                f"{request.method} is not supported here",
                headers={"Allow": ", ".join(allowed)},
            )
        if self.guard is None:
            state.access = OPEN_ACCESS
        else:
            if route.name is not None:
                name = RepositoryName.parse(route.name)
            state.access = await self.guard.check(request, route.kind, name, mapper)
        return await handler(request, route)

    async def token(self, request: web.Request) -> web.StreamResponse:
        state_of(request).route = "token"
        assert self.guard is not None
        return await self.guard.token_endpoint(request)

    def repository(self, route: Route) -> Repository:
        assert route.name is not None
        return self.registry.repository(RepositoryName.parse(route.name))

    # -- base, catalog, tags, referrers -------------------------------------------

    async def base(self, request: web.Request, route: Route) -> web.StreamResponse:
        return _json({})

    async def catalog(self, request: web.Request, route: Route) -> web.StreamResponse:
        n = _page_size(request)
        last = request.query.get("last")
        state = state_of(request)
        names = []
        for full in await self.registry.repositories():
            visible = state.mapper.external(full)
            if visible is not None and await state.access.lists(RepositoryName(full)):
                names.append(visible)
        page = paginate(names, n, last)
        complete = not page or page[-1] == names[-1]
        headers = _next_link("/v2/_catalog", n, page, complete)
        return _json({"repositories": page}, headers=headers)

    async def tags(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        n = _page_size(request)
        if self.proxy is not None:
            tags = await self.proxy.tags(repo, _namespace(request))
        else:
            tags = await repo.manifests.tags()
            if not tags and not await repo.manifests.exists():
                raise NameUnknown(detail={"name": route.name})
        page = paginate(tags, n, request.query.get("last"))
        complete = not page or page[-1] == tags[-1]
        visible = _visible(request, repo)
        headers = _next_link(f"/v2/{visible}/tags/list", n, page, complete)
        return _json({"name": visible, "tags": page}, headers=headers)

    async def referrers(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        subject = Digest.parse(route.reference)
        if self.proxy is not None:
            descriptors = await self.proxy.referrers(repo, subject, _namespace(request))
        else:
            descriptors = await repo.manifests.referrers(subject)
        headers: dict[str, str] = {}
        wanted = request.query.get("artifactType")
        if wanted:
            descriptors = [d for d in descriptors if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        response = _json(body, headers=headers)
        response.content_type = OCI_INDEX
        return response

    # -- manifests --------------------------------------------------------------

    async def get_manifest(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        reference = Reference.parse(route.reference)
        if request.method == "HEAD":
            stored = await self._manifest(request, repo, reference)
        else:
            async with state_of(request).access.pulling():
                stored = await self._manifest(request, repo, reference)
                if self.pull_gate is not None:  # inside: a refused pull is not counted
                    await self.pull_gate.check(request, repo.name, stored.digest)
            await repo.manifests.pulled(stored.digest)
        etag = f'"{stored.digest}"'
        headers = {
            "Docker-Content-Digest": str(stored.digest),
            "ETag": etag,
            "Content-Type": stored.media_type,
        }
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(stored.size)
            return web.Response(headers=headers)
        return web.Response(body=stored.body, headers=headers)

    async def _manifest(
        self, request: web.Request, repo: Repository, reference: Reference
    ) -> StoredManifest:
        if self.proxy is None:
            return await repo.manifests.get(str(reference))
        return await self.proxy.manifest(repo, reference, _namespace(request))

    async def put_manifest(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        reference = Reference.parse(route.reference, write=True)
        limit = self.registry.max_manifest_size
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"manifest is {request.content_length} bytes; the limit is {limit}")
        body = await _read_limited(request, limit)
        if reference.digest is not None:
            actual = Digest.of(body, reference.digest.algorithm)
            if actual != reference.digest:
                raise DigestInvalid(
                    "manifest body does not match the digest in the URL",
                    detail={"expected": str(reference.digest), "actual": str(actual)},
                )
        parsed = await repo.manifests.put(
            body, request.headers.get("Content-Type"), tag=reference.tag
        )
        if self.proxy is not None:
            await self.proxy.pushed(repo, reference.tag)
        digest = reference.digest or parsed.digest
        headers = {
            "Location": f"/v2/{_visible(request, repo)}/manifests/{digest}",
            "Docker-Content-Digest": str(digest),
        }
        if parsed.subject is not None:
            headers["OCI-Subject"] = str(parsed.subject)
        return web.Response(status=201, headers=headers)

    async def delete_manifest(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        reference = Reference.parse(route.reference)
        await repo.manifests.delete(str(reference))
        return web.Response(status=202)

    # -- blobs ------------------------------------------------------------------

    async def get_blob(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        digest = Digest.parse(route.reference)
        try:
            # A GET (a pull) asks for blobs that are there: link and data side by side.
            info = await repo.blobs.stat(digest, together=request.method == "GET")
        except BlobUnknown:
            if self.proxy is None:
                raise
            # Only a local miss asks the upstreams: cached blobs cost what local ones do.
            head = request.method == "HEAD"
            proxied = await self.proxy.blob(
                repo, digest, _namespace(request), head=head, local_checked=True
            )
            if isinstance(proxied, int):
                return web.Response(headers=_proxied_headers(digest, proxied))
            if proxied is not None:
                return await _stream_proxied(request, digest, proxied)
            info = await repo.blobs.stat(digest)  # committed meanwhile by another request
        headers = {
            "Docker-Content-Digest": str(digest),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
            "Cache-Control": "max-age=31536000",
        }
        if request.method == "HEAD":
            headers["Content-Length"] = str(info.size)
            return web.Response(headers=headers)
        if self.redirect_expires is not None:
            signed = await repo.blobs.signed_url(digest, self.redirect_expires)
            if signed is not None:
                return web.Response(
                    status=307,
                    headers={"Location": signed, "Docker-Content-Digest": str(digest)},
                )
        local = repo.blobs.local_path(digest)
        if local is not None:
            del headers["ETag"]  # FileResponse sets its own (mtime-size) and answers If-* with it
            return BlobFileResponse(local, headers=headers)
        return await _stream_blob(request, repo, digest, info.size, headers)

    async def delete_blob(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        await repo.blobs.delete(Digest.parse(route.reference))
        return web.Response(status=202)

    # -- uploads ----------------------------------------------------------------

    def _upload_headers(
        self, request: web.Request, repo: Repository, upload: Upload
    ) -> dict[str, str]:
        return {
            "Location": f"/v2/{_visible(request, repo)}/blobs/uploads/{upload.id}",
            "Range": upload_range(upload.size),
            "Docker-Upload-UUID": upload.id,
        }

    def _blob_created(self, request: web.Request, repo: Repository, digest: Digest) -> web.Response:
        return web.Response(
            status=201,
            headers={
                "Location": f"/v2/{_visible(request, repo)}/blobs/{digest}",
                "Docker-Content-Digest": str(digest),
            },
        )

    async def start_upload(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        mount = request.query.get("mount")
        source = request.query.get("from")
        if mount and source:
            digest = Digest.parse(mount)
            state = state_of(request)
            try:
                source_repo = self.registry.repository(state.mapper.internal(source))
            except RegistryError:  # an unusable `from` means a plain upload, as the spec allows
                source_repo = None
            if (
                source_repo is not None
                and await state.access.allows(source_repo.name, "pull")
                and await repo.blobs.mount(digest, source_repo.blobs)
            ):
                return self._blob_created(request, repo, digest)
        elif mount:
            # No `from`: look for the blob in the repositories of this tenant the caller
            # may pull, and nowhere else, so a miss and a hidden hit answer alike.
            digest = Digest.parse(mount)
            if await repo.blobs.mount_from_any(
                digest, await self._readable_in_tenant(request, repo)
            ):
                return self._blob_created(request, repo, digest)
        expected = request.query.get("digest")
        if expected is not None:
            digest = Digest.parse(expected)
            async with repo.blobs.upload() as upload:
                await self._append(request, upload, None)
                await upload.commit(digest, request.content_length)
            return self._blob_created(request, repo, digest)
        try:
            upload = await repo.blobs.start_upload(self.upload_limits)
        except TooManyRequests as exc:
            count_limit(request, str((exc.detail or {}).get("limit", "uploads")))
            raise
        return web.Response(status=202, headers=self._upload_headers(request, repo, upload))

    async def _readable_in_tenant(
        self, request: web.Request, repo: Repository
    ) -> list[RepositoryBlobs]:
        access = state_of(request).access
        names = await self.registry.repositories(repo.name.tenant)
        readable = []
        for name in names:
            candidate = RepositoryName(name)
            if candidate != repo.name and await access.allows(candidate, "pull"):
                readable.append(self.registry.repository(candidate).blobs)
        return readable

    async def _append(self, request: web.Request, upload: Upload, start: int | None) -> None:
        self.uploads_in_flight += 1
        try:
            # The announced length lets a quota refuse the body before it is stored.
            await upload.append(
                RequestBody(request, self.body_timeout), start, request.content_length
            )
        finally:
            self.uploads_in_flight -= 1

    async def upload_status(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        upload = await repo.blobs.get_upload(route.reference, self.upload_limits)
        return web.Response(status=204, headers=self._upload_headers(request, repo, upload))

    async def patch_upload(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        upload = await repo.blobs.get_upload(route.reference, self.upload_limits, with_size=False)
        start = _content_range_start(request)
        await self._append(request, upload, start)
        return web.Response(status=202, headers=self._upload_headers(request, repo, upload))

    async def finish_upload(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        expected = request.query.get("digest")
        if not expected:
            raise DigestInvalid("the digest query parameter is required to finish an upload")
        digest = Digest.parse(expected)
        length = request.content_length
        if (
            length is not None
            and 0 < length <= WHOLE_BODY
            and "Content-Range" not in request.headers
        ):
            self.uploads_in_flight += 1
            try:
                await repo.blobs.commit_whole(
                    route.reference,
                    digest,
                    request_chunks(request, self.body_timeout),
                    self.upload_limits,
                )
            finally:
                self.uploads_in_flight -= 1
            return self._blob_created(request, repo, digest)
        upload = await repo.blobs.get_upload(route.reference, self.upload_limits, with_size=False)
        if request.body_exists:
            start = _content_range_start(request)
            await self._append(request, upload, start)
        await upload.commit(digest)
        return self._blob_created(request, repo, digest)

    async def cancel_upload(self, request: web.Request, route: Route) -> web.StreamResponse:
        repo = self.repository(route)
        assert route.reference is not None
        upload = await repo.blobs.get_upload(route.reference, self.upload_limits, with_size=False)
        await upload.cancel()
        return web.Response(status=204)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"manifest is over the {limit}-byte limit")
        parts.append(chunk)
    state_of(request).bytes_in = total
    return b"".join(parts)


async def _stream_blob(
    request: web.Request, repo: Repository, digest: Digest, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """Serve a blob from a driver without local files, honouring one byte Range."""
    start, end = 0, size
    status = 200
    try:
        requested = request.http_range
    except ValueError:
        requested = slice(None, None)
        raise BlobUploadInvalid("malformed Range header") from None
    if requested.start is not None or requested.stop is not None:
        first = requested.start or 0
        if first < 0:
            first = max(size + first, 0)
        last = size if requested.stop is None else min(requested.stop, size)
        if first >= size or last <= first:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end, status = first, last, 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    async for chunk in repo.blobs.read(digest, start, end - start):
        await response.write(chunk)
    await response.write_eof()
    return response


def _namespace(request: web.Request) -> str | None:
    """containerd's mirror hint (``?ns=docker.io``): which upstream host the name is for."""
    return request.query.get("ns") or None


def _proxied_headers(digest: Digest, size: int | None) -> dict[str, str]:
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "ETag": f'"{digest}"',
    }
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


async def _stream_proxied(
    request: web.Request, digest: Digest, blob: ProxiedBlob
) -> web.StreamResponse:
    """Pass a blob on while the cache fetches it; on an upstream failure, cut the stream.

    The status line is out by then, so the only honest signal left is a
    connection closed before the announced length (or the last chunk): the
    client's own length or digest check fails, and nothing corrupt is kept.
    """
    headers = _proxied_headers(digest, None)
    response = web.StreamResponse(status=200, headers=headers)
    if blob.size is not None:
        response.content_length = blob.size
    chunks = blob.chunks
    try:
        first = await anext(chunks, None)
    except Exception:
        await chunks.aclose()
        raise  # nothing sent yet: the usual JSON error
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except Exception as exc:
        # Headers are out: no error body can follow. The cache has logged an upstream
        # failure; anything else (storage, a client gone) is noted here.
        if not isinstance(exc, RegistryError | ConnectionError):
            LOGGER.warning("proxied blob %s cut: %s", digest, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response
