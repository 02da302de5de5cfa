"""Connection-level limits of one server process: how many, and how slow, clients may be.

A connection beyond ``limits.max_connections`` gets a 429 and is closed; a request
whose headers have not all arrived ``limits.header_timeout`` seconds after their first
byte gets a 408 and is closed (slow-header clients, "slowloris"); an idle keep-alive
connection is closed after ``limits.keepalive_timeout`` (aiohttp's own timer, counted
here). Each refusal is answered with the JSON error body and counted in ``/metrics``.
Header sizes are aiohttp's parser limits, set from the same section. The counts are
per process, by design: connections belong to the process that accepted them. This
module never looks at a request's content or credentials.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import attrs
import msgspec
from aiohttp import web
from aiohttp.web_request import BaseRequest

from registry_core.config import LimitsConfig

from .http.v2 import API_VERSION_HEADER
from .observability import METRICS_KEY, Metrics
from .runner import AppRunner, JsonErrorRequestHandler, JsonErrorServer
from .state import new_request_id

LOGGER = logging.getLogger("cargohold.server")

_REASONS = {408: "Request Timeout", 429: "Too Many Requests"}


@attrs.frozen
class ConnectionLimits:
    header_timeout: float
    max_connections: int
    metrics: Metrics | None


def runner_options(limits: LimitsConfig) -> dict[str, Any]:
    """The aiohttp request-handler options that enforce ``[limits]``."""
    return {
        "keepalive_timeout": limits.keepalive_timeout,
        "max_line_size": limits.max_header_size,
        "max_field_size": limits.max_header_size,
        "max_headers": limits.max_headers,
    }


def refusal(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with the JSON error body."""
    body = msgspec.json.encode({"errors": [{"code": code, "message": message}]})
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in API_VERSION_HEADER.items())
        + f"X-Request-Id: {new_request_id()}\r\n"
        + ("Retry-After: 1\r\n" if status == 429 else "")
        + "\r\n"
    )
    return head.encode() + body


class LimitedRequestHandler(JsonErrorRequestHandler):
    """One connection, held to the process's connection limits."""

    def __init__(self, manager: LimitedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._header_timer: asyncio.TimerHandle | None = None

    def _count(self, limit: str) -> None:
        if self._limits.metrics is not None:
            self._limits.metrics.limit_refusals.labels(limit).inc()

    def _refuse(self, status: int, code: str, message: str, limit: str) -> None:
        self._count(limit)
        LOGGER.info("closing a connection: %s", message)
        if self.transport is not None:
            self.transport.write(refusal(status, code, message))
        self.force_close()  # the transport flushes what was written, then closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cap = self._limits.max_connections
        manager = self._manager
        if cap and manager is not None and len(manager.connections) > cap:
            self._refuse(
                429,
                "TOOMANYREQUESTS",
                f"this server process already holds {cap} connections; retry shortly",
                "connections",
            )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes of a request whose headers are not complete yet: start the clock once.
        waiting = not self._request_in_progress and not self._messages
        if waiting and self._header_timer is None and not self._force_close:
            # A request has begun: the header clock, not the idle one, governs now.
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout, self._header_timeout
            )
        elif not waiting:
            self._cancel_header_timer()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages or self._force_close:
            return
        self._refuse(
            408,
            "TIMEOUT",
            f"the request headers did not arrive within {self._limits.header_timeout:g} seconds",
            "header_timeout",
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _process_keepalive(self) -> None:
        already = self._force_close
        super()._process_keepalive()
        if self._force_close and not already:
            self._count("keepalive_timeout")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        if response.status in (414, 431):
            self._count("header_size")
        return response


class LimitedServer(JsonErrorServer):
    """The protocol factory making :class:`LimitedRequestHandler` connections."""

    limits: ConnectionLimits

    def __call__(self) -> web.RequestHandler:
        return LimitedRequestHandler(self, loop=self._loop, **self._kwargs)


class LimitedAppRunner(AppRunner):
    """The server's runner: JSON errors for unparseable requests, and the ``[limits]``."""

    def __init__(self, app: web.Application, limits: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(app, **runner_options(limits), **kwargs)
        self._connection_limits = ConnectionLimits(
            header_timeout=limits.header_timeout,
            max_connections=limits.max_connections,
            metrics=app.get(METRICS_KEY),
        )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = LimitedServer
        server.limits = self._connection_limits  # type: ignore[attr-defined]
        return server
