"""Request bodies as they arrive: counted for logs and metrics, and never waited on for ever.

Every route that streams a body (blob uploads, archive uploads) reads it through
:func:`request_chunks`, so a client that stops sending mid-body gets a 408 after
``limits.body_timeout`` seconds instead of holding a connection, a lock and a storage
writer. This module only reads; what the bytes become is the caller's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

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


async def request_chunks(request: web.Request, timeout: float | None) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted for metrics and logs.

    A client that goes silent for *timeout* seconds mid-body would hold the upload's
    lock, a connection and a storage writer for ever: it gets 408 instead.
    """
    state = state_of(request)
    content = request.content
    while True:
        # What already arrived needs no timer: a timeout per chunk costs more than the
        # chunk's hashing when the body streams fast.
        chunk = content.read_nowait()
        if chunk:
            state.bytes_in += len(chunk)
            yield chunk
            continue
        try:
            async with asyncio.timeout(timeout):
                chunk = await content.readany()
        except TimeoutError:
            count_limit(request, "body_timeout")
            raise BodyTimeout(
                f"the request body sent nothing for {timeout:g} seconds (limits.body_timeout)"
            ) from None
        if not chunk:
            return
        state.bytes_in += len(chunk)
        yield chunk
