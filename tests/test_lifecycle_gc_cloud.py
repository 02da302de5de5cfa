"""GC through the library on every object store emulator: S3 (moto), GCS, Azure."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from registry_core import Registry
from tests.gc_support import blob_present, image, image_complete, push_blob, push_image
from tests.helpers.emulators import cloud_driver
from tests.helpers.images import Blob

REPO = "acme/prod/app"


@pytest.mark.parametrize("emulator", ["moto_server", "gcs_emulator", "azurite"])
async def test_gc_keeps_tagged_images_and_deletes_garbage(
    emulator: str, request: pytest.FixtureRequest
) -> None:
    store: Any = request.getfixturevalue(emulator)
    bucket = store.create_bucket(f"gc-{secrets.token_hex(4)}")
    registry = Registry(cloud_driver(store, bucket))
    try:
        await push_image(registry, REPO, image(f"{emulator}-kept"), tag="1.0")
        dropped = image(f"{emulator}-dropped")
        await push_image(registry, REPO, dropped, tag="old")
        await registry.repository(REPO).manifests.delete(dropped.digest)
        stray = Blob("application/octet-stream", b"stray on " + emulator.encode())
        await push_blob(registry, REPO, stray)
        report = await registry.collect_garbage(grace=0.0, settle=0.0)
        assert report.blobs_deleted == len(dropped.blobs()) + 2  # + manifest, + stray
        assert await image_complete(registry, REPO, "1.0")
        assert not await blob_present(registry, stray.digest)
        assert not await blob_present(registry, dropped.digest)
        again = await registry.collect_garbage(grace=0.0, settle=0.0)
        assert again.objects_reclaimed == 0
    finally:
        await registry.close()
