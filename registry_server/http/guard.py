"""Authentication for the ``/v2/`` API: the challenge, the token endpoint, the checks.

Every ``/v2/`` request passes :meth:`Guard.check`, which identifies the
caller (anonymous, Basic credentials, or a bearer token this server issued)
and decides from the route what it needs (pull, push, delete). Refusals
follow the Docker token specification: missing or bad credentials get 401
with a ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
challenge; a valid bearer token without the scope gets 401 with
``error="insufficient_scope"``; an authenticated identity that cannot hold
the right gets 403 DENIED. A name the caller cannot read gets the same
answer whether or not it exists, so nothing leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Iterable

import attrs
from aiohttp import web

from registry_core.auth import (
    ANONYMOUS,
    AccessClaim,
    Authenticator,
    Claims,
    Identity,
    InvalidToken,
    LoginThrottle,
    Scope,
    TokenSigner,
    parse_basic,
    parse_scopes,
)
from registry_core.bounded import BoundedDict
from registry_core.config import AuthConfig
from registry_core.errors import Denied, NameInvalid, Unauthorized
from registry_core.names import RepositoryName
from registry_core.tenancy import TenancyStore

from ..domains import Domains, NameMapper

ROUTE_NEEDS: dict[tuple[str, str], frozenset[str]] = {
    ("tags", "GET"): frozenset({"pull"}),
    ("manifest", "GET"): frozenset({"pull"}),
    ("manifest", "HEAD"): frozenset({"pull"}),
    ("manifest", "PUT"): frozenset({"push"}),
    ("manifest", "DELETE"): frozenset({"delete"}),
    ("blob", "GET"): frozenset({"pull"}),
    ("blob", "HEAD"): frozenset({"pull"}),
    ("blob", "DELETE"): frozenset({"delete"}),
    ("uploads", "POST"): frozenset({"push"}),
    ("upload", "GET"): frozenset({"push"}),
    ("upload", "PATCH"): frozenset({"push"}),
    ("upload", "PUT"): frozenset({"push"}),
    ("upload", "DELETE"): frozenset({"push"}),
    ("referrers", "GET"): frozenset({"pull"}),
}


API_CHALLENGE = {"WWW-Authenticate": 'Basic realm="cargohold"'}
API_KEY_HEADER = "X-Api-Key"
MAX_REMEMBERED = 10_000
"""Verified Authorization headers, and bearer tokens, remembered per process."""
MAX_CREDENTIALS = 4
"""Credentials one request may present (all of them must name one identity)."""
"""The challenge of the management API (a 401 must carry one)."""


class Access:
    """What the current caller may do; handlers ask it for anything beyond the route."""

    async def allows(self, name: RepositoryName, action: str) -> bool:
        return True

    async def lists(self, name: RepositoryName) -> bool:
        """Whether ``/v2/_catalog`` shows *name* to this caller."""
        return True

    @contextlib.asynccontextmanager
    async def pulling(self) -> AsyncIterator[None]:
        """Wrap a manifest GET: refused past a pull limit, counted when it succeeds."""
        yield


OPEN_ACCESS = Access()


@attrs.define
class CallerAccess(Access):
    guard: Guard
    identity: Identity
    claims: Claims | None
    mapper: NameMapper
    _live: Identity | None = None

    async def allows(self, name: RepositoryName, action: str) -> bool:
        return action in await self.guard.granted(self.identity, self.claims, name, self.mapper)

    async def lists(self, name: RepositoryName) -> bool:
        # A bearer token with the registry:catalog:* scope lists everything its
        # holder may pull (the Docker token flow for /v2/_catalog); otherwise
        # only what the token itself grants.
        if self.claims is not None and any(
            c.type == "registry" and c.name == "catalog" and "*" in c.actions
            for c in self.claims.access
        ):
            if self._live is None:
                self._live = await self.guard.live(self.identity, self.claims)
            return "pull" in await self.guard.authenticator.actions(self._live, name)
        return await self.allows(name, "pull")

    @contextlib.asynccontextmanager
    async def pulling(self) -> AsyncIterator[None]:
        if self.identity.kind != "token":
            yield
            return
        live = await self.guard.live(self.identity, self.claims)
        token = live.token
        if token is None or token.max_pulls is None:
            yield
            return
        # Check and count under one per-process lock: concurrent pulls in this
        # process cannot both pass the last free slot, so the limit is overshot
        # by at most one pull per server process.
        async with self.guard.pull_lock(token.id):
            await self.guard.tenancy.check_pull_allowed(token)
            yield
            await self.guard.tenancy.record_pull(token.id)


class Guard:
    """The auth layer of one server process."""

    def __init__(self, config: AuthConfig, tenancy: TenancyStore, domains: Domains) -> None:
        self.config = config
        self.tenancy = tenancy
        self.domains = domains
        self.authenticator = Authenticator(tenancy, cache_ttl=config.cache_ttl)
        self.signer = TokenSigner(tenancy.driver)
        self.throttle = LoginThrottle(
            config.max_failures, config.failure_window, config.slowdown_after
        )
        # Held only while a pull is counted: a lock nobody holds or waits for goes away.
        self._pull_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Verified headers and bearer tokens, until they expire (a client fetching a new
        # token per pull must not pile them up until the cap).
        self._headers: BoundedDict[str, tuple[float, Identity, int]] = BoundedDict(MAX_REMEMBERED)
        self._tokens: BoundedDict[tuple[str, str], Claims] = BoundedDict(MAX_REMEMBERED)

    # -- identities ---------------------------------------------------------------------

    def _service(self, request: web.BaseRequest) -> str:
        return self.config.service or self.domains.origin(request).host

    def challenge(
        self, request: web.BaseRequest, scope: str | None = None, error: str | None = None
    ) -> dict[str, str]:
        realm = self.config.realm or f"{self.domains.origin(request).base_url}/v2/token"
        value = f'Bearer realm="{realm}",service="{self._service(request)}"'
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        return {"WWW-Authenticate": value}

    async def _basic(self, request: web.BaseRequest, username: str, secret: str) -> Identity:
        keys = [f"user:{username}", f"addr:{self.domains.client_address(request)}"]
        delay = self.throttle.check(keys)
        identity = await self.authenticator.login(username, secret)
        if identity is None:
            self.throttle.failed(keys)
            if delay:
                await asyncio.sleep(delay)
            raise Unauthorized("invalid username or secret", headers=self.challenge(request))
        self.throttle.succeeded([f"user:{username}"])
        return identity

    async def identify(
        self, request: web.BaseRequest, *, api: bool = False
    ) -> tuple[Identity, Claims | None]:
        """The caller behind every credential the request presents (none: anonymous).

        Several credentials (``Authorization`` and ``X-Api-Key``, or repeated
        headers) are accepted only when each one is valid and all name the same
        identity: otherwise which one "wins" would depend on the code path, and an
        invalid one could ride along unchecked. *api*: answer 401s with the
        management API's challenge instead of the token flow's.
        """
        presented = [
            (API_KEY_HEADER, value)
            for value in request.headers.getall(API_KEY_HEADER, [])
            if value.strip()
        ] + [
            ("Authorization", value)
            for value in request.headers.getall("Authorization", [])
            if value.strip()
        ]
        if not presented:
            return ANONYMOUS, None
        if len(presented) > MAX_CREDENTIALS:
            # Each one may cost a password hash: a pile of them is refused unchecked.
            raise Unauthorized(
                f"a request may present at most {MAX_CREDENTIALS} credentials",
                headers=API_CHALLENGE if api else self.challenge(request),
            )
        found = [await self._credential(request, kind, value, api) for kind, value in presented]
        if len({(identity.kind, identity.name) for identity, _ in found}) > 1:
            raise Unauthorized(
                "the request presents credentials of different identities",
                headers=API_CHALLENGE if api else self.challenge(request),
            )
        return found[0]

    async def _credential(
        self, request: web.BaseRequest, kind: str, header: str, api: bool
    ) -> tuple[Identity, Claims | None]:
        if kind == API_KEY_HEADER:
            return await self._api_key(request, header.strip()), None
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "bearer":
            return await self._bearer(request, header[7:].strip())
        # A header seen lately maps straight to its identity (the login cache holds
        # the verdict anyway); the throttle is still asked, so lockouts apply.
        cached = self._headers.get(header)
        if (
            cached is not None
            and cached[0] > time.monotonic()
            and cached[2] == self.authenticator.logins_generation
        ):
            identity = cached[1]
            self.throttle.check(
                [f"user:{identity.name}", f"addr:{self.domains.client_address(request)}"]
            )
            return identity, None
        basic = parse_basic(header)
        if basic is None:
            raise Unauthorized(
                "unsupported Authorization header",
                headers=API_CHALLENGE if api else self.challenge(request),
            )
        generation = self.authenticator.logins_generation
        identity = await self._basic(request, *basic)
        now = time.monotonic()
        self._headers[header] = (now + self.config.cache_ttl, identity, generation)
        self._headers.drop_expired(lambda entry: entry[0] <= now)
        return identity, None

    async def _api_key(self, request: web.BaseRequest, key: str) -> Identity:
        keys = [f"addr:{self.domains.client_address(request)}"]
        delay = self.throttle.check(keys)
        identity = await self.authenticator.api_key_login(key)
        if identity is None:
            self.throttle.failed(keys)
            if delay:
                await asyncio.sleep(delay)
            raise Unauthorized("invalid API key", headers=API_CHALLENGE)
        return identity

    async def _bearer(self, request: web.BaseRequest, token: str) -> tuple[Identity, Claims]:
        audience = self._service(request)
        cached = self._tokens.get((token, audience))
        if cached is not None and cached.exp > time.time():
            claims = cached
        else:
            try:
                claims = await self.signer.verify(token, audience=audience)
            except InvalidToken:
                raise Unauthorized(
                    "invalid or expired token",
                    headers=self.challenge(request, error="invalid_token"),
                ) from None
            # A verified signature stays verified: cache the claims until they expire.
            self._tokens[(token, audience)] = claims
            now = time.time()
            self._tokens.drop_expired(lambda known: known.exp <= now)
        return Identity(claims.kind, claims.sub), claims  # type: ignore[arg-type]

    async def granted(
        self, identity: Identity, claims: Claims | None, name: RepositoryName, mapper: NameMapper
    ) -> frozenset[str]:
        """Actions allowed on *name*: from the token's claims, or computed for Basic/anonymous."""
        if claims is not None:
            visible = mapper.external(name.value)
            actions: set[str] = set()
            for claim in claims.access:
                if claim.type == "repository" and claim.name == visible:
                    actions.update(claim.actions)
            return frozenset(actions)
        return await self.authenticator.actions(identity, name)

    async def live(self, identity: Identity, claims: Claims | None) -> Identity:
        """The full identity behind a bearer token (which carries only names and ids)."""
        if claims is None:
            return identity
        if identity.kind == "user":
            user = await self.tenancy.get_user(identity.name)
            if user is not None:
                return Identity("user", user.name, superuser=user.superuser)
        if identity.kind == "token" and claims.tid:
            token = await self.tenancy.get_token(claims.tid)
            if token is not None:
                return Identity("token", identity.name, token=token)
        return identity

    def pull_lock(self, token_id: str) -> asyncio.Lock:
        lock = self._pull_locks.get(token_id)
        if lock is None:
            lock = self._pull_locks[token_id] = asyncio.Lock()
        return lock

    # -- the /v2/ check ------------------------------------------------------------------

    async def check(
        self, request: web.BaseRequest, kind: str, name: RepositoryName | None, mapper: NameMapper
    ) -> Access:
        identity, claims = await self.identify(request)
        access = CallerAccess(self, identity, claims, mapper)
        if kind == "base":
            if identity.anonymous:
                raise Unauthorized("authentication required", headers=self.challenge(request))
            return access
        needs = ROUTE_NEEDS.get((kind, request.method))
        if needs is None or name is None:
            return access  # catalog (filtered per repository) and routes without a name
        granted = await self.granted(identity, claims, name, mapper)
        if needs <= granted:
            return access
        visible = mapper.external(name.value) or name.value
        scope = f"repository:{visible}:{','.join(sorted(needs))}"
        if claims is not None:  # any valid bearer token, an anonymous one too
            raise Unauthorized(
                "token lacks the scope for this request",
                headers=self.challenge(request, scope, error="insufficient_scope"),
            )
        if identity.anonymous:
            raise Unauthorized(headers=self.challenge(request, scope))
        if identity.kind == "token" and (
            identity.token is None or identity.token.tenant != name.tenant
        ):
            # An entitlement token is a login of its own registry only: elsewhere it
            # counts as invalid credentials (the same answer whether the name exists).
            raise Unauthorized("invalid username or secret", headers=self.challenge(request, scope))
        raise Denied(headers=self.challenge(request, scope))

    # -- the token endpoint -------------------------------------------------------------------

    async def token_endpoint(self, request: web.Request) -> web.Response:
        mapper = self.domains.mapper(request)
        identity = ANONYMOUS
        scopes: list[Scope]
        if request.method == "POST":
            try:
                form = await request.post()
            except ValueError:  # a multipart body without its boundary, and the like
                return web.json_response({"error": "invalid_request"}, status=400)
            grant = str(form.get("grant_type", ""))
            if grant != "password":
                # containerd falls back to GET on 400; refresh tokens are not issued.
                return web.json_response(
                    {"error": "unsupported_grant_type", "error_description": grant[:40]},
                    status=400,
                )
            username, secret = str(form.get("username", "")), str(form.get("password", ""))
            if not username:
                return web.json_response({"error": "invalid_request"}, status=400)
            identity = await self._basic(request, username, secret)
            also, _ = await self.identify(request)
            if not also.anonymous and (also.kind, also.name) != (identity.kind, identity.name):
                raise Unauthorized(
                    "the request presents credentials of different identities",
                    headers=self.challenge(request),
                )
            scopes = parse_scopes([str(v) for v in form.getall("scope", [])])
        else:
            if any(
                value.split(" ", 1)[0].lower() == "bearer"
                for value in request.headers.getall("Authorization", [])
            ):
                # Not a login: renewing with it would widen a narrow token and let it
                # outlive its revoked or expired key, entitlement token or user.
                raise Unauthorized(
                    "the token endpoint takes Basic credentials or none, not a bearer token",
                    headers=self.challenge(request),
                )
            identity = await self.live(*await self.identify(request))
            scopes = parse_scopes(request.query.getall("scope", []))
        access: list[AccessClaim] = []
        for scope in scopes:
            actions = await self._scope_actions(identity, scope, mapper)
            access.append(AccessClaim(scope.type, scope.name, sorted(actions)))
        now = int(time.time())
        claims = Claims(
            iss=TokenSigner.ISSUER,
            sub=identity.name,
            aud=self._service(request),
            exp=now + self.config.token_ttl,
            nbf=now - 5,
            iat=now,
            jti=secrets.token_hex(12),
            access=access,
            kind=identity.kind,
            tid=identity.token.id if identity.token is not None else None,
        )
        token = await self.signer.sign(claims)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.config.token_ttl,
                "issued_at": issued,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _scope_actions(
        self, identity: Identity, scope: Scope, mapper: NameMapper
    ) -> frozenset[str]:
        if scope.type == "registry" and scope.name == "catalog":
            # Listing is always filtered per caller, so the scope itself is harmless.
            return frozenset({"*"}) if scope.actions else frozenset()
        if scope.type != "repository":
            return frozenset()
        try:
            name = RepositoryName.parse(mapper.internal(scope.name))
        except NameInvalid:
            return frozenset()
        return scope.actions & await self.authenticator.actions(identity, name)

    # -- the management API -----------------------------------------------------------------

    async def api_identity(self, request: web.BaseRequest) -> Identity:
        """The caller of an ``/api/v1/`` route: ``X-Api-Key``, Basic, or a user's bearer token."""
        identity, claims = await self.identify(request, api=True)
        if identity.anonymous:
            raise Unauthorized(
                "authentication required: X-Api-Key, Basic credentials or a bearer token",
                headers=API_CHALLENGE,
            )
        return await self.live(identity, claims)

    def forget(self, record_ids: Iterable[str]) -> None:
        for record_id in record_ids:
            self.authenticator.forget(record_id)
