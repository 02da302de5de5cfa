"""The per-repository tag index (registry_core.storage.tag_index), used as a library.

The index is kept on every tag write and delete, and gives the website each tag's push
time and total size from one listing, so sorting thousands of tags reads no manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.storage import layout
from registry_core.storage.tag_index import TagIndex
from tests.helpers import build_image, make_random_layer, sample_image, sample_multiarch

REPO = "acme/prod/app"


class CountingDriver(LocalDriver):
    """A local driver that counts whole-object reads (manifests, links, records)."""

    reads = 0

    async def read(self, path: str) -> bytes:
        CountingDriver.reads += 1
        return await super().read(path)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(CountingDriver(str(tmp_path / "store")))


async def put(registry: Registry, image: Any, tag: str) -> None:
    repo = registry.repository(REPO)
    for child in getattr(image, "images", ()):
        await repo.manifests.put(child.manifest, child.media_type, check_references=False)
    await repo.manifests.put(image.manifest, image.media_type, tag, check_references=False)


async def sorted_names(registry: Registry, key: str, descending: bool = False) -> list[str]:
    manifests = registry.repository(REPO).manifests
    found = await manifests.tag_index.sorted_tags(
        await manifests.tags(),
        key,  # type: ignore[arg-type]
        descending=descending,
    )
    return [t.name for t in found]


async def test_a_written_tag_is_indexed_with_its_push_time_and_total_size(
    registry: Registry,
) -> None:
    image = sample_image()
    before = time.time()
    await put(registry, image, "1.0")
    entries = await registry.repository(REPO).manifests.tag_index.entries()
    entry = entries["1.0"]
    assert before - 0.01 <= (entry.pushed or 0) <= time.time()
    expected = len(image.manifest) + sum(blob.size for blob in image.blobs())
    assert entry.size == expected


async def test_an_index_counts_its_platform_manifests_and_their_blobs(registry: Registry) -> None:
    index = sample_multiarch()
    await put(registry, index, "multi")
    entry = (await registry.repository(REPO).manifests.tag_index.entries())["multi"]
    expected = len(index.manifest) + sum(
        len(child.manifest) + sum(blob.size for blob in child.blobs()) for child in index.images
    )
    assert entry.size == expected


async def test_rewriting_a_tag_leaves_one_entry(registry: Registry, tmp_path: Path) -> None:
    await put(registry, sample_image(), "moving")
    await put(registry, sample_image(), "moving")
    folder = tmp_path / "store" / layout.tag_index_entries(registry.repository(REPO).name)
    assert [p.name.split("@")[0] for p in folder.iterdir()] == ["moving"]


async def test_deleting_a_tag_removes_its_entry(registry: Registry) -> None:
    await put(registry, sample_image(), "gone")
    await put(registry, sample_image(), "kept")
    manifests = registry.repository(REPO).manifests
    await manifests.delete("gone")
    assert set(await manifests.tag_index.entries()) == {"kept"}


async def test_deleting_a_manifest_removes_the_entries_of_its_tags(registry: Registry) -> None:
    image = sample_image()
    await put(registry, image, "a")
    await put(registry, image, "b")
    manifests = registry.repository(REPO).manifests
    await manifests.delete(image.digest)
    assert await manifests.tag_index.entries() == {}


async def test_tags_sort_by_date_and_by_size(registry: Registry) -> None:
    big = build_image([make_random_layer(50_000)])
    await put(registry, big, "old-big")
    await put(registry, sample_image(), "new-small")
    assert await sorted_names(registry, "date", descending=True) == ["new-small", "old-big"]
    assert await sorted_names(registry, "size", descending=True) == ["old-big", "new-small"]
    assert await sorted_names(registry, "size") == ["new-small", "old-big"]
    assert await sorted_names(registry, "name") == ["new-small", "old-big"]


async def test_sorting_reads_no_manifest(registry: Registry) -> None:
    for number in range(20):
        await put(registry, sample_image(), f"t{number:02d}")
    CountingDriver.reads = 0
    assert len(await sorted_names(registry, "size")) == 20
    assert CountingDriver.reads == 0


async def test_tags_the_index_never_saw_sort_last_by_name(registry: Registry) -> None:
    image = sample_image()
    await put(registry, image, "indexed")
    manifests = registry.repository(REPO).manifests
    # Tags written by another tool (Distribution) have a link and no index entry.
    for tag in ("zz-foreign", "aa-foreign"):
        await manifests.driver.write(
            layout.tag_current_link(manifests.name, tag), image.digest.encode()
        )
    for descending in (False, True):
        order = await sorted_names(registry, "date", descending=descending)
        assert order == ["indexed", "aa-foreign", "zz-foreign"]


async def test_of_two_entries_for_one_tag_the_newest_wins(registry: Registry) -> None:
    await put(registry, sample_image(), "raced")
    manifests = registry.repository(REPO).manifests
    # A concurrent writer in another process may leave an older entry behind.
    stale = TagIndex(manifests.driver, manifests.name)
    await manifests.driver.write(
        layout.tag_index_entry(manifests.name, "raced@1000@5@0123456789abcdef"), b""
    )
    entry = (await stale.entries())["raced"]
    assert entry.size != 5 and (entry.pushed or 0) > 1


async def test_entries_of_deleted_tags_are_ignored(registry: Registry) -> None:
    await put(registry, sample_image(), "present")
    manifests = registry.repository(REPO).manifests
    await manifests.driver.write(
        layout.tag_index_entry(manifests.name, "vanished@1@1@0123456789abcdef"), b""
    )
    assert await sorted_names(registry, "date") == ["present"]


async def test_candidates_for_a_digest_come_from_the_index_alone(registry: Registry) -> None:
    one, two = sample_image(), sample_image()
    await put(registry, one, "a")
    await put(registry, two, "b")
    await put(registry, one, "c")
    manifests = registry.repository(REPO).manifests
    tags = await manifests.tags()
    CountingDriver.reads = 0
    assert await manifests.tag_index.candidates(manifests_digest(one), tags) == ["a", "c"]
    assert CountingDriver.reads == 0


async def test_candidates_are_unknown_while_a_tag_is_not_indexed(registry: Registry) -> None:
    image = sample_image()
    await put(registry, image, "indexed")
    manifests = registry.repository(REPO).manifests
    await manifests.driver.write(
        layout.tag_current_link(manifests.name, "foreign"), image.digest.encode()
    )
    assert (
        await manifests.tag_index.candidates(manifests_digest(image), await manifests.tags())
        is None
    )


def manifests_digest(image: Any) -> Digest:
    return Digest.parse(image.digest)


async def test_one_tags_entry_is_read_from_its_pointer_without_a_listing(
    registry: Registry,
) -> None:
    image = sample_image()
    await put(registry, image, "solo")
    index = registry.repository(REPO).manifests.tag_index
    entry = await index.entry("solo")
    assert entry is not None and entry.size == (await index.entries())["solo"].size
    assert entry.digest_prefix == image.digest.split(":")[1][:16]
    assert await index.entry("absent") is None
