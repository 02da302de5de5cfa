"""Many processes scan at once, each digest once: the shared queue and per-digest claims.

Each "process" here is its own :class:`Registry` and :class:`ScanService` over one
storage folder (what two servers or a server and a ``cargohold worker`` share);
the last test runs two real ``cargohold worker`` processes. Layer reads are slowed
where a test needs scans to overlap or to outlive a short claim.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.jobs import Leases, Scheduler
from registry_core.mediatypes import OCI_MANIFEST
from registry_core.scanning import ScanBusy, Scanner, ScanService
from registry_core.scanning.scanner import MAX_ATTEMPTS
from registry_core.scanning.service import JOB, WORK_JOB
from registry_core.scanning.vulndb import import_sources
from registry_core.storage import layout
from tests import scanning_support as fx
from tests.helpers import Image, build_image, make_layer, make_layer_tar, sha256_digest
from tests.helpers.server import REPO_ROOT
from tests.helpers.tenants import write_config


class SlowLayers(LocalDriver):
    """Layer streams that pause on every chunk, so a scan takes a while."""

    def __init__(self, root: str, delay: float) -> None:
        super().__init__(root)
        self.delay = delay

    async def read_stream(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in super().read_stream(path, offset, length):
            await asyncio.sleep(self.delay)
            yield chunk


class Overlap:
    """A scan observer shared by every scanner: how many ran at the same time, at most."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    def scan_started(self) -> None:
        self.running += 1
        self.most = max(self.most, self.running)

    def scan_finished(self, seconds: float, ok: bool, counts: dict[str, int]) -> None:
        self.running -= 1


@functools.cache
def filler_layer(size: int) -> tuple[bytes, str]:
    """One layer of *size* incompressible bytes (gzip level 1), shared by the images."""
    tar = make_layer_tar({"srv/filler.bin": os.urandom(size)})
    return gzip.compress(tar, compresslevel=1, mtime=0), sha256_digest(tar)


def distinct_image(index: int, filler: int = 256 * 1024) -> Image:
    """An Alpine-style image with a shared filler layer, made distinct by a small one."""
    base = fx.alpine_image()
    layers = [(layer.data, diff) for layer, diff in zip(base.layers, base.diff_ids, strict=True)]
    layers += [filler_layer(filler), make_layer({f"srv/{index}.txt": f"image {index}"})]
    return build_image(layers)


async def push(registry: Registry, image: Image, repo: str) -> Digest:
    repository = registry.repository(repo)
    for blob in image.blobs():
        if await registry.blob_store.exists(Digest.parse(blob.digest)):
            await repository.blobs.link(Digest.parse(blob.digest))  # a shared layer: mounted
            continue
        async with repository.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    await repository.manifests.put(image.manifest, image.media_type, tag="1.0")
    return Digest.parse(image.digest)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


async def seeded(store: Path, images: list[Image], repo: str = "acme/prod/app") -> list[Digest]:
    registry = Registry(LocalDriver(str(store)))
    archive = fx.write_all_zip(store.parent / "all.zip", fx.ALL_RECORDS)
    await import_sources(registry.driver, [("osv", [str(archive)])])
    digests = [await push(registry, image, f"{repo}{i}") for i, image in enumerate(images)]
    await registry.close()
    return digests


def process(store: Path, observer: Overlap | None = None, delay: float = 0.0) -> ScanService:
    """One server or worker process: its own registry, scanner and service on *store*."""
    driver = SlowLayers(str(store), delay) if delay else LocalDriver(str(store))
    registry = Registry(driver)
    return ScanService(registry, Scanner(registry, observer=observer), concurrency=2)


async def walk_and_queue(service: ScanService) -> None:
    """What the lease holder's ``scan`` job does: walk the feed, queue what is not scanned."""
    await service.registry.feed.catch_up(JOB, service.enqueue)


async def queue_names(store: Path) -> list[str]:
    try:
        return await LocalDriver(str(store)).list(layout.SCAN_QUEUE)
    except Exception:
        return []


async def test_two_processes_scan_different_digests_at_once_and_each_digest_once(
    store: Path,
) -> None:
    digests = await seeded(store, [distinct_image(i) for i in range(6)])
    overlap = Overlap()
    first, second = process(store, overlap, 0.02), process(store, overlap, 0.02)
    await walk_and_queue(first)
    assert len(await queue_names(store)) == 6

    await asyncio.gather(first.work(), second.work())

    scanned = first.scanner.scans_run + second.scanner.scans_run
    assert scanned == 6  # every digest once, though both processes saw all six queued
    assert first.scanner.scans_run > 0 and second.scanner.scans_run > 0
    assert overlap.most >= 3  # several scans ran at once (two processes, two slots each)
    assert await queue_names(store) == []
    for index, digest in enumerate(digests):
        status = await first.scanner.status(digest)
        assert status is not None and status.status == "done"
        repository = first.registry.repository(f"acme/prod/app{index}")
        [sbom] = await repository.manifests.referrers(digest)
        assert sbom["artifactType"] == "application/vnd.cyclonedx+json"
    assert await first.work() + await second.work() == 0  # nothing left, nothing rescanned


async def test_a_digest_queued_by_several_repositories_is_scanned_once_and_attached_in_each(
    store: Path,
) -> None:
    image = distinct_image(0)
    await seeded(store, [image, image, image])  # one digest in three repositories
    first, second = process(store), process(store)
    await walk_and_queue(first)
    assert len(await queue_names(store)) == 3
    await asyncio.gather(first.work(), second.work())
    assert first.scanner.scans_run + second.scanner.scans_run == 1
    for index in range(3):
        repository = first.registry.repository(f"acme/prod/app{index}")
        assert len(await repository.manifests.referrers(Digest.parse(image.digest))) == 1
    assert await queue_names(store) == []


async def test_a_claim_is_renewed_while_a_long_scan_runs(store: Path) -> None:
    [digest] = await seeded(store, [distinct_image(0, filler=1024 * 1024)])
    slow = Scanner(Registry(SlowLayers(str(store), 0.5)), claim_ttl=0.6)
    other = Scanner(Registry(LocalDriver(str(store))), claim_ttl=0.6)
    scan = asyncio.create_task(slow.scan(digest))
    attempts = busy = 0
    started = time.monotonic()
    while not scan.done():
        await asyncio.sleep(0.15)
        if scan.done():
            break
        attempts += 1
        try:
            await other.scan(digest)
        except ScanBusy:
            busy += 1
    await scan
    assert time.monotonic() - started > 3 * 0.6  # the scan outlived its claim's time to live
    assert attempts >= 5 and busy == attempts  # yet no one could take it over
    assert slow.scans_run == 1 and other.scans_run == 0


async def test_a_crashed_scan_is_taken_over_once_its_claim_expires(store: Path) -> None:
    [digest] = await seeded(store, [distinct_image(0)])
    service = process(store)
    await walk_and_queue(service)
    driver = service.registry.driver
    claim = {"holder": "crashed:1", "expires": time.time() + 3600}
    await driver.write(layout.scan_claim(digest, 1), msgspec.json.encode(claim))
    assert await service.work() == 0  # a live claim elsewhere: left in the queue
    assert len(await queue_names(store)) == 1
    claim["expires"] = time.time() - 1  # that process died: its claim ran out
    await driver.write(layout.scan_claim(digest, 1), msgspec.json.encode(claim))
    assert await service.work() == 1
    assert service.scanner.scans_run == 1 and await queue_names(store) == []


class GatedClaims(LocalDriver):
    """Claims are written once a gate opens, and, as on the real driver's worker thread,
    they land even when the scan that asked was cancelled meanwhile."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()
        self.landed: list[asyncio.Future[bool]] = []

    async def write_if_absent(self, path: str, data: bytes) -> bool:
        if "/claims/" not in path:
            return await super().write_if_absent(path, data)

        async def later() -> bool:
            await self.gate.wait()
            return await LocalDriver.write_if_absent(self, path, data)

        landing = asyncio.ensure_future(later())
        self.landed.append(landing)
        self.asked.set()
        return await asyncio.shield(landing)


async def test_a_scan_stopped_while_it_writes_its_claim_leaves_no_claim(store: Path) -> None:
    """A server shutting down right after a push (its scan just taking the digest) used
    to leave the claim behind: every other process, ``cargohold scan --wait`` included,
    then waited out its 120 s before scanning the image."""
    [digest] = await seeded(store, [distinct_image(0)])
    driver = GatedClaims(str(store))
    scanner = Scanner(Registry(driver))
    scanning = asyncio.create_task(scanner.scan(digest))
    await asyncio.wait_for(driver.asked.wait(), 10)
    scanning.cancel()  # the shutdown
    await asyncio.sleep(0.05)  # the claim's write is still under way
    driver.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await scanning
    assert await driver.landed[0] is True  # the claim was written after the cancellation
    assert await scanner._attempts(digest) == []  # and released
    other = Scanner(Registry(LocalDriver(str(store))))
    assert (await other.scan(digest)).counts() is not None  # at once, not after 120 s


async def test_a_failing_scan_stays_queued_with_backoff_until_it_gives_up(store: Path) -> None:
    image = distinct_image(0)
    [digest] = await seeded(store, [image])
    now = [time.time()]
    registry = Registry(LocalDriver(str(store)))
    service = ScanService(registry, Scanner(registry, clock=lambda: now[0]))
    await registry.driver.delete(layout.blob_data(Digest.parse(image.layers[-1].digest)))
    await walk_and_queue(service)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        await service.work()
        status = await service.scanner.status(digest)
        assert status is not None and status.status == "failed"
        assert status.attempts == attempt and "not in storage" in (status.reason or "")
        await service.work()  # within the backoff: not tried again
        assert (await service.scanner.status(digest)).attempts == attempt  # type: ignore[union-attr]
        if attempt < MAX_ATTEMPTS:
            assert len(await queue_names(store)) == 1
            now[0] = status.retry_at + 1  # type: ignore[operator]
    assert status.retry_at is None
    await service.work()
    assert await queue_names(store) == []  # given up: an on-demand scan can try again


async def test_nudged_scans_run_in_the_process_that_was_nudged_without_the_lease(
    store: Path,
) -> None:
    digests = await seeded(store, [distinct_image(i) for i in range(2)])
    service = process(store)
    scheduler = Scheduler(Leases(service.registry.driver, "here:1"))
    service.install(scheduler, interval=3600.0)
    assert set(scheduler.jobs) >= {JOB, WORK_JOB}
    # Another process holds the scan job's lease for an hour: walking and re-matching
    # are its business, but this process still scans what it was nudged about.
    await Leases(service.registry.driver, "elsewhere:1").acquire(JOB, ttl=3600)
    for index, digest in enumerate(digests):
        service.notice(f"acme/prod/app{index}", digest, OCI_MANIFEST, "1.0")
    assert await scheduler.run_once(JOB) is False
    assert await scheduler.run_once(WORK_JOB) is True
    assert service.scanner.scans_run == 2


def start_worker(config: Path) -> subprocess.Popen[str]:
    """``cargohold worker``, returned once it says it runs (its first line on stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "registry_server", "worker", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO_ROOT),
        env=env,
    )
    assert worker.stderr is not None
    line = worker.stderr.readline()
    assert "worker running" in line and "scan-work" in line, (line, worker.communicate())
    return worker


@pytest.mark.clients
def test_two_worker_processes_share_the_queue_and_scan_each_digest_once(
    store: Path, tmp_path: Path
) -> None:
    # Every image reads the same 24 MiB filler layer, so each scan takes a moment, and
    # the queue holds many times what one worker scans between two looks at it (0.2 s);
    # the images differ in a small layer.
    images = [distinct_image(i, filler=24 * 1024 * 1024) for i in range(24)]
    digests = asyncio.run(seeded(store, images))
    config = write_config(
        tmp_path / "worker.toml",
        storage={"url": f"file://{store}"},
        auth={"enabled": False},
        scanning={"enabled": True, "interval": "0.2s", "concurrency": 1},
    )

    # The test holds the walk's lease and queues the images itself once both workers
    # run, so neither has a head start on the queue.
    service = process(store)
    asyncio.run(Leases(service.registry.driver, "test:1").acquire(JOB, ttl=3600))

    async def all_done() -> bool:
        checker = Scanner(Registry(LocalDriver(str(store))))
        statuses = [await checker.status(d) for d in digests]
        return all(s is not None and s.status == "done" for s in statuses)

    workers: list[subprocess.Popen[str]] = []
    errors = []
    try:
        workers = [start_worker(config), start_worker(config)]
        asyncio.run(walk_and_queue(service))
        deadline = time.monotonic() + 180
        while not asyncio.run(all_done()):
            for worker in workers:
                assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the workers never scanned everything"
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            errors.append(worker.communicate(timeout=60)[1])
    scanned = [re.findall(r"scanned (sha256:[0-9a-f]{64}) in", err) for err in errors]
    assert all(worker.returncode == 0 for worker in workers), errors
    assert sorted(scanned[0] + scanned[1]) == sorted(str(d) for d in digests)  # each once
    assert scanned[0] and scanned[1], errors  # and both workers took a share
