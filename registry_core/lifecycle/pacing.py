"""Pacing of a background job's storage requests, so a shared bucket keeps serving clients.

A GC run left unpaced keeps dozens of requests in flight for its whole mark and
sweep. On a local disk that costs clients nothing measurable, but an object store
(or its emulator, or a bucket's request-rate limit) answers requests roughly in
arrival order: once it is busy, a job with 32 requests in flight against 8 clients
with one each can take about four fifths of what it answers, and the clients'
pushes and pulls slow down by as much (on moto: 0.75 of the clients' throughput
unpaced, 1.00 at 2 in flight; ``benchmarks/RESULTS.md``). CPU priority (``[gc] nice``) cannot help there, since
the store does the work. A :class:`RequestPacer` bounds both what a job has in
flight (*concurrency*) and how many requests it starts per second (*rate*, a
token bucket with a burst of a tenth of a second's worth, at least one), so the
job's share of the store is bounded whatever the store's speed.

It only delays; it never reorders, drops or retries a request, so a paced run
does exactly what an unpaced one does (the GC protocol needs no timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

BURST_SECONDS = 0.1
"""The token bucket holds this many seconds of the rate (at least one request)."""


class RequestPacer:
    """At most *concurrency* requests in flight and *rate* started per second.

    ``rate`` None or 0: no rate limit; ``concurrency`` None or 0: no in-flight limit.
    *clock* and *sleep* are injectable for tests (monotonic seconds, asyncio sleep).
    """

    def __init__(
        self,
        rate: float | None = None,
        concurrency: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0")
        if concurrency is not None and concurrency < 0:
            raise ValueError("concurrency must be >= 0")
        self.rate = rate or None
        self.concurrency = concurrency or None
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._burst = max(1.0, (rate or 0.0) * BURST_SECONDS)
        self._tokens = self._burst
        self._refilled = clock()
        self._lock = asyncio.Lock()
        self.waited = 0.0
        """Seconds requests spent waiting for a token (summed; a measure of the pacing)."""
        self.taken = 0
        """Tokens taken (requests started, plus listing pages) while a rate was set."""

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.concurrency is not None

    async def _token(self) -> None:
        """Take one token, waiting for it; waiters are served in arrival order (the lock)."""
        if self.rate is None:
            return
        async with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens < 1.0:
                delay = (1.0 - self._tokens) / self.rate
                self.waited += delay
                await self._sleep(delay)
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.rate)
                self._refilled = now
            self._tokens -= 1.0
            self.taken += 1

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold a slot and a token for one storage request."""
        if self._slots is None:
            await self._token()
            yield
            return
        async with self._slots:
            await self._token()
            yield

    async def tick(self) -> None:
        """Take a token without holding a slot (a page of a listing being consumed)."""
        await self._token()
