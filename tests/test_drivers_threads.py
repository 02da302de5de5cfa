"""The local driver's worker threads (drivers/threads.py): outcomes reach the right caller."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from drivers.threads import Workers, _Inbox


async def test_a_call_runs_off_the_loop_and_returns_its_result() -> None:
    workers = Workers(2)
    loop_thread = threading.get_ident()
    assert await workers.run(threading.get_ident) != loop_thread
    assert await workers.run(lambda: 41 + 1) == 42


async def test_an_exception_reaches_the_caller() -> None:
    workers = Workers(1)

    def fail() -> None:
        raise FileNotFoundError(2, "gone", "/x")

    with pytest.raises(FileNotFoundError):
        await workers.run(fail)


async def test_a_cancelled_caller_does_not_break_the_workers() -> None:
    workers = Workers(1)
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    call = asyncio.ensure_future(workers.run(slow))
    await asyncio.to_thread(started.wait, 5)
    call.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await workers.run(lambda: "next") == "next"


async def test_many_concurrent_calls_each_get_their_own_outcome() -> None:
    workers = Workers(4)
    results = await asyncio.gather(*(workers.run(lambda i=i: i * i) for i in range(200)))
    assert results == [i * i for i in range(200)]


def test_a_forked_child_starts_its_own_threads() -> None:
    workers = Workers(2)
    assert asyncio.run(_square(workers, 3)) == 9  # threads exist in the parent now
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are not here
        try:
            ok = asyncio.run(asyncio.wait_for(_square(workers, 4), 5)) == 16
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def _square(workers: Workers, n: int) -> int:
    return await workers.run(lambda: n * n)


async def test_calls_finishing_while_the_loop_is_busy_wake_it_once() -> None:
    # Each wake-up is a write to the loop's self-pipe and a read back: outcomes that
    # arrive together are delivered together, each to its own caller.
    workers = Workers(4)
    loop = asyncio.get_running_loop()
    await workers.run(lambda: None)  # threads started
    wakeups = 0
    wake = loop.call_soon_threadsafe

    def counted(*args: object) -> object:
        nonlocal wakeups
        wakeups += 1
        return wake(*args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    try:
        release = threading.Event()
        calls = [workers.run(lambda i=i: release.wait(5) and i) for i in range(40)]
        release.set()
        time.sleep(0.5)  # the loop is busy while every call finishes
        assert await asyncio.gather(*calls) == list(range(40))
    finally:
        del loop.call_soon_threadsafe
    assert wakeups < 5


def test_calls_work_on_uvloop_too() -> None:
    # server.event_loop = "uvloop" with local storage: the inbox table keys loops weakly.
    import uvloop

    workers = Workers(2)
    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(_square(workers, 5)) == 25
    finally:
        loop.close()


# -- no outcome is ever dropped: a caller left waiting would wait forever, threads idle --


async def test_a_call_raising_stop_iteration_fails_its_caller() -> None:
    # A future refuses StopIteration (raised into a coroutine it would end it): the
    # outcome used to be dropped by its delivery, leaving the caller pending for good.
    workers = Workers(1)
    with pytest.raises(RuntimeError, match="StopIteration") as raised:
        await asyncio.wait_for(workers.run(lambda: next(iter(()))), 10)
    assert isinstance(raised.value.__cause__, StopIteration)


def test_outcomes_after_an_interrupted_delivery_still_arrive() -> None:
    # KeyboardInterrupt (or pytest's timeout) inside one delivery goes on up; the other
    # outcomes of that wake-up are delivered on the loop's next turn, not lost with it.
    loop = asyncio.new_event_loop()
    inbox = _Inbox()
    delivered: list[object] = []

    def interrupted(ok: bool, value: object) -> None:
        raise KeyboardInterrupt

    try:
        inbox.put(loop, interrupted, True, "first")
        inbox.put(loop, lambda ok, value: delivered.append(value), True, "second")
        inbox.put(loop, lambda ok, value: delivered.append(value), True, "third")
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(0.05))
        assert delivered == []
        loop.run_until_complete(asyncio.sleep(0.05))
        assert delivered == ["second", "third"]
        inbox.put(loop, lambda ok, value: delivered.append(value), True, "later")  # still wakes
        loop.run_until_complete(asyncio.sleep(0.05))
        assert delivered == ["second", "third", "later"]
    finally:
        loop.close()
