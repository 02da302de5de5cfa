"""The website's routes under ``/ui/``: parse the request, ask the library, render a template.

Every permission question is answered by the management API's own checks
(:class:`registry_server.http.management.Management`: who may see an owner, a registry,
a user; who administers them), and every change goes through the same library calls
it makes, so the website cannot drift from the API's rules. A name the visitor cannot
see gets the same 404 page as one that does not exist. Every form carries the session's
CSRF token (the login form a double-submit one) and every state change is a POST that
checks it, then redirects (303) to a page that says what happened. Pages need auth on
(``[auth] enabled = true``), like the management API. This module holds no rules of its
own, builds no storage path and never renders a secret except once, on the page that
creates it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

import registry_core
from registry_core import RegistryError
from registry_core.attachments import is_attachment_tag
from registry_core.auth import Identity
from registry_core.digest import Digest
from registry_core.errors import Denied, DigestInvalid, NameUnknown, TooManyRequests
from registry_core.lifecycle.immutable import get_immutable
from registry_core.lifecycle.quotas import format_size
from registry_core.lifecycle.retention import get_retention
from registry_core.names import RepositoryName, Tenant
from registry_core.proxy import view as upstream_view
from registry_core.registry import Repository
from registry_core.storage.tag_index import SortKey
from registry_core.tenancy import (
    InvalidRequest,
    NotFoundRecord,
    RegistryRecord,
    Role,
    Visibility,
    parse_duration,
)

from ..domains import Domains
from ..http.management import Management
from ..state import state_of
from .assets import SECURITY_HEADERS, Assets
from .pages import (
    Listings,
    ManifestView,
    delete_manifest,
    manifest_view,
    page_of,
    tag_page,
    utc,
)
from .sessions import CSRF_FIELD, WEB_PREFIX, LoginFailed, Visitor, WebSessions

LOGGER = logging.getLogger("cargohold.web")
PREFIX: Final = WEB_PREFIX
IMAGES_PER_PAGE: Final = 50
TAGS_PER_PAGE: Final = 50
DONE_MESSAGES: Final = {
    "visibility": "Visibility changed.",
    "member": "Member saved.",
    "member-removed": "Member removed.",
    "token-revoked": "Token revoked.",
    "key-revoked": "API key revoked.",
    "password": "Password changed. Other sessions have been logged out.",
    "user": "User created.",
    "user-deleted": "User deleted.",
    "owner": "Owner created.",
    "owner-deleted": "Owner deleted.",
    "registry": "Registry created.",
    "deleted": "Manifest deleted.",
}
"""Messages a redirect may ask for by key (never text taken from the request)."""

PageHandler = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]
ManifestSection = Callable[[Repository, ManifestView], Awaitable[tuple[str, dict[str, Any]] | None]]
"""A capability's part of the manifest page: (template, context) or None."""


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _field(form: MultiDictProxy[Any], name: str, *, limit: int = 256) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text")
    if len(value) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} characters")
    return value.strip()


def _role(form: MultiDictProxy[Any]) -> Role:
    role = _field(form, "role")
    if role == "read" or role == "write" or role == "admin":
        return role
    raise InvalidRequest("role must be read, write or admin")


def _visibility(form: MultiDictProxy[Any]) -> Visibility:
    visibility = _field(form, "visibility")
    if visibility == "public" or visibility == "private":
        return visibility
    raise InvalidRequest("visibility must be public or private")


def _redirect(location: str, done: str | None = None) -> web.HTTPSeeOther:
    if done is not None:
        location += ("&" if "?" in location else "?") + urlencode({"done": done})
    return web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


def _seconds(text: str) -> float | None:
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"expires in: {exc}") from None
    if seconds <= 0:
        raise InvalidRequest("expires in must be positive")
    return seconds


class Website:
    """The ``/ui/`` routes of one server process."""

    def __init__(
        self,
        registry: registry_core.Registry,
        management: Management,
        sessions: WebSessions | None,
        domains: Domains,
    ) -> None:
        self.registry = registry
        self.management = management
        self.tenancy = management.tenancy
        self.sessions = sessions
        self.domains = domains
        self.assets = Assets()
        self.listings = Listings(registry)
        self.manifest_sections: list[ManifestSection] = []
        """Extra sections of the manifest page (signatures, scan results, ...): each provider
        returns (template name under templates/, its context) or None to show nothing."""
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__, "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals["static"] = self.assets.url
        self.env.filters["size"] = _human_size
        self.env.filters["path"] = lambda text: quote(str(text), safe="/:@")
        # Compiled now, not by the first visitor of each page.
        for name in self.env.list_templates(extensions=["html"]):
            self.env.get_template(name)

    def add_to(self, app: web.Application) -> None:
        registry = f"{PREFIX}/r/{{owner}}/{{registry}}"
        pages: list[tuple[str, str, PageHandler]] = [
            ("GET", f"{PREFIX}/", self.home),
            ("GET", f"{PREFIX}/login", self.login_form),
            ("POST", f"{PREFIX}/login", self.login),
            ("POST", f"{PREFIX}/logout", self.logout),
            ("GET", f"{PREFIX}/o/{{owner}}", self.owner_page),
            ("POST", f"{PREFIX}/o/{{owner}}/registries", self.create_registry),
            ("POST", f"{PREFIX}/o/{{owner}}/members", self.set_owner_member),
            ("POST", f"{PREFIX}/o/{{owner}}/members/{{user}}/remove", self.remove_owner_member),
            ("GET", registry, self.registry_page),
            ("POST", f"{registry}/visibility", self.change_visibility),
            ("GET", f"{registry}/members", self.members_page),
            ("POST", f"{registry}/members", self.set_member),
            ("POST", f"{registry}/members/{{user}}/remove", self.remove_member),
            ("GET", f"{registry}/tokens", self.tokens_page),
            ("POST", f"{registry}/tokens", self.create_token),
            ("POST", f"{registry}/tokens/{{id}}/revoke", self.revoke_token),
            ("GET", f"{registry}/settings", self.settings_page),
            ("GET", f"{registry}/images/{{image:.+}}", self.image_page),
            ("GET", f"{registry}/manifests/{{digest}}/{{image:.+}}", self.manifest_page),
            ("POST", f"{registry}/manifests/{{digest}}/{{image:.+}}", self.delete_manifest),
            ("GET", f"{PREFIX}/account", self.account_page),
            ("POST", f"{PREFIX}/account/api-keys", self.create_api_key),
            ("POST", f"{PREFIX}/account/api-keys/{{id}}/revoke", self.revoke_api_key),
            ("POST", f"{PREFIX}/account/password", self.change_password),
            ("GET", f"{PREFIX}/admin", self.admin_page),
            ("POST", f"{PREFIX}/admin/users", self.create_user),
            ("POST", f"{PREFIX}/admin/users/{{name}}/delete", self.delete_user),
            ("POST", f"{PREFIX}/admin/owners", self.create_owner),
            ("POST", f"{PREFIX}/admin/owners/{{owner}}/delete", self.delete_owner),
        ]
        for method, path, handler in pages:
            app.router.add_route(method, path, self._endpoint(handler, method))
        app.router.add_get(f"{PREFIX}/static/{{name}}", self.assets.handler)
        app.router.add_get(PREFIX, self._to_home)

    async def _to_home(self, request: web.Request) -> web.StreamResponse:
        raise _redirect(f"{PREFIX}/")

    # -- the frame of every page -----------------------------------------------------------

    def _endpoint(
        self, handler: PageHandler, method: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            state = state_of(request)
            state.route = "web"
            if self.sessions is None:
                return self._render(
                    request,
                    None,
                    "error.html",
                    {
                        "message": "The website is served only with [auth] enabled = true.",
                        "login": "",
                    },
                    status=404,
                )
            started = time.perf_counter()
            visitor = await self.sessions.visitor(request)
            try:
                if method == "POST" and handler != self.login:
                    form = await request.post()
                    self.sessions.check_csrf(visitor, _field(form, CSRF_FIELD))
                response = await handler(request, visitor)
                # The server's own time for the page (what benchmarks/workloads/web.py reads).
                elapsed = 1000 * (time.perf_counter() - started)
                response.headers["Server-Timing"] = f"page;dur={elapsed:.2f}"
                return response
            except web.HTTPException as exc:
                if exc.status >= 400:
                    return self._error(request, visitor, exc.status, exc.reason)
                exc.headers.update(SECURITY_HEADERS)
                raise
            except RegistryError as exc:
                return self._error(request, visitor, exc.status, exc.message)

        return endpoint

    def _error(
        self, request: web.Request, visitor: Visitor, status: int, message: str
    ) -> web.Response:
        login = ""
        if visitor.anonymous and request.method == "GET":
            login = f"{PREFIX}/?{urlencode({'next': request.path_qs})}"
        context = {"message": message, "login": login}
        return self._render(request, visitor, "error.html", context, status=status)

    def _render(
        self,
        request: web.Request,
        visitor: Visitor | None,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
    ) -> web.Response:
        done = request.query.get("done")
        body = self.env.get_template(template).render(
            visitor=visitor,
            csrf=visitor.csrf if visitor is not None else "",
            done=DONE_MESSAGES.get(done or ""),
            prefix=PREFIX,
            **context,
        )
        headers = {"Cache-Control": "no-store", **SECURITY_HEADERS}
        return web.Response(
            text=body, status=status, content_type="text/html", charset="utf-8", headers=headers
        )

    # -- shared lookups (through the management API's checks) --------------------------------

    async def _registry(self, request: web.Request, visitor: Visitor) -> RegistryRecord:
        return await self.management._visible_registry(request, visitor.identity)

    async def _admin_registry(self, request: web.Request, visitor: Visitor) -> RegistryRecord:
        return await self.management._registry_admin(request, visitor.identity)

    async def _role(self, identity: Identity, tenant: Tenant) -> str | None:
        if identity.anonymous:
            return None
        return await self.management._guard.authenticator.role(identity, tenant)

    async def _repository(self, request: web.Request, record: RegistryRecord) -> Repository:
        try:
            name = RepositoryName.parse(f"{record.tenant}/{request.match_info['image']}")
        except RegistryError:
            raise NameUnknown("no such image") from None
        repo = self.registry.repository(name.value)
        if not await repo.manifests.exists():
            raise NameUnknown(f"repository {name} does not exist")
        return repo

    def _image_ref(self, request: web.Request, tenant: Tenant, image: str) -> str:
        """The image's name as clients pull it: under the registry's custom domain if any."""
        full = f"{tenant}/{image}"
        mapped = self.domains.host_for(str(tenant))
        if mapped is not None:
            host, prefix = mapped
            return f"{host}/{full[len(prefix) + 1 :]}"
        return f"{self.domains.origin(request).host}/{full}"

    def _registry_host(self, request: web.Request, tenant: Tenant) -> str:
        mapped = self.domains.host_for(str(tenant))
        return mapped[0] if mapped is not None else self.domains.origin(request).host

    # -- home, login, logout --------------------------------------------------------------

    async def home(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        if visitor.anonymous:
            return await self._login_page(request, visitor)
        identity = visitor.identity

        async def member(owner: Any) -> bool:
            return await self.management._member_of_owner(identity.name, owner.name)

        owners_page = await self.tenancy.owners_page(
            100, request.query.get("after") or None, None if identity.superuser else member
        )
        authenticator = self.management._guard.authenticator

        async def pullable(record: RegistryRecord) -> bool:
            return "pull" in await authenticator.tenant_actions(identity, record.tenant)

        async def owner_entry(owner: Any) -> dict[str, Any]:
            page = await self.tenancy.registries_page(owner.name, 100, None, pullable)
            usages = await asyncio.gather(
                *(self.management._usage(owner.name, r.name) for r in page.items)
            )
            return {
                "name": owner.name,
                "kind": owner.kind,
                "registries": list(zip(page.items, usages, strict=True)),
                "more": page.more,
            }

        owners = await asyncio.gather(*(owner_entry(o) for o in owners_page.items))
        after = owners_page.items[-1].name if owners_page.more and owners_page.items else None
        shown = {str(r.tenant) for owner in owners for r, _ in owner["registries"]}
        public = [r for r in await self._public_registries() if str(r.tenant) not in shown]
        context = {"owners": owners, "after": after, "public": public}
        return self._render(request, visitor, "home.html", context)

    async def _public_registries(self) -> list[RegistryRecord]:
        return [r for r in await self.tenancy.list_registries() if r.visibility == "public"][:200]

    async def _login_page(
        self, request: web.Request, visitor: Visitor, *, error: str = "", status: int = 200
    ) -> web.Response:
        assert self.sessions is not None
        token = self.sessions.login_token(request)
        page = self._render(
            request,
            visitor,
            "login.html",
            {
                "login_token": token,
                "error": error,
                "next": _safe_next(request.query.get("next", "")),
                "public": await self._public_registries(),
            },
            status=status,
        )
        self.sessions.set_login_cookie(request, page, token)
        return page

    async def login_form(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        raise _redirect(f"{PREFIX}/")

    async def login(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.sessions is not None
        form = await request.post()
        self.sessions.check_login_token(request, _field(form, "login_token"))
        username = _field(form, "username", limit=64)
        password = _field(form, "password", limit=1024)
        try:
            cookie = await self.sessions.log_in(request, username, password)
        except LoginFailed:
            return await self._login_page(
                request, visitor, error="Wrong user name or password.", status=401
            )
        except TooManyRequests:
            return await self._login_page(
                request,
                visitor,
                error="Too many failed logins; wait a while and try again.",
                status=429,
            )
        response = _redirect(_safe_next(_field(form, "next", limit=512)) or f"{PREFIX}/")
        self.sessions.set_session_cookie(request, response, cookie)
        raise response

    async def logout(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.sessions is not None
        await self.sessions.log_out(visitor)
        response = _redirect(f"{PREFIX}/")
        self.sessions.clear_session_cookie(request, response)
        raise response

    # -- owners and registries ---------------------------------------------------------------

    async def owner_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        identity = visitor.identity
        owner = await self.management._visible_owner(identity, request.match_info["owner"])
        authenticator = self.management._guard.authenticator

        async def pullable(record: RegistryRecord) -> bool:
            return "pull" in await authenticator.tenant_actions(identity, record.tenant)

        page = await self.tenancy.registries_page(
            owner.name, 100, request.query.get("after") or None, pullable
        )
        is_admin = identity.superuser or await self._owner_admin(identity, owner.name)
        members = None
        if is_admin:  # owner-wide roles: shown to the owner's admins only, as in the API
            members = (await self.tenancy.members_page(owner.name, None, 100, None)).items
        return self._render(
            request,
            visitor,
            "owner.html",
            {
                "owner": owner,
                "registries": page.items,
                "after": page.items[-1].name if page.more and page.items else None,
                "is_admin": is_admin,
                "members": members,
            },
        )

    async def set_owner_member(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        owner = await self.management._owner_admin(visitor.identity, request.match_info["owner"])
        form = await request.post()
        await self.tenancy.add_member(owner.name, None, _field(form, "user", limit=64), _role(form))
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/o/{owner.name}", "member")

    async def remove_owner_member(
        self, request: web.Request, visitor: Visitor
    ) -> web.StreamResponse:
        owner = await self.management._owner_admin(visitor.identity, request.match_info["owner"])
        await self.tenancy.remove_member(owner.name, None, request.match_info["user"])
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/o/{owner.name}", "member-removed")

    async def _owner_admin(self, identity: Identity, owner: str) -> bool:
        try:
            await self.management._owner_admin(identity, owner)
        except Denied:
            return False
        return True

    async def create_registry(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        owner = (
            await self.management._owner_admin(visitor.identity, request.match_info["owner"])
        ).name
        form = await request.post()
        record = await self.tenancy.create_registry(
            owner, _field(form, "name", limit=64), _visibility(form)
        )
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/r/{record.owner}/{record.name}", "registry")

    async def registry_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._registry(request, visitor)
        tenant = record.tenant
        role = await self._role(visitor.identity, tenant)
        actions = await self.management._guard.authenticator.tenant_actions(
            visitor.identity, tenant
        )
        query = request.query.get("q", "").strip()[:128]
        prefix = f"{tenant}/"
        images = await self.listings.images(tenant)
        if query:
            images = [image for image in images if query.lower() in image.lower()]
        page = page_of(request.query.get("page"), IMAGES_PER_PAGE, len(images))
        shown = page.slice(images)
        counts = await asyncio.gather(
            *(self.registry.repository(prefix + image).manifests.tags() for image in shown)
        )
        rows = [
            {
                "image": image,
                "tags": sum(1 for tag in tags if not is_attachment_tag(tag)),
                "ref": self._image_ref(request, tenant, image),
            }
            for image, tags in zip(shown, counts, strict=True)
        ]
        usage = await self.management._usage(record.owner, record.name)
        return self._render(
            request,
            visitor,
            "registry.html",
            {
                "record": record,
                "role": role,
                "is_admin": role == "admin",
                "can_push": "push" in actions,
                "rows": rows,
                "page": page,
                "query": query,
                "usage": usage,
                "host": self._registry_host(request, tenant),
            },
        )

    async def change_visibility(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        visibility = _visibility(await request.post())
        await self.tenancy.update_registry(record.owner, record.name, visibility=visibility)
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/r/{record.owner}/{record.name}", "visibility")

    # -- members and entitlement tokens -----------------------------------------------------

    async def members_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        page = await self.tenancy.members_page(
            record.owner, record.name, 100, request.query.get("after") or None
        )
        return self._render(
            request,
            visitor,
            "members.html",
            {
                "record": record,
                "members": page.items,
                "after": page.items[-1].user if page.more and page.items else None,
            },
        )

    async def set_member(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        form = await request.post()
        await self.tenancy.add_member(
            record.owner, record.name, _field(form, "user", limit=64), _role(form)
        )
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/r/{record.owner}/{record.name}/members", "member")

    async def remove_member(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        await self.tenancy.remove_member(record.owner, record.name, request.match_info["user"])
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/r/{record.owner}/{record.name}/members", "member-removed")

    async def tokens_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        return await self._tokens(request, visitor, record)

    async def _tokens(
        self,
        request: web.Request,
        visitor: Visitor,
        record: RegistryRecord,
        created: dict[str, str] | None = None,
    ) -> web.Response:
        page = await self.tenancy.tokens_page(
            record.owner, record.name, 100, request.query.get("after") or None
        )
        pulls = await asyncio.gather(*(self.tenancy.pull_count(t.id) for t in page.items))
        now = time.time()
        tokens = [
            {
                "record": token,
                "pulls": count,
                "created": utc(token.created),
                "expires": utc(token.expires),
                "state": "revoked"
                if token.revoked
                else ("active" if token.active(now) else "expired"),
            }
            for token, count in zip(page.items, pulls, strict=True)
        ]
        return self._render(
            request,
            visitor,
            "tokens.html",
            {
                "record": record,
                "tokens": tokens,
                "created": created,
                "after": page.items[-1].id if page.more and page.items else None,
            },
            status=201 if created else 200,
        )

    async def create_token(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        form = await request.post()
        max_pulls_text = _field(form, "max_pulls", limit=16)
        if max_pulls_text and (not max_pulls_text.isdigit() or int(max_pulls_text) < 1):
            raise InvalidRequest("max pulls must be a whole number of at least 1")
        token, secret = await self.tenancy.create_token(
            record.owner,
            record.name,
            name=_field(form, "name"),
            expires_in=_seconds(_field(form, "expires_in", limit=16)),
            max_pulls=int(max_pulls_text) if max_pulls_text else None,
            images=_field(form, "images") or None,
        )
        created = {
            "id": token.id,
            "username": str(record.tenant),
            "secret": secret,
            "login": f"docker login {self._registry_host(request, record.tenant)} "
            f"-u {record.tenant}",
        }
        return await self._tokens(request, visitor, record, created)

    async def revoke_token(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        token_id = request.match_info["id"]
        token = await self.tenancy.get_token(token_id)
        if token is None or token.tenant != record.tenant:
            raise NotFoundRecord(f"token {token_id!r} does not exist")
        await self.tenancy.revoke_token(token_id)
        self.management._guard.forget([token_id])
        raise _redirect(f"{PREFIX}/r/{record.owner}/{record.name}/tokens", "token-revoked")

    # -- settings: upstreams, retention, immutable tags, quota --------------------------------

    async def settings_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._registry(request, visitor)
        tenant = record.tenant
        is_admin = await self._role(visitor.identity, tenant) == "admin"
        settings = self.registry.settings
        retention = await get_retention(settings, tenant) or await get_retention(
            settings, tenant, self.registry.policy.configured_retention
        )
        upstreams = None
        if is_admin and self.management.upstreams is not None:
            upstreams = [upstream_view(u) for u in await self.management.upstreams.list(tenant)]
        usage = await self.management._usage(record.owner, record.name)
        return self._render(
            request,
            visitor,
            "settings.html",
            {
                "record": record,
                "retention": retention,
                "immutable": await get_immutable(settings, tenant),
                "usage": usage,
                "format_size": format_size,
                "upstreams": upstreams,
                "is_admin": is_admin,
            },
        )

    # -- images and manifests -------------------------------------------------------------------

    async def image_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._registry(request, visitor)
        repo = await self._repository(request, record)
        raw_sort = request.query.get("sort", "name")
        sort: SortKey = "date" if raw_sort == "date" else "size" if raw_sort == "size" else "name"
        descending = request.query.get("order", "desc" if sort != "name" else "asc") == "desc"
        rows, page = await tag_page(
            self.listings, repo, sort, descending, request.query.get("page"), TAGS_PER_PAGE
        )
        image = request.match_info["image"]
        return self._render(
            request,
            visitor,
            "image.html",
            {
                "record": record,
                "image": image,
                "rows": rows,
                "page": page,
                "sort": sort,
                "order": "desc" if descending else "asc",
                "ref": self._image_ref(request, record.tenant, image),
            },
        )

    def _digest(self, request: web.Request) -> Digest:
        try:
            return Digest.parse(request.match_info["digest"])
        except (DigestInvalid, ValueError):
            raise NameUnknown("no such manifest") from None

    async def manifest_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._registry(request, visitor)
        repo = await self._repository(request, record)
        digest = self._digest(request)
        view = await manifest_view(repo, str(digest))
        image = request.match_info["image"]
        sections = [
            found
            for found in [await section(repo, view) for section in self.manifest_sections]
            if found is not None
        ]
        return self._render(
            request,
            visitor,
            "manifest.html",
            {
                "record": record,
                "image": image,
                "view": view,
                "ref": self._image_ref(request, record.tenant, image),
                "is_admin": await self._role(visitor.identity, record.tenant) == "admin",
                "sections": sections,
            },
        )

    async def delete_manifest(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        repo = await self._repository(request, record)
        if _field(await request.post(), "confirm") != "yes":
            raise InvalidRequest("tick the box to confirm the deletion")
        await delete_manifest(repo, self._digest(request))
        registry = f"{PREFIX}/r/{record.owner}/{record.name}"
        if await repo.manifests.exists():
            raise _redirect(f"{registry}/images/{quote(request.match_info['image'])}", "deleted")
        raise _redirect(registry, "deleted")

    # -- one's own account: API keys, password --------------------------------------------

    def _user(self, visitor: Visitor) -> str:
        if visitor.anonymous:
            raise NotFoundRecord("log in first")
        return visitor.identity.name

    async def account_page(
        self, request: web.Request, visitor: Visitor, created: dict[str, str] | None = None
    ) -> web.Response:
        name = self._user(visitor)
        page = await self.tenancy.api_keys_page(name, 100, request.query.get("after") or None)
        now = time.time()
        keys = [
            {
                "record": key,
                "created": utc(key.created),
                "expires": utc(key.expires),
                "state": "revoked" if key.revoked else ("active" if key.active(now) else "expired"),
            }
            for key in page.items
        ]
        return self._render(
            request,
            visitor,
            "account.html",
            {
                "keys": keys,
                "created": created,
                "after": page.items[-1].id if page.more and page.items else None,
            },
            status=201 if created else 200,
        )

    async def create_api_key(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        name = self._user(visitor)
        await self.management._visible_user(visitor.identity, name)
        form = await request.post()
        record, secret = await self.tenancy.create_api_key(
            name,
            name=_field(form, "name"),
            expires_in=_seconds(_field(form, "expires_in", limit=16)),
        )
        return await self.account_page(request, visitor, {"id": record.id, "secret": secret})

    async def revoke_api_key(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        name = self._user(visitor)
        key_id = request.match_info["id"]
        record = await self.tenancy.get_api_key(key_id)
        if record is None or record.user != name:
            raise NotFoundRecord(f"API key {key_id!r} does not exist")
        await self.tenancy.revoke_api_key(key_id)
        self.management._guard.forget([key_id])
        raise _redirect(f"{PREFIX}/account", "key-revoked")

    async def change_password(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.sessions is not None
        name = self._user(visitor)
        form = await request.post()
        new = _field(form, "new_password", limit=1024)
        if not new or new != _field(form, "confirm_password", limit=1024):
            raise InvalidRequest("the new password is empty or its two copies differ")
        await self.management._check_current_password(
            request, name, _field(form, "current_password", limit=1024)
        )
        record = await self.tenancy.update_user(name, password=new)
        self.management._guard.authenticator.forget_all()
        # Every older session (this one included) fails its password check from now on;
        # the visitor who changed it goes on in a fresh one.
        cookie, _ = await self.sessions.store.create(record.name, record.password_hash)
        response = _redirect(f"{PREFIX}/account", "password")
        self.sessions.set_session_cookie(request, response, cookie)
        raise response

    # -- superusers: users and owners ----------------------------------------------------------

    async def admin_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        if not visitor.identity.superuser:
            raise NotFoundRecord("no such page")
        users = await self.tenancy.users_page(100, request.query.get("after") or None)
        owners = await self.tenancy.owners_page(100, request.query.get("owners_after") or None)
        return self._render(
            request,
            visitor,
            "admin.html",
            {
                "users": [(u, utc(u.created)) for u in users.items],
                "owners": owners.items,
                "after": users.items[-1].name if users.more and users.items else None,
            },
        )

    async def create_user(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        self.management._superuser(visitor.identity, "creating users")
        form = await request.post()
        password = _field(form, "password", limit=1024)
        if not password:
            raise InvalidRequest("the password must not be empty")
        await self.tenancy.create_user(
            _field(form, "name", limit=64), password, superuser=form.get("superuser") == "yes"
        )
        raise _redirect(f"{PREFIX}/admin", "user")

    async def delete_user(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        self.management._superuser(visitor.identity, "deleting users")
        name = request.match_info["name"]
        await self.management._visible_user(visitor.identity, name)
        await self.management._keep_a_superuser(name, "delete")
        revoked = await self.tenancy.delete_user(name)
        self.management._guard.forget(revoked)
        self.management._guard.authenticator.forget_all()
        raise _redirect(f"{PREFIX}/admin", "user-deleted")

    async def create_owner(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        self.management._superuser(visitor.identity, "creating owners")
        form = await request.post()
        kind = _field(form, "kind") or "org"
        if kind != "user" and kind != "org":
            raise InvalidRequest("kind must be user or org")
        await self.tenancy.create_owner(_field(form, "name", limit=64), kind)
        raise _redirect(f"{PREFIX}/admin", "owner")

    async def delete_owner(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        owner = await self.management._visible_owner(visitor.identity, request.match_info["owner"])
        self.management._superuser(visitor.identity, "deleting owners")
        await self.tenancy.delete_owner(owner.name)
        self.management._access_changed()
        raise _redirect(f"{PREFIX}/admin", "owner-deleted")


def _safe_next(target: str) -> str:
    """Only a path of this website: never another site (no open redirect)."""
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""
