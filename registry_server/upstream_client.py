"""The aiohttp implementation of the library's upstream client, with the network policy.

Every connection's address is checked by a socket factory that aiohttp calls
after DNS resolution, for each address it tries, so the policy holds for every
connection (redirects and token realms included) and a name that later
resolves elsewhere is still checked. Transport failures become
:class:`UpstreamFailure` values with a kind; a refused connection fails at once
(no retry loop). Headers are never logged: they carry upstream credentials.

Two knobs reach the TLS and name layers: ``[upstreams] ca_file`` (a CA bundle trusted
besides the system's, for a company registry with its own CA) and, for tests only,
:data:`RESOLVE_ENV` (``HOST:PORT=ADDRESS:PORT`` pairs, like curl's ``--resolve``), which
lets a test answer for ``registry-1.docker.io:443`` from 127.0.0.1. Overridden
addresses go through the same network policy as resolved ones.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from registry_core.proxy import NetworkPolicy, UpstreamFailure

_FORBIDDEN = "address forbidden by the upstream network policy"
CHUNK = 1 << 20
USER_AGENT = "cargohold-proxy/0.1"
RESOLVE_ENV = "CARGOHOLD_TEST_UPSTREAM_RESOLVE"
"""Test-only: ``HOST:PORT=ADDRESS:PORT[,...]`` answers name resolution for those
upstream hosts and ports (no DNS asked); the network policy still checks ADDRESS."""


def parse_resolve(text: str) -> dict[tuple[str, int], tuple[str, int]]:
    """``{(host, port): (address, port)}`` from :data:`RESOLVE_ENV`'s syntax; ValueError names
    a bad entry."""
    found: dict[tuple[str, int], tuple[str, int]] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        source, sep, target = entry.strip().partition("=")
        host, _, port = source.rpartition(":")
        address, _, to_port = target.rpartition(":")
        if not sep or not host or not address or not port.isdigit() or not to_port.isdigit():
            raise ValueError(f"{RESOLVE_ENV}: {entry!r} is not HOST:PORT=ADDRESS:PORT")
        found[(host.lower(), int(port))] = (address, int(to_port))
    return found


class OverrideResolver(AbstractResolver):
    """Answers for the overridden ``(host, port)`` pairs, asks the default resolver otherwise."""

    def __init__(self, overrides: Mapping[tuple[str, int], tuple[str, int]]) -> None:
        self.overrides = dict(overrides)
        self._default: AbstractResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = self.overrides.get((host.lower(), port))
        if target is None:
            if self._default is None:
                self._default = DefaultResolver()
            return await self._default.resolve(host, port, family)
        address, to_port = target
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=to_port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
        ]

    async def close(self) -> None:
        if self._default is not None:
            await self._default.close()


def upstream_ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The system's trust plus ``ca_file`` (None: aiohttp's default, the system's alone)."""
    if not ca_file:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=ca_file)
    return context


def _failure(exc: BaseException, url: str) -> UpstreamFailure:
    host = URL(url).host or "?"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return UpstreamFailure("tls", f"TLS with {host} failed")
    if isinstance(exc, aiohttp.ClientConnectorError):
        text = str(exc)
        if _FORBIDDEN in text:
            return UpstreamFailure("forbidden_network", f"{host}: {_FORBIDDEN}")
        if exc.os_error is not None and exc.os_error.errno == errno.ECONNREFUSED:
            return UpstreamFailure("refused", f"{host}: connection refused")
        if "refused" in text.lower():
            return UpstreamFailure("refused", f"{host}: connection refused")
        return UpstreamFailure("other", f"cannot connect to {host}")
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamFailure("timeout", f"{host}: timed out")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return UpstreamFailure("truncated", f"{host}: the body was cut short")
    return UpstreamFailure("other", f"{host}: {type(exc).__name__}")


class _Response:
    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url
        self.status = response.status
        self.headers = response.headers

    async def read(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            async for chunk in self._response.content.iter_chunked(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise UpstreamFailure("other", f"answer over {limit} bytes")
                parts.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, self._url) from None
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, self._url) from None

    async def release(self) -> None:
        self._response.release()


class AiohttpUpstreamClient:
    """One connection pool per server process, opened on first use."""

    def __init__(
        self,
        policy: NetworkPolicy,
        timeout: float = 30.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolve: Mapping[tuple[str, int], tuple[str, int]] | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.resolve = dict(resolve) if resolve is not None else None
        """Test-only name overrides (:data:`RESOLVE_ENV`); None asks DNS."""
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls, policy: NetworkPolicy, timeout: float, ca_file: str | None
    ) -> AiohttpUpstreamClient:
        """The server's client: ``[upstreams]`` settings plus :data:`RESOLVE_ENV` if set."""
        overrides = os.environ.get(RESOLVE_ENV)
        return cls(
            policy,
            timeout,
            ssl_context=upstream_ssl_context(ca_file),
            resolve=parse_resolve(overrides) if overrides else None,
        )

    def _socket(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if not self.policy.allows(address[0]):
            raise OSError(errno.EACCES, f"{_FORBIDDEN}: {address[0]}")
        return socket.socket(family, type_, proto)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                socket_factory=self._socket,
                ssl=self.ssl_context if self.ssl_context is not None else True,
                limit=0,
                limit_per_host=64,
                ttl_dns_cache=10,
                resolver=OverrideResolver(self.resolve) if self.resolve else None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout, sock_read=self.timeout
                ),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                read_bufsize=CHUNK,  # 64 KiB by default: many more, smaller reads
                trust_env=False,
            )
        return self._session

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], *, stream: bool = False
    ) -> _Response:
        session = self._open()
        timeout = aiohttp.ClientTimeout(
            total=None if stream else self.timeout, connect=self.timeout, sock_read=self.timeout
        )
        try:
            response = await session.request(
                method, url, headers=dict(headers), max_redirects=5, timeout=timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, url) from None
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            raise _failure(exc, url) from None
        return _Response(response, url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
