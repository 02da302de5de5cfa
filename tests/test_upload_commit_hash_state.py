"""An upload's commit trusts this process's hash state, and storage catches a stale one.

A PUT that ends an upload appended by an earlier request of the same process uses the
hash state kept then, at the size it hashed, and lets the move check that size in the
same step (``move_exact``): the stored size is not read first (on S3 a HEAD and a
listing). Another process may have appended since; the move then finds the size
changed, nothing is published, and the commit reads the upload again. Where a commit
would publish without a move (the blob exists already), or fail, the size is read first.

Two registries over one folder or one moto bucket stand for two server processes.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers import open_driver
from drivers.object_store import _now_us, part_key
from registry_core import Digest, Registry
from registry_core.errors import DigestInvalid
from registry_core.lifecycle.counting import CountingDriver
from registry_core.names import RepositoryName
from registry_core.storage import layout
from registry_core.storage.blobs import Upload, UploadLimits
from registry_core.storage.driver import DriverSettings, ObjectChanged
from tests.helpers.emulators import CloudEmulator, RecordingProxy, cloud_driver

SETTINGS = DriverSettings(timeout=30.0, retries=3)
REPO = "acme/prod/app"
DATA = random.Random(7).randbytes(4096)


@pytest.fixture(params=["local", "s3"])
async def two_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Registry, Registry]]:
    if request.param == "local":
        drivers = [open_driver(str(tmp_path)), open_driver(str(tmp_path))]
    else:
        moto: CloudEmulator = request.getfixturevalue("moto_server")
        bucket = moto.create_bucket(f"commit-{secrets.token_hex(4)}")
        first = cloud_driver(moto, bucket, settings=SETTINGS)
        drivers = [first, cloud_driver(moto, bucket, prefix=first.root, settings=SETTINGS)]
    one, other = Registry(drivers[0]), Registry(drivers[1])
    try:
        yield one, other
    finally:
        await one.close()
        await other.close()


async def blob_bytes(registry: Registry, digest: Digest) -> bytes:
    return await registry.driver.read(layout.blob_data(digest))


async def test_a_commit_after_another_process_appended_reads_the_upload_again(
    two_processes: tuple[Registry, Registry],
) -> None:
    one, other = two_processes
    upload = await one.repository(REPO).blobs.start_upload()
    await upload.write(DATA[:2048])  # one's hash state: 2048 bytes
    resumed = await other.repository(REPO).blobs.get_upload(upload.id)
    await resumed.write(DATA[2048:])
    # The PUT, a request of its own on the first process (as the server makes it).
    finishing = await one.repository(REPO).blobs.get_upload(upload.id, with_size=False)
    info = await finishing.commit(Digest.of(DATA))
    assert info.size == len(DATA)
    assert await blob_bytes(one, Digest.of(DATA)) == DATA


async def test_a_stale_state_never_publishes_over_an_existing_blob(
    two_processes: tuple[Registry, Registry],
) -> None:
    """The digest of the first chunk names a blob that exists: a commit that trusted the
    stale state would need no move (and so no size check) and would accept it."""
    one, other = two_processes
    first = DATA[:2048]
    async with other.repository("acme/prod/other").blobs.upload() as earlier:
        await earlier.write(first)
        await earlier.commit(Digest.of(first))
    upload = await one.repository(REPO).blobs.start_upload()
    await upload.write(first)
    resumed = await other.repository(REPO).blobs.get_upload(upload.id)
    await resumed.write(DATA[2048:])
    finishing = await one.repository(REPO).blobs.get_upload(upload.id, with_size=False)
    with pytest.raises(DigestInvalid):
        await finishing.commit(Digest.of(first))
    # The client can still finish with the digest of everything it sent.
    finishing = await one.repository(REPO).blobs.get_upload(upload.id, with_size=False)
    assert (await finishing.commit(Digest.of(DATA))).size == len(DATA)
    assert await blob_bytes(one, Digest.of(DATA)) == DATA


async def test_a_wrong_digest_after_a_stale_state_is_still_refused(
    two_processes: tuple[Registry, Registry],
) -> None:
    one, other = two_processes
    upload = await one.repository(REPO).blobs.start_upload()
    await upload.write(DATA[:2048])
    resumed = await other.repository(REPO).blobs.get_upload(upload.id)
    await resumed.write(DATA[2048:])
    finishing = await one.repository(REPO).blobs.get_upload(upload.id, with_size=False)
    with pytest.raises(DigestInvalid) as refused:
        await finishing.commit(Digest.of(b"something else"))
    assert refused.value.detail["actual"] == str(Digest.of(DATA))  # all 4096 bytes hashed


async def test_the_put_after_a_patch_reads_no_size_on_the_local_driver(tmp_path: Path) -> None:
    counting = CountingDriver(open_driver(str(tmp_path)))
    registry = Registry(counting)
    try:
        upload = await registry.repository(REPO).blobs.start_upload()
        await upload.write(DATA)
        finishing = await registry.repository(REPO).blobs.get_upload(upload.id, with_size=False)
        counting.counts.clear()
        await finishing.commit(Digest.of(DATA))
        assert counting.counts["stat"] == 1  # the blob's existence check; none of the upload
        assert await blob_bytes(registry, Digest.of(DATA)) == DATA
    finally:
        await registry.close()


async def test_the_put_after_a_patch_costs_these_s3_requests(moto_server: CloudEmulator) -> None:
    bucket = moto_server.create_bucket(f"commit-{secrets.token_hex(4)}")
    async with RecordingProxy(moto_server.url) as proxy:
        options = {**moto_server.storage_options(), "endpoint_url": proxy.url}
        registry = Registry(cloud_driver(moto_server, bucket, settings=SETTINGS, options=options))
        try:
            limits = UploadLimits(per_repository=10)  # the session has a marker
            upload = await registry.repository(REPO).blobs.start_upload(limits)
            await upload.write(DATA)
            proxy.requests.clear()
            blobs = registry.repository(REPO).blobs
            finishing = await blobs.get_upload(upload.id, limits, with_size=False)
            await finishing.commit(Digest.of(DATA))
            kinds: Counter[str] = Counter(
                "LIST" if "list-type" in query else method for method, _, query in proxy.requests
            )
            assert kinds == {
                "GET": 1,  # the session's record
                "HEAD": 2,  # the blob's existence (one HEAD: a leaf), the data's layout
                "LIST": 1,  # the data's parts
                "PUT": 2,  # the copy into place, the link
                "POST": 2,  # the parts' delete; the record's and the marker's together
            }
            keys = [info.key for info in await registry.driver._list_all("")]
            assert [key for key in keys if "/_uploads/" in key or "/uploads/" in key] == []
            assert any(key.endswith("/link") for key in keys)
        finally:
            await registry.close()


REAL, FAKE, MORE = DATA[:2048], bytes(2048), DATA[2048:]


@pytest.fixture
async def raced(moto_server: CloudEmulator) -> AsyncIterator[tuple[Registry, Upload]]:
    """An upload on moto whose first chunk this process hashed (REAL) and another
    process's PATCH of the same offset, finishing later, replaced (FAKE, same length)."""
    bucket = moto_server.create_bucket(f"commit-{secrets.token_hex(4)}")
    driver = cloud_driver(moto_server, bucket, settings=SETTINGS)
    registry = Registry(driver)
    try:
        blobs = registry.repository(REPO).blobs
        upload = await blobs.start_upload()
        await upload.write(REAL)  # this process hashed the real bytes
        data = driver._key(layout.upload_data(blobs.name, upload.id))
        await driver.store.put(part_key(data, 0, _now_us() + 1_000_000), FAKE)
        yield registry, upload
    finally:
        await registry.close()


@pytest.mark.parametrize("same_request", [True, False])
async def test_a_chunk_replaced_by_a_racing_request_is_not_published_under_its_digest(
    raced: tuple[Registry, Upload], same_request: bool
) -> None:
    """Two PATCHes of one offset racing on two processes both store a part there; the
    newer part is the upload's. The process that hashed the older one must not publish
    the newer bytes under the older bytes' digest: blobs are shared, so that would
    poison a digest for everyone who pushes it later."""
    registry, upload = raced
    blobs = upload.blobs
    finishing = upload if same_request else await blobs.get_upload(upload.id, with_size=False)
    with pytest.raises(DigestInvalid):
        await finishing.commit(Digest.of(REAL))
    assert not await registry.blob_store.exists(Digest.of(REAL))
    # What the upload holds now is what a commit may publish.
    finishing = await blobs.get_upload(upload.id, with_size=False)
    assert (await finishing.commit(Digest.of(FAKE))).size == len(FAKE)
    assert await blob_bytes(registry, Digest.of(FAKE)) == FAKE


async def test_a_state_is_not_continued_over_a_chunk_a_racing_request_replaced(
    raced: tuple[Registry, Upload],
) -> None:
    """The next PATCH on the process whose chunk lost the race must not continue its
    hash state (of the lost bytes): it rehashes what is stored."""
    registry, upload = raced
    blobs = upload.blobs
    following = await blobs.get_upload(upload.id, with_size=False)
    await following.write(MORE)
    finishing = await blobs.get_upload(upload.id, with_size=False)
    with pytest.raises(DigestInvalid):
        await finishing.commit(Digest.of(REAL + MORE))
    finishing = await blobs.get_upload(upload.id, with_size=False)
    assert (await finishing.commit(Digest.of(FAKE + MORE))).size == len(DATA)
    assert await blob_bytes(registry, Digest.of(FAKE + MORE)) == FAKE + MORE


@pytest.mark.parametrize("exists", [True, False])
async def test_azure_appends_from_one_size_cannot_both_succeed(
    azurite: CloudEmulator, exists: bool
) -> None:
    """Azure appends in place (a new block list): the later of two appends racing from
    one size would drop the other's blocks. Each commits only over the blob it read."""
    bucket = azurite.create_bucket(f"commit-{secrets.token_hex(4)}")
    driver = cloud_driver(azurite, bucket, settings=SETTINGS)
    path = layout.upload_data(RepositoryName.parse(REPO), "race")
    try:
        if exists:
            writer = await driver.open_writer(path, append=True)
            await writer.write(b"start ")
            await writer.commit()
        first = await driver.open_writer(path, append=True)
        second = await driver.open_writer(path, append=True)
        await first.write(b"first")
        await second.write(b"other")
        await first.commit()
        with pytest.raises(ObjectChanged):
            await second.commit()
        assert await driver.read(path) == (b"start " if exists else b"") + b"first"
    finally:
        await driver.close()
