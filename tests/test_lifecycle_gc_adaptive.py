"""Adaptive pacing of GC's storage requests (``AdaptivePacer``): it backs off while the store
answers slower than its floor (other clients queueing), recovers when they leave, never
slows a run on an idle store, reacts sooner while the server's own clients are in flight,
and shows its rate (log, summary, metrics). Simulated stores run on a virtual clock, so
rates are counted in requests per virtual second, never timed; then real runs on moto.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import random
import secrets
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from drivers import open_driver
from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.config import load_config
from registry_core.jobs import Leases, Scheduler
from registry_core.lifecycle.counting import _kind
from registry_core.lifecycle.gc_pacing import gc_pacer
from registry_core.lifecycle.maintenance import add_maintenance_jobs
from registry_core.lifecycle.pacing import MIN_RATE, AdaptivePacer, RequestPacer
from registry_server.observability import Metrics
from tests.gc_support import blob_present, image, image_complete, push_blob, push_image
from tests.helpers.emulators import CloudEmulator
from tests.helpers.images import Blob
from tests.test_lifecycle_gc_cli import cargohold, populate

REPO = "acme/prod/app"


class VirtualTime:
    """A clock that moves only when every task waits on one of its timers: then straight to
    the earliest, so a simulated run of minutes takes a fraction of a second."""

    YIELDS = 30
    """Turns of the event loop that let every ready task reach its next timer."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sequence += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._sequence, future))
        await future

    async def run_until(self, end: float) -> None:
        while True:
            for _ in range(self.YIELDS):
                await asyncio.sleep(0)
            if not self._timers or self._timers[0][0] > end:
                self.now = end
                return
            self.now = self._timers[0][0]
            while self._timers and self._timers[0][0] <= self.now:
                heapq.heappop(self._timers)[2].set_result(None)


class SharedStore:
    """A store that shares its time among the requests it holds (as moto, one process,
    does): each takes ``base`` seconds times the requests in flight, GC's own and the
    ``clients``' others. Its latency so rises with the clients' load and GC's concurrency."""

    def __init__(self, time: VirtualTime, base: float) -> None:
        self.time = time
        self.base = base
        self.clients = 0
        self.in_flight = 0

    async def answer(self) -> None:
        self.in_flight += 1
        try:
            await self.time.sleep(self.base * (self.clients + self.in_flight))
        finally:
            self.in_flight -= 1


class FlatStore:
    """A store whose latency does not depend on load (S3 far from its limits): ``base``
    and up to as much again of random jitter."""

    def __init__(self, time: VirtualTime, base: float, seed: int = 5) -> None:
        self.time = time
        self.base = base
        self.random = random.Random(seed)

    async def answer(self) -> None:
        await self.time.sleep(self.base * (1 + self.random.random()))


class Run:
    """GC workers (one per slot) making requests through *pacer* for as long as it runs."""

    def __init__(self, time: VirtualTime, pacer: RequestPacer, store: object) -> None:
        self.time = time
        self.pacer = pacer
        self.store = store
        self.done: list[float] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _worker(self) -> None:
        while True:
            async with self.pacer.request("stat"):
                await self.store.answer()  # type: ignore[attr-defined]
            self.done.append(self.time.now)

    def start(self, workers: int) -> None:
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(workers)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def per_second(self, start: float, end: float) -> float:
        """Requests answered per virtual second between *start* and *end*."""
        return sum(1 for t in self.done if start <= t < end) / (end - start)


async def test_it_backs_off_while_clients_load_the_store_and_recovers_when_they_leave() -> None:
    time = VirtualTime()
    store = SharedStore(time, base=0.002)
    pacer = AdaptivePacer(concurrency=2, clock=time.clock, sleep=time.sleep)
    run = Run(time, pacer, store)
    run.start(2)
    await time.run_until(5.0)
    idle = run.per_second(1.0, 5.0)
    assert pacer.rate is None and pacer.decreases == 0  # GC alone: at its caps
    assert idle == pytest.approx(2 / (2 * 0.002), rel=0.05)  # two in flight, 4 ms each

    store.clients = 8  # eight requests of others always waiting at the store
    await time.run_until(15.0)
    # Unpaced, GC would keep 2 of the 10 requests in flight: 2 / (10 x 2 ms) = 100/s.
    loaded = run.per_second(10.0, 15.0)
    assert pacer.rate == MIN_RATE
    assert loaded <= MIN_RATE * 1.1
    assert pacer.decreases >= 3  # halved from what it did alone, down to the minimum

    store.clients = 0
    await time.run_until(27.0)
    assert pacer.rate is None  # grew back until it was no limit
    assert run.per_second(22.0, 27.0) == pytest.approx(idle, rel=0.05)
    assert pacer.increases > 0
    await run.stop()


async def test_its_own_concurrency_is_what_raises_the_latency_it_backs_off() -> None:
    time = VirtualTime()
    store = SharedStore(time, base=0.002)
    pacer = AdaptivePacer(concurrency=16, clock=time.clock, sleep=time.sleep)
    run = Run(time, pacer, store)
    run.start(16)
    await time.run_until(10.0)
    await run.stop()
    # 16 in flight alone make each request wait 16x its floor: it slows itself down, at no
    # cost (the store answers one request per 2 ms however many GC queues).
    assert pacer.decreases > 0
    assert pacer.lowest is not None and pacer.lowest <= 250  # half what the store can answer


@pytest.mark.parametrize("cap", [None, 200.0])
async def test_on_an_idle_flat_store_it_starts_as_many_requests_as_the_fixed_caps(
    cap: float | None,
) -> None:
    counted = {}
    for kind in ("fixed", "adaptive"):
        time = VirtualTime()
        pacer = (
            AdaptivePacer(cap, 8, clock=time.clock, sleep=time.sleep)
            if kind == "adaptive"
            else RequestPacer(cap, 8, clock=time.clock, sleep=time.sleep)
        )
        run = Run(time, pacer, FlatStore(time, base=0.03))
        run.start(8)
        await time.run_until(20.0)
        await run.stop()
        counted[kind] = run.per_second(0.0, 20.0)
        if isinstance(pacer, AdaptivePacer):
            assert pacer.decreases == 0 and pacer.rate == cap
    assert counted["adaptive"] >= 0.98 * counted["fixed"]
    if cap is None:
        assert counted["fixed"] > 8 / 0.06  # 8 in flight, 30-60 ms each: not rate-limited


@pytest.mark.parametrize("clients_in_flight", [False, True])
async def test_clients_in_flight_make_a_smaller_rise_count(clients_in_flight: bool) -> None:
    time = VirtualTime()
    store = SharedStore(time, base=0.002)
    pacer = AdaptivePacer(
        concurrency=1,
        clock=time.clock,
        sleep=time.sleep,
        clients_busy=lambda: clients_in_flight,
    )
    run = Run(time, pacer, store)
    run.start(1)
    await time.run_until(2.0)
    store.clients = 2  # three times the floor: below the factor, above the busy factor
    await time.run_until(8.0)
    await run.stop()
    if clients_in_flight:
        assert pacer.rate == MIN_RATE
    else:
        assert pacer.rate is None and pacer.decreases == 0


async def test_the_rate_is_logged_summarised_and_handed_to_a_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    rates: list[float | None] = []

    def on_change(rate: float | None) -> None:
        rates.append(rate)
        metrics.record_gc_rate(rate)

    time = VirtualTime()
    store = SharedStore(time, base=0.002)
    pacer = AdaptivePacer(
        rate=400.0, concurrency=2, clock=time.clock, sleep=time.sleep, on_change=on_change
    )
    run = Run(time, pacer, store)
    run.start(2)
    await time.run_until(1.0)  # its floor: the store's latency before the clients came
    store.clients = 8
    with caplog.at_level(logging.INFO, logger="registry_core.lifecycle.pacing"):
        await time.run_until(6.0)
    assert rates and rates[-1] == MIN_RATE
    assert f"-> {MIN_RATE:.0f} requests/s" in caplog.text
    assert "its floor" in caplog.text
    assert f"cargohold_gc_pacing_rate {MIN_RATE}" in generate_latest(metrics.registry).decode()
    summary = pacer.summary()
    assert summary["adaptive"] is True and summary["cap"] == 400.0
    assert summary["rate"] == summary["lowest_rate"] == MIN_RATE
    assert summary["floors_ms"]["stat"] == pytest.approx(2.0, rel=0.5)
    store.clients = 0
    await time.run_until(16.0)
    await run.stop()
    assert rates[-1] == 400.0  # back at its cap
    metrics.record_gc_rate(None)
    assert "cargohold_gc_pacing_rate +Inf" in generate_latest(metrics.registry).decode()


async def test_object_stores_get_the_adaptive_pacer_folders_and_memory_the_fixed_one(
    tmp_path: Path, moto_server: CloudEmulator
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    s3 = open_driver(moto_server.storage_url(bucket, "p"), **moto_server.storage_options())
    try:
        adaptive = gc_pacer(s3, 30.0, 3)
        assert isinstance(adaptive, AdaptivePacer)
        assert (adaptive.cap, adaptive.concurrency) == (30.0, 3)
        assert not isinstance(gc_pacer(s3, adaptive=False), AdaptivePacer)
    finally:
        await s3.close()
    assert not isinstance(gc_pacer(LocalDriver(str(tmp_path))), AdaptivePacer)
    assert not isinstance(gc_pacer(open_driver("memory://")), AdaptivePacer)


async def test_a_run_on_moto_times_every_kind_of_request_it_makes(
    moto_server: CloudEmulator,
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    registry = Registry(
        open_driver(moto_server.storage_url(bucket, "adaptive"), **moto_server.storage_options())
    )
    try:
        await push_image(registry, REPO, image("adaptive"), tag="1.0")
        strays = [Blob("application/octet-stream", f"adaptive {n}".encode()) for n in range(8)]
        for blob in strays:
            await push_blob(registry, REPO, blob)
        pacer = gc_pacer(registry.driver)
        assert isinstance(pacer, AdaptivePacer)
        report = await registry.collect_garbage(grace=0.0, settle=0.0, pacer=pacer)
        assert report.blobs_deleted == len(strays)
        # The run's requests went through this pacer, each kind timed against its own floor.
        assert pacer.started >= report.storage_requests
        assert {"read", "move_whole"} <= set(pacer.floors)
        assert all(0.0 < floor < 5.0 for floor in pacer.floors.values())
        assert await image_complete(registry, REPO, "1.0")
        for blob in strays:
            assert not await blob_present(registry, blob.digest)
    finally:
        await registry.close()


def test_cargohold_gc_reports_its_pacing_and_takes_no_adaptive(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, strays = populate(store, stray=3)
    done = cargohold(
        "gc", "--storage", str(store), "--grace", "0s", "--settle", "0s", "--no-adaptive", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["blobs_deleted"] == len(strays)
    assert report["pacing"]["adaptive"] is False  # a folder is never paced by latency
    assert report["pacing"]["concurrency"] == 32


async def test_the_servers_schedule_hands_its_clients_and_gauge_to_the_pacer(
    tmp_path: Path, moto_server: CloudEmulator
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    registry = Registry(
        open_driver(moto_server.storage_url(bucket, "sched"), **moto_server.storage_options())
    )
    config_file = tmp_path / "gc.toml"
    # One request in flight, so the run lasts several of the pacer's windows.
    config_file.write_text('[gc]\ninterval = "1h"\ngrace = "0s"\nsettle = "0s"\nconcurrency = 1\n')
    rates: list[float | None] = []
    asked: list[bool] = []

    def clients_busy() -> bool:
        asked.append(True)
        return False

    try:
        strays = [Blob("application/octet-stream", f"scheduled {n}".encode()) for n in range(40)]
        for blob in strays:
            await push_blob(registry, REPO, blob)
        scheduler = Scheduler(Leases(registry.driver))
        add_maintenance_jobs(
            scheduler,
            registry,
            load_config(config_file),
            on_gc_rate=rates.append,
            clients_busy=clients_busy,
        )
        assert await scheduler.run_once("gc")
        assert rates[0] is None  # unlimited at the start (no [gc] rate cap)
        assert rates[-1] == 0.0  # no run in progress
        assert asked  # the pacer consulted the server's clients at its decisions
        for blob in strays:
            assert not await blob_present(registry, blob.digest)
    finally:
        await registry.close()


def test_large_copies_are_timed_against_a_floor_of_their_own_size() -> None:
    # A server-side copy takes longer the larger the object: a sweep setting aside a 1 GiB
    # layer after small ones must not read as a busy store.
    assert _kind("move_whole", ("a", "b", 4096), {}) == "move_whole"
    assert _kind("move_whole", ("a", "b", 1 << 20), {}) == "move_whole"
    assert _kind("move_exact", ("a", "b"), {"size": 3 << 20}) == "move_exact/2"
    assert _kind("move_whole", ("a", "b", 1 << 30), {}) == "move_whole/11"
    assert _kind("move_whole", ("a", "b", (1 << 30) + 5), {}) == "move_whole/11"
    assert _kind("commit_small_upload", ("a", b"x", 7 << 20), {}) == "commit_small_upload"


def test_one_slow_window_at_a_time_is_noise_two_running_are_load() -> None:
    pacer = AdaptivePacer(concurrency=2)
    for _ in range(10):  # a busy machine's scheduling: slow, calm, slow, calm...
        pacer._decide(ratio=9.0, achieved=100.0)
        pacer._decide(ratio=1.5, achieved=100.0)
    assert pacer.rate is None and pacer.decreases == 0
    pacer._decide(ratio=9.0, achieved=100.0)
    pacer._decide(ratio=9.0, achieved=100.0)  # clients queueing: one window after another
    assert pacer.rate == 50.0 and pacer.decreases == 1
