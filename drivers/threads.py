"""The worker threads the local driver's blocking calls run on: a lighter hop than ``to_thread``.

``asyncio.to_thread`` goes through ``ThreadPoolExecutor.submit`` (a lock, a
``concurrent.futures.Future`` with its own Condition, an idle-thread semaphore) and
``wrap_future`` (a second future, copied across by two callbacks). For the tiny file
operations of a push that machinery costs more CPU than the syscalls: about 33 µs per
sequential hop on this project's benchmark machine against 19 µs here, and 18 µs against
5 µs when eight callers hop at once. Here a call is one tuple on a ``SimpleQueue`` and
one ``call_soon_threadsafe`` back. Each process (a forked worker too) starts its own
threads on first use. This module runs callables; it knows nothing of files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)
"""As many threads as asyncio's default executor would start."""

Delivery = Callable[[bool, Any], None]
"""Called on the event loop with (True, result) or (False, exception)."""


class _Inbox:
    """Outcomes waiting for one event loop: one wake-up of the loop for a bunch of them.

    Each ``call_soon_threadsafe`` writes to the loop's self-pipe and makes the loop read
    it back; when several calls finish while the loop is busy (16 pushes at once), one
    wake-up delivers them all. Holds no reference to its loop (the table of inboxes is
    keyed weakly by loop, so a closed loop's inbox goes with it).
    """

    __slots__ = ("_items", "_lock", "_scheduled")

    def __init__(self) -> None:
        self._items: list[tuple[Delivery, bool, Any]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, loop: asyncio.AbstractEventLoop, deliver: Delivery, ok: bool, value: Any) -> None:
        """From a worker thread: queue an outcome, waking the loop unless a wake-up is due."""
        with self._lock:
            self._items.append((deliver, ok, value))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for position, (deliver, ok, value) in enumerate(items):
            try:
                deliver(ok, value)
            except Exception as exc:  # one broken delivery must not strand the others
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "delivering a worker-thread outcome failed", "exception": exc}
                )
            except BaseException:
                # KeyboardInterrupt, SystemExit: it goes on up, and the outcomes after it
                # still reach their callers on the loop's next turn.
                self._put_back(items[position + 1 :])
                raise

    def _put_back(self, items: list[tuple[Delivery, bool, Any]]) -> None:
        """On the loop: outcomes not delivered yet go first, with a drain due for them."""
        if not items:
            return
        with self._lock:
            self._items[:0] = items
            if self._scheduled:
                return
            self._scheduled = True
        asyncio.get_running_loop().call_soon(self._drain)


_Job = tuple[asyncio.AbstractEventLoop, _Inbox, Callable[[], Any], Delivery]


class Workers:
    """A fixed set of daemon threads taking (loop, callable, delivery) from one queue.

    Daemon threads: a call still running when the process exits is cut off as by a
    crash, which every storage write is built to survive (temporary file, then rename);
    a graceful stop first waits for the requests that await them.
    """

    def __init__(self, count: int = DEFAULT_THREADS) -> None:
        self.count = count
        self._queue: queue.SimpleQueue[_Job]
        self._queue = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox]
        self._inboxes = weakref.WeakKeyDictionary()
        # A forked child (a `--workers` process) has none of the parent's threads.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._queue = queue.SimpleQueue()
        self._started = 0
        self._lock = threading.Lock()
        self._inboxes = weakref.WeakKeyDictionary()  # their locks may have been held

    def _ensure_threads(self) -> None:
        with self._lock:
            while self._started < self.count:
                thread = threading.Thread(
                    target=self._work, args=(self._queue,), name="cargohold-fs", daemon=True
                )
                thread.start()
                self._started += 1

    @staticmethod
    def _work(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            loop, inbox, func, deliver = jobs.get()
            try:
                outcome: tuple[bool, Any] = (True, func())
            except BaseException as exc:  # delivered to the caller, as to_thread would
                outcome = (False, exc)
            inbox.put(loop, deliver, *outcome)
            del loop, inbox, func, deliver, outcome

    def submit(self, func: Callable[[], Any], deliver: Delivery) -> None:
        """Run *func* on a worker thread; *deliver* gets its outcome on the calling loop."""
        if self._started < self.count:
            self._ensure_threads()
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox()
        self._queue.put((loop, inbox, func, deliver))

    def run(self, func: Callable[[], T]) -> asyncio.Future[T]:
        """*func* on a worker thread, as a future of the calling loop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.submit(func, functools.partial(settle, future))
        return future


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Give *future* a worker call's outcome (on its loop), unless its caller was cancelled.

    It never leaves the future pending: an exception a future refuses to hold
    (``StopIteration``: raised into a coroutine it would end it instead of failing it)
    reaches the caller as a RuntimeError caused by it. Left pending, the caller would
    wait forever with every thread idle, and nothing would ever wake it.
    """
    if future.done():
        return
    if ok:
        future.set_result(value)
        return
    try:
        future.set_exception(value)
    except TypeError:
        failure = RuntimeError(f"a worker-thread call raised {value!r}")
        failure.__cause__ = value
        future.set_exception(failure)


_SHARED = Workers()


def shared_workers() -> Workers:
    """The process's one set of worker threads (every local driver of the process uses it)."""
    return _SHARED
