"""The ``/api/v1/`` management routes: whole-image archives in and out of a registry.

``POST /api/v1/registries/OWNER/REGISTRY/archives`` takes a ``docker save``
tarball or an OCI layout archive (plain, gzip or zstd) as the request body,
streams it to a temporary file (never into memory; ``archives.max_size``
bounds it) and imports it through :mod:`registry_core.archive`.
``GET .../archives?image=NAME:TAG`` streams one image back as a ``docker
save`` tarball. Handlers are thin: they authorize, move bytes, and call the
library; its errors become the usual ``{"errors": [...]}`` body in the app's
middleware.

Who may call: with auth on, the management API's logins (an API key in
``X-Api-Key``, Basic credentials, or a user's bearer token) of a user holding
``push`` (write role) on the registry for uploads, ``pull`` for downloads
(anonymous callers may download from public registries). With auth off
(``auth.enabled = false``) the routes are open, like the rest of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Final, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from registry_core import Registry, RegistryError
from registry_core.archive import (
    ArchiveInvalid,
    ArchiveTooLarge,
    ImportOptions,
    Workspace,
    docker_archive_stream,
    import_archive,
)
from registry_core.archive.references import parse_tag_option, repository_in
from registry_core.auth import ANONYMOUS, Identity
from registry_core.config import ArchivesConfig
from registry_core.errors import Denied, NameInvalid, Unauthorized
from registry_core.names import RepositoryName, Tenant

from ..state import state_of
from .bodies import request_chunks
from .guard import Guard

LOGGER = logging.getLogger("cargohold.api")
API_KEY_HEADER: Final = "X-Api-Key"
SPOOL_BUFFER: Final = 1 << 20
_CHALLENGE: Final = {"WWW-Authenticate": 'Basic realm="cargohold", charset="UTF-8"'}


def import_options(config: ArchivesConfig) -> ImportOptions:
    return ImportOptions(
        max_size=config.max_size,
        max_layer_size=config.max_layer_size,
        temp_dir=config.temp_dir or None,
        compression=config.compression,
    )


class SessionLogins(Protocol):
    """The website's sessions: a cookie plus its CSRF header (see registry_server.web)."""

    async def api_identity(self, request: web.BaseRequest) -> Identity | None: ...


class ApiAuth:
    """Who is calling an ``/api/v1/`` route, and whether they may do what they ask."""

    def __init__(self, guard: Guard | None, sessions: SessionLogins | None = None) -> None:
        self.guard = guard
        self.sessions = sessions

    async def identify(self, request: web.Request) -> Identity | None:
        """The caller (anonymous without credentials); None when auth is off.

        The same logins as the management API: ``X-Api-Key``, Basic with a
        password or an API key, or a user's bearer token; and the website's session
        cookie, which counts only together with its CSRF token header.
        """
        guard = self.guard
        if guard is None:
            return None
        if not request.headers.get(API_KEY_HEADER) and not request.headers.get("Authorization"):
            if self.sessions is not None:
                identity = await self.sessions.api_identity(request)
                if identity is not None:
                    return identity
            return ANONYMOUS
        return await guard.api_identity(request)

    async def require(
        self, request: web.Request, identity: Identity | None, name: RepositoryName, action: str
    ) -> None:
        """Raise 401/403 unless the caller may *action* on *name* (or auth is off)."""
        if self.guard is None or identity is None:
            return
        if action in await self.guard.authenticator.actions(identity, name):
            return
        if identity.anonymous:
            raise Unauthorized(f"{action} on {name.tenant} needs credentials", headers=_CHALLENGE)
        raise Denied(f"{identity.name} may not {action} in {name.tenant}")


def _tenant(request: web.Request) -> Tenant:
    owner, registry = request.match_info["owner"], request.match_info["registry"]
    RepositoryName.parse(f"{owner}/{registry}/x")  # the grammar, once
    return Tenant(owner, registry)


async def _spool(
    request: web.Request, workspace: Workspace, max_size: int, timeout: float | None = None
) -> str:
    """The request body in a file of *workspace*; errors when too large or cut off."""
    declared = request.content_length
    if declared is not None and declared > max_size:
        raise ArchiveTooLarge(
            f"the archive is {declared} bytes; the limit is {max_size} (archives.max_size)"
        )
    fd, path = workspace.file(".upload")
    state = state_of(request)
    received = 0
    with os.fdopen(fd, "wb") as out:
        parts: list[bytes] = []
        gathered = 0
        try:
            async for chunk in request_chunks(request, timeout):
                received += len(chunk)
                state.bytes_in = received
                if received > max_size:
                    raise ArchiveTooLarge(
                        f"the archive is over {max_size} bytes (archives.max_size)"
                    )
                parts.append(chunk)
                gathered += len(chunk)
                if gathered >= SPOOL_BUFFER:
                    await asyncio.to_thread(out.write, b"".join(parts))
                    parts, gathered = [], 0
        except (HttpProcessingError, ConnectionError) as exc:
            raise ArchiveInvalid(
                f"the upload was cut off after {received} bytes ({exc.__class__.__name__})"
            ) from None
        if parts:
            await asyncio.to_thread(out.write, b"".join(parts))
    if declared is not None and received != declared:
        raise ArchiveInvalid(
            f"the upload was cut off after {received} of {declared} bytes (Content-Length)"
        )
    if received == 0:
        raise ArchiveInvalid("the request body is empty: send the archive as the body")
    return path


def _split_image(text: str) -> tuple[str, str]:
    """``NAME:TAG`` or ``NAME@DIGEST`` -> (name, reference); the tag defaults to latest."""
    name, at, digest = text.partition("@")
    if at:
        return name, digest
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


class ApiRoutes:
    """The ``/api/v1/`` handlers, bound to one Registry."""

    def __init__(
        self,
        registry: Registry,
        guard: Guard | None,
        config: ArchivesConfig,
        sessions: SessionLogins | None = None,
        *,
        body_timeout: float | None = None,
    ) -> None:
        self.registry = registry
        self.body_timeout = body_timeout
        """Seconds an archive upload may send nothing before 408 (None: no limit)."""
        self.auth = ApiAuth(guard, sessions)
        self.options = import_options(config)

    def add_to(self, app: web.Application) -> None:
        base = "/api/v1/registries/{owner}/{registry}/archives"
        app.router.add_post(base, self.upload_archive, expect_handler=self.expect_upload)
        app.router.add_get(base, self.download_archive)

    async def expect_upload(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse (401/403/413) before the client sends gigabytes."""
        if request.headers.get("Expect", "").lower() != "100-continue":
            return None
        try:
            tenant = _tenant(request)
            identity = await self.auth.identify(request)
            await self.auth.require(request, identity, RepositoryName(f"{tenant}/archive"), "push")
            declared = request.content_length
            if declared is not None and declared > self.options.max_size:
                raise ArchiveTooLarge(
                    f"the archive is {declared} bytes; the limit is {self.options.max_size} "
                    "(archives.max_size)"
                )
        except RegistryError as exc:
            from ..app import error_response  # the app module imports this one

            response = error_response(request, [exc], exc.status)
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the body has not started
        return None

    async def upload_archive(self, request: web.Request) -> web.Response:
        state = state_of(request)
        state.route = "api_archives"
        tenant = _tenant(request)
        state.repository = str(tenant)
        identity = await self.auth.identify(request)
        # Refuse before the body is read: the role that grants push is per registry.
        await self.auth.require(request, identity, RepositoryName(f"{tenant}/archive"), "push")
        tags = request.query.getall("tag", [])
        for tag in tags:
            parse_tag_option(tag)
        compression = request.query.get("compression")
        options = self.options
        if compression is not None:
            if compression not in ("gzip", "zstd"):
                raise ArchiveInvalid(f"compression must be gzip or zstd, not {compression[:20]!r}")
            options = ImportOptions(
                max_size=options.max_size,
                max_layer_size=options.max_layer_size,
                max_metadata_size=options.max_metadata_size,
                temp_dir=options.temp_dir,
                compression=compression,  # type: ignore[arg-type]
                workers=options.workers,
            )

        async def allowed(name: RepositoryName) -> None:
            await self.auth.require(request, identity, name, "push")

        workspace = await asyncio.to_thread(Workspace, options.temp_dir)
        started = time.monotonic()
        try:
            path = await _spool(request, workspace, options.max_size, self.body_timeout)
            result = await import_archive(
                self.registry,
                tenant,
                path,
                tags=tags,
                options=options,
                workspace=workspace,
                delete_source=True,
                authorize=allowed,
            )
        finally:
            await asyncio.to_thread(workspace.close)
        body = result.to_dict() | {"seconds": round(time.monotonic() - started, 3)}
        LOGGER.info(
            "imported archive into %s: %s",
            tenant,
            ", ".join(f"{i.repository}:{','.join(i.tags)}" for i in result.images),
        )
        return web.json_response(body, status=201)

    async def download_archive(self, request: web.Request) -> web.StreamResponse:
        state = state_of(request)
        state.route = "api_archives"
        tenant = _tenant(request)
        image = request.query.get("image", "")
        if not image:
            raise NameInvalid("pass the image as ?image=NAME:TAG (or NAME@DIGEST)")
        name, reference = _split_image(image)
        repository = repository_in(tenant, name)
        state.repository = str(repository)
        identity = await self.auth.identify(request)
        await self.auth.require(request, identity, repository, "pull")
        repo_tag = request.query.get("repo_tag") or (
            f"{repository}:{reference}" if ":" not in reference else None
        )
        stream = await docker_archive_stream(
            self.registry.repository(repository),
            reference,
            repo_tag=repo_tag,
            platform=request.query.get("platform") or None,
            temp_dir=self.options.temp_dir,
        )
        filename = f"{name.rsplit('/', 1)[-1]}.docker"
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-tar",
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Docker-Content-Digest": stream.image.manifest_digest,
                "X-Cargohold-Config-Digest": stream.image.config_digest,
                "X-Cargohold-Platform": stream.image.platform,
            }
        )
        await response.prepare(request)
        try:
            async for chunk in stream.chunks:
                await response.write(chunk)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # The status line is gone: the only honest signal left is a broken stream.
            LOGGER.exception("archive export of %s failed midway", repository)
            if request.transport is not None:
                request.transport.close()
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
