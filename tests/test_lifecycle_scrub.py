"""Scrub (registry_core/lifecycle/scrub.py): corrupt blobs and broken links are found and
repaired, incrementally, from a cursor in storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.lifecycle.scrub import Scrubber
from registry_core.storage import layout
from tests.gc_support import image, image_complete, push_image, readable_in

REPO = "acme/prod/app"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def registry(store: Path) -> Registry:
    return Registry(LocalDriver(str(store)))


def corrupt(store: Path, digest: str) -> None:
    """Flip bytes of a blob on disk, as bit rot would."""
    path = store / layout.blob_data(Digest.parse(digest))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def test_a_clean_store_has_no_problems(registry: Registry) -> None:
    await push_image(registry, REPO, image("clean"), tag="1.0")
    report = await Scrubber(registry.driver, bytes_per_second=0).full_pass()
    assert report.problems == []
    assert report.blobs_checked == 4  # config, two layers, manifest


async def test_a_blob_corrupted_on_disk_is_found(registry: Registry, store: Path) -> None:
    img = image("rotten")
    await push_image(registry, REPO, img, tag="1.0")
    corrupt(store, img.layers[1].digest)
    report = await Scrubber(registry.driver, bytes_per_second=0).full_pass()
    assert [(p.kind, p.where) for p in report.problems] == [("blob-corrupt", img.layers[1].digest)]
    assert not report.problems[0].repaired


async def test_repair_makes_a_corrupt_blob_a_clean_404(registry: Registry, store: Path) -> None:
    img = image("rotten-repaired")
    await push_image(registry, REPO, img, tag="1.0")
    corrupt(store, img.layers[0].digest)
    report = await Scrubber(registry.driver, repair=True, bytes_per_second=0, min_age=0).full_pass()
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["blob-corrupt", "layer-dangling"]
    assert all(p.repaired for p in report.problems)
    assert not await readable_in(registry, REPO, img.layers[0].digest)
    assert await readable_in(registry, REPO, img.layers[1].digest)


async def test_repair_removes_a_tag_whose_manifest_is_corrupt(
    registry: Registry, store: Path
) -> None:
    img = image("bad-manifest")
    await push_image(registry, REPO, img, tag="1.0")
    corrupt(store, img.digest)
    await Scrubber(registry.driver, repair=True, bytes_per_second=0, min_age=0).full_pass()
    assert "1.0" not in await registry.repository(REPO).manifests.tags()


async def test_a_repaired_store_scrubs_clean(registry: Registry, store: Path) -> None:
    img = image("twice")
    await push_image(registry, REPO, img, tag="1.0")
    corrupt(store, img.config.digest)
    await Scrubber(registry.driver, repair=True, bytes_per_second=0, min_age=0).full_pass()
    again = await Scrubber(registry.driver, bytes_per_second=0, min_age=0).full_pass()
    assert again.problems == []


async def test_scrub_resumes_from_its_cursor(registry: Registry, store: Path) -> None:
    for n in range(3):
        await push_image(registry, REPO, image(f"many-{n}"), tag=f"v{n}")
    first = await Scrubber(registry.driver, bytes_per_second=0).step(max_blobs=5)
    second = await Scrubber(registry.driver, bytes_per_second=0).step(max_blobs=5)
    cursor = await Scrubber(registry.driver).load_cursor()
    assert (first.blobs_checked, second.blobs_checked) == (5, 5)
    assert cursor.phase == "blobs" and cursor.after
    rest = await Scrubber(registry.driver, bytes_per_second=0).full_pass()
    assert rest.blobs_checked == 12 - 10
    assert await image_complete(registry, REPO, "v2")


async def test_young_broken_links_are_left_for_a_later_pass(
    registry: Registry, store: Path
) -> None:
    """A push or a GC sweep in progress may hold such links for a moment."""
    img = image("young")
    await push_image(registry, REPO, img, tag="1.0")
    await registry.driver.delete(layout.blob_data(Digest.parse(img.layers[0].digest)))
    report = await Scrubber(registry.driver, repair=True, bytes_per_second=0).full_pass()
    assert report.problems == []
    assert "1.0" in await registry.repository(REPO).manifests.tags()
