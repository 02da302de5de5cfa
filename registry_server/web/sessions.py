"""Who is visiting the website: the session cookie, its CSRF token, and logging in and out.

Logins go through the registry's own Authenticator (password or API key) and count
towards the same login throttle as Basic logins; sessions live in storage
(:mod:`registry_core.sessions`), so every server process honours a logout or a password
change. Cookies are HttpOnly and SameSite=Lax, and Secure whenever the visitor reached
us over HTTPS (directly or through a trusted proxy). This module never logs a cookie,
a password or a CSRF token, and grants nothing by itself: what a visitor may see or do
is decided by the management API's checks.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from typing import Final

import attrs
from aiohttp import web

from registry_core.auth import ANONYMOUS, API_KEY_PREFIX, Identity
from registry_core.errors import Denied
from registry_core.jobs import LeaseGuard, Scheduler
from registry_core.sessions import (
    PURGE_INTERVAL,
    PURGE_JOB,
    SessionStore,
    csrf_matches,
    csrf_token,
    password_fingerprint,
)
from registry_core.tenancy import TenancyStore

from ..domains import Domains
from ..http.guard import Guard

SESSION_COOKIE: Final = "cargohold_session"
LOGIN_COOKIE: Final = "cargohold_login"
"""Double-submit token of the login form (there is no session to tie it to yet)."""
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf"
SESSION_LIFETIME: Final = 12 * 3600.0
WEB_PREFIX: Final = "/ui"


@attrs.frozen
class Visitor:
    """The visitor of one request: a user with a session, or anonymous."""

    identity: Identity
    cookie: str = ""

    @property
    def anonymous(self) -> bool:
        return self.identity.anonymous

    @property
    def csrf(self) -> str:
        return csrf_token(self.cookie) if self.cookie else ""


ANONYMOUS_VISITOR: Final = Visitor(ANONYMOUS)


class LoginFailed(Exception):
    """Wrong name or secret (the message never says which)."""


class WebSessions:
    """Sessions of the website, shared with the archives API (cookie plus CSRF header)."""

    def __init__(self, guard: Guard, tenancy: TenancyStore, domains: Domains) -> None:
        self.guard = guard
        self.tenancy = tenancy
        self.domains = domains
        self.store = SessionStore(tenancy.driver, SESSION_LIFETIME)

    def secure(self, request: web.BaseRequest) -> bool:
        return self.domains.origin(request).scheme == "https"

    async def visitor(self, request: web.BaseRequest) -> Visitor:
        """The visitor behind the session cookie; anonymous when it is absent or no longer valid."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if not cookie:
            return ANONYMOUS_VISITOR
        record = await self.store.get(cookie)
        if record is None:
            return ANONYMOUS_VISITOR
        user = await self.tenancy.get_user(record.user)
        if user is None or not hmac.compare_digest(
            record.fingerprint, password_fingerprint(user.password_hash)
        ):
            return ANONYMOUS_VISITOR
        if record.api_key is not None:
            key = await self.tenancy.get_api_key(record.api_key)
            if key is None or not key.active(time.time()):
                return ANONYMOUS_VISITOR
        return Visitor(Identity("user", user.name, superuser=user.superuser), cookie)

    def check_csrf(self, visitor: Visitor, presented: str) -> None:
        if visitor.anonymous or not presented or not csrf_matches(visitor.cookie, presented):
            raise Denied("the request lacks this session's CSRF token; reload the page")

    async def api_identity(self, request: web.BaseRequest) -> Identity | None:
        """For the archives API: the session's user when the cookie and CSRF header match.

        None without a session cookie (the API's other logins apply); a cookie without a
        valid CSRF header is refused, so another site cannot upload with a visitor's cookie.
        """
        if not request.cookies.get(SESSION_COOKIE):
            return None
        visitor = await self.visitor(request)
        if visitor.anonymous:
            return None
        self.check_csrf(visitor, request.headers.get(CSRF_HEADER, ""))
        return visitor.identity

    # -- logging in and out ----------------------------------------------------------------

    async def log_in(self, request: web.BaseRequest, username: str, secret: str) -> str:
        """A new session cookie for valid credentials; LoginFailed (and a throttle count) otherwise."""
        guard = self.guard
        keys = [f"user:{username}", f"addr:{self.domains.client_address(request)}"]
        delay = guard.throttle.check(keys)  # raises 429 once locked out
        identity = None
        if username and secret and "/" not in username:  # entitlement tokens only pull
            identity = await guard.authenticator.login(username, secret)
        user = await self.tenancy.get_user(username) if identity is not None else None
        if identity is None or user is None:
            guard.throttle.failed(keys)
            if delay:
                await asyncio.sleep(delay)
            raise LoginFailed("wrong user name or password")
        guard.throttle.succeeded([f"user:{username}"])
        api_key = None
        if secret.startswith(API_KEY_PREFIX + "_"):
            record = await self.tenancy.verify_api_key(secret)
            api_key = record.id if record is not None else None
        cookie, _ = await self.store.create(user.name, user.password_hash, api_key=api_key)
        return cookie

    async def log_out(self, visitor: Visitor) -> None:
        await self.store.end(visitor.cookie)

    def add_purge_job(self, scheduler: Scheduler) -> None:
        """Hourly, on a storage lease: delete the records of sessions that expired unused."""

        async def purge(guard: LeaseGuard) -> None:
            await self.store.purge_expired(guard.check)

        scheduler.add(PURGE_JOB, PURGE_INTERVAL, purge)

    def set_session_cookie(
        self, request: web.BaseRequest, response: web.StreamResponse, cookie: str
    ) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            path="/",
            max_age=int(SESSION_LIFETIME),
            httponly=True,
            samesite="Lax",
            secure=self.secure(request),
        )

    def clear_session_cookie(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.del_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=self.secure(request)
        )

    @staticmethod
    def login_token(request: web.BaseRequest) -> str:
        """The login form's CSRF token: the visitor's login cookie, or a new one."""
        token = request.cookies.get(LOGIN_COOKIE, "")
        return token if 20 <= len(token) <= 64 else secrets.token_urlsafe(24)

    def set_login_cookie(
        self, request: web.BaseRequest, response: web.StreamResponse, token: str
    ) -> None:
        """The login form echoes this cookie's value: another site can read neither."""
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            path=f"{WEB_PREFIX}/",
            httponly=True,
            samesite="Lax",
            secure=self.secure(request),
        )

    @staticmethod
    def check_login_token(request: web.BaseRequest, presented: str) -> None:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not presented or not hmac.compare_digest(expected, presented):
            raise Denied("the login form expired; reload the page and try again")
