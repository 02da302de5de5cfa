"""Cross-repository mount without ``from``: found in the caller's readable repositories of
the same OWNER/REGISTRY (201), never elsewhere, and a hidden blob answers like a missing one.

The world is ``tests.api_support.seed_world`` (``writer`` pushes to ``acme/prod``;
``acme/pub`` is public; ``other/secret`` is private to ``outsider``), served in-process
over loopback HTTP.
"""

from __future__ import annotations

import pytest

from registry_core import Digest
from tests.api_support import ApiClient, Reply, World, remembered_hash, seed_world, serve_api

VARYING = {"location", "docker-upload-uuid", "x-request-id", "date"}


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


async def pushed_layer(api: ApiClient, repository: str, seed: str) -> str:
    """Push an image into *repository*; the digest of its layer."""
    await api.push_image(repository, "1", seed=seed)
    return str(Digest.of(f"layer of {seed}".encode() * 100))


async def mount(api: ApiClient, world: World, user: str, repository: str, digest: str) -> Reply:
    return await api.post(
        f"/v2/{repository}/blobs/uploads/?mount={digest}", world.password(user), data=b""
    )


def answer(reply: Reply) -> tuple[int, bytes, list[tuple[str, str]]]:
    """What a client can compare between two replies (ids and times left out)."""
    headers = sorted((k, v) for k, v in reply.headers.items() if k.lower() not in VARYING)
    return reply.status, reply.body, headers


async def test_a_blob_in_another_repository_of_the_tenant_is_mounted(api, world):
    digest = await pushed_layer(api, "acme/prod/app", "prod")

    reply = await mount(api, world, "writer", "acme/prod/new", digest)
    head = await api.request("HEAD", f"/v2/acme/prod/new/blobs/{digest}", world.password("writer"))

    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/acme/prod/new/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert head.status == 200


async def test_a_blob_found_nowhere_starts_an_upload(api, world):
    digest = str(Digest.of(b"pushed nowhere"))

    reply = await mount(api, world, "writer", "acme/prod/new", digest)

    assert reply.status == 202
    assert reply.headers["Location"].startswith("/v2/acme/prod/new/blobs/uploads/")


async def test_a_blob_only_in_an_unreadable_tenant_answers_as_one_found_nowhere(api, world):
    hidden = await pushed_layer(api, "other/secret/app", "secret")
    nowhere = str(Digest.of(b"layer of nothing at all"))

    found_hidden = await mount(api, world, "writer", "acme/prod/new", hidden)
    found_nowhere = await mount(api, world, "writer", "acme/prod/new", nowhere)
    head = await api.request("HEAD", f"/v2/acme/prod/new/blobs/{hidden}", world.password("root"))

    assert answer(found_hidden) == answer(found_nowhere)
    assert found_hidden.status == 202
    assert head.status == 404  # nothing was linked


async def test_a_blob_in_a_readable_repository_of_another_tenant_is_not_searched(api, world):
    public = await pushed_layer(api, "acme/pub/app", "public")

    reply = await mount(api, world, "writer", "acme/prod/new", public)

    assert reply.status == 202


async def test_another_tenant_cannot_find_a_blob_of_acme_by_mounting_it(api, world):
    hidden = await pushed_layer(api, "acme/prod/app", "prod")
    nowhere = str(Digest.of(b"layer of nothing at all"))

    found_hidden = await mount(api, world, "outsider", "other/secret/probe", hidden)
    found_nowhere = await mount(api, world, "outsider", "other/secret/probe", nowhere)

    assert found_hidden.status == 202
    assert answer(found_hidden) == answer(found_nowhere)


async def test_a_mount_without_from_still_needs_push_on_the_target(api, world):
    digest = await pushed_layer(api, "acme/prod/app", "prod")

    reply = await mount(api, world, "reader", "acme/prod/new", digest)
    head = await api.request("HEAD", f"/v2/acme/prod/new/blobs/{digest}", world.password("root"))

    assert reply.status == 403
    assert head.status == 404


async def test_a_malformed_mount_digest_is_a_400(api, world):
    reply = await mount(api, world, "writer", "acme/prod/new", "sha256:nothex")

    assert reply.status == 400
    assert reply.json()["errors"][0]["code"] == "DIGEST_INVALID"
