"""Request bodies as they arrive: counted for logs and metrics, and never waited on for ever.

Every route that streams a body (blob uploads, archive uploads) reads it through
:func:`request_chunks`, so a client that stops sending mid-body gets a 408 after
``limits.body_timeout`` seconds instead of holding a connection, a lock and a storage
writer. This module only reads; what the bytes become is the caller's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader, web

from registry_core.errors import BlobUploadInvalid

from ..state import state_of


class BodyTimeout(BlobUploadInvalid):
    """The client stopped sending a body (a blob upload keeps what arrived, so it can resume)."""

    status = 408
    default_message = "the upload body stopped arriving"


def count_limit(request: web.Request, limit: str) -> None:
    """Count a refusal by a resource limit in ``/metrics``."""
    metrics = state_of(request).metrics
    if metrics is not None:
        metrics.limit_refusals.labels(limit).inc()


class _Silent(Exception):
    """Set on a request's body stream by its watchdog: the client sent nothing for too long."""


class _Watchdog:
    """One timer per request body, not one per chunk: it fires when the body has been
    awaited for *timeout* seconds with nothing arriving. Time the consumer spends
    elsewhere (storing what arrived) is not the client's silence and never counts."""

    __slots__ = ("_content", "_handle", "_loop", "_timeout", "since", "waiting")

    def __init__(self, content: StreamReader, timeout: float) -> None:
        self._content = content
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self.waiting = False
        self.since = self._loop.time()
        """When the current wait for the body began."""
        self._handle = self._loop.call_at(self.since + timeout, self._check)

    def _check(self) -> None:
        if self._content.is_eof():  # all arrived: no silence left to watch for
            return
        now = self._loop.time()
        if self.waiting and now - self.since >= self._timeout:
            self._content.set_exception(_Silent())
            return
        start = self.since if self.waiting else now
        self._handle = self._loop.call_at(start + self._timeout, self._check)

    def wait_begins(self) -> None:
        self.since = self._loop.time()
        self.waiting = True

    def stop(self) -> None:
        self._handle.cancel()


async def request_chunks(request: web.Request, timeout: float | None) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted for metrics and logs.

    A client that goes silent for *timeout* seconds mid-body would hold the upload's
    lock, a connection and a storage writer for ever: it gets 408 instead.

    Pieces are handed on as the parser made them (``readchunk``): ``readany`` would
    join all pieces buffered at that moment into a new bytes object, a copy of most
    of an upload's bytes, and the consumer takes a list of pieces anyway.
    """
    state = state_of(request)
    content = request.content
    watchdog = _Watchdog(content, timeout) if timeout is not None else None
    try:
        while True:
            if watchdog is not None:
                watchdog.wait_begins()
            try:
                chunk, boundary = await content.readchunk()
            except _Silent:
                count_limit(request, "body_timeout")
                raise BodyTimeout(
                    f"the request body sent nothing for {timeout:g} seconds (limits.body_timeout)"
                ) from None
            if watchdog is not None:
                watchdog.waiting = False
            if not chunk:
                # The end of one chunk of a chunked body: more may follow. (aiohttp's
                # shared empty-body reader answers (b"", True) once anyone read it: at_eof.)
                if boundary and not content.at_eof():
                    continue
                return
            state.bytes_in += len(chunk)
            yield chunk
    finally:
        if watchdog is not None:
            watchdog.stop()
