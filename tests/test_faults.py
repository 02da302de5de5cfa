"""Backend faults, injected beneath the driver's retry loop (``drivers.faults.FaultyStore``),
through a full push and pull with the server in this process.

Transient faults (the Nth call of every operation fails once, or hangs until the
request timeout) are retried inside the driver: clients never notice. A fault that
persists becomes 503 with the JSON error body and code ``UNAVAILABLE``, and never a
blob that is partly visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drivers.faults import FaultyStore
from drivers.object_store import ObjectStoreDriver
from registry_core import Digest, Registry, load_config
from registry_core.storage import layout
from registry_core.storage.driver import DriverSettings
from registry_server.app import build_app
from tests.helpers import build_image, sample_image, skopeo, unique_repo_name, write_oci_layout
from tests.helpers.emulators import CloudEmulator, cloud_driver

pytestmark = pytest.mark.clients

CLOUDS = ["s3", "gcs", "azure"]
EMULATOR_FIXTURE = {"s3": "moto_server", "gcs": "gcs_emulator", "azure": "azurite"}
FAST_RETRIES = DriverSettings(part_size=5 * 1024 * 1024, timeout=5.0, retries=4)
"""Persistent faults give up after 5 attempts (about 1.5 s of backoff)."""


@pytest.fixture(scope="module")
def buckets() -> dict[str, str]:
    return {}


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest, buckets: dict[str, str]) -> tuple[CloudEmulator, str]:
    emulator: CloudEmulator = request.getfixturevalue(EMULATOR_FIXTURE[request.param])
    if emulator.kind not in buckets:
        buckets[emulator.kind] = emulator.create_bucket(f"faults-{secrets.token_hex(4)}")
    return emulator, buckets[emulator.kind]


class InProcessServer:
    """The Cargohold app on a real 127.0.0.1 port, running on the test's event loop."""

    def __init__(self, driver: ObjectStoreDriver, *, redirect: bool = False) -> None:
        self.driver = driver
        config = load_config(
            overrides={"auth": {"enabled": False}, "storage": {"redirect": redirect}},
            environ={},
        )
        self.app = build_app(config, Registry(driver))
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""
        self.host = ""

    @property
    def store(self) -> FaultyStore:
        assert isinstance(self.driver.store, FaultyStore)
        return self.driver.store

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[InProcessServer] = []

    async def start(driver: ObjectStoreDriver, **kwargs: Any) -> InProcessServer:
        server = InProcessServer(driver, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def run_skopeo(*args: str) -> Any:
    """skopeo in a thread, so this loop keeps serving it."""
    return await asyncio.to_thread(skopeo, *args)


async def upload(
    session: aiohttp.ClientSession, base: str, repo: str, data: bytes, chunk: int
) -> tuple[int, Any]:
    """POST, PATCH in *chunk*-sized pieces, PUT; the first non-2xx answer is returned."""
    answer = await session.post(f"{base}/v2/{repo}/blobs/uploads/")
    if answer.status != 202:
        return answer.status, await answer.json()
    location = answer.headers["Location"]
    for start in range(0, len(data), chunk):
        body = data[start : start + chunk]
        headers = {"Content-Range": f"{start}-{start + len(body) - 1}"}
        answer = await session.patch(f"{base}{location}", data=body, headers=headers)
        if answer.status != 202:
            return answer.status, await answer.json()
        location = answer.headers["Location"]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    answer = await session.put(f"{base}{location}?digest={digest}")
    if answer.status != 201:
        return answer.status, await answer.json()
    return 201, digest


def assert_unavailable(status: int, body: Any) -> None:
    assert status == 503
    assert [error["code"] for error in body["errors"]] == ["UNAVAILABLE"]


async def blob_is_stored(driver: ObjectStoreDriver, digest: str) -> bool:
    objects, _ = await driver.store.inner.list(
        f"{driver.root}/{layout.blob_dir(Digest.parse(digest))}"
    )
    return bool(objects)


# -- transient faults ------------------------------------------------------------------------------


async def test_transient_faults_are_retried_through_a_full_push_and_pull(
    cloud: tuple[CloudEmulator, str], serve: Any, tmp_path: Path
) -> None:
    """Every third call of every operation fails once; skopeo pushes and pulls regardless."""
    driver = cloud_driver(*cloud, settings=FAST_RETRIES, every=3)
    server = await serve(driver, redirect=True)
    repo = unique_repo_name()
    big_layer = {"opt/big.bin": random.Random(5).randbytes(7 * 1024 * 1024)}
    image = sample_image(layers=3)
    write_oci_layout(tmp_path / "src", image, "1.0")
    heavy = build_image([big_layer, {"etc/small": "x"}])
    write_oci_layout(tmp_path / "heavy", heavy, "1.0")

    await run_skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:1.0",
        f"docker://{server.host}/{repo}:1.0",
    )
    await run_skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'heavy'}:1.0",
        f"docker://{server.host}/{repo}:heavy",
    )
    for tag, expected in (("1.0", image), ("heavy", heavy)):
        out = tmp_path / f"out-{tag}"
        await run_skopeo(
            "copy",
            "--src-tls-verify=false",
            f"docker://{server.host}/{repo}:{tag}",
            f"oci:{out}:{tag}",
        )
        for blob in expected.blobs():
            stored = (out / "blobs" / "sha256" / blob.digest.split(":", 1)[1]).read_bytes()
            assert stored == blob.data

    faults = server.store.faults
    assert sum(faults.values()) >= 10
    assert {"head", "put", "list", "copy"} <= set(faults)


async def test_transient_faults_in_a_chunked_upload_are_invisible(
    cloud: tuple[CloudEmulator, str], serve: Any
) -> None:
    """1 KiB chunks (parts joined at commit), every third call of each operation failing once."""
    driver = cloud_driver(*cloud, settings=FAST_RETRIES, every=3)
    server = await serve(driver)
    repo = unique_repo_name()
    data = random.Random(6).randbytes(12 * 1024 + 7)
    async with aiohttp.ClientSession() as session:
        status, digest = await upload(session, server.url, repo, data, 1024)
        assert status == 201, digest
        answer = await session.get(f"{server.url}/v2/{repo}/blobs/{digest}")
        assert answer.status == 200
        assert await answer.read() == data
    assert sum(server.store.faults.values()) >= 10


async def test_a_hung_request_is_cut_by_the_timeout_and_retried(
    moto_server: CloudEmulator, buckets: dict[str, str]
) -> None:
    bucket = buckets.setdefault("s3", moto_server.create_bucket(f"faults-{secrets.token_hex(4)}"))
    settings = DriverSettings(timeout=0.3, retries=3)
    driver = cloud_driver(
        moto_server, bucket, settings=settings, every=2, stall={"get"}, only={"get"}
    )
    try:
        await driver.write("slow/object", b"payload")
        started = time.monotonic()
        assert await driver.read("slow/object") == b"payload"  # first call: fine
        assert await driver.read("slow/object") == b"payload"  # second: hangs, cut, retried
        assert time.monotonic() - started >= 0.3
        assert driver.store.faults["get"] == 1
    finally:
        await driver.close()


async def test_a_broken_download_stream_resumes_where_it_stopped(
    cloud: tuple[CloudEmulator, str],
) -> None:
    driver = cloud_driver(*cloud, settings=FAST_RETRIES, cut_streams=700_000)
    data = random.Random(10).randbytes(3 * 1024 * 1024 + 99)
    try:
        await driver.write("streamed/object", data)
        got = b"".join([chunk async for chunk in driver.read_stream("streamed/object", 5)])
        assert got == data[5:]
        assert driver.store.faults["stream"] >= 4
        assert driver.store.read["/".join([driver.root, "streamed/object"])] == len(data) - 5
    finally:
        await driver.close()


# -- persistent faults -----------------------------------------------------------------------------


async def test_storage_outage_at_commit_is_503_and_no_blob(
    cloud: tuple[CloudEmulator, str], serve: Any
) -> None:
    """The bytes are stored but cannot be moved into place: the client gets 503 UNAVAILABLE,
    and the blob stays invisible, in the repository and in the store."""
    driver = cloud_driver(
        *cloud, settings=FAST_RETRIES, down={"copy", "compose", "upload_part_copy"}
    )
    server = await serve(driver)
    repo = unique_repo_name()
    data = random.Random(7).randbytes(64 * 1024)
    async with aiohttp.ClientSession() as session:
        status, body = await upload(session, server.url, repo, data, len(data))
        assert_unavailable(status, body)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        head = await session.head(f"{server.url}/v2/{repo}/blobs/{digest}")
        assert head.status == 404
    assert not await blob_is_stored(driver, digest)
    assert server.store.faults["copy"] >= FAST_RETRIES.retries + 1


async def test_storage_outage_on_writes_is_503_json(
    cloud: tuple[CloudEmulator, str], serve: Any
) -> None:
    driver = cloud_driver(
        *cloud, settings=FAST_RETRIES, down={"put", "start_append", "start_upload"}
    )
    server = await serve(driver)
    async with aiohttp.ClientSession() as session:
        answer = await session.post(f"{server.url}/v2/{unique_repo_name()}/blobs/uploads/")
        assert answer.headers["Content-Type"].startswith("application/json")
        assert_unavailable(answer.status, await answer.json())


async def test_storage_outage_on_reads_is_503_json_for_manifests_and_blobs(
    moto_server: CloudEmulator, buckets: dict[str, str], serve: Any, tmp_path: Path
) -> None:
    bucket = buckets.setdefault("s3", moto_server.create_bucket(f"faults-{secrets.token_hex(4)}"))
    driver = cloud_driver(moto_server, bucket, settings=FAST_RETRIES, every=0)
    server = await serve(driver)
    repo = unique_repo_name()
    image = sample_image()
    write_oci_layout(tmp_path / "src", image, "1.0")
    await run_skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:1.0",
        f"docker://{server.host}/{repo}:1.0",
    )
    server.store.down = {"get", "head"}
    async with aiohttp.ClientSession() as session:
        answer = await session.get(
            f"{server.url}/v2/{repo}/manifests/1.0",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert_unavailable(answer.status, await answer.json())
        answer = await session.get(f"{server.url}/v2/{repo}/blobs/{image.layer_digests[0]}")
        assert_unavailable(answer.status, json.loads(await answer.read()))
        server.store.down = set()
        answer = await session.get(f"{server.url}/v2/{repo}/blobs/{image.layer_digests[0]}")
        assert answer.status == 200


async def test_outage_during_a_large_patch_loses_only_that_chunk(
    moto_server: CloudEmulator, buckets: dict[str, str], serve: Any
) -> None:
    """A multipart part that cannot be stored fails the PATCH with 503; nothing of it is
    published, the upload still reports what it held before, and the client can resume."""
    bucket = buckets.setdefault("s3", moto_server.create_bucket(f"faults-{secrets.token_hex(4)}"))
    driver = cloud_driver(moto_server, bucket, settings=FAST_RETRIES, every=0)
    server = await serve(driver)
    repo = unique_repo_name()
    first = random.Random(8).randbytes(1024)
    second = random.Random(9).randbytes(12 * 1024 * 1024)
    async with aiohttp.ClientSession() as session:
        answer = await session.post(f"{server.url}/v2/{repo}/blobs/uploads/")
        location = answer.headers["Location"]
        answer = await session.patch(
            f"{server.url}{location}", data=first, headers={"Content-Range": "0-1023"}
        )
        assert answer.status == 202
        location = answer.headers["Location"]

        server.store.down = {"upload_part"}
        span = f"1024-{1024 + len(second) - 1}"
        answer = await session.patch(
            f"{server.url}{location}", data=second, headers={"Content-Range": span}
        )
        assert_unavailable(answer.status, await answer.json())
        status = await session.get(f"{server.url}{location}")
        assert status.status == 204
        assert status.headers["Range"] == "0-1023"

        server.store.down = set()
        answer = await session.patch(
            f"{server.url}{location}", data=second, headers={"Content-Range": span}
        )
        assert answer.status == 202
        digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
        answer = await session.put(f"{server.url}{answer.headers['Location']}?digest={digest}")
        assert answer.status == 201
        blob = await session.get(f"{server.url}/v2/{repo}/blobs/{digest}")
        assert await blob.read() == first + second
