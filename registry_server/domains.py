"""Custom domains and the client-visible origin of a request.

A host mapped to ``OWNER`` (or ``OWNER/REGISTRY``) lets its clients say
``REGISTRY/IMAGE`` (or ``IMAGE``); inside, the server always works with the
full name. Everything the client sees (Location, Link, tag lists, the
catalog, challenge scopes, token claims) is mapped back. Forwarded headers
are believed only from configured proxy addresses.
"""

from __future__ import annotations

import ipaddress

import attrs
from aiohttp import web

from registry_core.errors import NameInvalid


@attrs.frozen
class NameMapper:
    """Maps names between a client's view (under a custom domain) and the full name."""

    prefix: str = ""

    def internal(self, name: str) -> str:
        if not self.prefix:
            return name
        if not name:
            raise NameInvalid("repository name is empty")
        return f"{self.prefix}/{name}"

    def external(self, name: str) -> str | None:
        """The client-visible name, or None when *name* lies outside this domain."""
        if not self.prefix:
            return name
        head = self.prefix + "/"
        return name[len(head) :] if name.startswith(head) else None


IDENTITY = NameMapper()


@attrs.frozen
class Origin:
    scheme: str
    host: str

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.index("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Domains:
    """The configured host -> prefix table, and proxy trust."""

    def __init__(self, mapping: dict[str, str], trusted_proxies: list[str]) -> None:
        self._mapping = {host.lower(): prefix.strip("/") for host, prefix in mapping.items()}
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def _trusted_peer(self, request: web.BaseRequest) -> bool:
        if not self._trusted or request.remote is None:
            return False
        try:
            address = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address: behind a trusted proxy, the last hop it reports.

        The right-most ``X-Forwarded-For`` entry is the one the trusted proxy
        added itself; entries left of it came from the client and could be forged.
        """
        if self._trusted_peer(request):
            forwarded = request.headers.get("X-Forwarded-For", "")
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            if hops:
                return hops[-1]
        return request.remote or ""

    def origin(self, request: web.BaseRequest) -> Origin:
        scheme, host = request.scheme, request.host
        if self._trusted_peer(request):
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return Origin(scheme, host)

    def mapper(self, request: web.BaseRequest) -> NameMapper:
        if not self._mapping:
            return IDENTITY
        origin = self.origin(request)
        prefix = self._mapping.get(origin.host.lower()) or self._mapping.get(
            origin.hostname.lower()
        )
        return NameMapper(prefix) if prefix else IDENTITY

    def host_for(self, tenant: str) -> tuple[str, str] | None:
        """The custom domain serving ``OWNER/REGISTRY`` and the prefix it maps to, if any.

        A host mapped to the registry itself wins over one mapped to its owner; among
        equals the first name in sorted order, so every process answers the same.
        """
        owner = tenant.split("/", 1)[0]
        for wanted in (tenant, owner):
            hosts = sorted(host for host, prefix in self._mapping.items() if prefix == wanted)
            if hosts:
                return hosts[0], wanted
        return None
