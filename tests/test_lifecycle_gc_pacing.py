"""Pacing of GC's storage requests (``[gc] rate``, ``[gc] concurrency``): the token bucket,
the in-flight bound on a real driver, a paced run on moto S3, the configuration and CLI."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from drivers import open_driver
from drivers.local import LocalDriver
from registry_core import ConfigError, Registry
from registry_core.config import load_config
from registry_core.lifecycle.counting import CountingDriver
from registry_core.lifecycle.gc import (
    CONCURRENCY,
    OBJECT_STORE_CONCURRENCY,
    GarbageCollector,
    default_concurrency,
)
from registry_core.lifecycle.pacing import RequestPacer
from tests.gc_support import blob_present, image, image_complete, push_blob, push_image
from tests.helpers.emulators import CloudEmulator
from tests.helpers.images import Blob
from tests.test_lifecycle_gc_cli import cargohold, check_store, populate

REPO = "acme/prod/app"


class FakeTime:
    """A clock that only moves when the pacer sleeps: the sleeps are the pacing."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_rate_spaces_requests_after_a_burst_of_a_tenth_of_a_second() -> None:
    fake = FakeTime()
    pacer = RequestPacer(rate=50.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(105):
        async with pacer.request():
            pass
    # A burst of 5 (0.1 s of 50/s) goes at once, then one every 1/50 s: 100 more in 2 s.
    assert len(fake.sleeps) == 100
    assert fake.now - 100.0 == pytest.approx(2.0)
    assert pacer.waited == pytest.approx(2.0)


async def test_an_idle_pacer_refills_only_up_to_its_burst() -> None:
    fake = FakeTime()
    pacer = RequestPacer(rate=10.0, clock=fake.clock, sleep=fake.sleep)
    fake.now += 3600.0  # an hour idle must not bank 36,000 requests
    for _ in range(4):
        await pacer.tick()
    assert fake.sleeps == pytest.approx([0.1, 0.1, 0.1])


async def test_no_limits_never_waits() -> None:
    fake = FakeTime()
    pacer = RequestPacer(rate=0, concurrency=0, clock=fake.clock, sleep=fake.sleep)
    assert not pacer.limited
    for _ in range(1000):
        async with pacer.request():
            pass
    assert fake.sleeps == []


@pytest.mark.parametrize("new_rate", [None, 5.0, 100.0])
async def test_a_rate_changed_while_a_request_waits_for_its_token_applies_to_it(
    new_rate: float | None,
) -> None:
    """An adaptive pacer lifts (None) or moves the rate while requests wait for tokens: the
    waiting request goes on under the new rate (lifting it raised a TypeError, which failed
    the GC run under load)."""
    fake = FakeTime()
    pacer = RequestPacer(rate=10.0, clock=fake.clock, sleep=fake.sleep)
    changed = False

    async def sleep(seconds: float) -> None:
        nonlocal changed
        await fake.sleep(seconds)
        if not changed:
            changed = True
            pacer._set_rate(new_rate)

    pacer._sleep = sleep
    for _ in range(3):  # the burst of 1 (0.1 s of 10/s), then the change during a wait
        await pacer.tick()
    assert changed
    assert pacer.rate == new_rate
    waited = fake.now - 100.0
    if new_rate is None:
        assert fake.sleeps == pytest.approx([0.1])  # lifted: nobody waits any more
    else:
        assert waited == pytest.approx(0.1 + 1.0 / new_rate, rel=0.01)


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RequestPacer(rate=-1)
    with pytest.raises(ValueError):
        RequestPacer(concurrency=-1)


class InFlightDriver(LocalDriver):
    """A real local driver that records how many requests GC had in flight at most (each
    request yields to the event loop first, so concurrent ones overlap)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.in_flight = 0
        self.peak = 0

    async def _track(self, call: object) -> object:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            return await call  # type: ignore[misc]
        finally:
            self.in_flight -= 1

    async def read(self, path: str) -> bytes:
        return await self._track(super().read(path))  # type: ignore[return-value]

    async def stat(self, path: str):  # type: ignore[no-untyped-def]
        return await self._track(super().stat(path))

    async def move(self, source: str, destination: str) -> None:
        await self._track(super().move(source, destination))

    async def delete(self, path: str) -> None:
        await self._track(super().delete(path))


async def _store_with_garbage(root: Path, strays: int = 40) -> list[str]:
    registry = Registry(LocalDriver(str(root)))
    await push_image(registry, REPO, image("paced"), tag="1.0")
    digests = []
    for n in range(strays):
        blob = Blob("application/octet-stream", f"paced stray {n}".encode())
        await push_blob(registry, REPO, blob)
        digests.append(blob.digest)
    return digests


@pytest.mark.parametrize(("concurrency", "bounded"), [(2, True), (32, False)])
async def test_concurrency_bounds_the_requests_a_run_has_in_flight(
    tmp_path: Path, concurrency: int, bounded: bool
) -> None:
    root = tmp_path / "store"
    strays = await _store_with_garbage(root)
    driver = InFlightDriver(str(root))
    report = await GarbageCollector(driver, grace=0.0, settle=0.0, concurrency=concurrency).run()
    assert report.blobs_deleted == len(strays)
    if bounded:
        assert driver.peak == concurrency
    else:  # the same run unbounded does overlap more: the bound above is the pacer's doing
        assert driver.peak > 2
    registry = Registry(LocalDriver(str(root)))
    assert await image_complete(registry, REPO, "1.0")
    for digest in strays:
        assert not await blob_present(registry, digest)


async def test_the_default_concurrency_is_high_on_a_folder_and_low_on_an_object_store(
    tmp_path: Path, moto_server: CloudEmulator
) -> None:
    assert default_concurrency(LocalDriver(str(tmp_path))) == CONCURRENCY
    assert default_concurrency(open_driver("memory://")) == CONCURRENCY
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    driver = open_driver(moto_server.storage_url(bucket, "p"), **moto_server.storage_options())
    try:
        assert default_concurrency(driver) == OBJECT_STORE_CONCURRENCY
        assert GarbageCollector(driver).driver.pacer.concurrency == OBJECT_STORE_CONCURRENCY
    finally:
        await driver.close()


async def test_a_paced_run_on_s3_collects_exactly_what_an_unpaced_one_would(
    moto_server: CloudEmulator,
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    registry = Registry(
        open_driver(moto_server.storage_url(bucket, "paced"), **moto_server.storage_options())
    )
    try:
        await push_image(registry, REPO, image("s3-paced"), tag="1.0")
        strays = [Blob("application/octet-stream", f"s3 stray {n}".encode()) for n in range(12)]
        for blob in strays:
            await push_blob(registry, REPO, blob)
        dry = await registry.collect_garbage(grace=0.0, dry_run=True)
        # Real requests, paced on a clock that only the pacer's sleeps move: every token
        # after the first burst is waited for, however slow the emulator answers.
        fake = FakeTime()
        pacer = RequestPacer(rate=40.0, concurrency=1, clock=fake.clock, sleep=fake.sleep)
        counted = CountingDriver(registry.driver, pacer)
        report = await GarbageCollector(counted, grace=0.0, settle=0.0).run()
        assert sorted(report.deleted) == sorted(dry.deleted)
        assert report.blobs_deleted == len(strays)
        # Every request went through the pacer, all but the burst (4 at 40/s) after a wait.
        assert pacer.taken >= report.storage_requests > 4
        assert len(fake.sleeps) == pacer.taken - 4
        assert pacer.waited == pytest.approx((pacer.taken - 4) / 40.0)
        assert await image_complete(registry, REPO, "1.0")
        for blob in strays:
            assert not await blob_present(registry, blob.digest)
    finally:
        await registry.close()


def test_the_gc_section_takes_rate_and_concurrency_and_refuses_negatives(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[gc]\nrate = 200\nconcurrency = 4\n")
    config = load_config(good)
    assert (config.gc.rate, config.gc.concurrency) == (200.0, 4)
    assert (load_config(None).gc.rate, load_config(None).gc.concurrency) == (0.0, 0)
    for bad in ("rate = -5", "concurrency = -1"):
        path = tmp_path / "bad.toml"
        path.write_text(f"[gc]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(path)


def test_cargohold_gc_runs_paced_from_flags_and_refuses_bad_ones(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tags, strays = populate(store, stray=6)
    for bad in (["--rate", "-1"], ["--concurrency", "1.5"], ["--rate", "fast"]):
        refused = cargohold("gc", "--storage", str(store), "--grace", "0s", *bad)
        assert refused.returncode == 2, bad
        assert "gc: error: argument --" in refused.stderr
        assert "Traceback" not in refused.stderr

    async def strays_present() -> bool:
        registry = Registry(LocalDriver(str(store)))
        return all([await blob_present(registry, digest) for digest in strays])

    assert asyncio.run(strays_present())  # a refused command collected nothing
    paced = cargohold(
        "gc",
        "--storage",
        str(store),
        "--grace",
        "0s",
        "--settle",
        "0s",
        "--rate",
        "100",
        "--concurrency",
        "1",
        "--json",
    )
    assert paced.returncode == 0, paced.stderr
    assert json.loads(paced.stdout)["blobs_deleted"] == len(strays)
    check_store(store, tags, gone=strays)
