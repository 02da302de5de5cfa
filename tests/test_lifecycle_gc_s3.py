"""GC on moto S3: batched deletes, counted requests, nothing left behind."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import pytest

from drivers import open_driver
from drivers import s3 as s3_driver
from drivers.object_store import ObjectStoreDriver
from registry_core import Digest, Registry
from registry_core.lifecycle import usage
from registry_core.names import Tenant
from registry_core.storage import layout
from registry_core.storage.driver import PathNotFound
from tests.gc_support import blob_present, image, image_complete, push_blob, push_image
from tests.helpers.emulators import CloudEmulator
from tests.helpers.images import Blob

REPO = "acme/prod/app"


async def test_gc_on_s3_deletes_in_batches_and_leaves_no_stray_keys(
    moto_server: CloudEmulator,
) -> None:
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    prefix = f"gc-{secrets.token_hex(3)}"
    registry = Registry(
        open_driver(moto_server.storage_url(bucket, prefix), **moto_server.storage_options())
    )
    try:
        await push_image(registry, REPO, image("s3-kept"), tag="1.0")
        strays = [Blob("application/octet-stream", f"stray {n}".encode()) for n in range(30)]
        for blob in strays:
            await push_blob(registry, REPO, blob)
        report = await registry.collect_garbage(grace=0.0, settle=0.0)
        assert report.blobs_deleted == 30
        # One DeleteObjects for the 30 layer links and one for the 30 set-aside blobs.
        assert report.requests_by_operation.get("delete_many") == 2
        assert "delete" not in report.requests_by_operation
        assert await image_complete(registry, REPO, "1.0")
    finally:
        await registry.close()
    keys = moto_server.object_keys(bucket, prefix + "/")
    assert not [k for k in keys if "/cargohold/jobs/gc/trash/" in k]
    for blob in strays:
        assert not [k for k in keys if blob.hex in k]


def _record_store_calls(driver: ObjectStoreDriver) -> Counter[tuple[str, str]]:
    """Count the S3 calls the driver makes, by ``(operation, key or prefix)``; the calls
    still go to moto."""
    calls: Counter[tuple[str, str]] = Counter()
    store = driver.store
    for operation in ("head", "list", "copy", "delete", "get"):
        inner = getattr(store, operation)

        def recorded(key: str, *args: Any, _inner: Any = inner, _op: str = operation, **kw: Any):
            calls[(_op, key)] += 1
            return _inner(key, *args, **kw)

        setattr(store, operation, recorded)
    return calls


async def test_gc_sets_blobs_aside_on_s3_with_a_copy_and_a_delete_each(
    moto_server: CloudEmulator,
) -> None:
    """The mark's listing gave each blob's size, and blob data is written whole: the
    set-aside skips the HEAD and the parts listing a move makes first (half its requests;
    on moto a listing scans the whole bucket)."""
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    driver = open_driver(moto_server.storage_url(bucket, "whole"), **moto_server.storage_options())
    assert isinstance(driver, ObjectStoreDriver)
    registry = Registry(driver)
    try:
        await push_image(registry, REPO, image("s3-whole"), tag="1.0")
        strays = [Blob("application/octet-stream", f"whole stray {n}".encode()) for n in range(12)]
        for blob in strays:
            await push_blob(registry, REPO, blob)
        calls = _record_store_calls(driver)
        report = await registry.collect_garbage(grace=0.0, settle=0.0)
        assert report.blobs_deleted == len(strays)
        assert report.requests_by_operation["move"] == len(strays)
        for blob in strays:
            data = driver._key(layout.blob_data(Digest.parse(blob.digest)))
            assert calls[("copy", data)] == 1
            assert calls[("delete", data)] == 1
            assert not [c for c in calls if c[0] in ("head", "list") and c[1].startswith(data)]
            assert not await blob_present(registry, blob.digest)
        assert await image_complete(registry, REPO, "1.0")
    finally:
        await registry.close()
    keys = moto_server.object_keys(bucket, "whole/")
    assert not [k for k in keys if "/cargohold/jobs/gc/trash/" in k]


async def test_move_whole_moves_appended_objects_and_reports_missing_ones(
    moto_server: CloudEmulator,
) -> None:
    """What ``move_whole`` cannot copy in one piece (an object made of appended parts, or
    one gone since the listing) takes the full move: moved whole, or "not found"."""
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    driver = open_driver(moto_server.storage_url(bucket, "mw"), **moto_server.storage_options())
    assert isinstance(driver, ObjectStoreDriver)
    try:
        await driver.write("plain", b"plain bytes")
        await driver.move_whole("plain", "moved/plain", 11)
        assert await driver.read("moved/plain") == b"plain bytes"
        with pytest.raises(PathNotFound):
            await driver.stat("plain")
        for piece in (b"first,", b"second"):
            writer = await driver.open_writer("appended", append=True)
            await writer.write(piece)
            await writer.commit()
        other = open_driver(moto_server.storage_url(bucket, "mw"), **moto_server.storage_options())
        try:  # another process: no hint that "appended" is made of parts
            await other.move_whole("appended", "moved/appended", 12)
            assert await other.read("moved/appended") == b"first,second"
            with pytest.raises(PathNotFound):
                await other.stat("appended")
            with pytest.raises(PathNotFound):
                await other.move_whole("gone", "moved/gone", 3)
        finally:
            await other.close()
    finally:
        await driver.close()
    assert not [
        k for k in moto_server.object_keys(bucket, "mw/") if "appended" in k and "moved" not in k
    ]


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-05T21:59:03.000Z",
        "2026-12-05T21:59:03.123456Z",
        "2026-12-05T21:59:03+01:00",
        "Sat, 05 Dec 2026 21:59:03 GMT",
        "1733435943",
    ],
)
def test_the_s3_timestamp_parser_agrees_with_botocores(value: str) -> None:
    from botocore.utils import parse_timestamp as botocore_parse

    assert s3_driver.parse_timestamp(value) == botocore_parse(value)


async def test_s3_listings_use_the_quick_timestamp_parser(
    moto_server: CloudEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every listed key's LastModified goes through it (the mark lists every key of the
    store, twice), and the mtimes it gives are the ones a HEAD gives."""
    parsed: list[Any] = []

    def counted(value: Any) -> Any:
        parsed.append(value)
        return original(value)

    original = s3_driver.parse_timestamp
    monkeypatch.setattr(s3_driver, "parse_timestamp", counted)
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    driver = open_driver(moto_server.storage_url(bucket, "ts"), **moto_server.storage_options())
    try:
        for n in range(5):
            await driver.write(f"dir/object{n}", b"x")
        listed = {e.path: e.mtime async for e in driver.walk("dir") if not e.is_dir}
        assert len(listed) == 5
        assert len([v for v in parsed if isinstance(v, str) and v[:4].isdigit()]) >= 5
        for path, mtime in listed.items():
            assert (await driver.stat(path)).mtime == mtime
    finally:
        await driver.close()


async def test_the_usage_recompute_after_gc_lists_pages_instead_of_each_directory_and_blob(
    moto_server: CloudEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GC recomputes usage after each run. On S3 a pruned walk is a listing per directory
    (per layer link, per tag) and each linked blob's size a HEAD: about 2,000 requests on
    a 400-manifest store, unpaced, after every run. A flat walk and one listing of the
    blob tree measure the same."""
    monkeypatch.setattr(usage, "LIST_INSTEAD_OF_STAT", 3)
    bucket = moto_server.create_bucket(f"gc-{secrets.token_hex(4)}")
    driver = open_driver(moto_server.storage_url(bucket, "usage"), **moto_server.storage_options())
    assert isinstance(driver, ObjectStoreDriver)
    registry = Registry(driver)
    tenant = Tenant("acme", "prod")
    try:
        pushed = [image(f"usage {n}", layers=4) for n in range(3)]
        for n, each in enumerate(pushed):
            await push_image(registry, REPO, each, tag=f"v{n}")
        calls = _record_store_calls(driver)
        measured = await usage.measure_tenant(registry, tenant, usage.BlobSizes(driver))
        blob_heads = [c for c in calls if c[0] == "head" and "/blobs/" in c[1]]
        assert blob_heads == []
        assert sum(n for (op, _), n in calls.items() if op == "list") <= 6
        monkeypatch.setattr(usage, "_walks_flat", lambda _driver: False)
        assert measured == await usage.measure_tenant(registry, tenant)
        assert measured.images == 3
        assert len(measured.blobs) == 15
    finally:
        await registry.close()
