"""Who is calling, and what they may do: credentials, scopes, signed tokens.

Three kinds of login, as a hosted registry takes them: ``USER`` + password,
``USER`` + API key, and ``OWNER/REGISTRY`` + entitlement token (pull only).
Verified logins are cached for ``cache_ttl`` seconds, so a password hash is
not recomputed per request; revoking through this process drops the cache
entry at once. Bearer tokens are HS256 JWTs signed with a key kept in
storage (created once with ``write_if_absent``) so every replica verifies
the others' tokens. Nothing here ever logs or returns a secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from typing import Literal

import attrs
import msgspec

from .bounded import BoundedDict
from .errors import NameInvalid, TooManyRequests
from .names import RepositoryName, Tenant
from .storage import layout
from .storage.driver import StorageDriver
from .tenancy import (
    ALL_ACTIONS,
    API_KEY_PREFIX,
    ROLE_ACTIONS,
    TOKEN_PREFIX,
    TenancyStore,
    TokenRecord,
    UserRecord,
    verify_password,
)

Action = Literal["pull", "push", "delete"]
PULL: frozenset[str] = frozenset({"pull"})


@attrs.frozen
class Identity:
    """An authenticated caller (or the anonymous one)."""

    kind: Literal["anonymous", "user", "token"]
    name: str = ""
    superuser: bool = False
    token: TokenRecord | None = None

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Identity("anonymous")
MAX_CACHED_LOGINS = 10_000
"""Verified (or refused) credentials cached per process; the oldest are verified again."""
MAX_CACHED_ACCESS = 50_000
"""Registry records and (user, registry) roles cached per process."""
_SECRET_PREFIXES = frozenset({API_KEY_PREFIX, TOKEN_PREFIX})


@attrs.frozen
class Scope:
    """One ``type:name:actions`` scope of the Docker token spec."""

    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not name:
            return None
        wanted = frozenset(a for a in actions.split(",") if a)
        if "*" in wanted:
            wanted = (wanted - {"*"}) | ALL_ACTIONS
        return cls(kind, name, wanted)

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


def parse_scopes(values: list[str]) -> list[Scope]:
    """Scopes from query/form values (each may hold several, space separated)."""
    scopes: list[Scope] = []
    for value in values:
        for item in value.split():
            scope = Scope.parse(item)
            if scope is not None:
                scopes.append(scope)
    return scopes


# -- JWT (HS256, the subset the Docker token flow needs) ------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AccessClaim(msgspec.Struct):
    type: str
    name: str
    actions: list[str]


class Claims(msgspec.Struct, kw_only=True):
    iss: str
    sub: str
    aud: str
    exp: int
    nbf: int
    iat: int
    jti: str
    access: list[AccessClaim] = []
    kind: str = "user"
    tid: str | None = None
    """The entitlement token id, when the subject is a token (for pull limits)."""


class InvalidToken(Exception):
    """A bearer token that is malformed, forged or expired."""


class TokenSigner:
    """Signs and verifies the registry's bearer tokens with the shared storage key."""

    ISSUER = "cargohold"

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._key: bytes | None = None

    async def key(self) -> bytes:
        if self._key is None:
            await self.driver.write_if_absent(
                layout.signing_key(), secrets.token_bytes(32).hex().encode()
            )
            self._key = bytes.fromhex(
                (await self.driver.read(layout.signing_key())).decode().strip()
            )
        return self._key

    async def sign(self, claims: Claims) -> str:
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        payload = _b64(msgspec.json.encode(claims))
        signing_input = f"{header}.{payload}".encode()
        signature = hmac.new(await self.key(), signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    async def verify(self, token: str, audience: str | None = None) -> Claims:
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(
                await self.key(), f"{header}.{payload}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                raise InvalidToken("bad signature")
            if msgspec.json.decode(_unb64(header)).get("alg") != "HS256":
                raise InvalidToken("unsupported algorithm")
            claims = msgspec.json.decode(_unb64(payload), type=Claims)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidToken("malformed token") from None
        now = time.time()
        if claims.exp <= now or claims.nbf > now + 5 or claims.iss != self.ISSUER:
            raise InvalidToken("token expired or not yet valid")
        if audience is not None and claims.aud != audience:
            raise InvalidToken("token issued for another service")
        return claims


# -- verifying logins ------------------------------------------------------------------------


class LoginThrottle:
    """Slows, then refuses, repeated failed logins per username and per client address."""

    def __init__(self, max_failures: int, window: float, slowdown_after: int) -> None:
        self.max_failures = max_failures
        self.window = window
        self.slowdown_after = slowdown_after
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        entries = self._failures.get(key)
        if entries is None:
            return deque()
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if not entries:
            del self._failures[key]
        return entries

    def check(self, keys: list[str]) -> float:
        """Raise 429 when a key is locked out; otherwise the delay to apply before answering."""
        now = time.monotonic()
        worst = max((len(self._recent(key, now)) for key in keys), default=0)
        if worst >= self.max_failures:
            oldest = min(self._recent(key, now)[0] for key in keys if self._recent(key, now))
            retry = max(1, int(oldest + self.window - now) + 1)
            raise TooManyRequests(
                "too many failed logins; try again later", headers={"Retry-After": str(retry)}
            )
        if worst >= self.slowdown_after:
            return min(0.1 * 2 ** (worst - self.slowdown_after), 2.0)
        return 0.0

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
        if len(self._failures) > 100_000:  # bound memory under a spray of usernames
            self._failures.clear()

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


class Authenticator:
    """Turns credentials into an Identity and answers what an identity may do."""

    def __init__(self, tenancy: TenancyStore, *, cache_ttl: float = 10.0) -> None:
        self.tenancy = tenancy
        self.cache_ttl = cache_ttl
        self._logins: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        # Which cached logins used an API key or token (to forget them when it is revoked).
        # Each login rewrites its id (moving it to the newest end), so with at least as many
        # entries as _logins, no id whose login is still cached is ever dropped.
        self._by_secret_id: BoundedDict[str, set[str]] = BoundedDict(2 * MAX_CACHED_LOGINS)
        self._tenants: BoundedDict[Tenant, tuple[float, object]] = BoundedDict(MAX_CACHED_ACCESS)
        self._roles: BoundedDict[tuple[str, Tenant], tuple[float, str | None]] = BoundedDict(
            MAX_CACHED_ACCESS
        )
        self.logins_generation = 0
        """Bumped whenever cached logins are dropped, so caches built on them can tell."""

    @staticmethod
    def _cache_key(username: str, secret: str) -> str:
        return hashlib.sha256(f"{username}\0{secret}".encode()).hexdigest()

    async def login(self, username: str, secret: str) -> Identity | None:
        """Verify Basic credentials; None when they are wrong, expired or revoked."""
        key = self._cache_key(username, secret)
        now = time.monotonic()
        cached = self._logins.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        identity = await self._verify(username, secret)
        self._logins[key] = (now + self.cache_ttl, identity)
        parts = secret.split("_", 2)
        # Only a login that worked needs forgetting on revocation: wrong secrets sprayed
        # under one id must not grow its set.
        if identity is not None and len(parts) == 3 and parts[0] in _SECRET_PREFIXES:
            keys = self._by_secret_id.pop(parts[1], set())
            keys.add(key)
            self._by_secret_id[parts[1]] = keys
        while len(self._logins) > MAX_CACHED_LOGINS:
            self._logins.popitem(last=False)
        return identity

    def forget(self, record_id: str) -> None:
        """Drop cached logins of a revoked key or token (this process only)."""
        self.logins_generation += 1
        for key in self._by_secret_id.pop(record_id, set()):
            self._logins.pop(key, None)

    def forget_access(self) -> None:
        """Drop cached registry records and roles (after a visibility or membership change)."""
        self._tenants.clear()
        self._roles.clear()

    def forget_all(self) -> None:
        self.logins_generation += 1
        self._logins.clear()
        self._tenants.clear()
        self._roles.clear()

    async def _verify(self, username: str, secret: str) -> Identity | None:
        now = time.time()
        if "/" in username:
            owner, _, registry = username.partition("/")
            token = await self.tenancy.verify_token(secret)
            if token is None or not token.active(now) or token.tenant != Tenant(owner, registry):
                return None
            return Identity("token", username, token=token)
        user = await self.tenancy.get_user(username)
        if user is None:
            # Spend the same time as a real check so timing does not reveal names.
            await asyncio.to_thread(verify_password, secret, _DUMMY_HASH)
            return None
        if secret.startswith(API_KEY_PREFIX + "_"):
            key = await self.tenancy.verify_api_key(secret)
            if key is None or key.user != username or not key.active(now):
                return None
            return _user_identity(user)
        if not await asyncio.to_thread(verify_password, secret, user.password_hash):
            return None
        return _user_identity(user)

    async def registry_record(self, tenant: Tenant) -> object:
        now = time.monotonic()
        cached = self._tenants.get(tenant)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.tenancy.get_registry(tenant.owner, tenant.registry)
        self._tenants[tenant] = (now + self.cache_ttl, record)
        self._tenants.drop_expired(lambda hit: hit[0] <= now)
        return record

    async def _role(self, user: str, tenant: Tenant) -> str | None:
        now = time.monotonic()
        cached = self._roles.get((user, tenant))
        if cached is not None and cached[0] > now:
            return cached[1]
        role = await self.tenancy.role_of(user, tenant)
        self._roles[(user, tenant)] = (now + self.cache_ttl, role)
        self._roles.drop_expired(lambda hit: hit[0] <= now)
        return role

    async def api_key_login(self, secret: str) -> Identity | None:
        """An ``X-Api-Key`` header: the key alone names its user."""
        key_id = None
        parts = secret.split("_", 2)
        if len(parts) == 3 and parts[0] == API_KEY_PREFIX:
            key_id = parts[1]
        if key_id is None:
            return None
        record = await self.tenancy.get_api_key(key_id)
        if record is None:
            return None
        return await self.login(record.user, secret)

    async def actions(self, identity: Identity, name: RepositoryName) -> frozenset[str]:
        """What *identity* may do on repository *name* (empty: nothing, existence hidden)."""
        return await self.tenant_actions(identity, name.tenant, name.image)

    async def role(self, identity: Identity, tenant: Tenant) -> str | None:
        """The management role on a tenant: ``admin`` for superusers, else the member role."""
        if identity.kind != "user":
            return None
        if identity.superuser:
            return "admin"
        return await self._role(identity.name, tenant)

    async def tenant_actions(
        self, identity: Identity, tenant: Tenant, image: str | None = None
    ) -> frozenset[str]:
        """What *identity* may do in registry *tenant* (on *image*, for pattern-limited tokens)."""
        record = await self.registry_record(tenant)
        if record is None:
            return frozenset()
        public = getattr(record, "visibility", "private") == "public"
        granted: frozenset[str] = PULL if public else frozenset()
        if identity.kind == "token":
            token = identity.token
            if (
                token is not None
                and token.tenant == tenant
                and (image is None or token.covers(image))
            ):
                return PULL
            return frozenset()
        if identity.kind == "user":
            if identity.superuser:
                return ALL_ACTIONS
            role = await self._role(identity.name, tenant)
            if role is not None:
                granted |= ROLE_ACTIONS[role]
        return granted

    async def actions_for_scope(self, identity: Identity, scope: Scope) -> frozenset[str]:
        if scope.type != "repository":
            return frozenset()
        try:
            name = RepositoryName.parse(scope.name)
        except NameInvalid:
            return frozenset()
        return scope.actions & await self.actions(identity, name)


_DUMMY_HASH = "scrypt$16384$8$1$00000000000000000000000000000000$" + "00" * 32


def _user_identity(user: UserRecord) -> Identity:
    return Identity("user", user.name, superuser=user.superuser)


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic ...`` -> (username, secret), or None when malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    username, sep, secret = decoded.partition(":")
    if not sep or not username:
        return None
    return username, secret
