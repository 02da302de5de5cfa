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

import registry_core
from registry_core import RegistryError
from registry_core.auth import Identity
from registry_core.digest import Digest
from registry_core.errors import Denied, DigestInvalid, NameUnknown, TooManyRequests
from registry_core.names import RepositoryName, Tenant
from registry_core.registry import Repository
from registry_core.scanning import ScanService
from registry_core.signing import Signer
from registry_core.storage.tag_index import SortKey
from registry_core.tenancy import (
    InvalidRequest,
    RegistryRecord,
)

from ..domains import Domains
from ..http.management import Management
from ..state import state_of
from .access import AccessPages
from .accounts import AccountPages
from .assets import SECURITY_HEADERS, Assets
from .forms import (
    DONE_MESSAGES,
    PREFIX,
    field,
    human_size,
    redirect,
    role_of,
    safe_next,
    visibility_of,
)
from .listing import image_listing, registry_stats, tag_counts
from .manifest_sections import ManifestExtras
from .pages import (
    Listings,
    ManifestView,
    delete_manifest,
    manifest_view,
    tag_page,
)
from .policies import PolicyPages
from .security import SecurityPages
from .sessions import CSRF_FIELD, LoginFailed, Visitor, WebSessions
from .severity import SeverityCounts

LOGGER = logging.getLogger("cargohold.web")
IMAGES_PER_PAGE: Final = 50
TAGS_PER_PAGE: Final = 50

PageHandler = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]
ManifestSection = Callable[[Repository, ManifestView], Awaitable[tuple[str, dict[str, Any]] | None]]
"""A capability's part of the manifest page: (template, context) or None."""


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
        self.signer: Signer | None = None
        """Signing (keys, settings), plugged in by the app when it is built."""
        self.scanning: ScanService | None = None
        """Scanning, when it is on for this server (plugged in by the app)."""
        self.severity_counts: SeverityCounts | None = None
        """Counts by severity for tag rows, when scanning is on (plugged in by the app)."""
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
        self.env.filters["size"] = human_size
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
            ("GET", f"{registry}/images/{{image:.+}}", self.image_page),
            ("GET", f"{registry}/manifests/{{digest}}/{{image:.+}}", self.manifest_page),
            ("POST", f"{registry}/manifests/{{digest}}/{{image:.+}}", self.delete_manifest),
        ]
        pages += AccessPages(self).routes() + AccountPages(self).routes()
        pages += PolicyPages(self).routes() + SecurityPages(self).routes()
        pages += ManifestExtras(self).routes()
        for method, path, handler in pages:
            app.router.add_route(method, path, self._endpoint(handler, method))
        app.router.add_get(f"{PREFIX}/static/{{name}}", self.assets.handler)
        app.router.add_get(PREFIX, self._to_home)

    async def _to_home(self, request: web.Request) -> web.StreamResponse:
        raise redirect(f"{PREFIX}/")

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
            started, cpu_started = time.perf_counter(), time.process_time()
            visitor = await self.sessions.visitor(request)
            try:
                if method == "POST" and handler != self.login:
                    form = await request.post()
                    self.sessions.check_csrf(visitor, field(form, CSRF_FIELD))
                response = await handler(request, visitor)
                # The server's own time for the page (what benchmarks/workloads/web.py reads),
                # and the process's CPU time meanwhile (steadier than wall time on a busy host).
                elapsed = 1000 * (time.perf_counter() - started)
                cpu = 1000 * (time.process_time() - cpu_started)
                response.headers["Server-Timing"] = f"page;dur={elapsed:.2f}, cpu;dur={cpu:.2f}"
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
                *(registry_stats(self.registry, r.tenant) for r in page.items)
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
                "next": safe_next(request.query.get("next", "")),
                "public": await self._public_registries(),
            },
            status=status,
        )
        self.sessions.set_login_cookie(request, page, token)
        return page

    async def login_form(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        raise redirect(f"{PREFIX}/")

    async def login(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.sessions is not None
        form = await request.post()
        self.sessions.check_login_token(request, field(form, "login_token"))
        username = field(form, "username", limit=64)
        password = field(form, "password", limit=1024)
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
        response = redirect(safe_next(field(form, "next", limit=512)) or f"{PREFIX}/")
        self.sessions.set_session_cookie(request, response, cookie)
        raise response

    async def logout(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.sessions is not None
        await self.sessions.log_out(visitor)
        response = redirect(f"{PREFIX}/")
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
        await self.tenancy.add_member(
            owner.name, None, field(form, "user", limit=64), role_of(form)
        )
        self.management._access_changed()
        raise redirect(f"{PREFIX}/o/{owner.name}", "member")

    async def remove_owner_member(
        self, request: web.Request, visitor: Visitor
    ) -> web.StreamResponse:
        owner = await self.management._owner_admin(visitor.identity, request.match_info["owner"])
        await self.tenancy.remove_member(owner.name, None, request.match_info["user"])
        self.management._access_changed()
        raise redirect(f"{PREFIX}/o/{owner.name}", "member-removed")

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
            owner, field(form, "name", limit=64), visibility_of(form)
        )
        self.management._access_changed()
        await self.management.registry_created(record.tenant)
        raise redirect(f"{PREFIX}/r/{record.owner}/{record.name}", "registry")

    async def registry_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._registry(request, visitor)
        tenant = record.tenant
        role = await self._role(visitor.identity, tenant)
        actions = await self.management._guard.authenticator.tenant_actions(
            visitor.identity, tenant
        )
        query = request.query.get("q", "").strip()[:128]
        # The repository index: a few small reads whatever the registry's size.
        shown, page, searched = await image_listing(
            self.registry, tenant, query, request.query.get("page"), IMAGES_PER_PAGE
        )
        counts, stats = await asyncio.gather(
            tag_counts(self.registry, tenant, shown), registry_stats(self.registry, tenant)
        )
        rows = [
            {"image": image, "tags": count, "ref": self._image_ref(request, tenant, image)}
            for image, count in zip(shown, counts, strict=True)
        ]
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
                "searched": searched,
                "stats": stats,
                "host": self._registry_host(request, tenant),
            },
        )

    async def change_visibility(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self._admin_registry(request, visitor)
        visibility = visibility_of(await request.post())
        await self.tenancy.update_registry(record.owner, record.name, visibility=visibility)
        self.management._access_changed()
        raise redirect(f"{PREFIX}/r/{record.owner}/{record.name}", "visibility")

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
        vulnerabilities = None
        if self.severity_counts is not None:
            vulnerabilities = await self.severity_counts.many([row.digest for row in rows])
        return self._render(
            request,
            visitor,
            "image.html",
            {
                "record": record,
                "image": image,
                "vulnerabilities": vulnerabilities,
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
        if field(await request.post(), "confirm") != "yes":
            raise InvalidRequest("tick the box to confirm the deletion")
        await delete_manifest(repo, self._digest(request))
        registry = f"{PREFIX}/r/{record.owner}/{record.name}"
        if await repo.manifests.exists():
            raise redirect(f"{registry}/images/{quote(request.match_info['image'])}", "deleted")
        raise redirect(registry, "deleted")
