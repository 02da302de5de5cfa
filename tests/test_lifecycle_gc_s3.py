"""GC on moto S3: batched deletes, counted requests, nothing left behind."""

from __future__ import annotations

import secrets

from drivers import open_driver
from registry_core import Registry
from tests.gc_support import image, image_complete, push_blob, push_image
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
