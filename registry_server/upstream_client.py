"""The aiohttp implementation of the library's upstream client, with the network policy.

Every connection's address is checked by a socket factory that aiohttp calls
after DNS resolution, for each address it tries, so the policy holds for every
connection (redirects and token realms included) and a name that later
resolves elsewhere is still checked. Transport failures become
:class:`UpstreamFailure` values with a kind; a refused connection fails at once
(no retry loop). Headers are never logged: they carry upstream credentials.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from yarl import URL

from registry_core.proxy import NetworkPolicy, UpstreamFailure

_FORBIDDEN = "address forbidden by the upstream network policy"
CHUNK = 1 << 20
USER_AGENT = "cargohold-proxy/0.1"


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
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

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
