"""Blob downloads from local files: zero-copy ``sendfile`` in short calls, back to back.

Why not aiohttp's ``FileResponse`` as it is: asyncio's ``loop.sendfile`` hands the kernel
the whole remaining count in one call, then waits for the socket to become writable
before every next call. Over loopback (1 GiB from the page cache, a client process
reading into a buffer, 3 runs each: ``python -m benchmarks.sendfile_probe``) that moved
1.9-2.3 GB/s at 0.34-0.54 s of kernel CPU per GiB; the same bytes in 256 KiB calls,
issued back to back until the socket is full, moved 2.9-3.5 GB/s at 0.23-0.33 s. Waiting
for writability after each 256 KiB call gained nothing (2.1-2.2 GB/s): the win is in
keeping the socket fed, and the kernel's work per byte is lower with smaller calls.

So this response sends at most :data:`CALLS_PER_TURN` calls of :data:`CALL_BYTES` per
event-loop turn (4 MiB, about a millisecond), then yields, or waits for writability when
the socket is full: the loop stays as responsive as with asyncio's single call, which
also sends a socket buffer's worth at once. It writes through a duplicate of the
connection's descriptor, so nothing of the transport's registration with the loop is
touched, and the descriptor cannot be closed and reused under it. TLS connections,
compressed responses and ``AIOHTTP_NOSENDFILE`` go aiohttp's own way, as does anything
that finds bytes still queued in the transport.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import NOSENDFILE

CALL_BYTES = 256 * 1024
"""Bytes per ``sendfile`` call: 128-512 KiB measured alike, 1 MiB and more as slow as one
call for everything."""
CALLS_PER_TURN = 16
"""Calls before the loop's other work gets a turn (4 MiB)."""


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _writable(loop: asyncio.AbstractEventLoop, descriptor: int) -> None:
    future: asyncio.Future[None] = loop.create_future()
    loop.add_writer(descriptor, _done, future)
    try:
        await future
    finally:
        loop.remove_writer(descriptor)


async def send_file(
    loop: asyncio.AbstractEventLoop, descriptor: int, file: int, offset: int, count: int
) -> None:
    """Send *count* bytes of *file* from *offset* over the socket *descriptor*
    (non-blocking), :data:`CALL_BYTES` per call, :data:`CALLS_PER_TURN` calls a turn."""
    out = os.dup(descriptor)
    end = offset + count
    try:
        while offset < end:
            full = False
            for _ in range(CALLS_PER_TURN):
                try:
                    sent = os.sendfile(out, file, offset, min(CALL_BYTES, end - offset))
                except (BlockingIOError, InterruptedError):
                    full = True
                    break
                if sent == 0:  # blob files never shrink; a truncated one is a storage fault
                    raise OSError(f"file ended {end - offset} bytes early")
                offset += sent
                if offset >= end:
                    return
            if full:
                await _writable(loop, out)
            else:
                await asyncio.sleep(0)
    finally:
        os.close(out)


def _plain_socket(transport: asyncio.BaseTransport) -> int | None:
    """The descriptor of a plain TCP or Unix socket transport; None for TLS (whose
    socket carries ciphertext) or a transport without one."""
    if transport.get_extra_info("ssl_object") is not None:
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return int(sock.fileno())
    except (OSError, ValueError):
        return None


class BlobFileResponse(web.FileResponse):
    """``FileResponse`` (ranges, conditional requests, headers) with :func:`send_file`."""

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        descriptor = _plain_socket(transport)
        if (
            descriptor is None
            or self.compression
            or NOSENDFILE
            or transport.get_write_buffer_size()
        ):
            return await super()._sendfile(request, fobj, offset, count)
        resume = transport.is_reading()
        transport.pause_reading()
        try:
            await send_file(asyncio.get_running_loop(), descriptor, fobj.fileno(), offset, count)
        finally:
            if resume:
                transport.resume_reading()
        await web.StreamResponse.write_eof(self)
        return writer
