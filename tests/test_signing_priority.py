"""The signing worker below the requests' priority, and what one signature costs in storage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from drivers.local import LocalDriver
from registry_core import Registry, load_config
from registry_core import mediatypes as mt
from registry_core.digest import Digest
from registry_core.lifecycle.counting import CountingDriver
from registry_core.secrets import SecretBox
from registry_core.signing import KeyStore, Signer, SigningDefaults, cosign, request_host
from registry_core.storage import layout
from registry_server.app import WEBSITE_KEY, build_app

from .test_signing_feed import push_image

REPO = "acme/prod/app"
HOST = "registry.example:5000"


class PathCountingDriver(CountingDriver):
    """Also remembers the paths read, to tell which objects a signature reads back."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.read_paths: list[str] = []

    async def read(self, path: str) -> bytes:
        self.read_paths.append(path)
        return await super().read(path)


def _signer(registry: Registry) -> Signer:
    keys = KeyStore(registry.driver, SecretBox("test secrets key, long enough"))
    signer = Signer(
        registry, keys, SigningDefaults(enabled=True, simple=False, public_hosts=(HOST,))
    )
    signer.attach()
    return signer


async def _pushed_with_signer(
    tmp_path: Path,
    count: int,
    *,
    batch: int,
    busy_share: float,
    max_rest: float,
    max_busy_share: float | None = None,
    backlog_full: int = 256,
) -> tuple[Registry, Signer, list[Any]]:
    """*count* manifests pushed and noted, and a signer with these priority settings
    (the share stays at *busy_share* whatever the backlog unless *max_busy_share*)."""
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    signer = _signer(registry)
    digests = await _push(registry, count)
    signer.batch, signer.busy_share, signer.max_rest = batch, busy_share, max_rest
    signer.max_busy_share = busy_share if max_busy_share is None else max_busy_share
    signer.backlog_full = backlog_full
    return registry, signer, digests


async def _drain_while_busy(signer: Signer) -> None:
    """Drain with one request in flight all along."""
    signer.request_started()
    try:
        await asyncio.wait_for(signer.drain(), 60)
    finally:
        signer.request_finished()


async def _push(registry: Registry, count: int) -> list[Any]:
    return [await push_image(registry, tag=f"t{i}", seed=str(i)) for i in range(count)]


async def _signed(registry: Registry, digests: list[Any]) -> int:
    repo = registry.repository(REPO)
    found = 0
    for digest in digests:
        found += bool(await cosign.read_attachment(repo, digest))
    return found


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never met"
        await asyncio.sleep(0.01)


async def test_the_worker_rests_after_a_batch_while_requests_keep_coming(tmp_path: Path) -> None:
    registry, signer, digests = await _pushed_with_signer(
        tmp_path, 12, batch=4, busy_share=0.001, max_rest=3600.0
    )
    signer.request_started()  # a request in flight: the process is busy
    drain = asyncio.create_task(signer.drain())
    try:
        await _until(lambda: len(signer._pending) == 8)
        while await _signed(registry, digests) < 4:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # still busy: the rest (999 times the batch) goes on
        assert len(signer._pending) == 8 and await _signed(registry, digests) == 4
        signer.request_finished()
        await asyncio.wait_for(drain, 30)  # idle again: the rest ends at once
    finally:
        drain.cancel()
    assert await _signed(registry, digests) == 12


async def test_a_busy_process_still_signs_its_share(tmp_path: Path) -> None:
    registry, signer, digests = await _pushed_with_signer(
        tmp_path, 6, batch=2, busy_share=0.5, max_rest=3600.0
    )  # rest = batch time
    await _drain_while_busy(signer)  # busy all along, e.g. an upload that lasts
    assert await _signed(registry, digests) == 6


async def test_an_idle_process_signs_everything_without_resting(tmp_path: Path) -> None:
    registry, signer, digests = await _pushed_with_signer(
        tmp_path, 10, batch=2, busy_share=0.01, max_rest=3600.0
    )
    await asyncio.wait_for(signer.drain(), 60)  # would rest an hour per batch if it rested
    assert await _signed(registry, digests) == 10


async def test_sparse_short_requests_do_not_slow_signing(tmp_path: Path) -> None:
    registry, signer, digests = await _pushed_with_signer(
        tmp_path, 10, batch=2, busy_share=0.01, max_rest=3600.0
    )

    async def poller() -> None:  # a client polling now and then: each request is short
        while True:
            signer.request_started()
            await asyncio.sleep(0)
            signer.request_finished()
            await asyncio.sleep(0.003)

    polling = asyncio.create_task(poller())
    try:
        await asyncio.wait_for(signer.drain(), 60)  # an hour per batch if it rested
    finally:
        polling.cancel()
    assert await _signed(registry, digests) == 10


async def test_a_backlog_raises_the_share_so_signing_keeps_up(tmp_path: Path) -> None:
    """A busy process with a full backlog signs at ``max_busy_share`` (rest = batch time
    at 0.5), not at ``busy_share`` (999 times the batch here: an hour's rest a batch)."""
    registry, signer, digests = await _pushed_with_signer(
        tmp_path,
        12,
        batch=2,
        busy_share=0.001,
        max_rest=3600.0,
        max_busy_share=0.5,
        backlog_full=4,
    )
    assert signer._share() == pytest.approx(0.5)  # 12 noted, 4 make a full backlog
    signer.request_started()
    drain = asyncio.create_task(signer.drain())
    try:
        # Full backlog: batch, rest, batch... at half the time each, while busy all along.
        await _until(lambda: len(signer._pending) <= 2, timeout=60)
        # Two left (half of backlog_full): the share falls back towards busy_share.
        assert signer._share() == pytest.approx(0.001 + 0.499 * len(signer._pending) / 4)
    finally:
        signer.request_finished()
    await asyncio.wait_for(drain, 60)  # idle again: the rest ends at once
    assert await _signed(registry, digests) == 12


async def test_the_longest_rest_is_max_rest(tmp_path: Path) -> None:
    registry, signer, digests = await _pushed_with_signer(
        tmp_path, 6, batch=2, busy_share=0.001, max_rest=0.05
    )
    await _drain_while_busy(signer)  # 999 times the batch, were it not capped
    assert await _signed(registry, digests) == 6


async def test_a_nudged_signature_costs_a_bounded_number_of_storage_calls_and_no_reread(
    tmp_path: Path,
) -> None:
    driver = PathCountingDriver(LocalDriver(str(tmp_path / "store")))
    registry = Registry(driver)
    signer = _signer(registry)
    await push_image(registry, tag="warm", seed="warm")
    await signer.drain()  # the key, the settings and the hosts are read once per process
    token = request_host.set(HOST)
    try:
        digests = await _push(registry, 8)
    finally:
        request_host.reset(token)
    driver.counts.clear()
    driver.read_paths.clear()
    await signer.drain()
    total, counts, reads = driver.total, dict(driver.counts), list(driver.read_paths)
    repo = registry.repository("acme/prod/app")
    payloads = sum([len(await cosign.read_attachment(repo, d)) for d in digests])
    assert payloads >= len(digests)
    # Per signed manifest: the tag and the attachment tag read, the config blob and its
    # link, the attachment, its revision link, its tag's two links, the put's two
    # checks and the subject's revision once the attachment is stored (a manifest deleted
    # meanwhile has its signature withdrawn: ManifestStore.keep_attachment); per signed
    # identity (a manifest noted under several references has one each): its payload
    # blob and link.
    assert total <= 11 * len(digests) + 2 * payloads, counts
    assert counts.get("list", 0) == 0
    # The manifest just stored is taken from the manifest cache, never read back.
    blob_reads = [p for p in reads if "/blobs/" in p]
    assert blob_reads == []
    assert await _signed(registry, digests) == 8


async def test_a_tagged_manifest_with_a_subject_is_not_signed(tmp_path: Path) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    signer = _signer(registry)
    subject = await push_image(registry, tag="1.0", seed="subject")
    referrer = await push_image(
        registry,
        tag="ref",
        seed="referrer",
        subject={"mediaType": mt.OCI_MANIFEST, "digest": str(subject), "size": 1},
    )
    report = await signer.sign_manifest(REPO, referrer, tags=["ref"])
    assert report.identities == [] and report.cosign_added == 0
    assert await cosign.read_attachment(registry.repository(REPO), referrer) == []


@pytest.mark.parametrize("status_path", ["/v2/", "/v2/acme/prod/app/manifests/missing"])
async def test_the_server_tells_the_signer_of_every_request(
    tmp_path: Path, status_path: str
) -> None:
    config = load_config(
        overrides={
            "storage": {"url": f"file://{tmp_path / 'storage'}"},
            "auth": {"enabled": False},
            "signing": {"enabled": True, "simple": False},
        },
        environ={},
    )
    app = build_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        signer = app[WEBSITE_KEY].signer
        assert signer is not None
        before = signer._started
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(server.make_url(status_path)) as resp:
                    await resp.read()
        assert signer._started == before + 3
        assert signer._in_flight == 0
    finally:
        await server.close()


async def test_the_worker_signs_once_pushes_pause(tmp_path: Path) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    signer = _signer(registry)
    signer.quiet, signer.max_delay = 0.05, 3600.0
    worker = asyncio.create_task(signer.run_forever())
    try:
        digests = await _push(registry, 3)
        await asyncio.wait_for(signer.idle(), 30)
        assert await _signed(registry, digests) == 3
    finally:
        worker.cancel()


async def test_a_stream_of_pushes_without_a_pause_is_signed_after_max_delay(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    signer = _signer(registry)
    signer.quiet, signer.max_delay = 3600.0, 0.2  # no pause is ever long enough
    worker = asyncio.create_task(signer.run_forever())
    try:
        first = await push_image(registry, tag="first", seed="first")
        deadline = asyncio.get_running_loop().time() + 30
        pushed = 0
        while not await _signed(registry, [first]):
            assert asyncio.get_running_loop().time() < deadline, "never signed"
            await push_image(registry, tag=f"s{pushed}", seed=f"s{pushed}")
            pushed += 1
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()


async def test_a_schema1_manifest_a_distribution_bucket_holds_is_not_signed(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    signer = _signer(registry)
    repo = registry.repository(REPO)
    body = b'{"schemaVersion": 1, "name": "acme/prod/app", "tag": "old", "fsLayers": []}'
    digest = Digest.of(body)
    await repo.blobs.store.put_small(body, digest)  # as Distribution stored it, then tagged
    await registry.driver.write(layout.revision_link(repo.name, digest), str(digest).encode())
    await registry.driver.write(layout.tag_current_link(repo.name, "old"), str(digest).encode())
    report = await signer.sign_manifest(REPO, digest, tags=["old"])
    assert report.identities == [] and report.cosign_added == 0
