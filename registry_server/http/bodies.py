"""Request bodies as they arrive: counted for logs and metrics, and never waited on for ever.

Every route that streams a body (blob uploads, archive uploads) reads it through
:func:`request_chunks`, so a client that stops sending mid-body gets a 408 after
``limits.body_timeout`` seconds instead of holding a connection, a lock and a storage
writer. This module only reads; what the bytes become is the caller's business.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import mmap
import os
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_parser import HttpRequestParser
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError

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


DIRECT_MIN = 1 << 20
"""Bodies announcing at least this many bytes may be read off the socket directly."""

DIRECT_BUFFER = max(1, int(os.environ.get("CARGOHOLD_BODY_BUFFER_KIB", "1024")) // 4) * 4096
"""Each receiving buffer: page-aligned (an anonymous mmap), so the local driver writes
it with ``O_DIRECT`` (drivers/local.py), one synchronous write a buffer, so 1 MiB makes
a quarter of the writes of the 256 KiB buffers before it. Memory stays bounded: at most
``DIRECT_THREADS * DIRECT_DEPTH`` of them in use, ``SPARE_BUFFERS`` kept for reuse.
``CARGOHOLD_BODY_BUFFER_KIB`` (whole pages) is for A/B runs only."""

LARGE_BUFFER = max(1, int(os.environ.get("CARGOHOLD_LARGE_BODY_BUFFER_KIB", "4096")) // 4) * 4096
"""The receiving buffers of a body with at least ``LARGE_BODY`` bytes to come (a
monolithic upload): the disk takes 4 MiB ``O_DIRECT`` appends faster than 1 MiB ones
(1.5-1.7 against 1.2-1.3 GB/s here), for fewer writes and hand-overs: monolithic 256 MiB
uploads 938 -> 1,039 MiB/s at 1.10 -> 0.89 CPU s/GiB. A chunk of a chunked upload (8 MiB
or so) keeps 1 MiB buffers: with 4 MiB ones its hash overlaps its receiving less (680 ->
613 MiB/s). ``CARGOHOLD_LARGE_BODY_BUFFER_KIB`` (whole pages) is for A/B runs only."""

LARGE_BODY = 32 << 20
"""Bodies with at least this many bytes still to come take ``LARGE_BUFFER`` buffers."""

DIRECT_ALIGN = 4096
"""A body's first buffer is cut short so that the file offset of every later buffer is
a multiple of this (the local driver's ``O_DIRECT`` writes need it)."""

DIRECT_THREADS = 8
"""Bodies received directly at once per process; more take aiohttp's path meanwhile."""

_NO_TIMEOUT = 86400.0
"""A timeout for a body without one: ``settimeout(None)`` would make the connection's
socket blocking for the event loop too (the flag belongs to the shared open file)."""

DIRECT_MODE = os.environ.get("CARGOHOLD_BODY_THREADS", "split")
"""Which thread does what (A/B figures in benchmarks/RESULTS.md): ``split`` receives and
writes on one thread and hashes on a second, so the two halves overlap at about the
CPU of ``serial``, which does all three on one (and so never runs faster than one
core's hash + copies). Writing and hashing on the second thread cost more CPU."""

DIRECT_DEPTH = 3
"""Buffers taking turns between the two threads of ``split``."""

_receivers = ThreadPoolExecutor(DIRECT_THREADS, thread_name_prefix="body")
_finishers = ThreadPoolExecutor(DIRECT_THREADS, thread_name_prefix="body-hash")
"""The second threads of ``split``: a pool of their own, so that a receiving
thread never waits for a buffer from a second stage queued behind other receivers."""
_receiving = 0

SPARE_BUFFERS = DIRECT_DEPTH
"""Receiving buffers of each size kept mapped between bodies: one body's worth (a large
upload reuses its own buffers throughout; the next body takes them without faulting
pages in). The buffers of bodies received beside it are unmapped when they end, so a
burst of concurrent uploads leaves 15 MiB resident (3 of each size), not 120 MiB."""

_spare_buffers: dict[int, list[mmap.mmap]] = {}
_spare_lock = threading.Lock()


def _buffer_size(remaining: int) -> int:
    """The receiving buffers' size for a body with *remaining* bytes to come."""
    return LARGE_BUFFER if remaining >= LARGE_BODY else DIRECT_BUFFER


def _take_buffer(size: int = DIRECT_BUFFER) -> mmap.mmap:
    """A receiving buffer of *size* bytes: a spare one (its pages already mapped) or a
    new one."""
    with _spare_lock:
        spares = _spare_buffers.get(size)
        if spares:
            return spares.pop()
    return mmap.mmap(-1, size)


def _give_buffer(buffer: mmap.mmap) -> None:
    with _spare_lock:
        spares = _spare_buffers.setdefault(len(buffer), [])
        if len(spares) < SPARE_BUFFERS:
            spares.append(buffer)
            return
    with contextlib.suppress(BufferError):  # a view still held elsewhere: left to the GC
        buffer.close()


class ClientGone(ConnectionResetError):
    """The client closed the connection before the whole announced body arrived."""


class RequestBody:
    """A request's body: an async iterator of pieces (aiohttp's path), or, for a large
    Content-Length body over plain HTTP, read straight off the socket by a thread.

    aiohttp's path costs, per GiB, a bytes object per socket read, the parser's copy of
    each into another, and a thread hop per batch to hash and write. A consumer that
    can take a buffer on any thread (the local driver's append) asks :meth:`receive`
    instead: the rest of the body is read with ``recv_into`` into one reused buffer,
    hashed and written on the same thread, then the connection is handed back to
    aiohttp for its next request. Anything else iterates as before.
    """

    def __init__(self, request: web.Request, timeout: float | None) -> None:
        self._request = request
        self._timeout = timeout
        self._chunks: AsyncIterator[bytes] | None = None
        self.digest_pending: concurrent.futures.Future[None] | None = None
        """After :meth:`receive` with ``defer_digest``: the digest of the body's last
        buffers, still running (None: all digested before it returned)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = request_chunks(self._request, self._timeout)
        return self._chunks

    async def receive(
        self,
        write: Callable[[memoryview], None],
        digest: Callable[[memoryview], None],
        offset: int = 0,
        *,
        defer_digest: bool = False,
    ) -> bool:
        """Feed the whole body to *write* and then *digest* (called on receiving
        threads, in order; each buffer is reused once both return). *offset* is where
        the body's first byte goes in storage: the first buffer is cut short so that
        every later one starts at a multiple of ``DIRECT_ALIGN`` there.

        With *defer_digest*, this returns once every byte is received and written, and
        the digest of the last buffers (up to ``DIRECT_DEPTH``) may still run: then
        :attr:`digest_pending` is its future, which the caller must wait for before it
        digests anything else. The answer to a chunk of a chunked upload then goes out
        while its hash finishes, and the hash overlaps the client's next request.

        False, with nothing read, when the body must take aiohttp's path: TLS, a
        chunked or compressed body, a small one, a connection aiohttp already closes,
        or every receiving thread busy. What arrived before a failure (a silent or
        departed client) has been written and hashed when this raises.
        """
        global _receiving
        if _receiving >= DIRECT_THREADS:
            return False
        taken = _take_connection(self._request, self._chunks)
        if taken is None:
            return False
        protocol, first, remaining = taken
        metrics = state_of(self._request).metrics
        if metrics is not None:
            metrics.bodies_direct.inc()
        loop = asyncio.get_running_loop()
        received = [0]
        if not remaining:  # all of it had arrived, and aiohttp's parser saw the end
            _receiving += 1
            try:
                await loop.run_in_executor(_receivers, _store_first, first, write, digest)
            finally:
                _receiving -= 1
            state_of(self._request).bytes_in += len(first)
            return True
        descriptor = protocol.transport.get_extra_info("socket").fileno()
        sock = socket.socket(fileno=os.dup(descriptor))
        sock.settimeout(self._timeout or _NO_TIMEOUT)
        _receiving += 1
        ok = False
        try:
            receiving = loop.run_in_executor(
                _receivers,
                _receive,
                sock,
                first,
                remaining,
                write,
                digest,
                received,
                (-(offset + len(first))) % DIRECT_ALIGN,
                defer_digest,
            )
            try:
                self.digest_pending = await asyncio.shield(receiving)
            except asyncio.CancelledError:
                # The request is cancelled (shutdown): stop the thread before the
                # writer it writes to is closed, then let the cancellation go on.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
                with contextlib.suppress(Exception):
                    await receiving
                raise
            except TimeoutError:
                count_limit(self._request, "body_timeout")
                raise BodyTimeout(
                    f"the request body sent nothing for {self._timeout:g} seconds "
                    "(limits.body_timeout)"
                ) from None
            ok = True
        finally:
            _receiving -= 1
            state_of(self._request).bytes_in += received[0]
            sock.close()  # the duplicate only: the connection stays open
            _give_back(self._request, protocol, ok=ok)
        return True


_PROTOCOL_PARTS = (
    "_parser",
    "_reading_paused",
    "_read_bufsize",
    "_loop",
    "max_line_size",
    "max_field_size",
    "max_headers",
)
"""aiohttp's RequestHandler internals this module relies on (aiohttp 3.14): without any
of them (another aiohttp), every body takes aiohttp's own path."""


def _take_connection(
    request: web.Request, chunks: AsyncIterator[bytes] | None
) -> tuple[Any, bytes, int] | None:
    """Stop aiohttp reading the connection mid-body: (its protocol, the body bytes
    it already holds, the bytes still to come), or None if this body is not eligible."""
    length = request.content_length
    transport = request.transport
    protocol = request.protocol
    content = request.content
    if (
        chunks is not None
        or length is None
        or length < DIRECT_MIN
        or transport is None
        or transport.is_closing()
        or transport.get_extra_info("sslcontext") is not None
        or transport.get_extra_info("socket") is None
        or "Transfer-Encoding" in request.headers
        or "Content-Encoding" in request.headers
        or not all(hasattr(protocol, name) for name in _PROTOCOL_PARTS)
        or not hasattr(content, "_size")
        or getattr(protocol, "_parser", None) is None
        or getattr(protocol, "_force_close", True)
        or getattr(protocol, "_close", True)
        or content.exception() is not None
        or content.total_bytes - content._size != 0  # someone read from it: not ours
    ):
        return None
    # Every body byte aiohttp holds: its buffer, and what its parser held back while
    # the buffer was full (re-parsed into the buffer when reading resumes). All of it
    # runs on the loop, so no socket read comes between this and the pause below.
    held: list[bytes] = []
    while True:
        piece = content.read_nowait()
        if piece:
            held.append(piece)
        elif not protocol._reading_paused:
            break
        else:
            protocol.resume_reading()
            if not content._size:
                break
    first = b"".join(held)
    remaining = length - content.total_bytes
    if content.is_eof() or remaining <= 0:
        return protocol, first, 0
    transport.pause_reading()
    return protocol, first, remaining


def _give_back(request: web.Request, protocol: Any, *, ok: bool) -> None:
    """Hand the connection back to aiohttp: a fresh parser (the old one still waits
    for the body's bytes, which went past it), the body marked as ended, reading
    resumed. After a failure mid-body the rest of the body is still on the wire, so
    the connection closes once the answer is sent."""
    protocol._parser = HttpRequestParser(
        protocol,
        protocol._loop,
        protocol._read_bufsize,
        max_line_size=protocol.max_line_size,
        max_field_size=protocol.max_field_size,
        max_headers=protocol.max_headers,
        payload_exception=RequestPayloadError,
        auto_decompress=True,
        max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
    )
    if not ok:
        protocol.close()
    request.content.feed_eof()  # resumes the transport's reading


def _store_first(
    first: bytes, write: Callable[[memoryview], None], digest: Callable[[memoryview], None]
) -> None:
    """What aiohttp had buffered: a small piece, stored before the socket's bytes."""
    if first:
        write(memoryview(first))
        digest(memoryview(first))


def _buffers_needed(remaining: int, lead: int, serial: bool, size: int = DIRECT_BUFFER) -> int:
    """How many receiving buffers a body of *remaining* bytes can use at once: no more
    than it fills (a 1 MiB PATCH takes two, not ``DIRECT_DEPTH``), so small bodies keep
    few buffers mapped and the spare pool only grows with large concurrent bodies."""
    depth = 1 if serial else DIRECT_DEPTH
    pieces = 0
    while remaining > 0 and pieces < depth:
        remaining -= min(lead or size, remaining)
        lead = 0
        pieces += 1
    return max(1, pieces)


def _receive(
    sock: socket.socket,
    first: bytes,
    remaining: int,
    write: Callable[[memoryview], None],
    digest: Callable[[memoryview], None],
    count: list[int],
    lead: int = 0,
    defer: bool = False,
) -> concurrent.futures.Future[None] | None:
    """The receiving thread: fill a buffer from the socket, hand it on, again.

    The first buffer takes only *lead* bytes (when not 0), which brings the storage
    offset of every later buffer to a multiple of ``DIRECT_ALIGN``; buffers are
    page-aligned memory, so the local driver writes them whole with ``O_DIRECT``.

    ``recv_into``, the hash and the write each release the GIL. What arrived before a
    silence or a disconnect is handed on before the error propagates, so the upload
    keeps it and the client can resume from there. This thread writes each buffer;
    in ``DIRECT_MODE`` ``split`` a second one hashes it (buffers taking turns, in
    order), in ``serial`` this one does. With *defer* (and ``split``), once the whole
    body arrived without a failure this returns the second thread's future instead of
    waiting for it: that thread digests the last buffers, then gives them back.
    """

    def both(view: memoryview) -> None:
        write(view)
        digest(view)

    # serial: this thread receives, writes and hashes; split: a second one hashes.
    head: Callable[[memoryview], None] = both if DIRECT_MODE == "serial" else write
    tail: Callable[[memoryview], None] | None = None if DIRECT_MODE == "serial" else digest
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[memoryview, memoryview | None] | None] = queue.SimpleQueue()
    if tail is None:
        _store_first(first, write, digest)
    elif first:
        # What aiohttp had buffered (often several hundred KiB of a PATCH): written here,
        # hashed first by the second thread, so receiving starts without waiting for it.
        write(memoryview(first))
        full.put((memoryview(first), None))
    count[0] += len(first)
    size = _buffer_size(remaining)
    needed = _buffers_needed(remaining, lead, tail is None, size)
    buffers = [_take_buffer(size) for _ in range(needed)]
    for buffer in buffers:
        free.put(memoryview(buffer))
    failed: list[BaseException] = []
    handed_off = [False]
    """Set by the receiving thread before its last ``full.put``: the second thread cleans up."""

    def release() -> None:
        while not free.empty():  # the views released, so a spare buffer can be closed
            with contextlib.suppress(BufferError):
                free.get().release()
        for buffer in buffers:
            _give_buffer(buffer)

    def finish() -> None:  # the second thread, in order
        assert tail is not None
        # No name keeps a view once it is given back: release() closes the buffers.
        while (item := full.get()) is not None:
            try:
                if not failed:
                    tail(item[0])
            except BaseException as exc:  # handed to the receiving thread
                failed.append(exc)
            if item[1] is not None:
                free.put(item[1])
        if handed_off[0]:
            release()
            if failed:
                raise failed[0]

    second = _finishers.submit(finish) if tail is not None else None
    try:
        while remaining and not failed:
            buffer = free.get()
            want = min(lead or size, remaining)
            lead = 0
            filled = 0
            try:
                while filled < want:
                    got = sock.recv_into(buffer[filled:want])
                    if not got:
                        raise ClientGone("the client closed the connection mid-body")
                    filled += got
            finally:
                if filled:
                    head(buffer[:filled])
                    count[0] += filled
                if tail is not None and filled:
                    full.put((buffer[:filled], buffer))
                else:
                    free.put(buffer)
            remaining -= filled
        if defer and second is not None and not failed:
            handed_off[0] = True  # before the sentinel: the queue orders the two
    finally:
        if second is not None:
            full.put(None)
            if not handed_off[0]:
                second.result()
        if not handed_off[0]:
            release()
    if failed and not handed_off[0]:
        raise failed[0]
    return second if handed_off[0] else None
