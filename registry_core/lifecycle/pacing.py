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

A fixed rate is right for one store only (50/s is what moto's clients can spare; real S3
answers thousands a second per prefix at a flat latency). :class:`AdaptivePacer` finds
the rate instead, the way LEDBAT (RFC 6817) keeps background transfers out of the way of
foreground traffic: the floor of the store's response time is the least it has answered
each kind of request in (a minimum, so one quiet moment between busy ones is enough to
find it); when the median of GC's own latencies over a short window rises above
:data:`LATENCY_FACTOR` times that floor in two windows running, someone else is queueing
at the store, and the rate is halved (down to :data:`MIN_RATE`, so a run always ends); while it stays near the
floor the rate grows back by a quarter per window (at least :data:`MIN_RATE`; from the
minimum to a thousand a second in about 5 s), and stops being a limit once the run no
longer uses half of it. On an idle store with flat latency nothing ever
crosses the factor, so GC runs at its caps (``[gc] rate`` and ``[gc] concurrency`` stay
the upper bounds). A server also knows when its own clients are in flight; it passes
*clients_busy*, and the factor is then :data:`BUSY_FACTOR` (a smaller rise suffices when
we know there is a client to be hurt). The CLI, a separate process, has the latency alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

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
        self.started = 0
        """Requests and listing pages started (paced or not)."""
        self._refilled = clock()
        self._lock = asyncio.Lock()
        self.waited = 0.0
        """Seconds requests spent waiting for a token (summed; a measure of the pacing)."""
        self.taken = 0
        """Tokens taken (requests started, plus listing pages) while a rate was set."""

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.concurrency is not None

    def _set_rate(self, rate: float | None) -> None:
        """Change the rate of a running pacer (the tokens banked stay within the new burst)."""
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        self.rate = rate
        self._burst = max(1.0, (rate or 0.0) * BURST_SECONDS)
        self._tokens = min(self._tokens, self._burst)

    async def _token(self) -> None:
        """Take one token, waiting for it; waiters are served in arrival order (the lock)."""
        self.started += 1
        if self.rate is None:
            return
        async with self._lock:
            # An adaptive pacer may change the rate while this waits (lifting it: None):
            # a wait under a rate that then changed is made up under the new one, and a
            # lifted rate lets the request go. A wait under the rate that still holds
            # earns the token (rounding may leave it a hair short).
            slept_at: float | None = None
            while (rate := self.rate) is not None:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                if self._tokens >= 1.0 or slept_at == rate:
                    self._tokens -= 1.0
                    self.taken += 1
                    return
                delay = (1.0 - self._tokens) / rate
                self.waited += delay
                await self._sleep(delay)
                slept_at = rate

    @contextlib.asynccontextmanager
    async def request(self, kind: str = "") -> AsyncIterator[None]:
        """Hold a slot and a token for one storage request (*kind*: the operation, which an
        :class:`AdaptivePacer` times against that operation's own floor)."""
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

    def summary(self) -> dict[str, Any]:
        """What the pacing did in a run (the CLI's ``--json`` shows it)."""
        return {
            "adaptive": False,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "waited_seconds": round(self.waited, 3),
        }


LATENCY_FACTOR = 4.0
"""The store counts as busy when GC's median latency over a window exceeds this multiple
of its floor. Measured on moto at load average 17 (``benchmarks/RESULTS.md``): a median
about 4x the floor idle (the machine's own queue), 8 to 12x while 8 clients push and pull."""
BUSY_FACTOR = 2.5
"""The factor while this process's own clients have requests in flight: above the jitter
of a store at rest (a median within 2x of the least latency), which must not make a server
that always has a client in flight crawl on an idle store."""
MIN_RATE = 10.0
"""Requests per second GC keeps however busy the store (a run must end); also the least
increase per window. A few percent of what an object store serves clients."""
GROWTH = 0.25
"""The rate grows by this fraction of itself per window without a rise in latency."""
WINDOW_SECONDS = 0.25
"""A decision is taken at most this often..."""
WINDOW_SAMPLES = 4
"""...and only on at least this many timed requests."""
CONFIRM_WINDOWS = 2
"""Consecutive slow windows before the rate is halved: a busy machine's scheduling noise
makes single slow windows on an idle store; clients' load makes them one after another."""
FLOOR_SAMPLES = 3
"""A kind of request is judged once this many have been timed (its first set the floor)."""
FLOOR_MINIMUM = 0.001
"""Seconds: a floor below this (a store in memory) is taken as this."""


class AdaptivePacer(RequestPacer):
    """A :class:`RequestPacer` whose rate follows the store's response time (AIMD; see the
    module docstring). *rate* and *concurrency* are the caps; *clients_busy* (a server's
    "requests in flight" test) makes it more sensitive while clients are served;
    *on_change* hears every new rate (None: unlimited), e.g. a metrics gauge."""

    def __init__(
        self,
        rate: float | None = None,
        concurrency: int | None = None,
        *,
        factor: float = LATENCY_FACTOR,
        busy_factor: float = BUSY_FACTOR,
        min_rate: float = MIN_RATE,
        clients_busy: Callable[[], bool] | None = None,
        on_change: Callable[[float | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(rate, concurrency, clock=clock, sleep=sleep)
        self.cap = self.rate
        self.min_rate = min(min_rate, self.cap) if self.cap else min_rate
        self.factor = factor
        self.busy_factor = busy_factor
        self.clients_busy = clients_busy
        self.on_change = on_change
        self.floors: dict[str, float] = {}
        """The least latency seen per kind of request (seconds)."""
        self._timed: dict[str, int] = {}
        self._ratios: list[float] = []
        self._window_started = clock()
        self._window_first = self.started
        self._slow_windows = 0
        self.decreases = 0
        self.increases = 0
        self.lowest: float | None = self.rate
        """The lowest rate this run came down to (None: never limited)."""

    @contextlib.asynccontextmanager
    async def request(self, kind: str = "") -> AsyncIterator[None]:
        async with super().request(kind):
            began = self._clock()
            try:
                yield
            finally:
                # A 404 or an error is an answer too: its latency is the store's all the same.
                self._observe(kind, self._clock() - began)

    def _observe(self, kind: str, latency: float) -> None:
        latency = max(latency, FLOOR_MINIMUM)
        floor = self.floors.get(kind)
        if floor is None or latency < floor:
            self.floors[kind] = floor = latency
        timed = self._timed[kind] = self._timed.get(kind, 0) + 1
        if timed > FLOOR_SAMPLES:
            self._ratios.append(latency / floor)
        now = self._clock()
        elapsed = now - self._window_started
        if len(self._ratios) >= WINDOW_SAMPLES and elapsed >= WINDOW_SECONDS:
            self._decide(
                statistics.median(self._ratios), (self.started - self._window_first) / elapsed
            )
            self._ratios.clear()
            self._window_started = now
            self._window_first = self.started

    def _decide(self, ratio: float, achieved: float) -> None:
        """One AIMD step on the window's median latency *ratio* and *achieved* rate."""
        busy = self.clients_busy is not None and self.clients_busy()
        limit = self.busy_factor if busy else self.factor
        if ratio > limit:
            self._slow_windows += 1
            if self._slow_windows < CONFIRM_WINDOWS:
                return  # one slow window is noise as often as it is load: wait for a second
            self._slow_windows = 0
            current = math.inf if self.rate is None else self.rate
            new: float | None = max(self.min_rate, min(current, achieved) / 2)
            if new == self.rate:
                return
            self.decreases += 1
            log.info(
                "gc pacing: the store answers in %.1fx its floor%s; rate %s -> %.0f requests/s",
                ratio,
                " (clients in flight)" if busy else "",
                "unlimited" if self.rate is None else f"{self.rate:.0f}",
                new,
            )
        elif self.rate is None or self.rate == self.cap:
            self._slow_windows = 0
            return
        else:
            self._slow_windows = 0
            new = self.rate + max(self.min_rate, self.rate * GROWTH)
            if self.cap is not None:
                new = min(new, self.cap)
            elif achieved < self.rate / 2:
                new = None  # the rate no longer holds the run back: the caps alone apply
            self.increases += 1
            log.log(
                logging.INFO if new is None else logging.DEBUG,
                "gc pacing: the store answers in %.1fx its floor; rate %.0f -> %s requests/s",
                ratio,
                self.rate,
                "unlimited" if new is None else f"{new:.0f}",
            )
        self._set_rate(new)
        if new is not None and (self.lowest is None or new < self.lowest):
            self.lowest = new
        if self.on_change is not None:
            self.on_change(new)

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "adaptive": True,
            "cap": self.cap,
            "lowest_rate": self.lowest,
            "decreases": self.decreases,
            "increases": self.increases,
            "floors_ms": {
                kind: round(1000 * value, 2) for kind, value in sorted(self.floors.items())
            },
        }
