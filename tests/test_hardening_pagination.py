"""Management API lists come a page at a time: ``n``, ``last`` and a ``Link`` to the next.

The world is ``tests.api_support.seed_world``, served in-process over loopback HTTP;
every reply is also checked against the OpenAPI document by the client.
"""

from __future__ import annotations

import re

import pytest

from registry_server.http.management import MAX_PAGE_SIZE, PAGE_SIZE
from tests.api_support import (
    ApiClient,
    Login,
    World,
    assert_error,
    remembered_hash,
    seed_world,
    serve_api,
)

API = "/api/v1"
PROD = f"{API}/registries/acme/prod"
NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


async def walk(api: ApiClient, path: str, login: Login, field: str, key: str) -> list[str]:
    """Every item's *key*, following ``Link`` headers from *path* until there is none."""
    seen: list[str] = []
    url: str | None = path
    while url is not None:
        reply = await api.get(url, login)
        assert reply.status == 200, (url, reply.body[:300])
        seen += [item[key] if isinstance(item, dict) else item for item in reply.json()[field]]
        link = reply.headers.get("Link")
        url = NEXT.match(link)[1] if link else None  # type: ignore[index]
        assert len(seen) < 1000, "the Link chain does not end"
    return seen


LISTS = {
    # path, list field, key field, who may list
    "users": (f"{API}/users", "users", "name", "root"),
    "api-keys": (f"{API}/users/reader/api-keys", "api_keys", "id", "reader"),
    "owners": (f"{API}/owners", "owners", "name", "root"),
    "registries": (f"{API}/owners/acme/registries", "registries", "name", "acme-admin"),
    "owner-members": (f"{API}/owners/acme/members", "members", "user", "acme-admin"),
    "registry-members": (f"{PROD}/members", "members", "user", "prod-admin"),
    "tokens": (f"{PROD}/tokens", "tokens", "id", "prod-admin"),
    "repositories": (f"{PROD}/repositories", "repositories", "image", "reader"),
    "tags": (f"{PROD}/repositories/app/tags", "tags", "name", "reader"),
    "manifests": (f"{PROD}/repositories/app/manifests", "manifests", "digest", "reader"),
}


async def populate(api: ApiClient) -> None:
    """At least three items in every list of :data:`LISTS`."""
    tenancy = api.tenancy
    for name in ("extra-a", "extra-b", "extra-c"):
        await tenancy.create_user(name, "pw-extra-0123456789")
        await tenancy.add_member("acme", None, name, "read")
        await tenancy.add_member("acme", "prod", name, "read")
        await tenancy.create_owner(name)
        await tenancy.create_registry("acme", name)
        await tenancy.create_api_key("reader", name=name)
        await tenancy.create_token("acme", "prod", name=name)
    for tag in ("1.0", "2.0", "3.0"):
        await api.push_image("acme/prod/app", tag, seed=tag)
    for image in ("base", "tools/build"):
        await api.push_image(f"acme/prod/{image}", "1", seed=image)


@pytest.mark.parametrize("kind", sorted(LISTS))
async def test_following_next_links_one_item_at_a_time_lists_everything_once(api, world, kind):
    await populate(api)
    path, field, key, who = LISTS[kind]

    whole = await api.get(f"{path}?n={MAX_PAGE_SIZE}", world.key(who))
    paged = await walk(api, f"{path}?n=1", world.key(who), field, key)

    expected = [item[key] for item in whole.json()[field]]
    assert len(expected) >= 3
    assert paged == expected


@pytest.mark.parametrize("kind", sorted(LISTS))
async def test_a_page_holds_at_most_n_items_and_links_to_the_next(api, world, kind):
    await populate(api)
    path, field, key, who = LISTS[kind]

    reply = await api.get(f"{path}?n=2", world.key(who))

    assert reply.status == 200
    items = reply.json()[field]
    assert len(items) == 2
    link = NEXT.match(reply.headers["Link"])
    assert link is not None
    assert "n=2" in link[1]
    assert f"last={items[-1][key]}".replace("/", "%2F") in link[1].replace("/", "%2F")


async def test_the_last_page_has_no_link(api, world):
    reply = await api.get(f"{API}/users?n={MAX_PAGE_SIZE}", world.key("root"))

    assert reply.status == 200
    assert "Link" not in reply.headers


async def test_without_n_a_list_is_cut_at_the_default_page_size(api, world):
    for i in range(PAGE_SIZE + 5 - len(await api.tenancy.list_users())):
        await api.tenancy.create_user(f"bulk-{i:03d}", "pw-bulk-0123456789")

    reply = await api.get(f"{API}/users", world.key("root"))

    assert len(reply.json()["users"]) == PAGE_SIZE
    assert "Link" in reply.headers


async def test_last_starts_the_page_after_that_name(api, world):
    reply = await api.get(f"{API}/users?last=prod-admin", world.key("root"))

    assert [u["name"] for u in reply.json()["users"]] == ["reader", "root", "writer"]


async def test_an_owner_page_for_a_member_skips_owners_it_cannot_see(api, world):
    await populate(api)

    names = await walk(api, f"{API}/owners?n=1", world.key("outsider"), "owners", "name")

    assert names == ["other"]


@pytest.mark.parametrize("n", ["0", "-1", "abc", "1.5", str(MAX_PAGE_SIZE + 1), "9" * 30, ""])
async def test_an_invalid_n_is_a_400(api, world, n):
    reply = await api.get(f"{API}/users?n={n}", world.key("root"))

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_an_overlong_last_is_a_400(api, world):
    reply = await api.get(f"{API}/owners?last={'a' * 300}", world.key("root"))

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_the_openapi_document_states_n_and_last_on_every_list(api, world):
    doc = (await api.get(f"{API}/openapi.json")).json()

    for path, *_ in LISTS.values():
        template = re.sub(r"/users/reader/", "/users/{name}/", path)
        template = template.replace("/owners/acme/", "/owners/{owner}/")
        template = template.replace("/registries/acme/prod", "/registries/{owner}/{registry}")
        template = template.replace("/repositories/app/", "/repositories/{image}/")
        params = {p["name"]: p for p in doc["paths"][template]["get"]["parameters"]}
        assert params["n"]["schema"]["maximum"] == MAX_PAGE_SIZE, template
        assert params["last"]["in"] == "query", template
        assert "Link" in doc["paths"][template]["get"]["responses"]["200"]["headers"], template


async def test_a_filtered_list_reads_a_bounded_number_of_records_per_page(api, world):
    # Tokens of every registry share one folder: listing acme/prod's must not read them all.
    for i in range(300):
        await api.tenancy.create_token("other", "secret", name=f"noise-{i}")
    mine = {(await api.tenancy.create_token("acme", "prod", name=n))[0].id for n in "abc"}

    first = await api.get(f"{PROD}/tokens?n=10", world.key("prod-admin"))
    walked = await walk(api, f"{PROD}/tokens?n=10", world.key("prod-admin"), "tokens", "id")

    assert len(first.json()["tokens"]) < 10
    assert "Link" in first.headers  # a short page, and a cursor to go on from
    assert set(walked) == mine
    assert len(walked) == len(mine)
