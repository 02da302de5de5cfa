"""Owners, registries, users, members, API keys and entitlement tokens.

Every record is one small JSON object in storage (paths from the layout
module), so several server processes share them without a database and no
write rewrites a shared document. Creation uses ``write_if_absent``, so two
replicas racing to create the same name agree on one winner. Secrets are
never stored: passwords as scrypt hashes, API keys and entitlement tokens
(high-entropy random strings) as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fnmatch
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, Literal, TypeVar

import attrs
import msgspec

from .errors import Denied, NameInvalid, NameUnknown, RegistryError
from .names import Tenant
from .storage import layout
from .storage.driver import PathNotFound, StorageDriver

Role = Literal["read", "write", "admin"]
Visibility = Literal["private", "public"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"pull"}),
    "write": frozenset({"pull", "push"}),
    "admin": frozenset({"pull", "push", "delete"}),
}
ALL_ACTIONS = ROLE_ACTIONS["admin"]
_SLUG = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_ID = re.compile(r"^[a-z0-9]{12,32}$")

API_KEY_PREFIX = "chk"
TOKEN_PREFIX = "cht"


class Conflict(RegistryError):
    code, status, default_message = "CONFLICT", 409, "already exists"


class LastSuperuser(Conflict):
    """Deleting or demoting the only superuser: nobody could create users or repair tenants."""

    default_message = "the last superuser cannot be removed"


class NotFoundRecord(RegistryError):
    code, status, default_message = "NOT_FOUND", 404, "not found"


class InvalidRequest(RegistryError):
    """A value the caller chose that cannot be used (a client error, never a 500)."""

    code, status, default_message = "INVALID_REQUEST", 400, "invalid request"


class UserRecord(msgspec.Struct, kw_only=True):
    name: str
    password_hash: str
    superuser: bool = False
    created: float = 0.0


class OwnerRecord(msgspec.Struct, kw_only=True):
    name: str
    kind: Literal["user", "org"] = "org"
    created: float = 0.0


class RegistryRecord(msgspec.Struct, kw_only=True):
    owner: str
    name: str
    visibility: Visibility = "private"
    created: float = 0.0

    @property
    def tenant(self) -> Tenant:
        return Tenant(self.owner, self.name)


class MemberRecord(msgspec.Struct, kw_only=True):
    user: str
    owner: str
    registry: str | None = None
    role: Role = "read"


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    id: str
    user: str
    secret_hash: str
    name: str = ""
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False

    def active(self, now: float) -> bool:
        return not self.revoked and (self.expires is None or now < self.expires)


class TokenRecord(msgspec.Struct, kw_only=True):
    """A read-only entitlement token of one registry."""

    id: str
    owner: str
    registry: str
    secret_hash: str
    name: str = ""
    created: float = 0.0
    expires: float | None = None
    max_pulls: int | None = None
    images: str | None = None
    """A glob (``fnmatch``) over the image part of the name, e.g. ``app`` or ``tools/*``."""
    revoked: bool = False

    @property
    def tenant(self) -> Tenant:
        return Tenant(self.owner, self.registry)

    def active(self, now: float) -> bool:
        return not self.revoked and (self.expires is None or now < self.expires)

    def covers(self, image: str) -> bool:
        return self.images is None or fnmatch.fnmatchcase(image, self.images)


R = TypeVar("R", bound=msgspec.Struct)


MAX_SLUG = 64
"""The longest owner, registry or user name (a storage path component on every driver)."""


def is_slug(value: str) -> bool:
    """Whether *value* can name an owner, registry or user: lookups of anything else find
    nothing without asking storage (a 1,000-character name was a path component too long
    for the local file system: a 503, found by ``make fuzz``)."""
    return len(value) <= MAX_SLUG and _SLUG.fullmatch(value) is not None


def check_slug(kind: str, value: str) -> str:
    if not is_slug(value):
        raise NameInvalid(
            f"invalid {kind} name {value[:70]!r}: lowercase letters and digits, separated by "
            "'.', '_', '__' or '-', at most 64 characters"
        )
    return value


# -- secrets ------------------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """A salted scrypt hash, with its parameters, so they can be raised later."""
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${derived.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected) // 2,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived.hex(), expected)


def hash_secret(secret: str) -> str:
    """Digest of a random, high-entropy secret: a slow hash would add nothing."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str]:
    """A fresh ``(id, secret)``; the secret embeds the id so lookups need no scan."""
    record_id = secrets.token_hex(8)
    return record_id, f"{prefix}_{record_id}_{secrets.token_urlsafe(32)}"


def secret_id(secret: str, prefix: str) -> str | None:
    """The record id inside a secret made by :func:`new_secret`, or None."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or not _ID.match(parts[1]):
        return None
    return parts[1]


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``15m``, ``90s`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30d, 12h, 15m, 90s")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[match[2]]
    return float(match[1]) * unit


@attrs.frozen
class Page(Generic[R]):
    """One page of a listing: at most ``n`` records after the cursor, in name order."""

    items: list[R]
    cursor: str | None
    """The last name examined: the next page starts after it (None: nothing examined)."""
    more: bool
    """Whether names follow the cursor (the next page may still be empty)."""


Keep = Callable[[R], Awaitable[bool]]
PAGE_SCAN_FACTOR = 4
"""Records one page request may read, per item asked for (filtered listings)."""


class TenancyStore:
    """CRUD over the tenancy records of one storage backend."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    # -- generic record helpers ------------------------------------------------------

    async def _load(self, path: str, kind: type[R]) -> R | None:
        try:
            return msgspec.json.decode(await self.driver.read(path), type=kind)
        except PathNotFound:
            return None

    async def _create(self, path: str, record: msgspec.Struct, what: str) -> None:
        if not await self.driver.write_if_absent(path, msgspec.json.encode(record)):
            raise Conflict(f"{what} already exists")

    async def _save(self, path: str, record: msgspec.Struct) -> None:
        await self.driver.write(path, msgspec.json.encode(record))

    async def _names(self, directory: str) -> list[str]:
        try:
            return sorted(n for n in await self.driver.list(directory) if not n.startswith("."))
        except PathNotFound:
            return []

    async def _load_all(self, directory: str, kind: type[R]) -> list[R]:
        names = await self._names(directory)
        loaded = await asyncio.gather(*(self._load(f"{directory}/{n}", kind) for n in names))
        return [record for record in loaded if record is not None]

    async def _page(
        self, directory: str, kind: type[R], n: int, last: str | None, keep: Keep[R] | None = None
    ) -> Page[R]:
        """Records of *directory* named after *last*, at most *n* that *keep* accepts.

        Only names are listed in full; records are read in small batches until the
        page is full, and at most ``PAGE_SCAN_FACTOR * n`` (at least 64) are read per
        call: when *keep* rejects most of them the page comes back short, with a cursor
        to go on from, so no one request reads a whole large directory.
        """
        names = await self._names(directory)
        position = bisect.bisect_right(names, last) if last else 0
        budget = position + max(PAGE_SCAN_FACTOR * n, 64)
        found: list[R] = []
        while position < min(len(names), budget) and len(found) < n:
            batch = names[position : min(position + max(n - len(found), 16), budget)]
            loaded = await asyncio.gather(*(self._load(f"{directory}/{x}", kind) for x in batch))
            verdicts = await asyncio.gather(*(_kept(record, keep) for record in loaded))
            for record, kept in zip(loaded, verdicts, strict=True):
                position += 1
                if kept and record is not None:
                    found.append(record)
                    if len(found) == n:
                        break
        cursor = names[position - 1] if position > 0 and position <= len(names) else last
        return Page(found, cursor, position < len(names))

    async def users_page(self, n: int, last: str | None = None) -> Page[UserRecord]:
        return await self._page(layout.users_dir(), UserRecord, n, last)

    async def owners_page(
        self, n: int, last: str | None = None, keep: Keep[OwnerRecord] | None = None
    ) -> Page[OwnerRecord]:
        return await self._page(layout.owners_dir(), OwnerRecord, n, last, keep)

    async def registries_page(
        self, owner: str, n: int, last: str | None = None, keep: Keep[RegistryRecord] | None = None
    ) -> Page[RegistryRecord]:
        return await self._page(layout.registries_dir(owner), RegistryRecord, n, last, keep)

    async def members_page(
        self, owner: str, registry: str | None, n: int, last: str | None = None
    ) -> Page[MemberRecord]:
        return await self._page(layout.members_dir(owner, registry), MemberRecord, n, last)

    async def api_keys_page(self, user: str, n: int, last: str | None = None) -> Page[ApiKeyRecord]:
        """A user's keys, by id (keys live in one folder: others' are read and skipped)."""

        async def mine(record: ApiKeyRecord) -> bool:
            return record.user == user

        return await self._page(layout.api_keys_dir(), ApiKeyRecord, n, last, mine)

    async def tokens_page(
        self, owner: str, registry: str, n: int, last: str | None = None
    ) -> Page[TokenRecord]:
        """A registry's tokens, by id (tokens live in one folder: others' are read and skipped)."""

        async def ours(record: TokenRecord) -> bool:
            return record.owner == owner and record.registry == registry

        return await self._page(layout.tokens_dir(), TokenRecord, n, last, ours)

    # -- users -----------------------------------------------------------------------

    async def create_user(self, name: str, password: str, *, superuser: bool = False) -> UserRecord:
        check_slug("user", name)
        if not password:
            raise InvalidRequest("a password is required")
        record = UserRecord(
            name=name,
            password_hash=await asyncio.to_thread(hash_password, password),
            superuser=superuser,
            created=time.time(),
        )
        await self._create(layout.user_record(name), record, f"user {name!r}")
        return record

    async def create_first_user(self, name: str, password: str) -> bool:
        """Create the bootstrap superuser unless any user exists; True if this call did."""
        if await self._names(layout.users_dir()):
            return False
        record = UserRecord(
            name=name,
            password_hash=await asyncio.to_thread(hash_password, password),
            superuser=True,
            created=time.time(),
        )
        return await self.driver.write_if_absent(
            layout.user_record(name), msgspec.json.encode(record)
        )

    async def get_user(self, name: str) -> UserRecord | None:
        if not is_slug(name):
            return None
        return await self._load(layout.user_record(name), UserRecord)

    async def require_user(self, name: str) -> UserRecord:
        user = await self.get_user(name)
        if user is None:
            raise NotFoundRecord(f"user {name!r} does not exist")
        return user

    async def verify_user_password(self, name: str, password: str) -> bool:
        """Whether *password* is the password of user *name* (API keys do not count)."""
        user = await self.get_user(name)
        if user is None:
            return False
        return await asyncio.to_thread(verify_password, password, user.password_hash)

    async def list_users(self) -> list[UserRecord]:
        return await self._load_all(layout.users_dir(), UserRecord)

    async def update_user(
        self, name: str, *, password: str | None = None, superuser: bool | None = None
    ) -> UserRecord:
        """Change a password or the superuser flag; LastSuperuser for the only superuser."""
        user = await self.require_user(name)
        if password == "":
            raise InvalidRequest("a password is required")
        if superuser is False:
            await self.keep_a_superuser(name, "demote")
        if password is not None:
            user.password_hash = await asyncio.to_thread(hash_password, password)
        if superuser is not None:
            user.superuser = superuser
        await self._save(layout.user_record(name), user)
        return user

    async def keep_a_superuser(self, name: str, action: str) -> None:
        """Raise LastSuperuser when *name* is the only superuser (every caller: API, CLI).

        Without one, nobody could create users or repair tenants through the API. Storage
        has no transactions, so two concurrent demotions of the last two superusers can
        still both pass; ``cargohold users create --superuser`` can always make a new one.
        """
        record = await self.get_user(name)
        if record is None or not record.superuser:
            return
        if not any(user.superuser and user.name != name for user in await self.list_users()):
            raise LastSuperuser(f"cannot {action} {name!r}: it is the last superuser")

    async def delete_user(self, name: str) -> list[str]:
        """Delete *name*, revoke its API keys and drop its memberships; the revoked key ids.

        LastSuperuser (nothing changed) when *name* is the only superuser.
        """
        await self.require_user(name)
        await self.keep_a_superuser(name, "delete")
        revoked = []
        for key in await self.list_api_keys(name):
            if not key.revoked:
                await self.revoke_api_key(key.id)
                revoked.append(key.id)
        # A user created later under the same name must not inherit these roles.
        for owner in await self.list_owners():
            targets: list[str | None] = [None]
            targets += [r.name for r in await self.list_registries(owner.name)]
            for registry in targets:
                with contextlib.suppress(PathNotFound):
                    await self.driver.delete(layout.member_record(owner.name, registry, name))
        await self.driver.delete(layout.user_record(name))
        return revoked

    # -- owners and registries -------------------------------------------------------------

    async def create_owner(self, name: str, kind: Literal["user", "org"] = "org") -> OwnerRecord:
        check_slug("owner", name)
        record = OwnerRecord(name=name, kind=kind, created=time.time())
        await self._create(layout.owner_record(name), record, f"owner {name!r}")
        return record

    async def get_owner(self, name: str) -> OwnerRecord | None:
        if not is_slug(name):
            return None
        return await self._load(layout.owner_record(name), OwnerRecord)

    async def require_owner(self, name: str) -> OwnerRecord:
        owner = await self.get_owner(name)
        if owner is None:
            raise NotFoundRecord(f"owner {name!r} does not exist")
        return owner

    async def list_owners(self) -> list[OwnerRecord]:
        return await self._load_all(layout.owners_dir(), OwnerRecord)

    async def delete_owner(self, name: str) -> None:
        await self.require_owner(name)
        if await self._names(layout.registries_dir(name)):
            raise Conflict(f"owner {name!r} still holds registries; delete them first")
        await self.driver.delete(layout.owner_record(name))
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.members_dir(name, None))

    async def create_registry(
        self, owner: str, name: str, visibility: Visibility = "private"
    ) -> RegistryRecord:
        check_slug("registry", name)
        await self.require_owner(owner)
        record = RegistryRecord(owner=owner, name=name, visibility=visibility, created=time.time())
        await self._create(layout.registry_record(owner, name), record, f"registry {owner}/{name}")
        return record

    async def get_registry(self, owner: str, name: str) -> RegistryRecord | None:
        if not (is_slug(owner) and is_slug(name)):
            return None
        return await self._load(layout.registry_record(owner, name), RegistryRecord)

    async def require_registry(self, owner: str, name: str) -> RegistryRecord:
        record = await self.get_registry(owner, name)
        if record is None:
            raise NameUnknown(f"registry {owner}/{name} does not exist")
        return record

    async def list_registries(self, owner: str | None = None) -> list[RegistryRecord]:
        owners = [owner] if owner is not None else [o.name for o in await self.list_owners()]
        found: list[RegistryRecord] = []
        for name in owners:
            found.extend(await self._load_all(layout.registries_dir(name), RegistryRecord))
        return found

    async def update_registry(
        self, owner: str, name: str, *, visibility: Visibility | None = None
    ) -> RegistryRecord:
        record = await self.require_registry(owner, name)
        if visibility is not None:
            record.visibility = visibility
        await self._save(layout.registry_record(owner, name), record)
        return record

    async def delete_registry(self, owner: str, name: str) -> None:
        """Delete the tenant record, its members and tokens (images stay for GC)."""
        await self.require_registry(owner, name)
        for token in await self.list_tokens(owner, name):
            await self.revoke_token(token.id)
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.members_dir(owner, name))
        await self.driver.delete(layout.registry_record(owner, name))

    # -- members ----------------------------------------------------------------------

    async def add_member(
        self, owner: str, registry: str | None, user: str, role: Role
    ) -> MemberRecord:
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
        await self.require_user(user)
        if registry is None:
            await self.require_owner(owner)
        else:
            await self.require_registry(owner, registry)
        record = MemberRecord(user=user, owner=owner, registry=registry, role=role)
        await self._save(layout.member_record(owner, registry, user), record)
        return record

    async def remove_member(self, owner: str, registry: str | None, user: str) -> None:
        if not all(is_slug(part) for part in (owner, registry or "x", user)):
            raise NotFoundRecord(f"{user!r} is not a member there")
        try:
            await self.driver.delete(layout.member_record(owner, registry, user))
        except PathNotFound:
            raise NotFoundRecord(f"{user!r} is not a member there") from None

    async def get_member(self, owner: str, registry: str | None, user: str) -> MemberRecord | None:
        """The role *user* holds directly on the owner (``registry`` None) or on one registry."""
        if not all(is_slug(part) for part in (owner, registry or "x", user)):
            return None
        return await self._load(layout.member_record(owner, registry, user), MemberRecord)

    async def list_members(self, owner: str, registry: str | None) -> list[MemberRecord]:
        return await self._load_all(layout.members_dir(owner, registry), MemberRecord)

    async def role_of(self, user: str, tenant: Tenant) -> Role | None:
        """The highest role *user* holds on *tenant*, through the owner or the registry."""
        owner_level, registry_level = await asyncio.gather(
            self._load(layout.member_record(tenant.owner, None, user), MemberRecord),
            self._load(layout.member_record(tenant.owner, tenant.registry, user), MemberRecord),
        )
        roles = [m.role for m in (owner_level, registry_level) if m is not None]
        return max(roles, key=ROLES.index) if roles else None

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(
        self, user: str, *, name: str = "", expires_in: float | None = None
    ) -> tuple[ApiKeyRecord, str]:
        """A new key for *user*; the secret is returned once and never stored."""
        await self.require_user(user)
        key_id, secret = new_secret(API_KEY_PREFIX)
        now = time.time()
        record = ApiKeyRecord(
            id=key_id,
            user=user,
            secret_hash=hash_secret(secret),
            name=name,
            created=now,
            expires=None if expires_in is None else now + expires_in,
        )
        await self._create(layout.api_key_record(key_id), record, "API key")
        return record, secret

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        if not _ID.match(key_id):
            return None
        return await self._load(layout.api_key_record(key_id), ApiKeyRecord)

    async def list_api_keys(self, user: str | None = None) -> list[ApiKeyRecord]:
        keys = await self._load_all(layout.api_keys_dir(), ApiKeyRecord)
        return [k for k in keys if user is None or k.user == user]

    async def revoke_api_key(self, key_id: str) -> ApiKeyRecord:
        record = await self.get_api_key(key_id)
        if record is None:
            raise NotFoundRecord(f"API key {key_id!r} does not exist")
        record.revoked = True
        await self._save(layout.api_key_record(key_id), record)
        return record

    async def verify_api_key(self, secret: str) -> ApiKeyRecord | None:
        key_id = secret_id(secret, API_KEY_PREFIX)
        if key_id is None:
            return None
        record = await self.get_api_key(key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
            return None
        return record

    # -- entitlement tokens -------------------------------------------------------------------

    async def create_token(
        self,
        owner: str,
        registry: str,
        *,
        name: str = "",
        expires_in: float | None = None,
        max_pulls: int | None = None,
        images: str | None = None,
    ) -> tuple[TokenRecord, str]:
        await self.require_registry(owner, registry)
        if max_pulls is not None and max_pulls < 1:
            raise InvalidRequest("max_pulls must be at least 1")
        token_id, secret = new_secret(TOKEN_PREFIX)
        now = time.time()
        record = TokenRecord(
            id=token_id,
            owner=owner,
            registry=registry,
            secret_hash=hash_secret(secret),
            name=name,
            created=now,
            expires=None if expires_in is None else now + expires_in,
            max_pulls=max_pulls,
            images=images,
        )
        await self._create(layout.token_record(token_id), record, "token")
        return record, secret

    async def get_token(self, token_id: str) -> TokenRecord | None:
        if not _ID.match(token_id):
            return None
        return await self._load(layout.token_record(token_id), TokenRecord)

    async def list_tokens(self, owner: str, registry: str) -> list[TokenRecord]:
        tokens = await self._load_all(layout.tokens_dir(), TokenRecord)
        return [t for t in tokens if t.owner == owner and t.registry == registry]

    async def revoke_token(self, token_id: str) -> TokenRecord:
        record = await self.get_token(token_id)
        if record is None:
            raise NotFoundRecord(f"token {token_id!r} does not exist")
        record.revoked = True
        await self._save(layout.token_record(token_id), record)
        return record

    async def verify_token(self, secret: str) -> TokenRecord | None:
        token_id = secret_id(secret, TOKEN_PREFIX)
        if token_id is None:
            return None
        record = await self.get_token(token_id)
        if record is None or not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
            return None
        return record

    async def pull_count(self, token_id: str) -> int:
        return len(await self._names(layout.token_pulls_dir(token_id)))

    async def record_pull(self, token_id: str) -> None:
        """One small object per pull: counting needs no shared counter to rewrite."""
        await self.driver.write(layout.token_pull(token_id, uuid.uuid4().hex), b"")

    async def check_pull_allowed(self, token: TokenRecord) -> None:
        if token.max_pulls is not None and await self.pull_count(token.id) >= token.max_pulls:
            raise Denied("pull limit reached")


async def _kept(record: R | None, keep: Keep[R] | None) -> bool:
    if record is None:
        return False
    return True if keep is None else await keep(record)
