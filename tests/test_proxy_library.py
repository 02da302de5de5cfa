"""The pull-through library in process: PullThrough over memory storage, asking a scripted
upstream on 127.0.0.1 through the real aiohttp client (``tests/proxy_support.py``).

Each test states one behaviour of the cache: where content comes from, how often the
upstream is asked, what is (never) stored, and what a client is told when it fails.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from registry_core.digest import Digest
from registry_core.errors import BlobUnknown, ManifestUnknown, RegistryError, TooManyRequests
from registry_core.names import Reference
from registry_core.proxy import UpstreamSpec, UpstreamUnavailable
from registry_core.storage import layout
from tests.helpers import sample_image, sample_multiarch, sha256_digest
from tests.proxy_support import TENANT, ScriptedUpstream, drain, pull_through

REPO = f"{TENANT}/app"


def spec(upstream: ScriptedUpstream, name: str = "up", **fields: object) -> UpstreamSpec:
    return UpstreamSpec(name=name, url=upstream.url, **fields)  # type: ignore[arg-type]


@pytest.fixture
async def upstream():
    async with ScriptedUpstream().running() as server:
        yield server


async def test_a_tag_missing_locally_is_fetched_from_the_upstream_and_stored(upstream):
    image = sample_image("lib-tag")
    upstream.add_image("app", "1.0", image)
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)

        got = await proxy.manifest(repo, Reference.parse("1.0"))

        assert str(got.digest) == image.digest
        assert got.body == image.manifest
        assert str(await repo.manifests.resolve("1.0")) == image.digest


async def test_a_fresh_cached_tag_is_served_without_asking_the_upstream(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-fresh"))
    async with pull_through(spec(upstream, tag_ttl="10m")) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        asked = upstream.count("GET", "/manifests/") + upstream.count("HEAD", "/manifests/")

        for _ in range(5):
            await proxy.manifest(repo, Reference.parse("1.0"))

        assert upstream.count("GET", "/manifests/") + upstream.count("HEAD", "/manifests/") == asked


async def test_a_pull_by_digest_of_local_content_never_asks_the_upstream(upstream):
    image = sample_image("lib-digest")
    upstream.add_image("app", "1.0", image)
    async with pull_through(spec(upstream, tag_ttl=0)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        before = sum(upstream.requests.values())

        await proxy.manifest(repo, Reference.parse(image.digest))

        assert sum(upstream.requests.values()) == before


async def test_a_stale_tag_that_did_not_move_is_checked_with_one_head_and_not_fetched(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-head"))
    async with pull_through(spec(upstream, tag_ttl=0)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))

        await proxy.manifest(repo, Reference.parse("1.0"))

        assert upstream.count("GET", "/manifests/1.0") == 1
        assert upstream.count("HEAD", "/manifests/1.0") == 1


async def test_a_tag_moved_upstream_is_seen_once_its_ttl_has_passed(upstream):
    first, second = sample_image("lib-move-1"), sample_image("lib-move-2")
    upstream.add_image("app", "1.0", first)
    async with pull_through(spec(upstream, tag_ttl=0.5)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        upstream.add_image("app", "1.0", second)

        before_ttl = await proxy.manifest(repo, Reference.parse("1.0"))
        await asyncio.sleep(0.6)
        after_ttl = await proxy.manifest(repo, Reference.parse("1.0"))

        assert str(before_ttl.digest) == first.digest
        assert str(after_ttl.digest) == second.digest


async def test_a_pushed_tag_is_never_replaced_from_the_upstream(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-upstream"))
    local = sample_image("lib-local", layers=1)
    async with pull_through(spec(upstream, tag_ttl=0)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        for blob in local.blobs():
            async with repo.blobs.upload() as upload:
                await upload.write(blob.data)
                await upload.commit(Digest.parse(blob.digest))
        await repo.manifests.put(local.manifest, local.media_type, tag="1.0")
        await proxy.pushed(repo, "1.0")

        got = await proxy.manifest(repo, Reference.parse("1.0"))

        assert str(got.digest) == local.digest


async def test_an_upstream_404_is_a_404_and_is_remembered(upstream):
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        for _ in range(5):
            with pytest.raises(ManifestUnknown):
                await proxy.manifest(repo, Reference.parse("missing"))

        assert upstream.count("GET", "/manifests/missing") == 1


async def test_a_failing_upstream_with_the_tag_cached_serves_it_stale(upstream):
    image = sample_image("lib-stale")
    upstream.add_image("app", "1.0", image)
    async with pull_through(spec(upstream, tag_ttl=0)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        upstream.answer = (503, {})

        got = await proxy.manifest(repo, Reference.parse("1.0"))

        assert str(got.digest) == image.digest


async def test_a_failing_upstream_with_nothing_cached_is_an_error_naming_it(upstream):
    upstream.answer = (503, {})
    async with pull_through(spec(upstream, name="flaky")) as proxy:
        repo = proxy.registry.repository(REPO)
        with pytest.raises(UpstreamUnavailable) as caught:
            await proxy.manifest(repo, Reference.parse("1.0"))

        assert "upstream flaky" in caught.value.message
        assert caught.value.code == "UNAVAILABLE"


async def test_a_stalled_upstream_is_an_error_within_the_configured_timeout(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-stall"))
    upstream.stall_manifests = 10.0
    async with pull_through(spec(upstream, name="slow"), timeout=1.0) as proxy:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as caught:
            await proxy.manifest(proxy.registry.repository(REPO), Reference.parse("1.0"))

    assert time.monotonic() - started < 5
    assert caught.value.status == 504
    assert "upstream slow" in caught.value.message


async def test_a_429_is_passed_on_with_retry_after_and_the_upstream_left_alone_until_then(
    upstream,
):
    upstream.answer = (429, {"Retry-After": "30"})
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        with pytest.raises(TooManyRequests) as first:
            await proxy.manifest(repo, Reference.parse("1.0"))
        asked = upstream.count("GET", "/manifests/")

        with pytest.raises(TooManyRequests):
            await proxy.manifest(repo, Reference.parse("2.0"))

        assert first.value.headers["Retry-After"] == "30"
        assert upstream.count("GET", "/manifests/") == asked


async def test_upstreams_are_asked_in_priority_order():
    first, second = sample_image("lib-prio-1"), sample_image("lib-prio-2")
    async with ScriptedUpstream().running() as low, ScriptedUpstream().running() as high:
        low.add_image("app", "1.0", first)
        high.add_image("app", "1.0", second)
        async with pull_through(
            spec(low, "low", priority=20), spec(high, "high", priority=10)
        ) as proxy:
            got = await proxy.manifest(proxy.registry.repository(REPO), Reference.parse("1.0"))

        assert str(got.digest) == second.digest
        assert low.count("GET", "/manifests/") == 0


async def test_an_upstream_whose_images_pattern_does_not_match_is_not_asked():
    async with ScriptedUpstream().running() as other, ScriptedUpstream().running() as tools:
        tools.add_image("app", "1.0", sample_image("lib-pattern"))
        async with pull_through(
            spec(other, "other", priority=1, images="base/*"), spec(tools, "tools")
        ) as proxy:
            await proxy.manifest(proxy.registry.repository(REPO), Reference.parse("1.0"))

        assert other.count("GET", "") == 0


async def test_containerd_ns_picks_the_upstream_by_host():
    image = sample_image("lib-ns")
    async with ScriptedUpstream().running() as first, ScriptedUpstream().running() as second:
        second.add_image("app", "1.0", image)
        async with pull_through(spec(first, "first", priority=1), spec(second, "second")) as proxy:
            host = second.url.split("://", 1)[1]
            got = await proxy.manifest(
                proxy.registry.repository(REPO), Reference.parse("1.0"), host
            )

        assert str(got.digest) == image.digest
        assert first.count("GET", "/manifests/") == 0


async def test_an_upstream_prefix_is_prepended_to_the_image_name(upstream):
    upstream.add_image("library/app", "1.0", sample_image("lib-prefix"))
    async with pull_through(spec(upstream, prefix="library")) as proxy:
        await proxy.manifest(proxy.registry.repository(REPO), Reference.parse("1.0"))

    assert upstream.count("GET", "/v2/library/app/manifests/1.0") == 1


async def test_a_multi_arch_index_and_its_children_come_through(upstream):
    index = sample_multiarch("lib-index")
    upstream.add_image("app", "1.0", index)
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        top = await proxy.manifest(repo, Reference.parse("1.0"))
        child = await proxy.manifest(repo, Reference.parse(index.images[0].digest))

    assert str(top.digest) == index.digest
    assert child.body == index.images[0].manifest


# -- blobs ---------------------------------------------------------------------------------


async def test_a_blob_is_streamed_to_the_client_and_committed(upstream):
    image = sample_image("lib-blob")
    upstream.add_image("app", "1.0", image)
    layer = image.layers[0]
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)

        blob = await proxy.blob(repo, Digest.parse(layer.digest))
        data = await drain(blob.chunks)

        assert data == layer.data
        assert blob.size == layer.size
        assert await repo.blobs.exists(Digest.parse(layer.digest))


async def test_the_first_bytes_of_a_blob_arrive_before_the_upstream_has_sent_it_all(upstream):
    data = (
        bytes(range(256)) * 64
    )  # 16 KiB: the scripted upstream sends 1 KiB, waits, sends the rest
    digest = sha256_digest(data)
    upstream.blobs[digest] = data
    upstream.slow_blobs = 1.5
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        started = time.monotonic()
        blob = await proxy.blob(repo, Digest.parse(digest))
        first = await anext(blob.chunks)
        first_at = time.monotonic() - started
        rest = await drain(blob.chunks)

    assert first_at < 1.5
    assert first + rest == data


async def test_concurrent_pulls_of_one_missing_blob_fetch_it_once_and_all_get_the_bytes(upstream):
    image = sample_image("lib-flight", layers=1)
    upstream.add_image("app", "1.0", image)
    layer = image.layers[0]
    upstream.slow_blobs = 0.3
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)

        async def pull() -> bytes:
            blob = await proxy.blob(repo, Digest.parse(layer.digest))
            return await drain(blob.chunks)

        results = await asyncio.gather(*(pull() for _ in range(20)))

    assert all(result == layer.data for result in results)
    assert upstream.count("GET", f"/blobs/{layer.digest}") == 1


async def test_a_reader_too_slow_to_follow_a_fetch_gets_the_rest_from_storage(upstream):
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB: far more pieces than a reader may lag
    digest = sha256_digest(data)
    upstream.blobs[digest] = data
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        fast = await proxy.blob(repo, Digest.parse(digest))
        slow = await proxy.blob(repo, Digest.parse(digest))
        first_slow = await anext(slow.chunks)  # it joins, then stops reading

        fast_data = await drain(fast.chunks)
        slow_data = first_slow + await drain(slow.chunks)

    assert fast_data == data
    assert slow_data == data
    assert upstream.count("GET", f"/blobs/{digest}") == 1


async def test_a_corrupt_blob_is_never_committed_and_its_stream_fails(upstream):
    image = sample_image("lib-corrupt", layers=1)
    upstream.add_image("app", "1.0", image)
    layer = image.layers[0]
    upstream.corrupt.add(layer.digest)
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        blob = await proxy.blob(repo, Digest.parse(layer.digest))

        with pytest.raises(RegistryError):
            await drain(blob.chunks)

        assert not await proxy.registry.blob_store.exists(Digest.parse(layer.digest))


async def test_with_caching_off_a_blob_is_streamed_through_and_not_stored(upstream):
    image = sample_image("lib-nocache", layers=1)
    upstream.add_image("app", "1.0", image)
    layer = image.layers[0]
    async with pull_through(spec(upstream, cache=False)) as proxy:
        repo = proxy.registry.repository(REPO)

        blob = await proxy.blob(repo, Digest.parse(layer.digest))
        data = await drain(blob.chunks)

        assert data == layer.data
        assert not await proxy.registry.blob_store.exists(Digest.parse(layer.digest))


async def test_with_caching_off_a_manifest_is_served_and_not_stored(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-nocache-m"))
    async with pull_through(spec(upstream, cache=False)) as proxy:
        repo = proxy.registry.repository(REPO)

        await proxy.manifest(repo, Reference.parse("1.0"))

        with pytest.raises(ManifestUnknown):
            await repo.manifests.resolve("1.0")


async def test_a_blob_the_upstream_lacks_is_blob_unknown(upstream):
    async with pull_through(spec(upstream)) as proxy:
        with pytest.raises(BlobUnknown):
            await proxy.blob(proxy.registry.repository(REPO), Digest.parse("sha256:" + "0" * 64))


async def test_a_head_of_a_missing_blob_asks_the_upstream_for_its_size_only(upstream):
    image = sample_image("lib-head-blob", layers=1)
    upstream.add_image("app", "1.0", image)
    layer = image.layers[0]
    async with pull_through(spec(upstream)) as proxy:
        size = await proxy.blob(
            proxy.registry.repository(REPO), Digest.parse(layer.digest), head=True
        )

    assert size == layer.size
    assert upstream.count("GET", "/blobs/") == 0


# -- listings and attachments ----------------------------------------------------------------------


async def test_tag_lists_merge_local_and_upstream_tags(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-tags-1"))
    upstream.add_image("app", "2.0", sample_image("lib-tags-2"))
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))
        await repo.manifests.tag("local", await repo.manifests.resolve("1.0"))

        tags = await proxy.tags(repo)

    assert tags == ["1.0", "2.0", "local"]


async def test_referrers_merge_local_and_upstream_descriptors(upstream):
    image = sample_image("lib-referrers")
    upstream.add_image("app", "1.0", image)
    remote = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "a" * 64,
        "size": 10,
    }
    upstream.referrers[image.digest] = [remote]
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)

        found = await proxy.referrers(repo, Digest.parse(image.digest))

    assert found == [remote]


async def test_a_cosign_signature_tag_of_the_upstream_comes_with_the_image(upstream):
    image, signature = sample_image("lib-signed"), sample_image("lib-sig", layers=1)
    upstream.add_image("app", "1.0", image)
    upstream.add_image("app", f"sha256-{image.digest.split(':')[1]}.sig", signature)
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)

        got = await proxy.manifest(
            repo, Reference.parse(f"sha256-{image.digest.split(':')[1]}.sig")
        )

    assert str(got.digest) == signature.digest


async def test_a_cached_tag_records_which_upstream_it_came_from(upstream):
    upstream.add_image("app", "1.0", sample_image("lib-origin"))
    async with pull_through(spec(upstream, name="hub")) as proxy:
        repo = proxy.registry.repository(REPO)
        await proxy.manifest(repo, Reference.parse("1.0"))

        raw = await proxy.registry.driver.read(layout.proxy_tag_origin(repo.name, "1.0"))

    assert b'"upstream":"hub"' in raw


async def _store_elsewhere(proxy, name: str, data: bytes) -> Digest:
    """Commit *data* into repository *name* (another tenant's, say) as a push would."""
    digest = Digest.parse(sha256_digest(data))
    async with proxy.registry.repository(name).blobs.upload() as upload:
        await upload.write(data)
        await upload.commit(digest)
    return digest


async def test_a_blob_stored_for_another_tenant_is_not_linked_on_an_upstream_s_claim(upstream):
    secret = b"another tenant's private layer " * 100
    async with pull_through(spec(upstream)) as proxy:
        digest = await _store_elsewhere(proxy, "victim/private/app", secret)
        # The upstream (its URL is a tenant's choice) claims the digest but cannot serve it.
        upstream.blobs[str(digest)] = b"x" * len(secret)
        repo = proxy.registry.repository(REPO)

        blob = await proxy.blob(repo, digest)
        with pytest.raises(RegistryError):
            await drain(blob.chunks)

        assert not await repo.blobs.exists(digest)


async def test_a_blob_stored_for_another_repository_is_fetched_again_and_then_linked(upstream):
    data = b"a shared base layer " * 1000
    async with pull_through(spec(upstream)) as proxy:
        digest = await _store_elsewhere(proxy, "other/registry/base", data)
        upstream.blobs[str(digest)] = data
        repo = proxy.registry.repository(REPO)

        blob = await proxy.blob(repo, digest)

        assert await drain(blob.chunks) == data
        assert upstream.count("GET", "/blobs/") == 1
        assert await repo.blobs.exists(digest)


async def test_a_request_that_missed_a_blob_just_before_its_commit_does_not_fetch_it_again(
    upstream,
):
    data = b"committed a moment ago " * 1000
    digest = Digest.parse(sha256_digest(data))
    upstream.blobs[str(digest)] = data
    async with pull_through(spec(upstream)) as proxy:
        repo = proxy.registry.repository(REPO)
        assert await drain((await proxy.blob(repo, digest)).chunks) == data

        # As the server asks: it found the blob missing (before the commit), no re-check.
        again = await proxy.blob(repo, digest, local_checked=True)

        assert again is None  # served from storage
        assert upstream.count("GET", "/blobs/") == 1
