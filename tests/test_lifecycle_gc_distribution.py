"""A store written by CNCF Distribution 2.8.2 is collected correctly by Cargohold's GC, and
Distribution still serves what GC kept."""

from __future__ import annotations

from typing import Any

from drivers.local import LocalDriver
from registry_core import Registry
from tests.gc_support import blob_present, image, image_complete
from tests.helpers.images import build_index
from tests.helpers.registry_api import get_manifest, new_session, push_blob, push_image

REPO = "acme/prod/app"


async def test_gc_collects_a_store_distribution_wrote(distribution_factory: Any) -> None:
    distribution = distribution_factory()
    kept, dropped = image("dist-kept"), image("dist-dropped")
    index = build_index([image("dist-amd"), image("dist-arm")])
    push_image(distribution.url, REPO, kept, tag="1.0")
    push_image(distribution.url, REPO, index, tag="multi")
    push_image(distribution.url, REPO, dropped, tag="old")
    stray = push_blob(distribution.url, REPO, b"uploaded, never referenced")
    session = new_session()
    gone = session.delete(f"{distribution.url}/v2/{REPO}/manifests/{dropped.digest}")
    assert gone.status_code == 202, gone.text
    store = distribution.storage_dir
    distribution.stop()

    registry = Registry(LocalDriver(str(store)))
    report = await registry.collect_garbage(grace=0.0, settle=0.0)
    assert await image_complete(registry, REPO, "1.0")
    assert await image_complete(registry, REPO, "multi")
    assert not await blob_present(registry, stray)
    assert not await blob_present(registry, dropped.digest)
    for blob in dropped.layers:
        assert not await blob_present(registry, blob.digest)
    assert report.blobs_deleted == 1 + len(dropped.blobs()) + 1  # stray, config+layers, manifest

    again = distribution_factory(store)
    for tag, wanted in (("1.0", kept.digest), ("multi", index.digest)):
        answer = get_manifest(again.url, REPO, tag)
        assert answer.status_code == 200
        assert answer.headers["Docker-Content-Digest"] == wanted
    for blob in kept.blobs():
        fetched = session.get(f"{again.url}/v2/{REPO}/blobs/{blob.digest}")
        assert fetched.status_code == 200 and fetched.content == blob.data
