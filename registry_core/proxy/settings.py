"""A registry's upstreams: what they are, how they are checked, and where they are stored.

One settings object of kind ``upstreams`` per ``OWNER/REGISTRY`` in the shared
:class:`~registry_core.settings.SettingsStore`, so the API, the command line and
the TOML file change the same thing and every process sees a change within
``auth.cache_ttl``. The password is sealed with the key-encryption key before it
is stored (``registry_core.secrets``); :class:`UpstreamView` (what the API and the
CLI show) has no field that could carry it. Nothing here touches the network:
adding an upstream never probes it (the network policy applies per connection).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from ..errors import RegistryError
from ..names import Tenant
from ..secrets import KeyMismatch, SecretBox, SecretsError, check_canary
from ..settings import SettingsStore
from ..tenancy import Conflict, InvalidRequest, NotFoundRecord, check_slug, parse_duration

KIND = "upstreams"
DEFAULT_PRIORITY = 100
DEFAULT_TAG_TTL = 600.0
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API = "registry-1.docker.io"


class SecretsKeyMismatch(RegistryError):
    """This server's secrets key is not the storage's: an operator must fix the configuration."""

    code, status, default_message = "UNAVAILABLE", 503, "secrets key mismatch"


_NAME_PATTERN = r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?!\n)$"
_URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/?(?!\n)$"
_DURATION_PATTERN = r"^[0-9]{1,6}(?:\.[0-9]{1,6})?[smhdw]?(?!\n)$"
_PREFIX_PATTERN = r"^/?[A-Za-z0-9._-]*[A-Za-z0-9](?:/[A-Za-z0-9._-]*[A-Za-z0-9])*/?(?!\n)$"


class UpstreamSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An upstream as the API, the CLI and the TOML file give it (password in clear).

    The JSON-schema annotations document what :func:`build_upstream` enforces (so the
    OpenAPI document is true); the checks themselves stay there, with their messages.
    """

    name: Annotated[
        str,
        msgspec.Meta(extra_json_schema={"pattern": _NAME_PATTERN, "minLength": 1, "maxLength": 64}),
    ]
    url: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": _URL_PATTERN})]
    priority: Annotated[
        int, msgspec.Meta(extra_json_schema={"minimum": -1_000_000, "maximum": 1_000_000})
    ] = DEFAULT_PRIORITY
    username: (
        Annotated[str, msgspec.Meta(extra_json_schema={"pattern": r"\S", "maxLength": 256})] | None
    ) = None
    password: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    cache: bool = True
    tag_ttl: (
        Annotated[float, msgspec.Meta(extra_json_schema={"minimum": 0})]
        | Annotated[str, msgspec.Meta(extra_json_schema={"pattern": _DURATION_PATTERN})]
    ) = DEFAULT_TAG_TTL
    images: (
        Annotated[
            str, msgspec.Meta(min_length=1, extra_json_schema={"pattern": r"\S", "maxLength": 256})
        ]
        | None
    ) = None
    prefix: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": _PREFIX_PATTERN})] | None = (
        None
    )
    sign: bool = True
    """Sign manifests cached from this upstream with the registry's keys (when it signs)."""


class Upstream(msgspec.Struct, kw_only=True, frozen=True):
    """An upstream as stored: the password sealed, the URL and TTL normalised."""

    name: str
    url: str
    priority: int = DEFAULT_PRIORITY
    username: str | None = None
    sealed_password: str | None = None
    cache: bool = True
    tag_ttl: float = DEFAULT_TAG_TTL
    images: str | None = None
    prefix: str | None = None
    sign: bool = True

    @property
    def host(self) -> str:
        """``host[:port]`` as named in the URL (lowercase)."""
        return urlsplit(self.url).netloc.lower()

    @property
    def api_base(self) -> str:
        """The URL API requests go to (Docker Hub's aliases mapped to its API host)."""
        parts = urlsplit(self.url)
        host = parts.netloc.lower()
        if host in DOCKER_HUB_HOSTS:
            host = DOCKER_HUB_API
        return f"{parts.scheme}://{host}"

    @property
    def is_docker_hub(self) -> bool:
        return self.host in DOCKER_HUB_HOSTS

    def serves(self, image: str) -> bool:
        return self.images is None or fnmatch.fnmatchcase(image, self.images)

    def remote_name(self, image: str) -> str:
        """The repository name at the upstream for *image* (the part after OWNER/REGISTRY/)."""
        name = f"{self.prefix.strip('/')}/{image}" if self.prefix else image
        if self.is_docker_hub and "/" not in name:
            name = f"library/{name}"
        return name

    def matches_namespace(self, ns: str) -> bool:
        """Whether containerd's ``?ns=HOST`` names this upstream (Docker Hub's aliases are one)."""
        wanted = ns.strip().lower()
        if wanted in DOCKER_HUB_HOSTS:
            return self.is_docker_hub
        return wanted == self.host


class UpstreamView(msgspec.Struct, kw_only=True):
    """An upstream as answers show it: never a secret, only whether one is set."""

    name: str
    url: str
    priority: int
    username: str | None
    has_credentials: bool
    cache: bool
    tag_ttl: float
    images: str | None
    prefix: str | None


class UpstreamList(msgspec.Struct, kw_only=True):
    upstreams: list[Upstream] = msgspec.field(default_factory=list)


def view(upstream: Upstream) -> UpstreamView:
    return UpstreamView(
        name=upstream.name,
        url=upstream.url,
        priority=upstream.priority,
        username=upstream.username,
        has_credentials=upstream.sealed_password is not None,
        cache=upstream.cache,
        tag_ttl=upstream.tag_ttl,
        images=upstream.images,
        prefix=upstream.prefix,
    )


def ordered(upstreams: list[Upstream]) -> list[Upstream]:
    return sorted(upstreams, key=lambda u: (u.priority, u.name))


def _context(tenant: Tenant, name: str) -> str:
    # Bound into the seal: a sealed password copied to another registry does not open.
    return f"upstream:{tenant}:{name}"


def normalise_url(url: str) -> str:
    """``http(s)://host[:port]`` with nothing after it, or InvalidRequest."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidRequest("url must look like https://host[:port]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url must look like https://host[:port] (http or https)")
    if parts.username or parts.password:
        raise InvalidRequest("url must not carry credentials: use username and password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise InvalidRequest("url must be only scheme, host and port, with no path")
    host = parts.hostname.lower()
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _ttl(value: float | str) -> float:
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise InvalidRequest(f"tag_ttl: {exc}") from None
    else:
        seconds = float(value)
    if seconds < 0:
        raise InvalidRequest("tag_ttl must not be negative")
    return seconds


def build_upstream(tenant: Tenant, spec: UpstreamSpec, box: SecretBox | None) -> Upstream:
    """Check *spec* and seal its password; InvalidRequest names what is wrong."""
    try:
        check_slug("upstream", spec.name)
    except RegistryError as exc:
        raise InvalidRequest(exc.message) from None
    if spec.password is not None and box is None:
        raise InvalidRequest("this server has no secrets key, so it cannot store a password")
    if spec.username is not None and not spec.username.strip():
        raise InvalidRequest("username must not be empty")
    if spec.images is not None:
        pattern = spec.images.strip()
        if not pattern or len(pattern) > 256:
            raise InvalidRequest("images must be a glob pattern of at most 256 characters")
    prefix = spec.prefix.strip("/") if spec.prefix else None
    if prefix is not None and not all(
        part and part.replace(".", "").replace("_", "").replace("-", "").isalnum()
        for part in prefix.split("/")
    ):
        raise InvalidRequest("prefix must be repository path components, e.g. 'library'")
    if not -1_000_000 <= spec.priority <= 1_000_000:
        raise InvalidRequest("priority must be between -1000000 and 1000000")
    sealed = (
        box.seal(spec.password, _context(tenant, spec.name))
        if spec.password is not None and box is not None
        else None
    )
    return Upstream(
        name=spec.name,
        url=normalise_url(spec.url),
        priority=spec.priority,
        username=spec.username,
        sealed_password=sealed,
        cache=spec.cache,
        tag_ttl=_ttl(spec.tag_ttl),
        images=spec.images.strip() if spec.images else None,
        prefix=prefix,
        sign=spec.sign,
    )


class UpstreamStore:
    """The upstreams of every registry, over the shared settings store.

    Changes are a read-modify-write of one small object per registry: two admins
    adding upstreams to the same registry in the same instant may lose one
    (they see it missing in the list and add it again), which is acceptable for
    an admin setting and needs no lock.
    """

    def __init__(self, settings: SettingsStore, box: SecretBox | None) -> None:
        self.settings = settings
        self.box = box

    async def list(self, tenant: Tenant) -> list[Upstream]:
        stored = await self.settings.get(tenant.owner, tenant.registry, KIND, UpstreamList)
        return ordered(stored.upstreams) if stored is not None else []

    async def get(self, tenant: Tenant, name: str) -> Upstream:
        for upstream in await self.list(tenant):
            if upstream.name == name:
                return upstream
        raise NotFoundRecord(f"upstream {name!r} does not exist")

    async def _fresh(self, tenant: Tenant) -> list[Upstream]:
        # Changes start from what storage holds now, not from a cached copy.
        self.settings.forget()
        return await self.list(tenant)

    async def add(self, tenant: Tenant, spec: UpstreamSpec) -> Upstream:
        upstream = build_upstream(tenant, spec, self.box)
        current = await self._fresh(tenant)
        if any(u.name == upstream.name for u in current):
            raise Conflict(f"upstream {upstream.name!r} already exists")
        await self._put(tenant, [*current, upstream])
        return upstream

    async def replace(self, tenant: Tenant, specs: list[UpstreamSpec]) -> list[Upstream]:
        """Make *specs* the registry's upstreams (registries made by configuration)."""
        upstreams = [build_upstream(tenant, spec, self.box) for spec in specs]
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"upstream names of {tenant} must be unique")
        await self._put(tenant, upstreams)
        return ordered(upstreams)

    async def remove(self, tenant: Tenant, name: str) -> None:
        current = await self._fresh(tenant)
        remaining = [u for u in current if u.name != name]
        if len(remaining) == len(current):
            raise NotFoundRecord(f"upstream {name!r} does not exist")
        await self._put(tenant, remaining)

    async def clear(self, tenant: Tenant) -> None:
        """Forget every upstream of a registry (it is being deleted)."""
        await self.settings.delete(tenant.owner, tenant.registry, KIND)

    async def _put(self, tenant: Tenant, upstreams: list[Upstream]) -> None:
        if self.box is not None and any(u.sealed_password for u in upstreams):
            # The first sealed secret binds the storage to this key (DESIGN, "Secrets at rest").
            try:
                await check_canary(self.settings.driver, self.box, create=True)
            except KeyMismatch as exc:
                raise SecretsKeyMismatch(str(exc)) from None
        value = UpstreamList(upstreams=ordered(upstreams))
        if upstreams:
            await self.settings.put(tenant.owner, tenant.registry, KIND, value)
        else:
            await self.settings.delete(tenant.owner, tenant.registry, KIND)

    def password(self, tenant: Tenant, upstream: Upstream) -> str | None:
        """The upstream's password in clear, for the token flow only (never shown, never logged)."""
        if upstream.sealed_password is None:
            return None
        if self.box is None:
            raise SecretsError("no secrets key: cannot open the upstream's password")
        return self.box.open(upstream.sealed_password, _context(tenant, upstream.name))
