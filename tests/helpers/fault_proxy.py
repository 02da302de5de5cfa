"""A fault-injecting HTTP reverse proxy on 127.0.0.1, in front of one test peer.

:class:`FaultProxy` forwards every request to its target unchanged (the ``Host``
header too, so a peer's token ``realm`` points back through the proxy) and streams the
answer back byte for byte (no decompression). Rules (:class:`Fault`) matched on method
and path make it misbehave instead: flip a byte of the body (``corrupt``), cut the body
short with the connection closed (``truncate``), wait before answering or in the middle
of the body (``stall`` / ``stall_body``), answer ``429`` with ``Retry-After`` or ``503``
without asking the peer (``status``), or drop the connection (``reset``).
:meth:`FaultProxy.refusing` closes the listening socket so connections are refused.

It counts what it forwarded to the peer by ``(method, path)``, which is how tests see
how many upstream fetches a pull-through registry made. The proxy runs its own event
loop in a daemon thread, so synchronous tests drive it like the other servers; it never
listens anywhere but 127.0.0.1 and never forwards anywhere but its target.

Usage::

    with FaultProxy(upstream.url) as fp:
        fp.add(Fault(r"/blobs/", "corrupt", times=1))
        ...
        assert fp.forwarded_count(r"/blobs/sha256:") == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from aiohttp import web
from yarl import URL

from .server import free_port

__all__ = ["Fault", "FaultProxy"]

Action = Literal["corrupt", "truncate", "stall", "stall_body", "status", "reset"]

# Connection-level headers are per hop (RFC 9110 7.6.1); aiohttp writes its own.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)
_CHUNK = 64 * 1024
_BODY_ACTIONS = frozenset({"corrupt", "truncate", "stall_body"})


@dataclass
class Fault:
    """One misbehaviour for requests whose path matches ``path`` (a regex, ``re.search``).

    ``action``:
    - ``corrupt``: forward, flip one byte of the body at ``offset`` (default: the middle
      when the length is known, else the first byte); the length stays the same.
    - ``truncate``: forward the headers (with the full ``Content-Length``) and only the
      first ``keep`` bytes of the body, then close the connection.
    - ``stall``: wait ``delay`` seconds before asking the peer.
    - ``stall_body``: send the headers and ``keep`` bytes, then wait ``delay`` seconds
      before the rest (a peer that hangs in the middle of a blob).
    - ``status``: answer ``status`` (429, 503, ...) with ``retry_after`` as
      ``Retry-After`` when set and a distribution JSON error body; the peer is not asked.
    - ``reset``: close the connection without an answer.

    ``methods`` limits the rule (default GET and HEAD); ``times`` is how many requests it
    applies to (None: all). ``hits`` counts the requests it applied to. The body faults
    (corrupt, truncate, stall_body) apply to 2xx answers only: a 401 challenge or a 404
    passes unchanged and does not use the rule up.
    """

    path: str
    action: Action
    methods: tuple[str, ...] = ("GET", "HEAD")
    times: int | None = None
    offset: int | None = None
    keep: int = 1024
    delay: float = 30.0
    status: int = 503
    retry_after: int | None = None
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return method in self.methods and re.search(self.path, path) is not None


class FaultProxy:
    """A reverse proxy to ``target`` (``http://127.0.0.1:PORT``) that injects :class:`Fault`s."""

    def __init__(self, target: str, *, port: int | None = None) -> None:
        if not target.startswith("http://127.0.0.1:"):
            raise ValueError(f"the fault proxy only forwards to 127.0.0.1, not {target!r}")
        self.target = target.rstrip("/")
        self.port = port or free_port()
        self.faults: list[Fault] = []
        self.forwarded: Counter[tuple[str, str]] = Counter()
        self.received: Counter[tuple[str, str]] = Counter()
        self.succeeded: Counter[tuple[str, str]] = Counter()
        """Forwarded requests the peer answered with a 2xx (a 401 challenge is not a fetch)."""
        self.authorizations: set[str] = set()
        """Every ``Authorization`` header value forwarded (to check none leaks elsewhere)."""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stop: asyncio.Event | None = None

    # -- addresses ------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- rules and counts -----------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        """Add a rule (checked in the order added; the first that matches applies)."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every rule: forward everything unchanged from now on."""
        with self._lock:
            self.faults.clear()

    def forwarded_count(self, path: str = "", method: str | None = None) -> int:
        """How many requests whose path matches ``path`` (regex) were sent to the peer."""
        with self._lock:
            return sum(
                n
                for (m, p), n in self.forwarded.items()
                if re.search(path, p) and (method is None or m == method)
            )

    def received_count(self, path: str = "", method: str | None = None) -> int:
        """How many requests whose path matches ``path`` reached the proxy (faulted or not)."""
        with self._lock:
            return sum(
                n
                for (m, p), n in self.received.items()
                if re.search(path, p) and (method is None or m == method)
            )

    def succeeded_count(self, path: str = "", method: str | None = None) -> int:
        """How many forwarded requests whose path matches ``path`` the peer answered 2xx."""
        with self._lock:
            return sum(
                n
                for (m, p), n in self.succeeded.items()
                if re.search(path, p) and (method is None or m == method)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.forwarded.clear()
            self.received.clear()
            self.succeeded.clear()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.received[(method, path)] += 1
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
            return None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(started))
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                started.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        started.wait(30)
        if errors:
            raise RuntimeError(f"fault proxy did not start on {self.host}") from errors[0]
        return self

    async def _serve(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        # auto_decompress off: the proxy must pass the peer's exact bytes.
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        app = web.Application(client_max_size=1024**4)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()
        started.set()
        try:
            await self._stop.wait()
        finally:
            await self._runner.cleanup()
            await self._session.close()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    def _call(self, coro_fn) -> None:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        future.result(timeout=30)

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        self._thread = None

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Close the listening socket (connections refused) and every open connection (a
        client's idle keep-alive connection must not get through); reopen it on the same
        port after."""

        async def close() -> None:
            assert self._site is not None and self._runner is not None
            await self._site.stop()
            server = self._runner.server
            for connection in list(server.connections if server is not None else []):
                connection.force_close()

        self._call(close)
        try:
            yield
        finally:
            self._call(self._listen)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the proxy ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._pick(request.method, request.path)
        action = fault.action if fault else None
        if fault is not None and action == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=499)
        if fault is not None and action == "status":
            extra: dict[str, str] = {}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            code = "TOOMANYREQUESTS" if fault.status == 429 else "UNAVAILABLE"
            error = {"code": code, "message": "injected by the fault proxy", "detail": None}
            return web.Response(
                status=fault.status,
                headers=extra,
                text=json.dumps({"errors": [error]}),
                content_type="application/json",
            )
        if fault is not None and action == "stall":
            await self._sleep(fault.delay)

        with self._lock:
            self.forwarded[(request.method, request.path)] += 1
            if "Authorization" in request.headers:
                self.authorizations.add(request.headers["Authorization"])
        # The request keeps its Content-Length: a streamed upload must not turn chunked.
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP_BY_HOP or k.lower() == "content-length"
        }
        body = request.content if request.can_read_body else None
        assert self._session is not None
        async with self._session.request(
            request.method,
            URL(self.target + request.rel_url.raw_path_qs, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            if 200 <= upstream.status < 300:
                with self._lock:
                    self.succeeded[(request.method, request.path)] += 1
            if fault is not None and action in _BODY_ACTIONS and not 200 <= upstream.status < 300:
                # A challenge or an error is not the body the rule is about: keep it for later.
                with self._lock:
                    fault.hits -= 1
                fault = None
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            length = upstream.content_length
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            if request.method == "HEAD":
                await response.write_eof()
                return response
            await self._relay(request, upstream, response, fault, length)
            return response

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        fault: Fault | None,
        length: int | None,
    ) -> None:
        action = fault.action if fault else None
        flip_at: int | None = None
        if fault is not None and action == "corrupt":
            flip_at = fault.offset if fault.offset is not None else (length or 0) // 2
        cut_at = fault.keep if fault is not None and action in ("truncate", "stall_body") else None
        sent = 0
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            if cut_at is not None and sent + len(chunk) >= cut_at:
                head, chunk = chunk[: cut_at - sent], chunk[cut_at - sent :]
                if head:
                    await response.write(head)
                    sent += len(head)
                if action == "truncate":
                    assert request.transport is not None
                    request.transport.close()
                    return
                await self._sleep(fault.delay if fault else 0)
                cut_at = None
                if not chunk:
                    continue
            if flip_at is not None and sent <= flip_at < sent + len(chunk):
                pos = flip_at - sent
                chunk = chunk[:pos] + bytes([chunk[pos] ^ 0xFF]) + chunk[pos + 1 :]
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the proxy stops (so a stall never blocks stop())."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
