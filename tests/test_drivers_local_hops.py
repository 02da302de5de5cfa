"""Every caller of the local driver's worker-thread hops hears back, whatever happens around it.

In the full suite the 16-client GC proof once waited forever with its event loop idle and
every worker thread idle: an outcome nobody would ever deliver. Here three event loops
(the test's and two threads') share one driver and the process's worker threads, and
each starts bursts of every kind of call at once: batched small operations, grouped
steps, listings, walks (some left half-read), large writes on their own hop, and calls
that fail (OSError, a missing object, StopIteration, which a future refuses). A random
share of callers is cancelled mid-flight. Every call must end (result, error or
cancellation) within :data:`CALL_LIMIT`, and once all are done nothing may be left
queued for delivery. A bounded variant: a few seconds.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from pathlib import Path
from typing import Any

from drivers.local import SMALL_WRITE, LocalDriver
from drivers.threads import shared_workers
from registry_core.storage import steps
from registry_core.storage.driver import PathNotFound, StorageError

LOOPS_IN_THREADS = 2
BURSTS = 25
BURST_MAX = 80
CANCELLED_SHARE = 0.15
CALL_LIMIT = 60.0
"""Seconds a burst may take; far above what it needs, so only a stranded call hits it."""


class InjectedFailure(OSError):
    """A failure a worker-thread call raises on purpose."""


def _fail(kind: int) -> Any:
    if kind == 0:
        raise InjectedFailure("injected")
    if kind == 1:
        return next(iter(()))  # StopIteration: a future refuses to hold it
    raise ValueError("injected")


async def _one(driver: LocalDriver, rng: random.Random, folder: str, n: int) -> None:
    path = f"{folder}/{n % 40}"
    choice = rng.randrange(12)
    if choice == 0:
        await driver.write(path, b"x" * rng.randint(0, 200))
    elif choice == 1:
        await driver.write(path, b"y" * (SMALL_WRITE + 1))  # its own hop
    elif choice == 2:
        await driver.read(path)
    elif choice == 3:
        await driver.stat(path)
    elif choice == 4:
        await driver.delete(path)
    elif choice == 5:
        await driver.list(folder)
    elif choice == 6:
        async for _ in driver.walk(folder):
            if rng.random() < 0.3:
                break  # a walk left half-read, as GC's "pushed to since the mark" does
    elif choice == 7:
        await driver.move(path, f"{folder}/{(n + 1) % 40}")
    elif choice == 8:
        await steps.run_steps(
            driver, [[steps.read(path), steps.stat(path)], [steps.write(f"{path}-w", b"1")]]
        )
    elif choice == 9:
        await driver._batches.run(functools.partial(_fail, rng.randrange(3)))
    elif choice == 10:
        await driver._workers.run(functools.partial(_fail, rng.randrange(3)))
    else:
        await driver.write_if_absent(f"{path}-once", b"z")


EXPECTED = (PathNotFound, StorageError, InjectedFailure, RuntimeError, ValueError)


async def _hammer(driver: LocalDriver, seed: int) -> int:
    rng = random.Random(seed)
    folder = f"hammer/{seed}"
    calls = 0
    for _ in range(BURSTS):
        tasks = [
            asyncio.ensure_future(_one(driver, rng, folder, calls + n))
            for n in range(rng.randint(1, BURST_MAX))
        ]
        calls += len(tasks)
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)  # some callers are cancelled before their hop, some after
        for task in tasks:
            if rng.random() < CANCELLED_SHARE:
                task.cancel()
        done, stranded = await asyncio.wait(tasks, timeout=CALL_LIMIT)
        assert not stranded, f"{len(stranded)} call(s) never heard back: {list(stranded)[:3]}"
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), EXPECTED), repr(task.exception())
    await asyncio.sleep(0.05)  # a last wake-up (a cancelled call's late outcome) lands
    inbox = shared_workers()._inboxes.get(asyncio.get_running_loop())
    assert inbox is None or inbox._items == []
    assert asyncio.get_running_loop() not in driver._batches._pending
    return calls


async def test_every_call_ends_with_three_loops_cancellations_and_failures(
    tmp_path: Path,
) -> None:
    driver = LocalDriver(str(tmp_path / "store"))
    outcomes: dict[int, BaseException | int] = {}

    def in_thread(seed: int) -> None:
        try:
            outcomes[seed] = asyncio.run(_hammer(driver, seed))
        except BaseException as exc:  # reported below, on the test's thread
            outcomes[seed] = exc

    threads = [
        threading.Thread(target=in_thread, args=(seed,), name=f"hammer-{seed}")
        for seed in range(1, LOOPS_IN_THREADS + 1)
    ]
    for thread in threads:
        thread.start()
    try:
        calls = await _hammer(driver, 0)
    finally:
        for thread in threads:
            await asyncio.to_thread(thread.join, CALL_LIMIT * BURSTS)
    for seed, outcome in outcomes.items():
        assert isinstance(outcome, int), f"loop {seed}: {outcome!r}"
    assert calls > BURSTS and len(outcomes) == LOOPS_IN_THREADS
