"""The ``/api/v1/`` routes of a registry's lifecycle rules: retention, immutable tags, quotas.

Thin handlers over ``registry_core.lifecycle``, riding on :class:`.management.Management`
for who the caller is and what they may see (a name the caller cannot see answers 404,
like one that does not exist). Anyone who can pull from a registry may read its rules
and usage; its admins change retention and immutable tags; quotas are the platform's
to set, so only superusers change them. Setting a quota recomputes the usage it covers.
The bodies are the Structs below; :mod:`.openapi` documents them from the same types.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from aiohttp import web

from registry_core.auth import Identity
from registry_core.jobs import LeaseBusy
from registry_core.lifecycle.immutable import ImmutableTags, get_immutable, set_immutable
from registry_core.lifecycle.quotas import Quota, parse_size, set_quota
from registry_core.lifecycle.retention import (
    RetentionReport,
    RetentionRules,
    RetentionSpec,
    get_retention,
    run_retention,
    set_retention,
)
from registry_core.lifecycle.usage import recompute_usage
from registry_core.names import Tenant
from registry_core.tenancy import InvalidRequest

from .management import API_PREFIX, Management, Usage, _body, _json, _no_content

log = logging.getLogger("cargohold.server")

Size = (
    Annotated[float, msgspec.Meta(ge=0, le=2**53 - 1, multiple_of=1)]
    | Annotated[
        str,
        msgspec.Meta(
            extra_json_schema={
                "pattern": r"^[0-9]{1,6}(?:\.[0-9]{1,6})? ?(?:[kKmMgGtT](?:[iI]?[bB])?|[bB])?(?!\n)$"
            }
        ),
    ]
)
"""Bytes, or a size such as ``10GiB`` (documented pattern: what ``parse_size`` accepts)."""


class Retention(msgspec.Struct, kw_only=True):
    """A registry's retention rules; durations in seconds, null: rule off."""

    keep_last: int | None
    delete_older_than: float | None
    delete_unpulled_after: float | None
    delete_untagged_after: float | None
    protected: list[str]
    source: str
    """``storage`` (set through the API or the CLI), ``config`` (the TOML file) or ``none``."""


class RetentionRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    dry_run: bool = False
    """Only list what would be deleted."""


class QuotaChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits to set; null (or left out): no limit of that kind. Sizes: bytes or ``10GiB``."""

    max_bytes: Size | None = None
    max_images: Annotated[float, msgspec.Meta(ge=0, le=2**31 - 1, multiple_of=1)] | None = None
    """A whole number (JSON Schema's integer: ``3.0`` is one too)."""


def _retention(rules: RetentionRules | None, source: str) -> Retention:
    rules = rules or RetentionRules()
    return Retention(
        keep_last=rules.keep_last,
        delete_older_than=rules.delete_older_than,
        delete_unpulled_after=rules.delete_unpulled_after,
        delete_untagged_after=rules.delete_untagged_after,
        protected=list(rules.protected),
        source=source,
    )


Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


class LifecycleApi:
    """The lifecycle routes of one server process."""

    def __init__(self, management: Management) -> None:
        self.management = management
        self.registry = management.registry

    def routes(self) -> list[tuple[str, str, Handler]]:
        registry = f"{API_PREFIX}/registries/{{owner}}/{{registry}}"
        owner = f"{API_PREFIX}/owners/{{owner}}"
        return [
            ("GET", f"{registry}/retention", self.get_retention),
            ("PUT", f"{registry}/retention", self.put_retention),
            ("DELETE", f"{registry}/retention", self.delete_retention),
            ("POST", f"{registry}/retention/run", self.run_retention),
            ("GET", f"{registry}/immutable-tags", self.get_immutable),
            ("PUT", f"{registry}/immutable-tags", self.put_immutable),
            ("DELETE", f"{registry}/immutable-tags", self.delete_immutable),
            ("GET", f"{registry}/quota", self.get_registry_quota),
            ("PUT", f"{registry}/quota", self.put_registry_quota),
            ("DELETE", f"{registry}/quota", self.delete_registry_quota),
            ("GET", f"{owner}/quota", self.get_owner_quota),
            ("PUT", f"{owner}/quota", self.put_owner_quota),
            ("DELETE", f"{owner}/quota", self.delete_owner_quota),
        ]

    def add_to(self, app: web.Application) -> None:
        for method, path, handler in self.routes():
            app.router.add_route(method, path, self.management._endpoint(handler))

    async def _visible(self, request: web.Request, caller: Identity) -> Tenant:
        return (await self.management._visible_registry(request, caller)).tenant

    async def _admin(self, request: web.Request, caller: Identity) -> Tenant:
        return (await self.management._registry_admin(request, caller)).tenant

    # -- retention --------------------------------------------------------------------

    async def _rules(self, tenant: Tenant) -> tuple[RetentionRules | None, str]:
        settings = self.registry.settings
        stored = await get_retention(settings, tenant)
        if stored is not None:
            return stored, "storage"
        configured = await get_retention(
            settings, tenant, self.registry.policy.configured_retention
        )
        return configured, "none" if configured is None else "config"

    async def get_retention(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._visible(request, caller)
        return _json(_retention(*await self._rules(tenant)))

    async def put_retention(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._admin(request, caller)
        await self.apply_retention(tenant, await _body(request, RetentionSpec))
        return _json(_retention(*await self._rules(tenant)))

    async def apply_retention(self, tenant: Tenant, spec: RetentionSpec) -> None:
        """Store *spec* as the registry's rules (the caller checked the admin role);
        the website's form calls this too."""
        try:
            rules = spec.rules()
        except ValueError as exc:
            raise InvalidRequest(f"invalid request body: {exc}") from None
        await set_retention(self.registry.settings, tenant, rules)

    async def delete_retention(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._admin(request, caller)
        await set_retention(self.registry.settings, tenant, RetentionRules())
        return _no_content()

    async def run_retention(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._admin(request, caller)
        body = await _body(request, RetentionRun)
        rules, _ = await self._rules(tenant)
        if rules is None:
            return _json(RetentionReport(registry=str(tenant), dry_run=body.dry_run))
        report = await run_retention(self.registry, tenant, rules, dry_run=body.dry_run)
        return _json(report)

    # -- immutable tags -------------------------------------------------------------------

    async def get_immutable(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._visible(request, caller)
        rules = await get_immutable(self.registry.settings, tenant)
        return _json(rules or ImmutableTags())

    async def put_immutable(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._admin(request, caller)
        body = await _body(request, ImmutableTags)
        await set_immutable(self.registry.settings, tenant, body.patterns)
        return _json(await get_immutable(self.registry.settings, tenant) or ImmutableTags())

    async def delete_immutable(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._admin(request, caller)
        await set_immutable(self.registry.settings, tenant, [])
        return _no_content()

    # -- quotas ---------------------------------------------------------------------------

    async def _set_quota(
        self, request: web.Request, caller: Identity, owner: str, name: str | None
    ) -> web.Response:
        self.management._superuser(caller, "setting quotas")
        return _json(await self.apply_quota(caller, owner, name, await _body(request, QuotaChange)))

    async def apply_quota(
        self, caller: Identity, owner: str, name: str | None, body: QuotaChange
    ) -> Usage:
        """Set a quota (superusers only) and recompute the usage it covers; the website's
        form calls this too."""
        self.management._superuser(caller, "setting quotas")
        try:
            max_bytes = (
                None
                if body.max_bytes is None
                else parse_size(
                    int(body.max_bytes) if isinstance(body.max_bytes, float) else body.max_bytes
                )
            )
        except ValueError as exc:
            raise InvalidRequest(f"invalid request body: max_bytes: {exc}") from None
        await set_quota(
            self.registry.settings,
            owner,
            name,
            Quota(
                max_bytes=max_bytes,
                max_images=None if body.max_images is None else int(body.max_images),
            ),
        )
        ledger = self.registry.usage
        ledger.forget()
        covered = (
            [Tenant(owner, name)]
            if name is not None
            else [Tenant(owner, r) for r in await ledger.registries_of(owner)]
        )
        try:
            await recompute_usage(self.registry, covered, wait=10.0)
        except LeaseBusy:
            # A compaction that will not end soon (a crashed holder): the quota holds
            # already; the next GC run measures the usage exactly.
            log.warning("usage of %s not recomputed: the usage lease is held", owner)
        return await self.management._usage(owner, name)

    async def _clear_quota(self, caller: Identity, owner: str, name: str | None) -> web.Response:
        self.management._superuser(caller, "removing quotas")
        await set_quota(self.registry.settings, owner, name, Quota())
        return _no_content()

    async def get_registry_quota(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._visible(request, caller)
        return _json(await self.management._usage(tenant.owner, tenant.registry))

    async def put_registry_quota(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._visible(request, caller)
        return await self._set_quota(request, caller, tenant.owner, tenant.registry)

    async def delete_registry_quota(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = await self._visible(request, caller)
        return await self._clear_quota(caller, tenant.owner, tenant.registry)

    async def get_owner_quota(self, request: web.Request, caller: Identity) -> web.Response:
        owner = await self.management._visible_owner(caller, request.match_info["owner"])
        return _json(await self.management._usage(owner.name, None))

    async def put_owner_quota(self, request: web.Request, caller: Identity) -> web.Response:
        owner = await self.management._visible_owner(caller, request.match_info["owner"])
        return await self._set_quota(request, caller, owner.name, None)

    async def delete_owner_quota(self, request: web.Request, caller: Identity) -> web.Response:
        owner = await self.management._visible_owner(caller, request.match_info["owner"])
        return await self._clear_quota(caller, owner.name, None)


__all__ = ["LifecycleApi", "QuotaChange", "Retention", "RetentionRun", "Usage"]
