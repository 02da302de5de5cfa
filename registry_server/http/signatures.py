"""Signing in the server: the registry extension API, published keys, and the signer's wiring.

Routes: ``GET``/``PUT /extensions/v2/NAME/signatures/DIGEST`` (the
containers/image signature API: pull reads, push stores a client's
signature; a manifest without simple signatures answers 200 with an empty
list, never 404, because skopeo and podman fail a pull on anything but 200;
reading is not a counted pull for entitlement tokens) and ``GET
/api/v1/registries/OWNER/REGISTRY/signing-keys`` (the published public keys,
for whoever may pull; anyone for a public registry). ``/v2/`` answers carry
``X-Registry-Supports-Signatures: 1``, its 401 too: clients decide from that
first, unauthenticated request. A middleware tells the signer the host name a
request came in by (for the identities it signs). Handlers stay thin: the
logic is ``registry_core.signing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from registry_core import Registry
from registry_core.auth import ANONYMOUS
from registry_core.config import Config
from registry_core.digest import Digest
from registry_core.errors import Denied, NameUnknown, NotFound, Unauthorized
from registry_core.jobs import LeaseGuard, Scheduler
from registry_core.names import RepositoryName, Tenant
from registry_core.secrets import SecretBox
from registry_core.signing import (
    JOB,
    KeyStore,
    Signer,
    SigningDefaults,
    SigningSettings,
    request_host,
)
from registry_core.signing.openpgp import remove_stale_homes
from registry_core.signing.simple import SimpleSignatures

from ..domains import Domains
from ..state import state_of
from .guard import API_CHALLENGE, Guard
from .management import API_PREFIX, DISABLED_MESSAGE, NAME_PATTERN, _body

SUPPORTS_SIGNATURES = {"X-Registry-Supports-Signatures": "1"}
EXTENSION_PATH = "/extensions/v2/{name:.+}/signatures/{digest}"
KEYS_PATH = f"{API_PREFIX}/registries/{{owner}}/{{registry}}/signing-keys"
SETTINGS_PATH = f"{API_PREFIX}/registries/{{owner}}/{{registry}}/signing"
_NAME = re.compile(NAME_PATTERN)
LOGGER = logging.getLogger("cargohold.signing")


class SigningKeyView(msgspec.Struct, kw_only=True):
    id: str
    kind: Literal["cosign", "gpg"]
    """``cosign``: PEM public key (ECDSA P-256); ``gpg``: armored OpenPGP public key."""
    algorithm: str
    fingerprint: str
    status: Literal["active", "retired"]
    """Retired keys no longer sign; their older signatures still verify."""
    created: float
    retired: float | None = None
    imported: bool = False
    public: str


class SigningChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A registry's own signing settings; null (or left out): the server's ``[signing]``."""

    enabled: bool | None = None
    cosign: bool | None = None
    simple: bool | None = None
    referrers: bool | None = None
    rsa_bits: Literal[3072, 4096] | None = None
    """Size of the registry's next RSA key (at a rotation; or first use)."""


class SigningKeys(msgspec.Struct, kw_only=True):
    enabled: bool
    """Whether this registry signs what it stores."""
    cosign: bool
    simple: bool
    referrers: bool
    rsa_bits: int
    """Size of the registry's next RSA key (the current one shows in its ``algorithm``)."""
    keys: list[SigningKeyView]


def public_hosts(config: Config) -> tuple[str, ...]:
    hosts = config.server.public_hosts
    if isinstance(hosts, str):
        hosts = [part for part in hosts.split(",")]
    return tuple(h.strip().lower() for h in hosts if h.strip())


def build_signer(config: Config, registry: Registry, box: SecretBox | None) -> Signer:
    defaults = SigningDefaults(
        enabled=config.signing.is_enabled(config.auth.enabled),
        cosign=config.signing.cosign,
        simple=config.signing.simple,
        referrers=config.signing.referrers,
        rsa_bits=config.signing.rsa_bits,
        public_hosts=public_hosts(config),
        domains=tuple(sorted(config.domains.items())),
    )
    keys = KeyStore(
        registry.driver, box, rsa_bits=config.signing.rsa_bits, ttl=config.auth.cache_ttl
    )
    return Signer(registry, keys, defaults)


async def make_registry_keys(signer: Signer, tenant: Tenant) -> None:
    """A new registry's signing keys, made while it is created (when it signs).

    A failure (gpg missing, storage down) never undoes the registry: it is logged and
    the keys are made on first use instead.
    """
    try:
        made = await signer.make_keys(tenant)
    except Exception:
        LOGGER.exception("making the signing keys of %s failed; they are made on first use", tenant)
        return
    for record in made:
        LOGGER.info(
            "registry %s: %s key %s (%s)", tenant, record.kind, record.id, record.fingerprint
        )


def add_signing_job(scheduler: Scheduler, signer: Signer, interval: float) -> None:
    """The catch-up pass: signs what nudges missed (a crash, another process's push)."""

    async def run(guard: LeaseGuard) -> None:
        await signer.catch_up(guard)

    scheduler.add(JOB, max(interval, 1.0), run, ttl=max(60.0, interval))


class SignatureRoutes:
    def __init__(
        self, registry: Registry, guard: Guard | None, domains: Domains, signer: Signer
    ) -> None:
        self.registry = registry
        self.guard = guard
        self.domains = domains
        self.signer = signer

    def add_to(self, app: web.Application) -> None:
        app.router.add_route("GET", EXTENSION_PATH, self.get_signatures)
        app.router.add_route("PUT", EXTENSION_PATH, self.put_signature)
        app.router.add_route("GET", KEYS_PATH, self.signing_keys)
        app.router.add_route("PUT", SETTINGS_PATH, self.set_signing)
        app.middlewares.append(self.host_context)
        app.on_response_prepare.append(advertise)

    @web.middleware
    async def host_context(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Also counts the requests in flight: the signing worker rests while there are.
        token = request_host.set(self.domains.origin(request).host)
        self.signer.request_started()
        try:
            return await handler(request)
        finally:
            self.signer.request_finished()
            request_host.reset(token)

    async def _repository(self, request: web.Request) -> tuple[RepositoryName, Digest]:
        state = state_of(request)
        state.route = "signatures"
        mapper = state.mapper = self.domains.mapper(request)
        name = RepositoryName.parse(mapper.internal(request.match_info["name"]))
        state.repository = name.value
        digest = Digest.parse(request.match_info["digest"])  # DIGEST_INVALID: a 400
        if self.guard is not None:
            # The manifest route's rights: pull to read, push to write. Not a counted pull.
            await self.guard.check(request, "manifest", name, mapper)
        return name, digest

    async def get_signatures(self, request: web.Request) -> web.StreamResponse:
        name, digest = await self._repository(request)
        listing = await SimpleSignatures(self.registry.driver, name).listing(digest)
        return web.Response(body=msgspec.json.encode(listing), content_type="application/json")

    async def put_signature(self, request: web.Request) -> web.StreamResponse:
        name, digest = await self._repository(request)
        await self.registry.repository(name).manifests.resolve(str(digest))
        body = await request.content.read(256 * 1024)
        await SimpleSignatures(self.registry.driver, name).add_from_client(digest, body)
        return web.Response(status=201)

    def _tenant(self, request: web.Request) -> Tenant:
        state = state_of(request)
        state.route = "management"
        owner, registry = request.match_info["owner"], request.match_info["registry"]
        if not all(len(part) <= 64 and _NAME.match(part) for part in (owner, registry)):
            raise NameUnknown(f"registry {owner[:64]}/{registry[:64]} does not exist")
        tenant = Tenant(owner, registry)
        state.repository = str(tenant)
        return tenant

    async def set_signing(self, request: web.Request) -> web.StreamResponse:
        """Registry admins change whether (and how) their registry signs."""
        tenant = self._tenant(request)
        if self.guard is None:
            raise NotFound(DISABLED_MESSAGE)
        caller = await self.guard.api_identity(request)
        if "pull" not in await self.guard.authenticator.tenant_actions(caller, tenant):
            raise NameUnknown(f"registry {tenant} does not exist")
        if await self.guard.authenticator.role(caller, tenant) != "admin":
            raise Denied(f"this needs the admin role on {tenant}")
        change = await _body(request, SigningChange)
        await self.signer.set_settings(
            tenant,
            SigningSettings(
                enabled=change.enabled,
                cosign=change.cosign,
                simple=change.simple,
                referrers=change.referrers,
                rsa_bits=change.rsa_bits,
            ),
        )
        return await self.signing_keys(request)

    async def signing_keys(self, request: web.Request) -> web.StreamResponse:
        tenant = self._tenant(request)
        if self.guard is not None:
            identity, _ = await self.guard.identify(request, api=True)
            if identity.anonymous:
                identity = ANONYMOUS
            actions = await self.guard.authenticator.tenant_actions(identity, tenant)
            if "pull" not in actions:
                if identity.anonymous:
                    raise Unauthorized("authentication required", headers=API_CHALLENGE)
                raise NameUnknown(f"registry {tenant} does not exist")
        settings = await self.signer.effective(tenant)
        if settings.enabled:  # keys are made on first use, so publish them on first look too
            if settings.cosign:
                await self.signer.keys.signing_key(tenant, "cosign")
            if settings.simple:
                await self.signer.keys.signing_key(tenant, "gpg", rsa_bits=settings.rsa_bits)
        views = [
            SigningKeyView(
                id=r.id,
                kind=r.kind,
                algorithm=r.algorithm,
                fingerprint=r.fingerprint,
                status=r.status,
                created=r.created,
                retired=r.retired,
                imported=r.imported,
                public=r.public,
            )
            for r in await self.signer.keys.list(tenant)
        ]
        body = SigningKeys(
            enabled=settings.enabled,
            cosign=settings.cosign,
            simple=settings.simple,
            referrers=settings.referrers,
            rsa_bits=settings.rsa_bits,
            keys=views,
        )
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")


async def advertise(request: web.Request, response: web.StreamResponse) -> None:
    """``/v2/`` says it stores signatures, on its 401 too (clients ask once, anonymously)."""
    if request.path in ("/v2", "/v2/"):
        response.headers.update(SUPPORTS_SIGNATURES)


def add_signing(
    app: web.Application,
    registry: Registry,
    config: Config,
    box: SecretBox | None,
    guard: Guard | None,
    domains: Domains,
    scheduler: Scheduler,
) -> Signer:
    """Wire signing into a server process: routes, the feed listener, worker and job."""
    signer = build_signer(config, registry, box)
    signer.attach()
    SignatureRoutes(registry, guard, domains, signer).add_to(app)
    if signer.defaults.enabled:
        # Off by default (open mode): a registry that turns it on is signed by the nudge alone.
        add_signing_job(scheduler, signer, config.signing.interval)

    async def worker(app: web.Application) -> AsyncIterator[None]:
        # gpg homes (and their agents) that a killed process of this machine left behind.
        await asyncio.to_thread(remove_stale_homes)
        task = asyncio.create_task(signer.run_forever(), name="signing-worker")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(worker)
    return signer
