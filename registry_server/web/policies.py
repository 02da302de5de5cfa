"""The website's policies page of a registry: quota and usage, retention, immutable tags, upstreams.

Whoever can pull reads the rules (upstreams: admins only, as in the API); a registry's
admins change retention, immutable tags and upstreams, and superusers set quotas, through
the management API's own checks (``Management._registry_admin``, ``_superuser``) and the
very calls its handlers make (``LifecycleApi.apply_retention``/``apply_quota``,
``set_immutable``, ``UpstreamStore.add``/``remove``). A form's text is turned into the
API's own body types (``RetentionSpec``, ``QuotaChange``, ``UpstreamSpec``) with
``msgspec.convert``, so the same constraints hold. An upstream's password is write-only:
the page never renders it back, only whether one is set.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

import msgspec
from aiohttp import web
from multidict import MultiDictProxy

from registry_core.lifecycle.immutable import ImmutableTags, get_immutable, set_immutable
from registry_core.lifecycle.quotas import format_size
from registry_core.lifecycle.retention import RetentionSpec, get_retention
from registry_core.proxy import UpstreamSpec
from registry_core.proxy import view as upstream_view
from registry_core.tenancy import InvalidRequest, RegistryRecord

from ..http.lifecycle_api import LifecycleApi, QuotaChange
from .forms import PREFIX, field, redirect
from .sessions import Visitor

if TYPE_CHECKING:
    from .routes import PageHandler, Website

_DURATION_FIELDS = ("delete_older_than", "delete_unpulled_after", "delete_untagged_after")
_LIST_SPLIT = re.compile(r"[\s,]+")


def duration_text(seconds: float | None) -> str:
    """Seconds as the shortest form ``parse_duration`` reads back (``30d``, ``12h``, ``90s``)."""
    if seconds is None:
        return ""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def patterns_of(form: MultiDictProxy[Any], name: str) -> list[str]:
    """Patterns typed one per line (or separated by commas or spaces)."""
    return [p for p in _LIST_SPLIT.split(field(form, name, limit=8192)) if p]


T = TypeVar("T")


def as_body(value: dict[str, Any], kind: type[T]) -> T:
    """A form's values as the API's body type, with the API's constraints and messages."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid form: {exc}") from None


def back_to(page: str, done: str, anchor: str) -> web.HTTPSeeOther:
    """Back to *page*, saying what was done, scrolled to the section that changed."""
    return redirect(f"{page}?{urlencode({'done': done})}#{anchor}")


def whole_number(form: MultiDictProxy[Any], name: str, label: str) -> int | None:
    text = field(form, name, limit=16)
    if not text:
        return None
    if not text.isdigit():
        raise InvalidRequest(f"{label} must be a whole number")
    return int(text)


class PolicyPages:
    """The policies page of a registry and its forms."""

    def __init__(self, site: Website) -> None:
        self.site = site
        self.lifecycle = LifecycleApi(site.management)

    def routes(self) -> list[tuple[str, str, PageHandler]]:
        registry = f"{PREFIX}/r/{{owner}}/{{registry}}/settings"
        return [
            ("GET", registry, self.settings_page),
            ("POST", f"{registry}/retention", self.save_retention),
            ("POST", f"{registry}/immutable", self.save_immutable),
            ("POST", f"{registry}/quota", self.save_quota),
            ("POST", f"{registry}/upstreams", self.add_upstream),
            ("POST", f"{registry}/upstreams/{{name}}/remove", self.remove_upstream),
        ]

    def _back(self, record: RegistryRecord, done: str, anchor: str) -> web.HTTPSeeOther:
        return back_to(f"{PREFIX}/r/{record.owner}/{record.name}/settings", done, anchor)

    async def settings_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        site = self.site
        record = await site._registry(request, visitor)
        tenant = record.tenant
        is_admin = await site._role(visitor.identity, tenant) == "admin"
        settings = site.registry.settings
        stored = await get_retention(settings, tenant)
        configured = await get_retention(
            settings, tenant, site.registry.policy.configured_retention
        )
        retention = stored or configured
        source = "storage" if stored is not None else "config" if configured else "none"
        upstreams = None
        if is_admin and site.management.upstreams is not None:
            upstreams = [upstream_view(u) for u in await site.management.upstreams.list(tenant)]
        usage = await site.management._usage(record.owner, record.name)
        immutable = await get_immutable(settings, tenant)
        return site._render(
            request,
            visitor,
            "settings.html",
            {
                "record": record,
                "retention": retention,
                "retention_source": source,
                "durations": {
                    name: duration_text(getattr(retention, name, None)) for name in _DURATION_FIELDS
                },
                "immutable": immutable,
                "usage": usage,
                "format_size": format_size,
                "upstreams": upstreams,
                "is_admin": is_admin,
                "is_superuser": visitor.identity.superuser,
                "duration_text": duration_text,
            },
        )

    async def save_retention(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        form = await request.post()
        value: dict[str, Any] = {"protected": patterns_of(form, "protected")}
        keep_last = whole_number(form, "keep_last", "keep the last")
        if keep_last is not None:
            value["keep_last"] = keep_last
        for name in _DURATION_FIELDS:
            text = field(form, name, limit=32)
            if text:
                value[name] = text
        await self.lifecycle.apply_retention(record.tenant, as_body(value, RetentionSpec))
        raise self._back(record, "retention", "retention-title")

    async def save_immutable(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        body = as_body({"patterns": patterns_of(await request.post(), "patterns")}, ImmutableTags)
        await set_immutable(self.site.registry.settings, record.tenant, body.patterns)
        raise self._back(record, "immutable", "immutable-title")

    async def save_quota(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        # The API's route: visible registry, then apply_quota checks the superuser.
        record = await self.site._registry(request, visitor)
        form = await request.post()
        value: dict[str, Any] = {}
        max_bytes = field(form, "max_bytes", limit=32)
        if max_bytes:
            value["max_bytes"] = float(max_bytes) if max_bytes.isdigit() else max_bytes
        max_images = whole_number(form, "max_images", "max images")
        if max_images is not None:
            value["max_images"] = float(max_images)
        change = as_body(value, QuotaChange)
        await self.lifecycle.apply_quota(visitor.identity, record.owner, record.name, change)
        raise self._back(record, "quota", "quota-title")

    async def add_upstream(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        form = await request.post()
        value: dict[str, Any] = {"cache": "cache" in form, "sign": "sign" in form}
        for name in ("name", "url", "username", "password", "images", "prefix", "tag_ttl"):
            text = field(form, name, limit=1024)
            if text:
                value[name] = text
        priority = field(form, "priority", limit=16)
        if priority:
            try:
                value["priority"] = int(priority)
            except ValueError:
                raise InvalidRequest("priority must be a whole number") from None
        spec = as_body(value, UpstreamSpec)
        await self.site.management._upstreams.add(record.tenant, spec)
        raise self._back(record, "upstream", "upstreams-title")

    async def remove_upstream(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        await self.site.management._upstreams.remove(record.tenant, request.match_info["name"])
        raise self._back(record, "upstream-removed", "upstreams-title")
