"""The proxy benchmark's lean puller (``benchmarks.client.pull_image``) against a real server.

The warm-pull goal is judged on this client, so it must stay a correct client: every
blob of the image fetched whole and its bytes checked against its digest, on threads
(so the image's blobs hash on every core) and from a shared pool under concurrency.
A blob whose stored bytes were changed on disk must fail the pull, not count as one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from benchmarks.client import BenchError, fetch_blob, pull_image
from tests.helpers import build_image, make_random_layer, unique_repo_name
from tests.helpers.registry_api import push_image

pytestmark = pytest.mark.timeout(120)


def _image(layers: int = 3):
    """Layers of fresh random bytes: no other test's blob is shared (one is corrupted)."""
    return build_image([make_random_layer(300_000 + 70_000 * i) for i in range(layers)])


def test_pull_image_fetches_and_checks_every_blob(shared_server) -> None:
    repo = unique_repo_name()
    image = _image()
    push_image(shared_server.url, repo, image, "1")

    pulled = asyncio.run(pull_image(shared_server.url, repo, "1"))

    assert pulled.blobs == len(image.blobs()) == 4
    assert pulled.blob_bytes == sum(blob.size for blob in image.blobs())
    assert pulled.seconds > 0


def test_concurrent_pulls_share_one_pool(shared_server) -> None:
    repo = unique_repo_name()
    image = _image()
    push_image(shared_server.url, repo, image, "1")

    async def pull_at_once(pool: concurrent.futures.Executor) -> list[int]:
        pulls = await asyncio.gather(
            *(pull_image(shared_server.url, repo, "1", pool) for _ in range(3))
        )
        return [p.blob_bytes for p in pulls]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        sizes = asyncio.run(pull_at_once(pool))

    assert sizes == [sum(blob.size for blob in image.blobs())] * 3


def test_a_blob_whose_bytes_changed_fails_the_pull(shared_server) -> None:
    repo = unique_repo_name()
    image = _image()
    push_image(shared_server.url, repo, image, "1")
    layer = image.layer_digests[1]
    store = shared_server.storage_path
    assert store is not None
    (data,) = store.glob(f"**/blobs/sha256/*/{layer.removeprefix('sha256:')}/data")
    original = data.read_bytes()
    body = bytearray(original)
    body[len(body) // 2] ^= 0xFF  # same size: only hashing every byte notices
    data.write_bytes(bytes(body))
    try:
        with pytest.raises(BenchError, match="does not match its digest"):
            fetch_blob(f"{shared_server.url}/v2/{repo}/blobs/{layer}", layer, {})
        with pytest.raises(BenchError, match="does not match its digest"):
            asyncio.run(pull_image(shared_server.url, repo, "1"))
    finally:  # the store is the session's: leave nothing corrupt for a later scrub
        data.write_bytes(original)


def test_a_missing_blob_fails_the_pull(shared_server) -> None:
    repo = unique_repo_name()
    push_image(shared_server.url, repo, _image(1), "1")
    missing = "sha256:" + "0" * 64

    with pytest.raises(BenchError, match="answered 404"):
        fetch_blob(f"{shared_server.url}/v2/{repo}/blobs/{missing}", missing, {})
