"""The aiohttp runner the command line serves with: every answer is JSON.

aiohttp answers a request that never reaches the application itself (a
garbage request line, a malformed header, a missing ``Host``) with a plain
text body, outside every middleware. These connections render such errors
like every other one: the spec's JSON error body, the API version header and
a request id (also recorded for the access log).
"""

from __future__ import annotations

import msgspec
from aiohttp import web
from aiohttp.web_request import BaseRequest

from registry_core import RegistryError

from .http.v2 import API_VERSION_HEADER
from .state import new_request_id, state_of


class JsonErrorRequestHandler(web.RequestHandler):
    """One connection; its own errors (the request could not be parsed...) are JSON."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Logs the error, and raises when part of a response was already sent.
        super().handle_error(request, status, exc, message)
        request_id = new_request_id()
        state_of(request).request_id = request_id
        error = RegistryError(
            "malformed HTTP request" if 400 <= status < 500 else "internal server error"
        )
        error.status = status  # type: ignore[misc]
        response = web.Response(
            status=status,
            body=msgspec.json.encode({"errors": [error.to_dict()]}),
            content_type="application/json",
            headers={**API_VERSION_HEADER, "X-Request-Id": request_id},
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's protocol factory, making :class:`JsonErrorRequestHandler` connections."""

    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer even unparseable requests in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer
        return server
