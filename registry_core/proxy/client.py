"""The upstream HTTP client interface the pull-through cache talks through.

The library speaks no HTTP itself (DESIGN: it never imports aiohttp), so the
server hands in an implementation of :class:`UpstreamClient`
(``registry_server.upstream_client``); tests may hand in their own. An
implementation must check the network policy on every connection it opens,
after name resolution, and must turn every transport failure into an
:class:`UpstreamFailure` with one of :data:`FAILURE_KINDS`, never a hang past
its timeout. It must never log a request's headers (they carry credentials).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

FAILURE_KINDS = (
    "refused",
    "timeout",
    "status_5xx",
    "rate_limited",
    "corrupt",
    "truncated",
    "tls",
    "forbidden_network",
    "other",
)
"""How an upstream can fail; the metrics' ``kind`` label (``forbidden_network`` counts as
``refused`` there: the connection was refused, by our own policy)."""


class UpstreamFailure(Exception):
    """The upstream could not be asked, or answered with something unusable."""

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        self.kind = kind if kind in FAILURE_KINDS else "other"
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


class UpstreamResponse(Protocol):
    """One answer from an upstream; the body must be read or the response released."""

    status: int
    headers: Mapping[str, str]
    """Case-insensitive."""

    async def read(self, limit: int) -> bytes:
        """The whole body, at most *limit* bytes (UpstreamFailure beyond)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; UpstreamFailure (``truncated``/``timeout``) midway."""
        ...

    async def release(self) -> None: ...


class UpstreamClient(Protocol):
    async def request(
        self, method: str, url: str, headers: Mapping[str, str], *, stream: bool = False
    ) -> UpstreamResponse:
        """Send one request; redirects are followed by the client.

        Raises UpstreamFailure when no answer arrives (refused, timeout, TLS,
        a network the policy forbids). Without ``stream`` the whole exchange,
        body included, must finish within the client's timeout; with it, only
        each wait for more bytes is bounded (large blobs take as long as they take).
        """
        ...

    async def close(self) -> None: ...
