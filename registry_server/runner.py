"""The aiohttp runner the command line serves with: every answer is JSON.

aiohttp answers a request that never reaches the application itself (a
garbage request line, a malformed header, a missing ``Host``) with a plain
text body, outside every middleware. These connections render such errors
like every other one: the spec's JSON error body, the API version header and
a request id (also recorded for the access log). A request the client got wrong
(bad request line, TLS spoken to the plain port, oversized headers) is the
client's problem: it gets 400, 414 or 431 and one access-log line, never a
traceback in the server's log, and nothing it sent is echoed into the log.
"""

from __future__ import annotations

import logging
import re

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import _ErrInfo
from aiohttp.web_request import BaseRequest

from registry_core import RegistryError

from .http.v2 import API_VERSION_HEADER
from .state import new_request_id, state_of


class JsonErrorRequestHandler(web.RequestHandler):
    """One connection; its own errors (the request could not be parsed...) are JSON."""

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        # A body that breaks the framing (a bad chunk size) is queued by aiohttp as the
        # error of a *next* request, while the handler reading the body waits for bytes
        # that will never come. Hand the error to that handler instead (it answers 400)
        # and close the connection after its answer: one request, one response.
        request = self._current_request
        if request is None or len(self._messages) <= queued:
            return
        message, _ = self._messages[-1]
        if isinstance(message, _ErrInfo) and not request.content.is_eof():
            self._messages.pop()
            request.content.set_exception(message.exc)
            # At EOF, aiohttp will not linger reading (and re-raising) the broken body.
            request.content.feed_eof()
            self.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            status, detail = client_error(exc)
            # Only the access-log line: parse errors quote the request's bytes (a header
            # value may be a credential), and clients can produce them at will.
            LOGGER.debug("malformed request from %s: %s", request.remote, detail)
            if request.writer.output_size > 0:
                raise ConnectionError("response already started; cannot send the parse error")
            state_of(request).route = "malformed"
        else:
            # Logs the error, and raises when part of a response was already sent.
            super().handle_error(request, status, exc, message)
            detail = None
        request_id = new_request_id()
        state_of(request).request_id = request_id
        error = RegistryError(
            "malformed HTTP request" if 400 <= status < 500 else "internal server error",
            detail,
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


LOGGER = logging.getLogger("cargohold.server")
_REQUEST_LINE = re.compile(rb"[A-Z]+ (?:/|https?:|\*)")


def client_error(exc: HttpProcessingError) -> tuple[int, str]:
    """The status and a client-safe reason for a request aiohttp could not parse.

    Never the request's own bytes: parser messages quote them, and a header that is
    too long may well be an ``Authorization`` header.
    """
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        limit = exc.args[1] if len(exc.args) > 1 else "the"
        # aiohttp's C parser quotes an over-long request target as a bytearray and a
        # header as bytes; its pure-Python parser quotes the whole request line.
        if isinstance(line, bytearray) or (
            isinstance(line, bytes) and _REQUEST_LINE.match(line) is not None
        ):
            return 414, f"the request target is longer than {limit} bytes"
        return 431, f"a request header is longer than {limit} bytes"
    reason = (exc.message or "").split("\n", 1)[0].split(":", 1)[0].strip()
    if reason == "Too many headers received":
        return 431, "too many request headers"
    if not reason or len(reason) > 80 or not reason.isprintable():
        reason = "the request could not be parsed as HTTP/1.1"
    return 400, reason


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
