"""The ``/api/v1/`` management API: users, API keys, owners, registries, members,
entitlement tokens, and a read-only view of a registry's content.

Handlers are thin: identify the caller through the Guard (``X-Api-Key``,
Basic with a password or an API key, or a user's bearer token), check the
caller's right on the named thing, call :class:`TenancyStore` or
:class:`registry_core.Registry`, answer JSON. Errors are library ``RegistryError`` values
that the app's middleware renders once as ``{"errors": [...]}``.

Two rules hold on every route. A name the caller cannot see (an owner it has
no role on, a private registry it cannot pull, another user) gets exactly the
answer a name that does not exist gets, 404, so nothing leaks between
tenants; a caller who can see the thing but lacks the right gets 403. A
secret appears in one response only, the one that creates it, and nothing
here logs a request body. Entitlement tokens pull images and nothing else:
here they may only ask who they are.

Served only with auth enabled (``[auth] enabled = true``): without logins
there is nobody to tell apart, so every route then answers 404. The request
and response bodies are the msgspec Structs below; :mod:`.openapi` documents
them from the same types.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web

import registry_core
from registry_core.auth import Identity
from registry_core.digest import Digest
from registry_core.errors import (
    Denied,
    ManifestUnknown,
    NameUnknown,
    NotFound,
    Unauthorized,
)
from registry_core.jsondoc import check_document
from registry_core.lifecycle.quotas import get_quota
from registry_core.manifest import descriptors_of
from registry_core.mediatypes import IMAGE_MANIFESTS, MANIFEST_TYPES
from registry_core.names import RepositoryName, Tenant
from registry_core.proxy import UpstreamSpec, UpstreamStore, UpstreamView
from registry_core.proxy import view as upstream_view
from registry_core.registry import Repository, paginate
from registry_core.storage.manifests import StoredManifest
from registry_core.tenancy import (
    ApiKeyRecord,
    InvalidRequest,
    MemberRecord,
    NotFoundRecord,
    OwnerRecord,
    RegistryRecord,
    Role,
    TenancyStore,
    TokenRecord,
    UserRecord,
    Visibility,
    parse_duration,
)

from ..state import state_of
from .guard import API_CHALLENGE, Guard

API_PREFIX = "/api/v1"

DISABLED_MESSAGE = "the management API is served only with [auth] enabled = true"

T = TypeVar("T")
# Python's "$" also matches before a final newline, ECMAScript's does not: "(?!\n)$" ends
# the string in both, so the OpenAPI document and msgspec's checks here agree exactly.
NAME_PATTERN = r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?!\n)$"
Name = Annotated[
    str,
    msgspec.Meta(extra_json_schema={"pattern": NAME_PATTERN, "minLength": 1, "maxLength": 64}),
]
"""An owner, registry or user name: documented here, checked by ``tenancy.check_slug``
(which answers NAME_INVALID with a message that explains the rule)."""
# No leading zero, so no pattern-valid duration is zero; at most 99999.999999 weeks.
DURATION_PATTERN = r"^[1-9][0-9]{0,4}(?:\.[0-9]{1,6})?[smhdw]?(?!\n)$"
MAX_LIFETIME = 1e11
"""Seconds (about 3000 years): more than any duration the pattern allows, and a time that
``datetime`` can still show (a larger expiry would break every listing that shows it)."""
Seconds = (
    Annotated[float, msgspec.Meta(gt=0, le=MAX_LIFETIME)]
    | Annotated[str, msgspec.Meta(pattern=DURATION_PATTERN)]
)
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
# JSON Schema counts 3.0 as an integer and msgspec's int does not: a whole number is taken
# in either spelling, as a float documented as a multiple of 1. The bound stays far below
# 2**53, where floats would round a too-large or fractional number onto a valid one.
Count = Annotated[float, msgspec.Meta(ge=1, le=2**31 - 1, multiple_of=1)]
State = Literal["active", "expired", "revoked"]


# -- request bodies ------------------------------------------------------------------


class NewUser(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    password: Password
    superuser: bool = False


class UserChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields left out stay as they are. Only a superuser may change ``superuser``."""

    password: Password | None = None
    superuser: bool | None = None
    current_password: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    """Required to change one's own password (not when a superuser resets another user's)."""


class NewApiKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Label = ""
    expires_in: Seconds | None = None
    """Lifetime: seconds, or a duration such as ``30d``, ``12h``, ``15m``."""


class NewOwner(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    kind: Literal["user", "org"] = "org"


class NewRegistry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    visibility: Visibility = "private"


class RegistryChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    visibility: Visibility | None = None


class MemberChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    user: Name
    role: Role


class NewToken(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Label = ""
    expires_in: Seconds | None = None
    """Lifetime: seconds, or a duration such as ``30d``, ``12h``, ``15m``."""
    max_pulls: Count | None = None
    """Manifest GETs allowed in all (past it: 403 DENIED 'pull limit reached')."""
    images: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    """A glob over image names (the part after OWNER/REGISTRY/), e.g. ``app`` or ``tools/*``."""


# -- response bodies -----------------------------------------------------------------


class ErrorItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    detail: Any = None


class ErrorBody(msgspec.Struct, kw_only=True):
    errors: list[ErrorItem]


class WhoAmI(msgspec.Struct, kw_only=True):
    kind: Literal["user", "token"]
    name: str
    """The user name, or ``OWNER/REGISTRY`` for an entitlement token."""
    superuser: bool


class User(msgspec.Struct, kw_only=True):
    name: str
    superuser: bool
    created: datetime


class UserList(msgspec.Struct, kw_only=True):
    users: list[User]


class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    user: str
    name: str
    created: datetime
    expires: datetime | None
    state: State


class CreatedApiKey(ApiKey, kw_only=True):
    secret: str
    """The key itself: shown in this response only, never again."""


class ApiKeyList(msgspec.Struct, kw_only=True):
    api_keys: list[ApiKey]


class Usage(msgspec.Struct, kw_only=True):
    """Stored bytes and images against the quota (``registry_core.lifecycle.quotas``).

    Kept current for registries under a quota; for the others, as measured by the
    last GC run (or ``cargohold quotas recompute``)."""

    used_bytes: int
    """Unique blobs linked into the registry's repositories (an owner: the sum)."""
    used_images: int
    """Tags, attachment tags left out."""
    max_bytes: int | None
    max_images: int | None


class Owner(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    kind: Literal["user", "org"]
    created: datetime
    usage: Usage | None = None
    """Shown when one owner is asked for."""


class OwnerList(msgspec.Struct, kw_only=True):
    owners: list[Owner]


class Registry(msgspec.Struct, kw_only=True, omit_defaults=True):
    owner: str
    name: str
    visibility: Visibility
    created: datetime
    usage: Usage | None = None
    """Shown when one registry is asked for."""


class RegistryList(msgspec.Struct, kw_only=True):
    registries: list[Registry]


class Member(msgspec.Struct, kw_only=True):
    user: str
    owner: str
    registry: str | None
    """None: the role applies to every registry of the owner."""
    role: Role


class MemberList(msgspec.Struct, kw_only=True):
    members: list[Member]


class Token(msgspec.Struct, kw_only=True):
    id: str
    owner: str
    registry: str
    name: str
    created: datetime
    expires: datetime | None
    max_pulls: int | None
    pulls: int
    images: str | None
    state: State


class CreatedToken(Token, kw_only=True):
    username: str
    """The login name to use with the secret: ``OWNER/REGISTRY``."""
    secret: str
    """The token itself: shown in this response only, never again."""


class TokenList(msgspec.Struct, kw_only=True):
    tokens: list[Token]


class RepositorySummary(msgspec.Struct, kw_only=True):
    name: str
    """The full name, ``OWNER/REGISTRY/IMAGE``."""
    image: str
    tags: int


class RepositoryList(msgspec.Struct, kw_only=True):
    repositories: list[RepositorySummary]


class Tag(msgspec.Struct, kw_only=True):
    name: str
    digest: str
    media_type: str
    size: int
    """Bytes of the manifest plus everything it references (config and layers; for an
    index, its manifests and theirs), each distinct blob counted once."""
    vulnerabilities: dict[str, int] | None = None
    """Findings by severity of the tagged manifest (null: not scanned, or scanning off)."""


class TagList(msgspec.Struct, kw_only=True):
    name: str
    tags: list[Tag]


class Manifest(msgspec.Struct, kw_only=True):
    digest: str
    media_type: str
    size: int
    """Bytes of the manifest itself."""
    total_size: int
    """As ``Tag.size``: the manifest and everything it references."""
    tags: list[str]


class ManifestList(msgspec.Struct, kw_only=True):
    name: str
    manifests: list[Manifest]


class UpstreamList(msgspec.Struct, kw_only=True):
    upstreams: list[UpstreamView]
    """Sorted by priority (lower first), then name."""


# -- views of library records ----------------------------------------------------------


def _when(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def _maybe_when(moment: float | None) -> datetime | None:
    return None if moment is None else _when(moment)


def _state(record: ApiKeyRecord | TokenRecord, now: float) -> State:
    if record.revoked:
        return "revoked"
    return "active" if record.active(now) else "expired"


def _user(record: UserRecord) -> User:
    return User(name=record.name, superuser=record.superuser, created=_when(record.created))


def _api_key(record: ApiKeyRecord, now: float) -> ApiKey:
    return ApiKey(
        id=record.id,
        user=record.user,
        name=record.name,
        created=_when(record.created),
        expires=_maybe_when(record.expires),
        state=_state(record, now),
    )


def _owner(record: OwnerRecord) -> Owner:
    return Owner(name=record.name, kind=record.kind, created=_when(record.created))


def _registry(record: RegistryRecord) -> Registry:
    return Registry(
        owner=record.owner,
        name=record.name,
        visibility=record.visibility,
        created=_when(record.created),
    )


def _member(record: MemberRecord) -> Member:
    return Member(user=record.user, owner=record.owner, registry=record.registry, role=record.role)


def _token(record: TokenRecord, pulls: int, now: float) -> Token:
    return Token(
        id=record.id,
        owner=record.owner,
        registry=record.registry,
        name=record.name,
        created=_when(record.created),
        expires=_maybe_when(record.expires),
        max_pulls=record.max_pulls,
        pulls=pulls,
        images=record.images,
        state=_state(record, now),
    )


# -- request and response helpers ----------------------------------------------------------


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _no_content() -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


async def _body(request: web.Request, kind: type[T]) -> T:
    """The JSON body as *kind*; an empty body counts as ``{}``."""
    raw = await request.read()
    try:
        check_document(raw)
    except ValueError as exc:
        raise InvalidRequest(f"invalid request body: {exc}") from None
    try:
        return msgspec.json.decode(raw if raw.strip() else b"{}", type=kind)
    except msgspec.ValidationError as exc:
        # msgspec names the field and the expected type, never the value sent.
        raise InvalidRequest(f"invalid request body: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("the request body must be a JSON object") from None


def _seconds(value: float | str | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"expires_in: {exc}") from None
    if seconds <= 0:
        raise InvalidRequest("expires_in must be positive")
    return seconds


PAGE_SIZE = 100
"""Items per page of every list when the request names no ``n``."""
MAX_PAGE_SIZE = 1000


def _page_request(request: web.Request) -> tuple[int, str | None]:
    """``n`` and ``last`` of a list request, checked: lists are never answered whole."""
    raw = request.query.get("n")
    n = PAGE_SIZE
    if raw is not None:
        if not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"n must be a whole number from 1 to {MAX_PAGE_SIZE}")
        n = int(raw)
    last = request.query.get("last")
    if last is not None and not 1 <= len(last) <= 256:
        raise InvalidRequest("last must be 1 to 256 characters")
    return n, last


def _paged(
    request: web.Request, body: msgspec.Struct, n: int, last: str | None, more: bool
) -> web.Response:
    """*body* with a ``Link: <...>; rel="next"`` header when more items may follow *last*."""
    response = _json(body)
    if more and last is not None:
        following = request.rel_url.update_query(n=str(n), last=last)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


def _name_page(names: list[str], n: int, last: str | None) -> tuple[list[str], bool]:
    page = paginate(names, n, last)
    return page, bool(page) and page[-1] != names[-1]


async def _total_size(repo: Repository, stored: StoredManifest) -> int:
    """The manifest's bytes plus those of everything it references, each digest once."""
    sizes = {str(stored.digest): stored.size}
    for descriptor in descriptors_of(stored.body):
        sizes.setdefault(descriptor.digest, descriptor.size)
        if descriptor.mediaType not in MANIFEST_TYPES or stored.media_type in IMAGE_MANIFESTS:
            continue
        try:
            child = await repo.manifests.get(descriptor.digest)
        except ManifestUnknown:
            continue  # an index may name platforms that were never pushed here
        for inner in descriptors_of(child.body):
            sizes.setdefault(inner.digest, inner.size)
    return sum(sizes.values())


Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


class Management:
    """The management routes of one server process."""

    def __init__(
        self,
        registry: registry_core.Registry,
        tenancy: TenancyStore,
        guard: Guard | None,
        *,
        upstreams: UpstreamStore | None = None,
    ) -> None:
        self.registry = registry
        self.tenancy = tenancy
        self.guard = guard
        self.upstreams = upstreams
        self.tag_vulnerabilities: Callable[[Digest], Awaitable[dict[str, int] | None]] | None = None
        # Signing makes a new registry's keys as part of its creation (registry_core.signing).
        self.on_registry_created: Callable[[Tenant], Awaitable[object]] | None = None
        """Counts by severity for the tag listing, when scanning is on (scanning_api)."""

    def routes(self) -> list[tuple[str, str, Handler]]:
        users = f"{API_PREFIX}/users/{{name}}"
        owner = f"{API_PREFIX}/owners/{{owner}}"
        registry = f"{API_PREFIX}/registries/{{owner}}/{{registry}}"
        image = f"{registry}/repositories/{{image:.+}}"
        return [
            ("GET", f"{API_PREFIX}/user", self.whoami),
            ("GET", f"{API_PREFIX}/users", self.list_users),
            ("POST", f"{API_PREFIX}/users", self.create_user),
            ("GET", users, self.get_user),
            ("PATCH", users, self.update_user),
            ("DELETE", users, self.delete_user),
            ("GET", f"{users}/api-keys", self.list_api_keys),
            ("POST", f"{users}/api-keys", self.create_api_key),
            ("DELETE", f"{users}/api-keys/{{id}}", self.revoke_api_key),
            ("GET", f"{API_PREFIX}/owners", self.list_owners),
            ("POST", f"{API_PREFIX}/owners", self.create_owner),
            ("GET", owner, self.get_owner),
            ("DELETE", owner, self.delete_owner),
            ("GET", f"{owner}/registries", self.list_registries),
            ("POST", f"{owner}/registries", self.create_registry),
            ("GET", f"{owner}/members", self.list_owner_members),
            ("PUT", f"{owner}/members", self.set_owner_member),
            ("DELETE", f"{owner}/members/{{user}}", self.remove_owner_member),
            ("GET", registry, self.get_registry),
            ("PATCH", registry, self.update_registry),
            ("DELETE", registry, self.delete_registry),
            ("GET", f"{registry}/members", self.list_registry_members),
            ("PUT", f"{registry}/members", self.set_registry_member),
            ("DELETE", f"{registry}/members/{{user}}", self.remove_registry_member),
            ("GET", f"{registry}/tokens", self.list_tokens),
            ("POST", f"{registry}/tokens", self.create_token),
            ("DELETE", f"{registry}/tokens/{{id}}", self.revoke_token),
            ("GET", f"{registry}/repositories", self.list_repositories),
            ("GET", f"{image}/tags", self.list_tags),
            ("GET", f"{image}/manifests", self.list_manifests),
            ("GET", f"{registry}/upstreams", self.list_upstreams),
            ("POST", f"{registry}/upstreams", self.add_upstream),
            ("GET", f"{registry}/upstreams/{{name}}", self.get_upstream),
            ("DELETE", f"{registry}/upstreams/{{name}}", self.remove_upstream),
        ]

    def add_to(self, app: web.Application) -> None:
        for method, path, handler in self.routes():
            app.router.add_route(method, path, self._endpoint(handler))

    def _endpoint(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            state = state_of(request)
            state.route = "management"
            owner, registry = request.match_info.get("owner"), request.match_info.get("registry")
            if owner and registry:
                state.repository = f"{owner}/{registry}"
            if self.guard is None:
                raise NotFound(DISABLED_MESSAGE)
            caller = await self._caller(request, tokens_allowed=handler == self.whoami)
            return await handler(request, caller)

        return endpoint

    @property
    def _guard(self) -> Guard:
        assert self.guard is not None
        return self.guard

    # -- who is calling, and what they may see -------------------------------------------

    async def _caller(self, request: web.Request, *, tokens_allowed: bool) -> Identity:
        identity = await self._guard.api_identity(request)
        if identity.kind == "user":
            # Fresh from storage: a deleted user's bearer token or cached login stops
            # here, and a changed superuser flag counts at once.
            record = await self.tenancy.get_user(identity.name)
            if record is None:
                raise Unauthorized("this user no longer exists", headers=API_CHALLENGE)
            return Identity("user", record.name, superuser=record.superuser)
        if not tokens_allowed:
            raise Denied(
                "entitlement tokens only pull images; the management API needs a user's credentials"
            )
        return identity

    @staticmethod
    def _superuser(caller: Identity, what: str) -> None:
        if not caller.superuser:
            raise Denied(f"{what} needs a superuser")

    async def _visible_user(self, caller: Identity, name: str) -> UserRecord:
        """A user is visible to itself and to superusers; to anyone else it does not exist."""
        if caller.superuser or caller.name == name:
            return await self.tenancy.require_user(name)
        raise NotFoundRecord(f"user {name!r} does not exist")

    async def _member_of_owner(self, user: str, owner: str) -> bool:
        """True when *user* holds a role on *owner* or on any of its registries."""
        if await self.tenancy.get_member(owner, None, user) is not None:
            return True
        registries = await self.tenancy.list_registries(owner)
        roles = await asyncio.gather(
            *(self.tenancy.get_member(owner, r.name, user) for r in registries)
        )
        return any(role is not None for role in roles)

    async def _visible_owner(self, caller: Identity, owner: str) -> OwnerRecord:
        record = await self.tenancy.get_owner(owner)
        if record is not None and (
            caller.superuser or await self._member_of_owner(caller.name, owner)
        ):
            return record
        raise NotFoundRecord(f"owner {owner!r} does not exist")

    async def _owner_admin(self, caller: Identity, owner: str) -> OwnerRecord:
        record = await self._visible_owner(caller, owner)
        if not caller.superuser:
            member = await self.tenancy.get_member(owner, None, caller.name)
            if member is None or member.role != "admin":
                raise Denied(f"this needs the admin role on the owner {owner}")
        return record

    async def _visible_registry(self, request: web.Request, caller: Identity) -> RegistryRecord:
        """The registry named by the path, if the caller may pull from it (else 404)."""
        owner, name = request.match_info["owner"], request.match_info["registry"]
        actions = await self._guard.authenticator.tenant_actions(caller, Tenant(owner, name))
        record = await self.tenancy.get_registry(owner, name) if "pull" in actions else None
        if record is None:
            raise NameUnknown(f"registry {owner}/{name} does not exist")
        return record

    async def _registry_admin(self, request: web.Request, caller: Identity) -> RegistryRecord:
        record = await self._visible_registry(request, caller)
        if await self._guard.authenticator.role(caller, record.tenant) != "admin":
            raise Denied(f"this needs the admin role on {record.tenant}")
        return record

    def _access_changed(self) -> None:
        """This process's cached roles and registry records are stale: drop them."""
        self._guard.authenticator.forget_access()

    # -- users and API keys ---------------------------------------------------------------

    async def whoami(self, request: web.Request, caller: Identity) -> web.Response:
        kind: Literal["user", "token"] = "token" if caller.kind == "token" else "user"
        return _json(WhoAmI(kind=kind, name=caller.name, superuser=caller.superuser))

    async def list_users(self, request: web.Request, caller: Identity) -> web.Response:
        self._superuser(caller, "listing users")
        n, last = _page_request(request)
        page = await self.tenancy.users_page(n, last)
        return _paged(
            request, UserList(users=[_user(u) for u in page.items]), n, page.cursor, page.more
        )

    async def create_user(self, request: web.Request, caller: Identity) -> web.Response:
        self._superuser(caller, "creating users")
        body = await _body(request, NewUser)
        record = await self.tenancy.create_user(body.name, body.password, superuser=body.superuser)
        return _json(_user(record), status=201)

    async def get_user(self, request: web.Request, caller: Identity) -> web.Response:
        return _json(_user(await self._visible_user(caller, request.match_info["name"])))

    async def update_user(self, request: web.Request, caller: Identity) -> web.Response:
        name = request.match_info["name"]
        await self._visible_user(caller, name)
        body = await _body(request, UserChange)
        if body.superuser is not None:
            self._superuser(caller, "changing the superuser flag")
        if body.password is not None and caller.name == name:
            await self._check_current_password(request, name, body.current_password)
        record = await self.tenancy.update_user(
            name, password=body.password, superuser=body.superuser
        )
        # Logins cached with the old password or flag must not outlive the change here.
        self._guard.authenticator.forget_all()
        return _json(_user(record))

    async def _check_current_password(
        self, request: web.Request, name: str, current: str | None
    ) -> None:
        """One's own password changes only with the current one: a stolen API key, bearer
        token or unlocked session must not be enough to take the account over."""
        if current is None:
            raise InvalidRequest("changing your own password needs current_password")
        if not await self.tenancy.verify_user_password(name, current):
            # Counted like a failed login, so guessing through this route gets throttled too.
            guard = self._guard
            guard.throttle.failed([f"user:{name}", f"addr:{guard.domains.client_address(request)}"])
            raise Denied("current_password is not the user's password")

    async def delete_user(self, request: web.Request, caller: Identity) -> web.Response:
        name = request.match_info["name"]
        await self._visible_user(caller, name)
        self._superuser(caller, "deleting users")
        revoked = await self.tenancy.delete_user(name)
        self._guard.forget(revoked)
        self._guard.authenticator.forget_all()
        return _no_content()

    async def list_api_keys(self, request: web.Request, caller: Identity) -> web.Response:
        name = request.match_info["name"]
        await self._visible_user(caller, name)
        n, last = _page_request(request)
        now = time.time()
        page = await self.tenancy.api_keys_page(name, n, last)
        body = ApiKeyList(api_keys=[_api_key(k, now) for k in page.items])
        return _paged(request, body, n, page.cursor, page.more)

    async def create_api_key(self, request: web.Request, caller: Identity) -> web.Response:
        name = request.match_info["name"]
        await self._visible_user(caller, name)
        body = await _body(request, NewApiKey)
        record, secret = await self.tenancy.create_api_key(
            name, name=body.name, expires_in=_seconds(body.expires_in)
        )
        view = _api_key(record, time.time())
        return _json(CreatedApiKey(**msgspec.structs.asdict(view), secret=secret), status=201)

    async def revoke_api_key(self, request: web.Request, caller: Identity) -> web.Response:
        name, key_id = request.match_info["name"], request.match_info["id"]
        await self._visible_user(caller, name)
        record = await self.tenancy.get_api_key(key_id)
        if record is None or record.user != name:
            raise NotFoundRecord(f"API key {key_id!r} does not exist")
        await self.tenancy.revoke_api_key(key_id)
        self._guard.forget([key_id])
        return _no_content()

    # -- owners -----------------------------------------------------------------------------

    async def list_owners(self, request: web.Request, caller: Identity) -> web.Response:
        n, last = _page_request(request)

        async def member(owner: OwnerRecord) -> bool:
            return await self._member_of_owner(caller.name, owner.name)

        page = await self.tenancy.owners_page(n, last, None if caller.superuser else member)
        body = OwnerList(owners=[_owner(o) for o in page.items])
        return _paged(request, body, n, page.cursor, page.more)

    async def create_owner(self, request: web.Request, caller: Identity) -> web.Response:
        self._superuser(caller, "creating owners")
        body = await _body(request, NewOwner)
        return _json(_owner(await self.tenancy.create_owner(body.name, body.kind)), status=201)

    async def get_owner(self, request: web.Request, caller: Identity) -> web.Response:
        view = _owner(await self._visible_owner(caller, request.match_info["owner"]))
        view.usage = await self._usage(view.name, None)
        return _json(view)

    async def _usage(self, owner: str, registry: str | None) -> Usage:
        settings, ledger = self.registry.settings, self.registry.usage
        quota = await get_quota(settings, owner, registry)
        if registry is None:
            used = await ledger.owner_total(owner)
        else:
            used = await ledger.current(Tenant(owner, registry))
        return Usage(
            used_bytes=used.bytes,
            used_images=used.images,
            max_bytes=quota.max_bytes if quota else None,
            max_images=quota.max_images if quota else None,
        )

    async def delete_owner(self, request: web.Request, caller: Identity) -> web.Response:
        owner = request.match_info["owner"]
        await self._visible_owner(caller, owner)
        self._superuser(caller, "deleting owners")
        await self.tenancy.delete_owner(owner)
        self._access_changed()
        return _no_content()

    # -- registries ----------------------------------------------------------------------------

    async def list_registries(self, request: web.Request, caller: Identity) -> web.Response:
        owner = request.match_info["owner"]
        await self._visible_owner(caller, owner)
        n, last = _page_request(request)
        authenticator = self._guard.authenticator

        async def pullable(record: RegistryRecord) -> bool:
            return "pull" in await authenticator.tenant_actions(caller, record.tenant)

        page = await self.tenancy.registries_page(owner, n, last, pullable)
        body = RegistryList(registries=[_registry(r) for r in page.items])
        return _paged(request, body, n, page.cursor, page.more)

    async def create_registry(self, request: web.Request, caller: Identity) -> web.Response:
        owner = request.match_info["owner"]
        await self._owner_admin(caller, owner)
        body = await _body(request, NewRegistry)
        record = await self.tenancy.create_registry(owner, body.name, body.visibility)
        self._access_changed()  # a cached "no such registry" must not linger
        await self.registry_created(record.tenant)
        return _json(_registry(record), status=201)

    async def registry_created(self, tenant: Tenant) -> None:
        """What a new registry gets at once, whichever route made it (its signing keys)."""
        if self.on_registry_created is not None:
            await self.on_registry_created(tenant)

    async def get_registry(self, request: web.Request, caller: Identity) -> web.Response:
        view = _registry(await self._visible_registry(request, caller))
        view.usage = await self._usage(view.owner, view.name)
        return _json(view)

    async def update_registry(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        body = await _body(request, RegistryChange)
        record = await self.tenancy.update_registry(
            record.owner, record.name, visibility=body.visibility
        )
        self._access_changed()
        return _json(_registry(record))

    async def delete_registry(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        tokens = await self.tenancy.list_tokens(record.owner, record.name)
        await self.tenancy.delete_registry(record.owner, record.name)
        if self.upstreams is not None:
            # A registry made again under this name must not inherit its upstreams' logins.
            await self.upstreams.clear(record.tenant)
        self._guard.forget(t.id for t in tokens)
        self._access_changed()
        return _no_content()

    # -- members ----------------------------------------------------------------------------

    async def _members(
        self, request: web.Request, owner: str, registry: str | None
    ) -> web.Response:
        n, last = _page_request(request)
        page = await self.tenancy.members_page(owner, registry, n, last)
        body = MemberList(members=[_member(m) for m in page.items])
        return _paged(request, body, n, page.cursor, page.more)

    async def _set_member(
        self, request: web.Request, owner: str, registry: str | None
    ) -> web.Response:
        body = await _body(request, MemberChange)
        record = await self.tenancy.add_member(owner, registry, body.user, body.role)
        self._access_changed()
        return _json(_member(record))

    async def _remove_member(
        self, request: web.Request, owner: str, registry: str | None
    ) -> web.Response:
        await self.tenancy.remove_member(owner, registry, request.match_info["user"])
        self._access_changed()
        return _no_content()

    async def list_owner_members(self, request: web.Request, caller: Identity) -> web.Response:
        owner = (await self._owner_admin(caller, request.match_info["owner"])).name
        return await self._members(request, owner, None)

    async def set_owner_member(self, request: web.Request, caller: Identity) -> web.Response:
        owner = (await self._owner_admin(caller, request.match_info["owner"])).name
        return await self._set_member(request, owner, None)

    async def remove_owner_member(self, request: web.Request, caller: Identity) -> web.Response:
        owner = (await self._owner_admin(caller, request.match_info["owner"])).name
        return await self._remove_member(request, owner, None)

    async def list_registry_members(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        return await self._members(request, record.owner, record.name)

    async def set_registry_member(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        return await self._set_member(request, record.owner, record.name)

    async def remove_registry_member(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        return await self._remove_member(request, record.owner, record.name)

    # -- entitlement tokens ---------------------------------------------------------------------

    async def list_tokens(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        n, last = _page_request(request)
        page = await self.tenancy.tokens_page(record.owner, record.name, n, last)
        pulls = await asyncio.gather(*(self.tenancy.pull_count(t.id) for t in page.items))
        now = time.time()
        views = [_token(t, count, now) for t, count in zip(page.items, pulls, strict=True)]
        return _paged(request, TokenList(tokens=views), n, page.cursor, page.more)

    async def create_token(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        body = await _body(request, NewToken)
        token, secret = await self.tenancy.create_token(
            record.owner,
            record.name,
            name=body.name,
            expires_in=_seconds(body.expires_in),
            max_pulls=None if body.max_pulls is None else int(body.max_pulls),
            images=body.images,
        )
        view = _token(token, 0, time.time())
        created = CreatedToken(
            **msgspec.structs.asdict(view), username=str(record.tenant), secret=secret
        )
        return _json(created, status=201)

    async def revoke_token(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        token_id = request.match_info["id"]
        token = await self.tenancy.get_token(token_id)
        if token is None or token.tenant != record.tenant:
            raise NotFoundRecord(f"token {token_id!r} does not exist")
        await self.tenancy.revoke_token(token_id)
        self._guard.forget([token_id])
        return _no_content()

    # -- content ---------------------------------------------------------------------------

    async def list_repositories(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._visible_registry(request, caller)
        n, last = _page_request(request)
        # Every name shares the OWNER/REGISTRY/ prefix, so images sort as the names do.
        images = [
            RepositoryName(name).image for name in await self.registry.repositories(record.tenant)
        ]
        page, more = _name_page(images, n, last)
        names = [f"{record.tenant}/{image}" for image in page]
        counts = await asyncio.gather(
            *(self.registry.repository(name).manifests.tags() for name in names)
        )
        summaries = [
            RepositorySummary(name=name, image=image, tags=len(tags))
            for name, image, tags in zip(names, page, counts, strict=True)
        ]
        body = RepositoryList(repositories=summaries)
        return _paged(request, body, n, page[-1] if page else None, more)

    async def _repository(self, request: web.Request, caller: Identity) -> Repository:
        record = await self._visible_registry(request, caller)
        repo = self.registry.repository(f"{record.tenant}/{request.match_info['image']}")
        if not await repo.manifests.exists():
            raise NameUnknown(f"repository {repo.name} does not exist")
        return repo

    async def list_tags(self, request: web.Request, caller: Identity) -> web.Response:
        repo = await self._repository(request, caller)

        async def describe(tag: str) -> Tag | None:
            try:
                stored = await repo.manifests.get(tag)
            except ManifestUnknown:
                return None  # deleted while we listed
            counts = None
            if self.tag_vulnerabilities is not None:
                counts = await self.tag_vulnerabilities(stored.digest)
            return Tag(
                name=tag,
                digest=str(stored.digest),
                media_type=stored.media_type,
                size=await _total_size(repo, stored),
                vulnerabilities=counts,
            )

        n, last = _page_request(request)
        page, more = _name_page(await repo.manifests.tags(), n, last)
        found = await asyncio.gather(*(describe(t) for t in page))
        body = TagList(name=repo.name.value, tags=[t for t in found if t is not None])
        return _paged(request, body, n, page[-1] if page else None, more)

    async def list_manifests(self, request: web.Request, caller: Identity) -> web.Response:
        repo = await self._repository(request, caller)
        tags = await repo.manifests.tags()
        targets = await asyncio.gather(*(_resolve_or_none(repo, t) for t in tags))
        tags_of: dict[str, list[str]] = {}
        for tag, digest in zip(tags, targets, strict=True):
            if digest is not None:
                tags_of.setdefault(digest, []).append(tag)

        async def describe(digest: Digest) -> Manifest | None:
            try:
                stored = await repo.manifests.get(str(digest))
            except ManifestUnknown:
                return None
            return Manifest(
                digest=str(stored.digest),
                media_type=stored.media_type,
                size=stored.size,
                total_size=await _total_size(repo, stored),
                tags=tags_of.get(str(stored.digest), []),
            )

        n, last = _page_request(request)
        digests = sorted(str(d) for d in await repo.manifests.revisions())
        page, more = _name_page(digests, n, last)
        found = await asyncio.gather(*(describe(Digest.parse(d)) for d in page))
        body = ManifestList(name=repo.name.value, manifests=[m for m in found if m is not None])
        return _paged(request, body, n, page[-1] if page else None, more)

    # -- upstreams (pull-through) -------------------------------------------------------------
    # Only a registry's admins see or change its upstreams; no answer carries a password.

    @property
    def _upstreams(self) -> UpstreamStore:
        if self.upstreams is None:
            raise NotFound("upstreams are not served by this server")
        return self.upstreams

    async def list_upstreams(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        found = await self._upstreams.list(record.tenant)
        return _json(UpstreamList(upstreams=[upstream_view(u) for u in found]))

    async def add_upstream(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        body = await _body(request, UpstreamSpec)
        added = await self._upstreams.add(record.tenant, body)
        return _json(upstream_view(added), status=201)

    async def get_upstream(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        found = await self._upstreams.get(record.tenant, request.match_info["name"])
        return _json(upstream_view(found))

    async def remove_upstream(self, request: web.Request, caller: Identity) -> web.Response:
        record = await self._registry_admin(request, caller)
        await self._upstreams.remove(record.tenant, request.match_info["name"])
        return _no_content()


async def _resolve_or_none(repo: Repository, tag: str) -> str | None:
    try:
        return str(await repo.manifests.resolve(tag))
    except ManifestUnknown:
        return None
