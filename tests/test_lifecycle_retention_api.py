"""Retention rules and immutable tags through the management API."""

from __future__ import annotations

import pytest

from registry_core.errors import Denied
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


async def test_an_admin_sets_rules_that_readers_see(api: ApiClient, world: World) -> None:
    rules = {"keep_last": 3, "delete_unpulled_after": "30d", "protected": ["latest", "v*"]}

    put = await api.put(f"{PROD}/retention", world.key("prod-admin"), json_body=rules)
    shown = await api.get(f"{PROD}/retention", world.key("reader"))

    assert put.status == 200
    assert shown.json() == {
        "keep_last": 3,
        "delete_older_than": None,
        "delete_unpulled_after": 30 * 86400.0,
        "delete_untagged_after": None,
        "protected": ["latest", "v*"],
        "source": "storage",
    }


async def test_a_run_applies_the_rules_and_a_dry_run_only_lists(
    api: ApiClient, world: World
) -> None:
    admin = world.key("prod-admin")
    for tag in ("1", "2", "3"):
        await api.push_image("acme/prod/app", tag, seed=f"run-{tag}")
    await api.put(f"{PROD}/retention", admin, json_body={"keep_last": 1})

    dry = await api.post(f"{PROD}/retention/run", admin, json_body={"dry_run": True})
    real = await api.post(f"{PROD}/retention/run", admin, json_body={})

    assert dry.json()["dry_run"] is True and len(dry.json()["tags"]) == 2
    assert real.json()["tags"] == dry.json()["tags"]
    assert real.json()["manifests"] == dry.json()["manifests"]
    tags = await api.get(f"{PROD}/repositories/app/tags", admin)
    assert len(tags.json()["tags"]) == 1


async def test_readers_cannot_change_rules(api: ApiClient, world: World) -> None:
    reader = world.key("reader")

    retention = await api.put(f"{PROD}/retention", reader, json_body={"keep_last": 1})
    immutable = await api.put(f"{PROD}/immutable-tags", reader, json_body={"patterns": ["*"]})
    run = await api.post(f"{PROD}/retention/run", reader, json_body={})

    assert (retention.status, immutable.status, run.status) == (403, 403, 403)


async def test_immutable_patterns_set_through_the_api_refuse_a_moved_tag(
    api: ApiClient, world: World
) -> None:
    admin = world.key("prod-admin")
    await api.push_image("acme/prod/app", "v1", seed="api-immutable-1")

    put = await api.put(f"{PROD}/immutable-tags", admin, json_body={"patterns": ["v*"]})

    assert put.status == 200 and put.json() == {"patterns": ["v*"]}
    with pytest.raises(Denied, match="immutable"):
        await api.push_image("acme/prod/app", "v1", seed="api-immutable-2")


async def test_a_bad_duration_is_a_400(api: ApiClient, world: World) -> None:
    reply = await api.put(
        f"{PROD}/retention", world.key("prod-admin"), json_body={"delete_older_than": "fortnight"}
    )

    assert reply.status == 400
    error = reply.json()["errors"][0]
    assert error["code"] == "INVALID_REQUEST" and "fortnight" in error["message"]
