"""The website's pages for accounts: one's own API keys and password; users and owners
for superusers.

The checks are the management API's (``_visible_user``, ``_superuser``,
``_check_current_password``) and the changes its library calls;
a changed password invalidates every older session through the session's password
fingerprint. A new API key's secret is rendered once, on the page that creates it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from registry_core.tenancy import InvalidRequest, NotFoundRecord

from .forms import PREFIX, field, redirect, seconds
from .pages import utc
from .sessions import Visitor

if TYPE_CHECKING:
    from .routes import PageHandler, Website


class AccountPages:
    """One's own account, and the superusers' users and owners."""

    def __init__(self, site: Website) -> None:
        self.site = site

    def routes(self) -> list[tuple[str, str, PageHandler]]:
        return [
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

    def _user(self, visitor: Visitor) -> str:
        if visitor.anonymous:
            raise NotFoundRecord("log in first")
        return visitor.identity.name

    async def account_page(
        self, request: web.Request, visitor: Visitor, created: dict[str, str] | None = None
    ) -> web.Response:
        name = self._user(visitor)
        page = await self.site.tenancy.api_keys_page(name, 100, request.query.get("after") or None)
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
        return self.site._render(
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
        await self.site.management._visible_user(visitor.identity, name)
        form = await request.post()
        record, secret = await self.site.tenancy.create_api_key(
            name,
            name=field(form, "name"),
            expires_in=seconds(field(form, "expires_in", limit=16)),
        )
        return await self.account_page(request, visitor, {"id": record.id, "secret": secret})

    async def revoke_api_key(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        name = self._user(visitor)
        key_id = request.match_info["id"]
        record = await self.site.tenancy.get_api_key(key_id)
        if record is None or record.user != name:
            raise NotFoundRecord(f"API key {key_id!r} does not exist")
        await self.site.tenancy.revoke_api_key(key_id)
        self.site.management._guard.forget([key_id])
        raise redirect(f"{PREFIX}/account", "key-revoked")

    async def change_password(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        assert self.site.sessions is not None
        name = self._user(visitor)
        form = await request.post()
        new = field(form, "new_password", limit=1024)
        if not new or new != field(form, "confirm_password", limit=1024):
            raise InvalidRequest("the new password is empty or its two copies differ")
        await self.site.management._check_current_password(
            request, name, field(form, "current_password", limit=1024)
        )
        record = await self.site.tenancy.update_user(name, password=new)
        self.site.management._guard.authenticator.forget_all()
        # Every older session (this one included) fails its password check from now on;
        # the visitor who changed it goes on in a fresh one.
        cookie, _ = await self.site.sessions.store.create(record.name, record.password_hash)
        response = redirect(f"{PREFIX}/account", "password")
        self.site.sessions.set_session_cookie(request, response, cookie)
        raise response

    # -- superusers: users and owners ----------------------------------------------------------

    async def admin_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        if not visitor.identity.superuser:
            raise NotFoundRecord("no such page")
        users = await self.site.tenancy.users_page(100, request.query.get("after") or None)
        owners = await self.site.tenancy.owners_page(100, request.query.get("owners_after") or None)
        return self.site._render(
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
        self.site.management._superuser(visitor.identity, "creating users")
        form = await request.post()
        password = field(form, "password", limit=1024)
        if not password:
            raise InvalidRequest("the password must not be empty")
        await self.site.tenancy.create_user(
            field(form, "name", limit=64), password, superuser=form.get("superuser") == "yes"
        )
        raise redirect(f"{PREFIX}/admin", "user")

    async def delete_user(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        self.site.management._superuser(visitor.identity, "deleting users")
        name = request.match_info["name"]
        await self.site.management._visible_user(visitor.identity, name)
        revoked = await self.site.tenancy.delete_user(name)
        self.site.management._guard.forget(revoked)
        self.site.management._guard.authenticator.forget_all()
        raise redirect(f"{PREFIX}/admin", "user-deleted")

    async def create_owner(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        self.site.management._superuser(visitor.identity, "creating owners")
        form = await request.post()
        kind = field(form, "kind") or "org"
        if kind != "user" and kind != "org":
            raise InvalidRequest("kind must be user or org")
        await self.site.tenancy.create_owner(field(form, "name", limit=64), kind)
        raise redirect(f"{PREFIX}/admin", "owner")

    async def delete_owner(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        owner = await self.site.management._visible_owner(
            visitor.identity, request.match_info["owner"]
        )
        self.site.management._superuser(visitor.identity, "deleting owners")
        await self.site.tenancy.delete_owner(owner.name)
        self.site.management._access_changed()
        raise redirect(f"{PREFIX}/admin", "owner-deleted")
