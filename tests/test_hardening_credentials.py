"""More than one credential in one request: all valid and of one identity, else 401.

The world is ``tests.api_support.seed_world`` (``root`` superuser, ``reader`` of
``acme/prod``, ...), served in-process over loopback HTTP. Requests that carry two
``Authorization`` headers are sent with a multidict, as a client or proxy might.
"""

from __future__ import annotations

import base64

import pytest
from multidict import CIMultiDict

from registry_server.http.guard import MAX_CREDENTIALS
from tests.api_support import ApiClient, World, assert_error, remembered_hash, seed_world, serve_api

API = "/api/v1"
BAD_KEY = "chk_AAAAAAAAAAAA_not-a-real-key-at-all"


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


def basic(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


async def send(
    api: ApiClient, method: str, path: str, headers: list[tuple[str, str]], **kwargs
) -> tuple[int, dict]:
    async with api.session.request(
        method, api.base_url + path, headers=CIMultiDict(headers), **kwargs
    ) as response:
        body = await response.read()
        return response.status, {"body": body, "headers": response.headers}


# -- the management API -------------------------------------------------------------------------


async def test_invalid_api_key_with_valid_basic_is_refused_on_the_management_api(api, world):
    login = world.password("root").headers
    reply = await api.get(f"{API}/user", headers={**login, "X-Api-Key": BAD_KEY})

    assert_error(reply, 401, "UNAUTHORIZED")
    assert reply.headers["WWW-Authenticate"].startswith("Basic")


async def test_valid_api_key_with_invalid_basic_is_refused_on_the_management_api(api, world):
    headers = {"X-Api-Key": world.keys["root"], "Authorization": basic("root", "wrong")}
    reply = await api.get(f"{API}/user", headers=headers)

    assert_error(reply, 401, "UNAUTHORIZED")


async def test_api_key_and_basic_of_different_users_are_refused(api, world):
    headers = {**world.password("root").headers, "X-Api-Key": world.keys["reader"]}
    reply = await api.get(f"{API}/user", headers=headers)

    assert_error(reply, 401, "UNAUTHORIZED")


async def test_api_key_and_basic_of_the_same_user_are_accepted(api, world):
    headers = {**world.password("reader").headers, "X-Api-Key": world.keys["reader"]}
    reply = await api.get(f"{API}/user", headers=headers)

    assert reply.status == 200
    assert reply.json()["name"] == "reader"


async def test_two_api_key_headers_of_different_users_are_refused(api, world):
    status, _ = await send(
        api,
        "GET",
        f"{API}/user",
        [("X-Api-Key", world.keys["reader"]), ("X-Api-Key", world.keys["root"])],
    )

    assert status == 401


async def test_bearer_token_with_another_users_api_key_is_refused(api, world):
    token = await api.bearer_token("reader", world.passwords["reader"])
    headers = {"Authorization": f"Bearer {token}", "X-Api-Key": world.keys["root"]}
    reply = await api.get(f"{API}/user", headers=headers)

    assert_error(reply, 401, "UNAUTHORIZED")


# -- the /v2/ API --------------------------------------------------------------------------------


async def test_two_authorization_headers_of_different_users_are_refused_on_v2(api, world):
    status, reply = await send(
        api,
        "GET",
        "/v2/acme/prod/app/tags/list",
        [
            ("Authorization", basic("reader", world.passwords["reader"])),
            ("Authorization", basic("root", world.passwords["root"])),
        ],
    )

    assert status == 401
    assert reply["headers"]["WWW-Authenticate"].startswith("Bearer realm=")


async def test_valid_and_invalid_authorization_headers_are_refused_on_v2(api, world):
    status, _ = await send(
        api,
        "GET",
        "/v2/",
        [
            ("Authorization", basic("root", world.passwords["root"])),
            ("Authorization", basic("root", "wrong")),
        ],
    )

    assert status == 401


async def test_two_authorization_headers_of_the_same_user_are_accepted_on_v2(api, world):
    status, _ = await send(
        api,
        "GET",
        "/v2/",
        [
            ("Authorization", basic("root", world.passwords["root"])),
            ("Authorization", basic("root", world.keys["root"])),
        ],
    )

    assert status == 200


async def test_a_pile_of_authorization_headers_is_refused_unchecked(api, world):
    same = ("Authorization", basic("root", world.passwords["root"]))
    status, _ = await send(api, "GET", "/v2/", [same] * (MAX_CREDENTIALS + 1))

    assert status == 401


async def test_invalid_api_key_with_valid_basic_is_refused_on_v2(api, world):
    status, _ = await send(
        api,
        "GET",
        "/v2/",
        [("Authorization", basic("root", world.passwords["root"])), ("X-Api-Key", BAD_KEY)],
    )

    assert status == 401


async def test_an_api_key_alone_authenticates_on_v2(api, world):
    status, _ = await send(api, "GET", "/v2/", [("X-Api-Key", world.keys["reader"])])

    assert status == 200


# -- the token endpoint and the archives API ----------------------------------------------------


async def test_token_endpoint_refuses_basic_with_another_users_api_key(api, world):
    status, _ = await send(
        api,
        "GET",
        "/v2/token?scope=repository:acme/prod/app:pull",
        [
            ("Authorization", basic("reader", world.passwords["reader"])),
            ("X-Api-Key", world.keys["root"]),
        ],
    )

    assert status == 401


async def test_token_endpoint_form_login_with_another_users_basic_is_refused(api, world):
    status, _ = await send(
        api,
        "POST",
        "/v2/token",
        [("Authorization", basic("root", world.passwords["root"]))],
        data={
            "grant_type": "password",
            "username": "reader",
            "password": world.passwords["reader"],
            "scope": "repository:acme/prod/app:pull",
        },
    )

    assert status == 401


async def test_archives_api_refuses_invalid_api_key_with_valid_basic(api, world):
    status, reply = await send(
        api,
        "GET",
        f"{API}/registries/acme/prod/archives?image=app:1",
        [("Authorization", basic("root", world.passwords["root"])), ("X-Api-Key", BAD_KEY)],
    )

    assert status == 401
    assert b'"UNAUTHORIZED"' in reply["body"]


# -- changing a password --------------------------------------------------------------------------


async def test_changing_ones_own_password_without_the_current_one_is_refused(api, world):
    reply = await api.patch(
        f"{API}/users/reader", world.key("reader"), json_body={"password": "new-pw-123456"}
    )

    assert_error(reply, 400, "INVALID_REQUEST")
    assert await api.tenancy.verify_user_password("reader", world.passwords["reader"])


async def test_changing_ones_own_password_with_a_wrong_current_one_is_refused(api, world):
    reply = await api.patch(
        f"{API}/users/reader",
        world.key("reader"),
        json_body={"password": "new-pw-123456", "current_password": "not-it"},
    )

    assert_error(reply, 403, "DENIED")
    assert await api.tenancy.verify_user_password("reader", world.passwords["reader"])


async def test_an_api_key_does_not_count_as_the_current_password(api, world):
    reply = await api.patch(
        f"{API}/users/reader",
        world.key("reader"),
        json_body={"password": "new-pw-123456", "current_password": world.keys["reader"]},
    )

    assert_error(reply, 403, "DENIED")


async def test_changing_ones_own_password_with_the_current_one_works(api, world):
    reply = await api.patch(
        f"{API}/users/reader",
        world.key("reader"),
        json_body={"password": "new-pw-123456", "current_password": world.passwords["reader"]},
    )

    assert reply.status == 200
    assert await api.tenancy.verify_user_password("reader", "new-pw-123456")


async def test_a_superuser_changing_its_own_password_needs_the_current_one(api, world):
    reply = await api.patch(
        f"{API}/users/root", world.key("root"), json_body={"password": "new-pw-123456"}
    )

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_a_superuser_resets_another_users_password_without_knowing_it(api, world):
    reply = await api.patch(
        f"{API}/users/reader", world.key("root"), json_body={"password": "reset-pw-123456"}
    )

    assert reply.status == 200
    assert await api.tenancy.verify_user_password("reader", "reset-pw-123456")
