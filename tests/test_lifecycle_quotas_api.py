"""Quotas through the management API: limits and usage in the registry's and the owner's
answers, and who may set them."""

from __future__ import annotations

import pytest

from tests.api_support import ApiClient, World, remembered_hash, seed_world, serve_api

API = "/api/v1"
PROD = f"{API}/registries/acme/prod"


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


async def test_the_registry_answer_shows_its_usage_and_limits(api: ApiClient, world: World) -> None:
    pushed = await api.push_image("acme/prod/app", "1.0", seed="usage")
    limits = {"max_bytes": "10MiB", "max_images": 20}
    assert (await api.put(f"{PROD}/quota", world.key("root"), json_body=limits)).status == 200

    reply = await api.get(PROD, world.key("reader"))

    assert reply.status == 200
    assert reply.json()["usage"] == {
        "used_bytes": pushed["config_size"] + pushed["layer_size"],
        "used_images": 1,
        "max_bytes": 10 * 2**20,
        "max_images": 20,
    }


async def test_the_owner_answer_sums_its_registries(api: ApiClient, world: World) -> None:
    first = await api.push_image("acme/prod/app", "1.0", seed="owner-one")
    second = await api.push_image("acme/prod/tool", "1.0", seed="owner-two")
    root = world.key("root")
    assert (
        await api.put(f"{API}/owners/acme/quota", root, json_body={"max_bytes": "1GB"})
    ).status == 200

    reply = await api.get(f"{API}/owners/acme", world.key("acme-admin"))

    blobs = {
        pushed["digest"]: pushed["config_size"] + pushed["layer_size"] for pushed in (first, second)
    }
    assert reply.json()["usage"] == {
        "used_bytes": sum(blobs.values()),
        "used_images": 2,
        "max_bytes": 10**9,
        "max_images": None,
    }


async def test_only_superusers_set_quotas(api: ApiClient, world: World) -> None:
    body = {"max_bytes": "1TiB"}

    by_admin = await api.put(f"{PROD}/quota", world.key("prod-admin"), json_body=body)
    by_owner_admin = await api.put(
        f"{API}/owners/acme/quota", world.key("acme-admin"), json_body=body
    )

    assert by_admin.status == 403 and by_owner_admin.status == 403
    assert (await api.get(f"{PROD}/quota", world.key("reader"))).json()["max_bytes"] is None


async def test_a_registry_the_caller_cannot_see_has_no_quota_to_show(
    api: ApiClient, world: World
) -> None:
    reply = await api.get(f"{PROD}/quota", world.key("outsider"))

    assert reply.status == 404
