"""Numbered leases and the job scheduler (registry_core/jobs.py) on local storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core.jobs import LeaseBusy, LeaseLost, Leases, Scheduler


class Clock:
    """A wall clock the test moves by hand (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def driver(tmp_path: Path) -> LocalDriver:
    return LocalDriver(str(tmp_path / "store"))


async def test_first_taker_gets_epoch_one(driver: LocalDriver) -> None:
    lease = await Leases(driver, "a").acquire("gc", ttl=30)
    assert lease.epoch == 1
    assert (await Leases(driver, "b").current("gc")).holder == "a"  # type: ignore[union-attr]


async def test_a_held_lease_refuses_another_taker(driver: LocalDriver) -> None:
    await Leases(driver, "a").acquire("gc", ttl=30)
    with pytest.raises(LeaseBusy) as busy:
        await Leases(driver, "b").acquire("gc", ttl=30)
    assert busy.value.holder == "a"


async def test_an_expired_lease_is_taken_over_with_the_next_epoch(driver: LocalDriver) -> None:
    clock = Clock()
    first = await Leases(driver, "a", clock).acquire("gc", ttl=30)
    clock.now += 31
    second = await Leases(driver, "b", clock).acquire("gc", ttl=30)
    assert second.epoch == first.epoch + 1


async def test_the_old_holder_is_fenced_off_after_a_takeover(driver: LocalDriver) -> None:
    clock = Clock()
    old = Leases(driver, "a", clock)
    lease = await old.acquire("gc", ttl=30)
    clock.now += 31
    await Leases(driver, "b", clock).acquire("gc", ttl=30)
    clock.now -= 31  # even with a clock that still thinks the lease is fresh
    with pytest.raises(LeaseLost):
        await old.check(lease)


async def test_a_holder_past_its_expiry_fails_its_own_check(driver: LocalDriver) -> None:
    clock = Clock()
    leases = Leases(driver, "a", clock)
    lease = await leases.acquire("gc", ttl=30)
    clock.now += 30
    with pytest.raises(LeaseLost):
        await leases.check(lease)


async def test_renewal_extends_the_same_epoch(driver: LocalDriver) -> None:
    clock = Clock()
    leases = Leases(driver, "a", clock)
    lease = await leases.acquire("gc", ttl=30)
    clock.now += 20
    await leases.renew(lease, ttl=30)
    clock.now += 20
    with pytest.raises(LeaseBusy):
        await Leases(driver, "b", clock).acquire("gc", ttl=30)
    assert (await leases.current("gc")).epoch == 1  # type: ignore[union-attr]


async def test_a_released_lease_can_be_taken_at_once(driver: LocalDriver) -> None:
    leases = Leases(driver, "a")
    await leases.release(await leases.acquire("gc", ttl=300))
    assert (await Leases(driver, "b").acquire("gc", ttl=30)).epoch == 2


async def test_exactly_one_of_racing_takers_wins(driver: LocalDriver) -> None:
    outcomes = await asyncio.gather(
        *(Leases(driver, f"h{i}").acquire("gc", ttl=30) for i in range(12)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, LeaseBusy) for o in outcomes if o is not winners[0])


async def test_old_epochs_are_pruned(driver: LocalDriver) -> None:
    clock = Clock()
    for holder in "abcdef":
        lease = await Leases(driver, holder, clock).acquire("gc", ttl=1)
        clock.now += 2
    epochs = await Leases(driver, "x", clock).epochs("gc")
    assert epochs[-1] == lease.epoch
    assert len(epochs) <= 3


async def test_scheduled_job_runs_in_one_process_at_a_time(driver: LocalDriver) -> None:
    running = 0
    overlaps = 0
    runs = 0

    async def job(guard: object) -> None:
        nonlocal running, overlaps, runs
        running += 1
        overlaps += running > 1
        runs += 1
        await asyncio.sleep(0.05)
        running -= 1

    schedulers = [Scheduler(Leases(driver, f"p{i}")) for i in range(3)]
    for scheduler in schedulers:
        scheduler.add("gc", interval=0.01, run=job, ttl=5)
        scheduler.start()
    await asyncio.sleep(0.6)
    for scheduler in schedulers:
        await scheduler.stop()
    assert runs >= 3
    assert overlaps == 0


async def test_a_nudge_runs_the_job_before_its_interval(driver: LocalDriver) -> None:
    ran = asyncio.Event()

    async def job(guard: object) -> None:
        ran.set()

    scheduler = Scheduler(Leases(driver, "p"))
    scheduler.add("retention", interval=3600, run=job)
    scheduler.start()
    scheduler.nudge("retention")
    await asyncio.wait_for(ran.wait(), 5)
    await scheduler.stop()


async def test_a_guard_stops_work_once_the_lease_is_taken_over(driver: LocalDriver) -> None:
    clock = Clock()
    leases = Leases(driver, "a", clock)
    async with leases.hold("scrub", ttl=30) as guard:
        await guard.check()
        clock.now += 31
        await Leases(driver, "b", clock).acquire("scrub", ttl=30)
        with pytest.raises(LeaseLost):
            await guard.check()
