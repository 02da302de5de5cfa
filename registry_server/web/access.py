"""The website's pages for who may pull a registry: its members and entitlement tokens.

Admins of a registry add, change and remove members and create and revoke tokens; the
checks are the management API's (``Management._registry_admin``) and the changes its
library calls. A new token's secret is rendered once, on the page that creates it, and
never again. Nothing here decides a permission of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from registry_core.tenancy import InvalidRequest, NotFoundRecord, RegistryRecord

from .forms import PREFIX, field, redirect, role_of, seconds
from .pages import utc
from .sessions import Visitor

if TYPE_CHECKING:
    from .routes import PageHandler, Website


class AccessPages:
    """Members and entitlement tokens of a registry."""

    def __init__(self, site: Website) -> None:
        self.site = site

    def routes(self) -> list[tuple[str, str, PageHandler]]:
        registry = f"{PREFIX}/r/{{owner}}/{{registry}}"
        return [
            ("GET", f"{registry}/members", self.members_page),
            ("POST", f"{registry}/members", self.set_member),
            ("POST", f"{registry}/members/{{user}}/remove", self.remove_member),
            ("GET", f"{registry}/tokens", self.tokens_page),
            ("POST", f"{registry}/tokens", self.create_token),
            ("POST", f"{registry}/tokens/{{id}}/revoke", self.revoke_token),
        ]

    async def members_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        page = await self.site.tenancy.members_page(
            record.owner, record.name, 100, request.query.get("after") or None
        )
        return self.site._render(
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
        record = await self.site._admin_registry(request, visitor)
        form = await request.post()
        await self.site.tenancy.add_member(
            record.owner, record.name, field(form, "user", limit=64), role_of(form)
        )
        self.site.management._access_changed()
        raise redirect(f"{PREFIX}/r/{record.owner}/{record.name}/members", "member")

    async def remove_member(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        await self.site.tenancy.remove_member(record.owner, record.name, request.match_info["user"])
        self.site.management._access_changed()
        raise redirect(f"{PREFIX}/r/{record.owner}/{record.name}/members", "member-removed")

    async def tokens_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        return await self._tokens(request, visitor, record)

    async def _tokens(
        self,
        request: web.Request,
        visitor: Visitor,
        record: RegistryRecord,
        created: dict[str, str] | None = None,
    ) -> web.Response:
        page = await self.site.tenancy.tokens_page(
            record.owner, record.name, 100, request.query.get("after") or None
        )
        pulls = await asyncio.gather(*(self.site.tenancy.pull_count(t.id) for t in page.items))
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
        return self.site._render(
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
        record = await self.site._admin_registry(request, visitor)
        form = await request.post()
        max_pulls_text = field(form, "max_pulls", limit=16)
        if max_pulls_text and (not max_pulls_text.isdigit() or int(max_pulls_text) < 1):
            raise InvalidRequest("max pulls must be a whole number of at least 1")
        token, secret = await self.site.tenancy.create_token(
            record.owner,
            record.name,
            name=field(form, "name"),
            expires_in=seconds(field(form, "expires_in", limit=16)),
            max_pulls=int(max_pulls_text) if max_pulls_text else None,
            images=field(form, "images") or None,
        )
        created = {
            "id": token.id,
            "username": str(record.tenant),
            "secret": secret,
            "login": f"docker login {self.site._registry_host(request, record.tenant)} "
            f"-u {record.tenant}",
        }
        return await self._tokens(request, visitor, record, created)

    async def revoke_token(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        token_id = request.match_info["id"]
        token = await self.site.tenancy.get_token(token_id)
        if token is None or token.tenant != record.tenant:
            raise NotFoundRecord(f"token {token_id!r} does not exist")
        await self.site.tenancy.revoke_token(token_id)
        self.site.management._guard.forget([token_id])
        raise redirect(f"{PREFIX}/r/{record.owner}/{record.name}/tokens", "token-revoked")
