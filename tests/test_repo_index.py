"""The per-registry repository index (registry_core.storage.repo_index), used as a library.

The index lists a registry's images for the website in a few small reads: hints written
when a repository gets its first manifest or loses its last, folded into sorted shards
by the ``repo-index`` job under its lease, and rebuilt from a walk of the repositories
when a registry was never indexed (a store written before it, or by Distribution).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.jobs import LeaseBusy, Leases
from registry_core.lifecycle.counting import CountingDriver
from registry_core.names import RepositoryName, Tenant
from registry_core.storage import layout, repo_index
from registry_core.storage.repo_index import RepositoryIndex
from tests.helpers import DistributionServer, build_image, make_layer
from tests.helpers.emulators import cloud_driver
from tests.helpers.registry_api import push_image

TENANT = Tenant("acme", "prod")
MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def manifest(number: int) -> bytes:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 10}
    config["digest"] = "sha256:" + f"{number:064x}"
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE, "config": config, "layers": []}
    ).encode()


async def put(registry: Registry, image: str, number: int = 1, tag: str = "v1") -> None:
    repo = registry.repository(f"{TENANT}/{image}")
    await repo.manifests.put(manifest(number), MEDIA_TYPE, tag, check_references=False)


async def empty(registry: Registry, image: str) -> None:
    manifests = registry.repository(f"{TENANT}/{image}").manifests
    for digest in await manifests.revisions():
        await manifests.delete(str(digest))


async def compact(registry: Registry) -> int:
    async with Leases(registry.driver).hold(repo_index.JOB, 60.0) as guard:
        return await registry.repo_index.run(guard)


async def listed(registry: Registry) -> list[str]:
    view = await registry.repo_index.view(TENANT)
    names = await view.slice(0, 100_000)
    assert view.total == len(names)
    return names


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def registry(store: Path) -> Registry:
    return Registry(LocalDriver(str(store)))


async def test_a_repositorys_first_manifest_lists_it_before_and_after_compaction(
    registry: Registry,
) -> None:
    await put(registry, "web")
    await put(registry, "api/server")
    assert await listed(registry) == ["api/server", "web"]
    assert await compact(registry) == 1
    assert await registry.driver.list(layout.repo_index_hints(TENANT)) == []
    assert await listed(registry) == ["api/server", "web"]


async def test_a_push_into_a_known_repository_costs_the_index_nothing(store: Path) -> None:
    counting = CountingDriver(LocalDriver(str(store)))
    registry = Registry(counting)  # type: ignore[arg-type]
    await put(registry, "web", 1, "v1")
    before = dict(counting.counts)
    await put(registry, "web", 2, "v2")
    spent = {k: counting.counts[k] - before.get(k, 0) for k in counting.counts}
    hints = await counting.inner.list(layout.repo_index_hints(TENANT))
    assert len(hints) == 1  # the first push's only
    # The manifest's bytes stored once and checked again by a stat (no index marker).
    assert spent.get("write_if_absent", 0) == 1
    assert spent.get("write", 0) == 5  # revision link, 2 tag links, tag-index entry + pointer


async def test_deleting_the_last_manifest_drops_the_repository(registry: Registry) -> None:
    for image in ("a", "b", "c"):
        await put(registry, image)
    await compact(registry)
    await empty(registry, "b")
    assert await listed(registry) == ["a", "c"]  # from the hint, before any compaction
    await compact(registry)
    assert await listed(registry) == ["a", "c"]
    assert "b" in (await registry.repo_index.summary(TENANT)).recheck  # type: ignore[union-attr]


async def test_deleting_an_image_with_attachments_drops_its_repository(
    registry: Registry,
) -> None:
    """Its SBOM and signature go with the image: left behind, they made the job find the
    repository still holding manifests and list the deleted image again."""
    for image in ("a", "b"):
        await put(registry, image)
    manifests = registry.repository(f"{TENANT}/b").manifests
    [subject] = await manifests.revisions()
    sbom = json.loads(manifest(7))
    sbom["subject"] = {"mediaType": MEDIA_TYPE, "digest": str(subject), "size": 1}
    await manifests.put(json.dumps(sbom).encode(), MEDIA_TYPE, check_references=False)
    signature = f"{subject.algorithm}-{subject.hex}.sig"
    await manifests.put(manifest(8), MEDIA_TYPE, signature, check_references=False)
    await compact(registry)
    await manifests.delete(str(subject))
    assert await manifests.revisions() == []
    assert await listed(registry) == ["a"]
    await compact(registry)
    assert await listed(registry) == ["a"]


async def test_deleting_a_tag_keeps_a_repository_that_still_has_manifests(
    registry: Registry,
) -> None:
    await put(registry, "a", 1, "v1")
    await put(registry, "a", 2, "v2")
    await compact(registry)
    await registry.repository(f"{TENANT}/a").manifests.delete("v1")
    manifests = registry.repository(f"{TENANT}/a").manifests
    await manifests.delete(str((await manifests.revisions())[0]))
    await compact(registry)
    assert await listed(registry) == ["a"]


async def test_a_repository_emptied_elsewhere_and_pushed_again_comes_back(store: Path) -> None:
    first, second = Registry(LocalDriver(str(store))), Registry(LocalDriver(str(store)))
    await put(first, "app", 1)
    await compact(first)
    await empty(second, "app")
    await compact(second)
    assert await listed(first) == []
    await put(first, "app", 2)  # *first* still knows "app": no hint is written
    assert await listed(first) == []
    await compact(second)  # the job checks names it dropped again: "app" is back
    assert await listed(second) == ["app"]


async def create_racing_jobs(writers: list[Registry], count: int) -> list[str]:
    """Each writer creates *count* repositories while both run the index job in a loop."""
    stop = asyncio.Event()

    async def job(registry: Registry) -> None:
        leases = Leases(registry.driver)
        while not stop.is_set():
            try:
                async with leases.hold(repo_index.JOB, 60.0) as guard:
                    await registry.repo_index.run(guard)
            except LeaseBusy:
                pass  # the other one holds it
            await asyncio.sleep(0)

    async def create(registry: Registry, side: int) -> None:
        for number in range(count):
            await put(registry, f"img-{number:03d}-{side}", number)

    jobs = [asyncio.create_task(job(r)) for r in writers]
    await asyncio.gather(*(create(r, side) for side, r in enumerate(writers)))
    stop.set()
    await asyncio.gather(*jobs)
    return sorted(f"img-{n:03d}-{side}" for n in range(count) for side in range(len(writers)))


async def test_two_registries_on_one_store_creating_at_once_lose_no_entry(store: Path) -> None:
    writers = [Registry(LocalDriver(str(store))) for _ in range(2)]
    expected = await create_racing_jobs(writers, 60)
    assert await listed(writers[0]) == expected  # hints and shards together
    await compact(writers[1])
    assert await listed(writers[1]) == expected
    assert await registry_walk(writers[0]) == expected


async def test_two_registries_on_one_s3_bucket_keep_one_index(moto_server: Any) -> None:
    bucket = moto_server.create_bucket(f"repo-index-{secrets.token_hex(4)}")
    prefix = f"t-{secrets.token_hex(4)}"
    writers = [Registry(cloud_driver(moto_server, bucket, prefix)) for _ in range(2)]
    try:
        expected = await create_racing_jobs(writers, 12)
        await compact(writers[1])
        assert await listed(writers[0]) == expected
        await empty(writers[1], "img-003-0")
        await compact(writers[0])
        assert await listed(writers[0]) == [n for n in expected if n != "img-003-0"]
        assert await registry_walk(writers[1]) == [n for n in expected if n != "img-003-0"]
    finally:
        for writer in writers:
            await writer.close()


async def registry_walk(registry: Registry) -> list[str]:
    return await registry.repo_index.walk(TENANT)


def write_repositories(store: Path, count: int) -> list[str]:
    """*count* repositories as Distribution lays them out (one revision link each)."""
    names = [f"image-{n:05d}" for n in range(count)]
    for number, name in enumerate(names):
        digest = Digest.parse("sha256:" + f"{number:064x}")
        link = store / layout.revision_link(RepositoryName(f"{TENANT}/{name}"), digest)
        link.parent.mkdir(parents=True)
        link.write_text(str(digest))
    return names


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    store = tmp_path_factory.mktemp("large") / "store"
    names = write_repositories(store, 5000)
    return store, names


async def test_a_registry_never_indexed_is_built_from_a_walk(
    large: tuple[Path, list[str]],
) -> None:
    store, names = large
    registry = Registry(LocalDriver(str(store)))
    assert await listed(registry) == names
    summary = await registry.repo_index.summary(TENANT)
    assert summary is not None and summary.count == 5000
    assert len(summary.shards) == 5000 // repo_index.SHARD_SIZE


async def test_pages_of_5000_images_are_in_name_order_and_read_few_objects(
    large: tuple[Path, list[str]],
) -> None:
    store, names = large
    await listed(Registry(LocalDriver(str(store))))  # built
    counting = CountingDriver(LocalDriver(str(store)))
    index = RepositoryIndex(counting)  # type: ignore[arg-type]
    for offset in (0, 950, 1990, 4950):
        counting.counts.clear()
        view = await index.view(TENANT)
        assert view.total == 5000
        assert await view.slice(offset, 50) == names[offset : offset + 50]
        # The hints' listing, the summary, and the one or two shards the page falls in.
        assert counting.counts["list"] == 1
        assert counting.counts["read"] <= 3
        assert counting.total <= 4
    counting.counts.clear()
    view = await index.view(TENANT)
    await view.slice(0, 50)
    assert counting.counts["read"] == 1  # shards are immutable: cached for good


async def test_search_finds_substrings_of_5000_names(large: tuple[Path, list[str]]) -> None:
    store, names = large
    registry = Registry(LocalDriver(str(store)))
    view = await registry.repo_index.view(TENANT)
    found, substring = await view.search("0042")
    assert substring
    assert found == [n for n in names if "0042" in n]
    assert len(found) == 11  # image-00042 and image-00420 to image-00429


async def test_a_large_registry_searches_by_prefix_within_a_few_shards(
    large: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, names = large
    await listed(Registry(LocalDriver(str(store))))
    monkeypatch.setattr(repo_index, "SEARCH_SHARD_LIMIT", 2)
    counting = CountingDriver(LocalDriver(str(store)))
    view = await RepositoryIndex(counting).view(TENANT)  # type: ignore[arg-type]
    counting.counts.clear()
    found, substring = await view.search("image-021")
    assert not substring
    assert found == [n for n in names if n.startswith("image-021")]
    assert counting.counts["read"] <= 2


async def test_hints_overlay_the_shards_until_compacted(
    large: tuple[Path, list[str]],
) -> None:
    """(Changes the shared 5,000-image store: the last test to use it.)"""
    store, names = large
    registry = Registry(LocalDriver(str(store)))
    await listed(registry)
    await put(registry, "image-02500x")
    gone = RepositoryName(f"{TENANT}/image-02501")
    await registry.driver.delete(layout.revisions_root(gone))  # a revision link only
    await registry.repo_index.emptied(gone)
    view = await registry.repo_index.view(TENANT)
    assert view.total == 5000
    expected = sorted([*names[:2501], "image-02500x", *names[2502:]])
    assert await view.slice(2490, 20) == expected[2490:2510]
    await compact(registry)
    assert await listed(registry) == expected


@pytest.mark.clients
async def test_a_store_written_by_distribution_is_indexed_from_its_repositories(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "distribution"
    image = build_image([make_layer({"etc/app": "app\n"})])
    with DistributionServer(folder, workdir=tmp_path / "work") as writer:
        for name in ("acme/prod/web", "acme/prod/tools/cli", "acme/other/web"):
            await asyncio.to_thread(push_image, writer.url, name, image, "1.0")
    registry = Registry(LocalDriver(str(folder)))
    assert await registry.repo_index.summary(TENANT) is None
    assert await listed(registry) == ["tools/cli", "web"]
    assert await registry.repo_index.summary(TENANT) is not None
    await put(registry, "new")
    await compact(registry)
    assert await listed(registry) == ["new", "tools/cli", "web"]


def test_hint_names_round_trip() -> None:
    name = repo_index._hint_name("team/app-1", True)
    assert repo_index._parse_hint(name)[::2] == ("team/app-1", True)  # type: ignore[index]
    assert repo_index._parse_hint("garbage") is None


async def test_gc_collecting_a_repositorys_last_manifest_drops_it(registry: Registry) -> None:
    await put(registry, "kept", 1, "v1")
    untagged = registry.repository(f"{TENANT}/untagged").manifests
    await untagged.put(manifest(2), MEDIA_TYPE, None, check_references=False)
    await compact(registry)
    assert await listed(registry) == ["kept", "untagged"]
    report = await registry.collect_garbage(
        grace=0.0, settle=0.0, collect_untagged=lambda r, d, m: True
    )
    assert report.revisions_removed == 1
    assert await listed(registry) == ["kept"]
    await compact(registry)
    assert await listed(registry) == ["kept"]


async def test_the_job_walks_again_and_finds_repositories_written_without_hints(
    registry: Registry, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(registry, "pushed")
    await compact(registry)
    digest = Digest.parse("sha256:" + "ab" * 32)  # as Distribution would link a revision
    link = store / layout.revision_link(RepositoryName(f"{TENANT}/peer"), digest)
    link.parent.mkdir(parents=True)
    link.write_text(str(digest))
    await compact(registry)
    assert await listed(registry) == ["pushed"]  # walked less than RECONCILE_INTERVAL ago
    monkeypatch.setattr(repo_index, "RECONCILE_INTERVAL", 0.0)
    await compact(Registry(LocalDriver(str(store))))  # a process started since: it walks
    assert await listed(registry) == ["peer", "pushed"]
