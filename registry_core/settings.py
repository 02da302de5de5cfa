"""Per-tenant settings: one small JSON object per (owner or registry, kind) in storage.

Upstreams, retention rules, immutable tag patterns, quotas and policies are
settings an admin changes through the API or the CLI; they live in storage so
that every server process sees them ("Settings reach every process",
DESIGN.md). Each process caches what it read for ``ttl`` seconds (the server
passes ``auth.cache_ttl``); a write made through this store updates the cache
of the writing process at once, other processes see it within ``ttl``.

Each kind is a ``msgspec.Struct`` type chosen by the capability that owns it;
this module never knows what a kind means. It never holds a secret in clear:
callers encrypt secret fields (``registry_core.secrets``) before they put them.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import TypeVar

import msgspec

from .bounded import BoundedDict
from .errors import RegistryError
from .storage import layout
from .storage.driver import PathNotFound, StorageDriver

S = TypeVar("S", bound=msgspec.Struct)
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
MAX_CACHED = 10_000
"""Settings objects cached per process (tenants x kinds); the oldest are read again."""


class SettingsInvalid(RegistryError):
    """A stored settings object no longer decodes as its kind (written by a newer version?)."""

    code, status, default_message = "UNKNOWN", 500, "stored settings do not decode"


class SettingsStore:
    """Read and write settings objects, cached per process for ``ttl`` seconds."""

    def __init__(self, driver: StorageDriver, ttl: float = 10.0) -> None:
        self.driver = driver
        self.ttl = ttl
        self._cache: BoundedDict[str, tuple[float, object | None]] = BoundedDict(MAX_CACHED)

    @staticmethod
    def _path(owner: str, registry: str | None, kind: str) -> str:
        if not _KIND.match(kind):
            raise ValueError(f"bad settings kind {kind!r}")
        return layout.settings_record(owner, registry, kind)

    async def get(self, owner: str, registry: str | None, kind: str, type_: type[S]) -> S | None:
        """The stored settings of *kind*, or None when none were ever set."""
        path = self._path(owner, registry, kind)
        now = time.monotonic()
        hit = self._cache.get(path)
        if hit is not None and hit[0] > now:
            value = hit[1]
            return value if value is None or isinstance(value, type_) else None
        try:
            raw = await self.driver.read(path)
        except PathNotFound:
            value = None
        else:
            try:
                value = msgspec.json.decode(raw, type=type_)
            except msgspec.DecodeError as exc:
                raise SettingsInvalid(f"settings {kind} of {owner}/{registry}: {exc}") from None
        self._cache[path] = (now + self.ttl, value)
        self._cache.drop_expired(lambda hit: hit[0] <= now)
        return value

    async def put(self, owner: str, registry: str | None, kind: str, value: msgspec.Struct) -> None:
        path = self._path(owner, registry, kind)
        await self.driver.write(path, msgspec.json.encode(value))
        self._cache[path] = (time.monotonic() + self.ttl, value)

    async def delete(self, owner: str, registry: str | None, kind: str) -> None:
        path = self._path(owner, registry, kind)
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(path)
        self._cache[path] = (time.monotonic() + self.ttl, None)

    async def delete_all(self, owner: str, registry: str | None) -> None:
        """Remove every settings object of an owner or registry (when it is deleted)."""
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.settings_dir(owner, registry))
        prefix = layout.settings_dir(owner, registry) + "/"
        for path in [p for p in self._cache if p.startswith(prefix)]:
            del self._cache[path]

    def forget(self) -> None:
        """Drop every cached value (tests; an admin command that changed storage directly)."""
        self._cache.clear()
