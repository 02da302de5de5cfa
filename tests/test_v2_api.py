"""The distribution API's fixed endpoints, routing and names, over real HTTP.

``/v2/``, ``/v2/_catalog``, ``/v2/<name>/tags/list``, unknown routes, wrong
methods and repository-name validation. Blobs, uploads and manifests have
modules of their own (``test_v2_blobs``, ``test_v2_uploads``, ``test_v2_manifests``).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.v2_support import STORAGES, assert_error, serve

REPO = "acme/dev/app"


@pytest.fixture(params=STORAGES)
async def registry(request, tmp_path):
    async with serve(request.param, tmp_path) as client:
        yield client


@pytest.fixture
async def memory_registry(tmp_path):
    async with serve("memory", tmp_path) as client:
        yield client


def next_link(reply) -> str | None:
    """The target of a ``Link: <...>; rel="next"`` header, or None."""
    header = reply.headers.get("Link")
    if header is None:
        return None
    found = re.fullmatch(r'<([^>]+)>;\s*rel="next"', header.strip())
    assert found, f"malformed Link header {header!r}"
    return found[1]


# -- /v2/ ----------------------------------------------------------------------------


async def test_base_endpoint_answers_200_with_the_api_version_header(registry):
    reply = await registry.get("/v2/")

    assert reply.status == 200
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert reply.content_type == "application/json"
    assert reply.json() == {}


async def test_base_endpoint_without_trailing_slash_answers_200(memory_registry):
    reply = await memory_registry.get("/v2")

    assert reply.status == 200
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_head_on_base_endpoint_answers_200(memory_registry):
    reply = await memory_registry.head("/v2/")

    assert reply.status == 200
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_every_response_carries_a_request_id(memory_registry):
    replies = [
        await memory_registry.get("/v2/"),
        await memory_registry.get("/v2/_catalog"),
        await memory_registry.get(f"/v2/{REPO}/tags/list"),
        await memory_registry.get("/nowhere"),
        await memory_registry.request("PATCH", f"/v2/{REPO}/manifests/latest"),
        await memory_registry.head(f"/v2/{REPO}/manifests/latest"),
    ]

    ids = [reply.headers.get("X-Request-Id") for reply in replies]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), "each request gets its own id"


async def test_blob_downloads_carry_a_request_id(registry):
    digest = await registry.push_blob(REPO, b"0123456789" * 100)

    full = await registry.get(f"/v2/{REPO}/blobs/{digest}")
    ranged = await registry.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=0-9"})
    unsatisfiable = await registry.get(
        f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=5000-6000"}
    )

    assert [full.status, ranged.status, unsatisfiable.status] == [200, 206, 416]
    for reply in (full, ranged, unsatisfiable):
        assert reply.headers["X-Request-Id"]


async def test_a_well_formed_incoming_request_id_is_echoed(memory_registry):
    reply = await memory_registry.get("/v2/", headers={"X-Request-Id": "trace-abc.123"})

    assert reply.headers["X-Request-Id"] == "trace-abc.123"


async def test_a_malformed_incoming_request_id_is_replaced(memory_registry):
    reply = await memory_registry.get("/v2/", headers={"X-Request-Id": "bad id <script>"})

    assert reply.headers["X-Request-Id"]
    assert reply.headers["X-Request-Id"] != "bad id <script>"


# -- unknown routes and methods ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/foo", "/v2/acme/dev/app/nothing", "/v2/acme/dev/app/blobs", "/v2/acme/dev/app/tags"],
)
async def test_unknown_route_is_a_json_404(memory_registry, path):
    reply = await memory_registry.get(path)

    error = assert_error(reply, 404, "UNSUPPORTED")
    assert error["message"]


async def test_unknown_route_404_carries_the_api_version_header(memory_registry):
    reply = await memory_registry.get("/v2/acme/dev/app/nothing")

    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", f"/v2/{REPO}/manifests/latest", {"DELETE", "GET", "HEAD", "PUT"}),
        ("POST", f"/v2/{REPO}/tags/list", {"GET"}),
        ("PUT", "/v2/_catalog", {"GET"}),
        ("POST", f"/v2/{REPO}/blobs/sha256:{'a' * 64}", {"DELETE", "GET", "HEAD"}),
        ("PUT", f"/v2/{REPO}/blobs/uploads/", {"POST"}),
    ],
)
async def test_wrong_method_is_a_json_405_with_allow(memory_registry, method, path, allowed):
    reply = await memory_registry.request(method, path)

    assert_error(reply, 405, "UNSUPPORTED")
    assert {m.strip() for m in reply.headers["Allow"].split(",")} == allowed


async def test_wrong_method_outside_v2_is_a_json_405(memory_registry):
    reply = await memory_registry.request("POST", "/healthz")

    assert_error(reply, 405, "UNSUPPORTED")
    assert "GET" in reply.headers["Allow"]


# -- repository names ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Acme/dev/app", id="uppercase"),
        pytest.param("acme/dev/../dev/app", id="dot-dot"),
        pytest.param("acme//dev/app", id="empty-component"),
        pytest.param("acme/dev/app/", id="trailing-slash"),
        pytest.param("acme/dev", id="two-components"),
        pytest.param("acme/dev/" + "a" * 250, id="too-long"),
        pytest.param("acme/dev/-app", id="leading-separator"),
    ],
)
async def test_invalid_repository_name_is_400_name_invalid(memory_registry, name):
    reply = await memory_registry.get(f"/v2/{name}/tags/list")

    assert_error(reply, 400, "NAME_INVALID")


async def test_dot_dot_in_a_name_is_not_resolved_to_another_repository(memory_registry):
    await memory_registry.push_image(REPO, "latest")

    reply = await memory_registry.get("/v2/acme/dev/../dev/app/manifests/latest")

    assert_error(reply, 400, "NAME_INVALID")


async def test_a_name_of_exactly_255_characters_is_valid(memory_registry):
    name = "acme/dev/" + "a" * (255 - len("acme/dev/"))

    await memory_registry.push_image(name, "latest")
    reply = await memory_registry.get(f"/v2/{name}/tags/list")

    assert reply.status == 200
    assert reply.json() == {"name": name, "tags": ["latest"]}


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "manifests/latest"),
        ("PUT", "manifests/latest"),
        ("GET", f"blobs/sha256:{'a' * 64}"),
        ("POST", "blobs/uploads/"),
        ("GET", f"referrers/sha256:{'a' * 64}"),
    ],
)
async def test_every_repository_endpoint_refuses_an_invalid_name(memory_registry, method, suffix):
    reply = await memory_registry.request(method, f"/v2/Acme/Dev/App/{suffix}", data=b"{}")

    assert_error(reply, 400, "NAME_INVALID")


async def test_name_with_more_than_three_components_is_valid(memory_registry):
    name = "acme/dev/team/tools/app"

    await memory_registry.push_image(name, "v1")
    reply = await memory_registry.get(f"/v2/{name}/tags/list")

    assert reply.status == 200
    assert reply.json() == {"name": name, "tags": ["v1"]}


# -- tags list -----------------------------------------------------------------------


async def test_tags_list_is_in_lexical_order(registry):
    digest, _ = await registry.push_image(REPO, "latest")
    for tag in ["v2", "V1", "1.0", "alpha", "v10", "_x"]:
        assert (await registry.push_image(REPO, tag))[0] == digest

    reply = await registry.get(f"/v2/{REPO}/tags/list")

    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert reply.json() == {
        "name": REPO,
        "tags": sorted(["latest", "v2", "V1", "1.0", "alpha", "v10", "_x"]),
    }
    assert "Link" not in reply.headers


async def test_tags_list_of_unknown_repository_is_404_name_unknown(registry):
    reply = await registry.get("/v2/acme/dev/never-pushed/tags/list")

    assert_error(reply, 404, "NAME_UNKNOWN")


async def test_tags_list_of_repository_with_only_untagged_manifests_is_empty(registry):
    await registry.push_image(REPO, "latest")
    await registry.delete(f"/v2/{REPO}/manifests/latest")

    reply = await registry.get(f"/v2/{REPO}/tags/list")

    assert reply.status == 200
    assert reply.json() == {"name": REPO, "tags": []}


async def test_tags_list_paginates_with_n_and_a_next_link(registry):
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags:
        await registry.push_image(REPO, tag)

    first = await registry.get(f"/v2/{REPO}/tags/list", params={"n": "2"})

    assert first.status == 200
    assert first.json() == {"name": REPO, "tags": ["a", "b"]}
    link = next_link(first)
    assert link is not None
    assert urlsplit(link).path == f"/v2/{REPO}/tags/list"
    assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": ["b"]}


async def test_following_tags_next_links_visits_every_tag_once(registry):
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags:
        await registry.push_image(REPO, tag)

    seen: list[str] = []
    path: str | None = f"/v2/{REPO}/tags/list?n=2"
    pages = 0
    while path is not None:
        reply = await registry.get(path)
        assert reply.status == 200
        seen.extend(reply.json()["tags"])
        path = next_link(reply)
        pages += 1

    assert seen == tags
    assert pages == 3


async def test_tags_list_last_starts_after_the_given_tag(registry):
    for tag in ["a", "b", "c", "d"]:
        await registry.push_image(REPO, tag)

    reply = await registry.get(f"/v2/{REPO}/tags/list", params={"last": "b"})

    assert reply.status == 200
    assert reply.json()["tags"] == ["c", "d"]
    assert "Link" not in reply.headers


async def test_tags_list_last_page_has_no_next_link(registry):
    for tag in ["a", "b", "c", "d"]:
        await registry.push_image(REPO, tag)

    reply = await registry.get(f"/v2/{REPO}/tags/list", params={"n": "2", "last": "b"})

    assert reply.json()["tags"] == ["c", "d"]
    assert "Link" not in reply.headers


@pytest.mark.parametrize("n", ["abc", "-1", "1.5"])
async def test_tags_list_with_invalid_n_is_400(memory_registry, n):
    await memory_registry.push_image(REPO, "latest")

    reply = await memory_registry.get(f"/v2/{REPO}/tags/list", params={"n": n})

    assert_error(reply, 400, "PAGINATION_NUMBER_INVALID")


# -- catalog ------------------------------------------------------------------------


async def test_catalog_lists_repositories_sorted(registry):
    names = ["acme/dev/zeta", "acme/dev/alpha", "other/prod/app", "acme/dev/team/tool"]
    for name in names:
        await registry.push_image(name, "latest")

    reply = await registry.get("/v2/_catalog")

    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert reply.json() == {"repositories": sorted(names)}
    assert "Link" not in reply.headers


async def test_catalog_of_an_empty_registry_is_empty(registry):
    reply = await registry.get("/v2/_catalog")

    assert reply.status == 200
    assert reply.json() == {"repositories": []}


async def test_catalog_does_not_list_repositories_with_blobs_only(registry):
    await registry.push_blob("acme/dev/blobs-only", b"data")
    await registry.push_image(REPO, "latest")

    reply = await registry.get("/v2/_catalog")

    assert reply.json() == {"repositories": [REPO]}


async def test_catalog_paginates_with_n_last_and_link(registry):
    names = [f"acme/dev/app{i}" for i in range(5)]
    for name in names:
        await registry.push_image(name, "latest")

    first = await registry.get("/v2/_catalog", params={"n": "2"})

    assert first.json() == {"repositories": names[:2]}
    link = next_link(first)
    assert link is not None
    assert urlsplit(link).path == "/v2/_catalog"
    assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": [names[1]]}

    second = await registry.get("/v2/_catalog", params={"n": "2", "last": names[1]})
    assert second.json() == {"repositories": names[2:4]}


async def test_following_catalog_next_links_visits_every_repository_once(registry):
    names = [f"acme/dev/app{i}" for i in range(5)]
    for name in names:
        await registry.push_image(name, "latest")

    seen: list[str] = []
    path: str | None = "/v2/_catalog?n=2"
    while path is not None:
        reply = await registry.get(path)
        assert reply.status == 200
        seen.extend(reply.json()["repositories"])
        path = next_link(reply)

    assert seen == names


async def test_catalog_with_invalid_n_is_400(memory_registry):
    reply = await memory_registry.get("/v2/_catalog", params={"n": "many"})

    assert_error(reply, 400, "PAGINATION_NUMBER_INVALID")
