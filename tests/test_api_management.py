"""The ``/api/v1/`` management API over real HTTP: every route, each login, each role.

The world (``tests.api_support.seed_world``): owners ``acme`` (registries ``prod``,
private, and ``pub``, public) and ``other`` (``secret``, private); the superuser
``root``; ``reader``/``writer``/``prod-admin`` with that role on ``acme/prod``;
``acme-admin`` admin of the owner ``acme``; ``outsider`` admin of ``other``;
``nobody`` with no role. Every reply is also checked against the OpenAPI document
by the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from registry_core import Digest, load_config
from registry_server.app import REGISTRY_KEY, build_app
from tests.api_support import (
    ANONYMOUS,
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


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


def _names(items: list[dict], key: str = "name") -> list[str]:
    return sorted(item[key] for item in items)


async def v2_status(api: ApiClient, path: str, login: Login, method: str = "GET") -> int:
    return (await api.request(method, f"/v2/{path}", login)).status


# -- logins ------------------------------------------------------------------------------------


async def test_x_api_key_header_authenticates(api, world):
    reply = await api.get(f"{API}/user", world.key("reader"))

    assert reply.status == 200
    assert reply.json() == {"kind": "user", "name": "reader", "superuser": False}


async def test_basic_with_password_authenticates(api, world):
    reply = await api.get(f"{API}/user", world.password("root"))

    assert reply.status == 200
    assert reply.json() == {"kind": "user", "name": "root", "superuser": True}


async def test_basic_with_api_key_authenticates(api, world):
    reply = await api.get(f"{API}/user", Login.basic("writer", world.keys["writer"]))

    assert reply.status == 200
    assert reply.json()["name"] == "writer"


async def test_bearer_token_from_the_token_endpoint_authenticates(api, world):
    token = await api.bearer_token("prod-admin", world.passwords["prod-admin"])

    reply = await api.get(f"{PROD}/members", Login.bearer(token))

    assert reply.status == 200
    assert _names(reply.json()["members"], "user") == ["prod-admin", "reader", "writer"]


async def test_no_credentials_get_401_with_a_challenge(api, world):
    reply = await api.get(f"{API}/owners")

    assert_error(reply, 401, "UNAUTHORIZED")
    assert reply.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "login",
    [
        Login.api_key("chk_0123456789abcdef_nope"),
        Login.api_key("garbage"),
        Login.basic("reader", "wrong password"),
        Login.basic("ghost", "whatever"),
        Login.bearer("not.a.jwt"),
    ],
    ids=["unknown-key", "malformed-key", "wrong-password", "unknown-user", "bad-bearer"],
)
async def test_wrong_credentials_get_401(api, world, login):
    reply = await api.get(f"{API}/user", login)

    assert_error(reply, 401, "UNAUTHORIZED")


async def test_a_key_of_one_user_does_not_log_in_as_another(api, world):
    reply = await api.get(f"{API}/user", Login.basic("root", world.keys["reader"]))

    assert_error(reply, 401, "UNAUTHORIZED")


async def test_an_entitlement_token_may_ask_who_it_is_and_nothing_else(api, world):
    _, secret = await api.tenancy.create_token("acme", "prod")
    login = Login.basic("acme/prod", secret)

    whoami = await api.get(f"{API}/user", login)
    registry = await api.get(PROD, login)
    repositories = await api.get(f"{PROD}/repositories", login)

    assert whoami.json() == {"kind": "token", "name": "acme/prod", "superuser": False}
    assert_error(registry, 403, "DENIED")
    assert_error(repositories, 403, "DENIED")


async def test_the_api_answers_404_when_auth_is_disabled():
    config = load_config(
        overrides={"storage": {"url": "memory://"}, "auth": {"enabled": False}}, environ={}
    )
    server = TestServer(build_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            for path in (f"{API}/user", f"{API}/owners", f"{API}/openapi.json"):
                async with session.get(f"http://127.0.0.1:{server.port}{path}") as response:
                    body = await response.json()
                    assert response.status == 404, path
                    assert body["errors"][0]["code"] == "UNSUPPORTED"
                    assert "auth" in body["errors"][0]["message"]
    finally:
        await server.close()


async def test_a_deleted_users_bearer_token_is_refused(api, world):
    token = await api.bearer_token("writer", world.passwords["writer"])
    await api.tenancy.delete_user("writer")

    reply = await api.get(f"{API}/user", Login.bearer(token))

    assert_error(reply, 401, "UNAUTHORIZED")


# -- users ---------------------------------------------------------------------------------------


async def test_a_superuser_lists_users(api, world):
    reply = await api.get(f"{API}/users", world.key("root"))

    assert reply.status == 200
    names = _names(reply.json()["users"])
    assert names == sorted(
        ["root", "reader", "writer", "prod-admin", "acme-admin", "outsider", "nobody"]
    )
    assert all("password" not in str(user) for user in reply.json()["users"])


async def test_other_users_may_not_list_users(api, world):
    assert_error(await api.get(f"{API}/users", world.key("acme-admin")), 403, "DENIED")


async def test_a_superuser_creates_a_user_who_can_then_log_in(api, world):
    body = {"name": "newbie", "password": "s3cret-enough", "superuser": False}

    reply = await api.post(f"{API}/users", world.key("root"), json_body=body)

    assert reply.status == 201
    assert reply.json()["name"] == "newbie"
    assert reply.json()["superuser"] is False
    datetime.fromisoformat(reply.json()["created"])
    assert (await api.get(f"{API}/user", Login.basic("newbie", "s3cret-enough"))).status == 200


async def test_creating_a_user_that_exists_is_a_conflict(api, world):
    body = {"name": "reader", "password": "x"}

    assert_error(await api.post(f"{API}/users", world.key("root"), json_body=body), 409, "CONFLICT")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "Bad Name", "password": "x"}, "NAME_INVALID"),
        ({"name": "fine"}, "INVALID_REQUEST"),
        ({"name": "fine", "password": ""}, "INVALID_REQUEST"),
        ({"name": "fine", "password": "x", "admin": True}, "INVALID_REQUEST"),
        ({"name": 7, "password": "x"}, "INVALID_REQUEST"),
    ],
    ids=["bad-name", "no-password", "empty-password", "unknown-field", "wrong-type"],
)
async def test_invalid_user_bodies_get_400(api, world, body, code):
    reply = await api.post(f"{API}/users", world.key("root"), json_body=body)

    assert_error(reply, 400, code)


async def test_a_body_that_is_not_json_gets_400(api, world):
    reply = await api.post(f"{API}/users", world.key("root"), data=b"{nope")

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_only_a_superuser_creates_users(api, world):
    body = {"name": "sneaky", "password": "x"}

    assert_error(
        await api.post(f"{API}/users", world.key("acme-admin"), json_body=body), 403, "DENIED"
    )


async def test_a_user_shows_itself(api, world):
    reply = await api.get(f"{API}/users/reader", world.key("reader"))

    assert reply.status == 200
    assert reply.json()["name"] == "reader"


async def test_another_user_looks_exactly_like_a_missing_one(api, world):
    existing = await api.get(f"{API}/users/writer", world.key("reader"))
    missing = await api.get(f"{API}/users/wraiter", world.key("reader"))

    assert_error(existing, 404, "NOT_FOUND")
    assert_error(missing, 404, "NOT_FOUND")
    assert existing.body.replace(b"writer", b"X") == missing.body.replace(b"wraiter", b"X")


async def test_a_superuser_shows_any_user_and_404s_a_missing_one(api, world):
    assert (await api.get(f"{API}/users/writer", world.key("root"))).status == 200
    assert_error(await api.get(f"{API}/users/ghost", world.key("root")), 404, "NOT_FOUND")


async def test_a_user_changes_its_own_password_and_the_old_one_stops_at_once(api, world):
    old = world.password("reader")
    assert await v2_status(api, "acme/prod/app/tags/list", old) == 404  # logged in, cached

    reply = await api.patch(
        f"{API}/users/reader",
        world.key("reader"),
        json_body={"password": "brand-new-pw", "current_password": world.passwords["reader"]},
    )

    assert reply.status == 200
    assert await v2_status(api, "acme/prod/app/tags/list", old) == 401
    new = Login.basic("reader", "brand-new-pw")
    assert await v2_status(api, "acme/prod/app/tags/list", new) == 404


async def test_a_user_may_not_make_itself_a_superuser(api, world):
    reply = await api.patch(
        f"{API}/users/reader", world.key("reader"), json_body={"superuser": True}
    )

    assert_error(reply, 403, "DENIED")
    assert (await api.tenancy.require_user("reader")).superuser is False


async def test_a_user_may_not_change_another_user(api, world):
    reply = await api.patch(f"{API}/users/writer", world.key("reader"), json_body={"password": "x"})

    assert_error(reply, 404, "NOT_FOUND")


async def test_a_superuser_grants_and_withdraws_superuser(api, world):
    grant = await api.patch(f"{API}/users/nobody", world.key("root"), json_body={"superuser": True})
    listed = await api.get(f"{API}/users", world.key("nobody"))
    withdraw = await api.patch(
        f"{API}/users/nobody", world.key("root"), json_body={"superuser": False}
    )
    refused = await api.get(f"{API}/users", world.key("nobody"))

    assert grant.json()["superuser"] is True
    assert listed.status == 200
    assert withdraw.json()["superuser"] is False
    assert_error(refused, 403, "DENIED")


async def test_an_empty_password_is_refused(api, world):
    reply = await api.patch(f"{API}/users/reader", world.key("reader"), json_body={"password": ""})

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_a_superuser_deletes_a_user_whose_keys_stop_at_once(api, world):
    assert (await api.get(f"{API}/user", world.key("writer"))).status == 200

    reply = await api.delete(f"{API}/users/writer", world.key("root"))

    assert reply.status == 204
    assert_error(await api.get(f"{API}/user", world.key("writer")), 401, "UNAUTHORIZED")
    assert await v2_status(api, "acme/prod/app/tags/list", world.password("writer")) == 401
    assert_error(await api.get(f"{API}/users/writer", world.key("root")), 404, "NOT_FOUND")


async def test_a_user_may_not_delete_itself(api, world):
    assert_error(await api.delete(f"{API}/users/reader", world.key("reader")), 403, "DENIED")


async def test_a_recreated_user_does_not_inherit_the_old_roles(api, world):
    await api.delete(f"{API}/users/acme-admin", world.key("root"))
    created = await api.post(
        f"{API}/users", world.key("root"), json_body={"name": "acme-admin", "password": "pw2"}
    )

    reply = await api.get(f"{API}/owners/acme", Login.basic("acme-admin", "pw2"))

    assert created.status == 201
    assert_error(reply, 404, "NOT_FOUND")


# -- API keys -------------------------------------------------------------------------------------


async def test_a_user_lists_its_api_keys_without_secrets(api, world):
    reply = await api.get(f"{API}/users/reader/api-keys", world.key("reader"))

    assert reply.status == 200
    keys = reply.json()["api_keys"]
    assert [k["id"] for k in keys] == [world.key_ids["reader"]]
    assert keys[0]["state"] == "active"
    assert world.keys["reader"] not in reply.body.decode()
    assert all("secret" not in k for k in keys)


async def test_creating_an_api_key_shows_the_secret_once_and_it_works(api, world):
    reply = await api.post(
        f"{API}/users/reader/api-keys", world.password("reader"), json_body={"name": "ci"}
    )

    assert reply.status == 201
    created = reply.json()
    assert created["secret"].startswith(f"chk_{created['id']}_")
    assert created["name"] == "ci"
    assert created["expires"] is None
    assert (await api.get(f"{API}/user", Login.api_key(created["secret"]))).json()[
        "name"
    ] == "reader"
    listed = await api.get(f"{API}/users/reader/api-keys", world.key("reader"))
    assert created["secret"] not in listed.body.decode()


async def test_an_api_key_with_no_body_is_created(api, world):
    reply = await api.post(f"{API}/users/reader/api-keys", world.key("reader"))

    assert reply.status == 201


@pytest.mark.parametrize("expires_in", ["30d", 2592000, 2592000.0])
async def test_api_key_expiry_takes_a_duration_or_seconds(api, world, expires_in):
    reply = await api.post(
        f"{API}/users/reader/api-keys", world.key("reader"), json_body={"expires_in": expires_in}
    )

    assert reply.status == 201
    expires = datetime.fromisoformat(reply.json()["expires"]).timestamp()
    assert abs(expires - (time.time() + 30 * 86400)) < 60


@pytest.mark.parametrize("expires_in", ["soon", 0, -5, "0s"])
async def test_an_invalid_expiry_gets_400(api, world, expires_in):
    reply = await api.post(
        f"{API}/users/reader/api-keys", world.key("reader"), json_body={"expires_in": expires_in}
    )

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_an_expired_api_key_is_refused(api, world):
    created = await api.post(
        f"{API}/users/reader/api-keys", world.key("reader"), json_body={"expires_in": 0.5}
    )
    await asyncio.sleep(0.7)

    reply = await api.get(f"{API}/user", Login.api_key(created.json()["secret"]))
    listed = await api.get(f"{API}/users/reader/api-keys", world.key("reader"))

    assert_error(reply, 401, "UNAUTHORIZED")
    states = {k["id"]: k["state"] for k in listed.json()["api_keys"]}
    assert states[created.json()["id"]] == "expired"


async def test_revoking_an_api_key_refuses_it_at_once_on_v2_and_the_api(api, world):
    created = (await api.post(f"{API}/users/writer/api-keys", world.key("writer"))).json()
    basic = Login.basic("writer", created["secret"])
    assert await v2_status(api, "acme/prod/app/tags/list", basic) == 404  # cached as valid
    assert (await api.get(f"{API}/user", Login.api_key(created["secret"]))).status == 200

    reply = await api.delete(f"{API}/users/writer/api-keys/{created['id']}", world.key("writer"))

    assert reply.status == 204
    assert await v2_status(api, "acme/prod/app/tags/list", basic) == 401
    assert_error(
        await api.get(f"{API}/user", Login.api_key(created["secret"])), 401, "UNAUTHORIZED"
    )
    listed = await api.get(f"{API}/users/writer/api-keys", world.key("writer"))
    states = {k["id"]: k["state"] for k in listed.json()["api_keys"]}
    assert states[created["id"]] == "revoked"


async def test_another_users_keys_look_missing(api, world):
    listed = await api.get(f"{API}/users/writer/api-keys", world.key("reader"))
    created = await api.post(f"{API}/users/writer/api-keys", world.key("reader"))
    revoked = await api.delete(
        f"{API}/users/writer/api-keys/{world.key_ids['writer']}", world.key("reader")
    )

    for reply in (listed, created, revoked):
        assert_error(reply, 404, "NOT_FOUND")
    assert (await api.get(f"{API}/user", world.key("writer"))).status == 200


async def test_a_key_is_revoked_only_under_its_own_user(api, world):
    reply = await api.delete(
        f"{API}/users/reader/api-keys/{world.key_ids['writer']}", world.key("reader")
    )

    assert_error(reply, 404, "NOT_FOUND")
    assert (await api.get(f"{API}/user", world.key("writer"))).status == 200


async def test_a_superuser_manages_anyones_keys(api, world):
    listed = await api.get(f"{API}/users/writer/api-keys", world.key("root"))
    revoked = await api.delete(
        f"{API}/users/writer/api-keys/{world.key_ids['writer']}", world.key("root")
    )

    assert listed.status == 200
    assert revoked.status == 204
    assert_error(await api.get(f"{API}/user", world.key("writer")), 401, "UNAUTHORIZED")


# -- owners -----------------------------------------------------------------------------------------


async def test_a_superuser_creates_an_owner(api, world):
    reply = await api.post(
        f"{API}/owners", world.key("root"), json_body={"name": "initech", "kind": "user"}
    )

    assert reply.status == 201
    assert reply.json()["name"] == "initech"
    assert reply.json()["kind"] == "user"


async def test_creating_an_owner_needs_a_superuser_and_a_free_valid_name(api, world):
    denied = await api.post(f"{API}/owners", world.key("acme-admin"), json_body={"name": "x1"})
    taken = await api.post(f"{API}/owners", world.key("root"), json_body={"name": "acme"})
    invalid = await api.post(f"{API}/owners", world.key("root"), json_body={"name": "-x-"})
    bad_kind = await api.post(
        f"{API}/owners", world.key("root"), json_body={"name": "y", "kind": "robot"}
    )

    assert_error(denied, 403, "DENIED")
    assert_error(taken, 409, "CONFLICT")
    assert_error(invalid, 400, "NAME_INVALID")
    assert_error(bad_kind, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("user", "owners"),
    [
        ("root", ["acme", "other"]),
        ("reader", ["acme"]),
        ("acme-admin", ["acme"]),
        ("outsider", ["other"]),
        ("nobody", []),
    ],
)
async def test_owners_listed_are_those_the_caller_has_a_role_on(api, world, user, owners):
    reply = await api.get(f"{API}/owners", world.key(user))

    assert reply.status == 200
    assert _names(reply.json()["owners"]) == owners


async def test_an_owner_is_shown_to_its_members(api, world):
    reply = await api.get(f"{API}/owners/acme", world.key("reader"))

    assert reply.status == 200
    assert reply.json()["name"] == "acme"


async def test_an_owner_without_a_role_looks_exactly_like_a_missing_one(api, world):
    hidden = await api.get(f"{API}/owners/acme", world.key("outsider"))
    missing = await api.get(f"{API}/owners/acmf", world.key("outsider"))

    assert_error(hidden, 404, "NOT_FOUND")
    assert hidden.body.replace(b"acme", b"X") == missing.body.replace(b"acmf", b"X")


async def test_deleting_an_owner_that_holds_registries_is_a_conflict(api, world):
    assert_error(await api.delete(f"{API}/owners/acme", world.key("root")), 409, "CONFLICT")


async def test_a_superuser_deletes_an_empty_owner(api, world):
    await api.post(f"{API}/owners", world.key("root"), json_body={"name": "empty"})

    reply = await api.delete(f"{API}/owners/empty", world.key("root"))

    assert reply.status == 204
    assert_error(await api.get(f"{API}/owners/empty", world.key("root")), 404, "NOT_FOUND")


async def test_an_owner_admin_may_not_delete_the_owner(api, world):
    assert_error(await api.delete(f"{API}/owners/acme", world.key("acme-admin")), 403, "DENIED")
    assert_error(await api.delete(f"{API}/owners/acme", world.key("outsider")), 404, "NOT_FOUND")


# -- registries -------------------------------------------------------------------------------------


async def test_an_owner_admin_creates_a_registry_usable_at_once(api, world):
    login = world.key("acme-admin")
    before = await api.get(f"{API}/registries/acme/staging", login)  # caches "no such registry"

    reply = await api.post(
        f"{API}/owners/acme/registries",
        login,
        json_body={"name": "staging", "visibility": "public"},
    )

    assert_error(before, 404, "NAME_UNKNOWN")
    assert reply.status == 201
    assert reply.json() == {
        "owner": "acme",
        "name": "staging",
        "visibility": "public",
        "created": reply.json()["created"],
    }
    assert (await api.get(f"{API}/registries/acme/staging", login)).status == 200
    assert await v2_status(api, "acme/staging/app/tags/list", ANONYMOUS) == 404  # public: readable


async def test_creating_a_registry_needs_the_owner_admin_role(api, world):
    body = {"name": "mine"}
    registry_admin = await api.post(
        f"{API}/owners/acme/registries", world.key("prod-admin"), json_body=body
    )
    stranger = await api.post(
        f"{API}/owners/acme/registries", world.key("outsider"), json_body=body
    )
    superuser = await api.post(f"{API}/owners/acme/registries", world.key("root"), json_body=body)

    assert_error(registry_admin, 403, "DENIED")
    assert_error(stranger, 404, "NOT_FOUND")
    assert superuser.status == 201


async def test_creating_a_registry_checks_name_and_visibility(api, world):
    login = world.key("acme-admin")
    taken = await api.post(f"{API}/owners/acme/registries", login, json_body={"name": "prod"})
    invalid = await api.post(f"{API}/owners/acme/registries", login, json_body={"name": "A!"})
    bad = await api.post(
        f"{API}/owners/acme/registries", login, json_body={"name": "ok", "visibility": "open"}
    )

    assert_error(taken, 409, "CONFLICT")
    assert_error(invalid, 400, "NAME_INVALID")
    assert_error(bad, 400, "INVALID_REQUEST")


@pytest.mark.parametrize(
    ("user", "registries"),
    [("acme-admin", ["prod", "pub"]), ("reader", ["prod", "pub"]), ("root", ["prod", "pub"])],
)
async def test_an_owners_registries_are_listed_for_those_who_can_pull_them(
    api, world, user, registries
):
    await api.tenancy.create_registry("acme", "hidden")
    await api.tenancy.add_member("acme", "hidden", "nobody", "read")
    expected = sorted([*registries, "hidden"]) if user in ("acme-admin", "root") else registries

    reply = await api.get(f"{API}/owners/acme/registries", world.key(user))

    assert reply.status == 200
    assert _names(reply.json()["registries"]) == expected


async def test_a_registry_is_shown_to_those_who_can_pull_it(api, world):
    for user in ("reader", "writer", "prod-admin", "acme-admin", "root"):
        reply = await api.get(PROD, world.key(user))
        assert reply.status == 200, user
        assert reply.json()["visibility"] == "private"
    assert (await api.get(f"{API}/registries/acme/pub", world.key("outsider"))).status == 200


async def test_a_private_registry_looks_exactly_like_a_missing_one_to_others(api, world):
    for user in ("outsider", "nobody"):
        hidden = await api.get(PROD, world.key(user))
        missing = await api.get(f"{API}/registries/acme/prof", world.key(user))
        no_owner = await api.get(f"{API}/registries/acmf/prod", world.key(user))
        assert_error(hidden, 404, "NAME_UNKNOWN")
        assert hidden.body.replace(b"acme/prod", b"X") == missing.body.replace(b"acme/prof", b"X")
        assert hidden.body.replace(b"acme/prod", b"X") == no_owner.body.replace(b"acmf/prod", b"X")


async def test_an_admin_makes_a_registry_public_and_anonymous_pulls_work_at_once(api, world):
    assert await v2_status(api, "acme/prod/app/tags/list", ANONYMOUS) == 401

    reply = await api.patch(PROD, world.key("prod-admin"), json_body={"visibility": "public"})

    assert reply.status == 200
    assert reply.json()["visibility"] == "public"
    assert await v2_status(api, "acme/prod/app/tags/list", ANONYMOUS) == 404


async def test_changing_visibility_needs_the_admin_role(api, world):
    body = {"visibility": "public"}
    assert_error(await api.patch(PROD, world.key("writer"), json_body=body), 403, "DENIED")
    assert_error(await api.patch(PROD, world.key("outsider"), json_body=body), 404, "NAME_UNKNOWN")
    assert_error(
        await api.patch(f"{API}/registries/acme/pub", world.key("outsider"), json_body=body),
        403,
        "DENIED",
    )
    bad = await api.patch(PROD, world.key("prod-admin"), json_body={"visibility": "secret"})
    assert_error(bad, 400, "INVALID_REQUEST")


async def test_an_admin_deletes_a_registry_and_its_tokens_stop_at_once(api, world):
    _, secret = await api.tenancy.create_token("acme", "prod")
    token = Login.basic("acme/prod", secret)
    assert await v2_status(api, "acme/prod/app/tags/list", token) == 404  # cached as valid

    reply = await api.delete(PROD, world.key("prod-admin"))

    assert reply.status == 204
    assert await v2_status(api, "acme/prod/app/tags/list", token) == 401
    assert_error(await api.get(PROD, world.key("root")), 404, "NAME_UNKNOWN")
    assert_error(await api.get(PROD, world.key("reader")), 404, "NAME_UNKNOWN")


async def test_deleting_a_registry_needs_the_admin_role(api, world):
    assert_error(await api.delete(PROD, world.key("writer")), 403, "DENIED")
    assert_error(await api.delete(PROD, world.key("outsider")), 404, "NAME_UNKNOWN")


# -- members ----------------------------------------------------------------------------------------


async def test_an_owner_admin_lists_the_owners_members(api, world):
    reply = await api.get(f"{API}/owners/acme/members", world.key("acme-admin"))

    assert reply.status == 200
    assert reply.json()["members"] == [
        {"user": "acme-admin", "owner": "acme", "registry": None, "role": "admin"}
    ]


async def test_an_owner_role_given_through_the_api_counts_at_once(api, world):
    login = world.key("nobody")
    assert_error(await api.get(f"{API}/registries/acme/prod", login), 404, "NAME_UNKNOWN")

    reply = await api.put(
        f"{API}/owners/acme/members",
        world.key("acme-admin"),
        json_body={"user": "nobody", "role": "write"},
    )

    assert reply.status == 200
    assert reply.json() == {"user": "nobody", "owner": "acme", "registry": None, "role": "write"}
    assert (await api.get(PROD, login)).status == 200
    assert await v2_status(api, "acme/prod/app/tags/list", world.password("nobody")) == 404


async def test_removing_an_owner_member_takes_effect_at_once(api, world):
    login = world.key("acme-admin")
    await api.put(f"{API}/owners/acme/members", login, json_body={"user": "nobody", "role": "read"})
    assert (await api.get(PROD, world.key("nobody"))).status == 200

    reply = await api.delete(f"{API}/owners/acme/members/nobody", login)

    assert reply.status == 204
    assert_error(await api.get(PROD, world.key("nobody")), 404, "NAME_UNKNOWN")
    again = await api.delete(f"{API}/owners/acme/members/nobody", login)
    assert_error(again, 404, "NOT_FOUND")


async def test_owner_members_need_the_owner_admin_role(api, world):
    body = {"user": "nobody", "role": "admin"}
    for user, status, code in (
        ("prod-admin", 403, "DENIED"),
        ("reader", 403, "DENIED"),
        ("outsider", 404, "NOT_FOUND"),
    ):
        login = world.key(user)
        assert_error(await api.get(f"{API}/owners/acme/members", login), status, code)
        assert_error(
            await api.put(f"{API}/owners/acme/members", login, json_body=body), status, code
        )
        assert_error(await api.delete(f"{API}/owners/acme/members/acme-admin", login), status, code)


async def test_a_member_must_be_an_existing_user_with_a_known_role(api, world):
    login = world.key("acme-admin")
    ghost = await api.put(
        f"{API}/owners/acme/members", login, json_body={"user": "ghost", "role": "read"}
    )
    role = await api.put(
        f"{API}/owners/acme/members", login, json_body={"user": "nobody", "role": "owner"}
    )

    assert_error(ghost, 404, "NOT_FOUND")
    assert_error(role, 400, "INVALID_REQUEST")


async def test_a_registry_admin_manages_the_registrys_members(api, world):
    login = world.key("prod-admin")

    put = await api.put(f"{PROD}/members", login, json_body={"user": "nobody", "role": "read"})
    listed = await api.get(f"{PROD}/members", login)
    pulled = await v2_status(api, "acme/prod/app/tags/list", world.password("nobody"))
    removed = await api.delete(f"{PROD}/members/nobody", login)
    after = await api.get(PROD, world.key("nobody"))

    assert put.json() == {"user": "nobody", "owner": "acme", "registry": "prod", "role": "read"}
    assert "nobody" in _names(listed.json()["members"], "user")
    assert pulled == 404
    assert removed.status == 204
    assert_error(after, 404, "NAME_UNKNOWN")


async def test_an_owner_admin_manages_every_registrys_members(api, world):
    reply = await api.get(f"{PROD}/members", world.key("acme-admin"))

    assert reply.status == 200


async def test_registry_members_need_the_admin_role(api, world):
    body = {"user": "nobody", "role": "admin"}
    for user, status, code in (("writer", 403, "DENIED"), ("outsider", 404, "NAME_UNKNOWN")):
        login = world.key(user)
        assert_error(await api.get(f"{PROD}/members", login), status, code)
        assert_error(await api.put(f"{PROD}/members", login, json_body=body), status, code)
        assert_error(await api.delete(f"{PROD}/members/reader", login), status, code)


async def test_a_writer_cannot_promote_itself(api, world):
    reply = await api.put(
        f"{PROD}/members", world.key("writer"), json_body={"user": "writer", "role": "admin"}
    )

    assert_error(reply, 403, "DENIED")
    assert (await api.tenancy.get_member("acme", "prod", "writer")).role == "write"


# -- entitlement tokens -----------------------------------------------------------------------------


async def test_an_admin_creates_a_token_that_pulls_but_never_pushes(api, world):
    await api.push_image("acme/prod/app", "1.0", seed="app")
    body = {"name": "customer", "expires_in": "30d", "max_pulls": 2, "images": "app"}

    reply = await api.post(f"{PROD}/tokens", world.key("prod-admin"), json_body=body)

    assert reply.status == 201
    created = reply.json()
    assert created["username"] == "acme/prod"
    assert created["secret"].startswith(f"cht_{created['id']}_")
    assert (created["max_pulls"], created["images"], created["pulls"]) == (2, "app", 0)
    expires = datetime.fromisoformat(created["expires"]).timestamp()
    assert abs(expires - (time.time() + 30 * 86400)) < 60
    login = Login.basic("acme/prod", created["secret"])
    assert await v2_status(api, "acme/prod/app/manifests/1.0", login) == 200
    push = await api.request("POST", "/v2/acme/prod/app/blobs/uploads/", login)
    assert push.status == 403
    assert push.json()["errors"][0]["code"] == "DENIED"
    assert await v2_status(api, "acme/prod/other/tags/list", login) == 403  # images: app only
    assert await v2_status(api, "acme/prod/app/manifests/1.0", login) == 200
    limit = await api.request("GET", "/v2/acme/prod/app/manifests/1.0", login)
    assert limit.status == 403
    assert limit.json()["errors"][0]["message"] == "pull limit reached"
    listed = await api.get(f"{PROD}/tokens", world.key("prod-admin"))
    [token] = listed.json()["tokens"]
    assert token["pulls"] == 2
    assert created["secret"] not in listed.body.decode()
    assert "secret" not in token


async def test_a_token_with_no_options_is_created(api, world):
    reply = await api.post(f"{PROD}/tokens", world.key("acme-admin"))

    assert reply.status == 201
    assert reply.json()["expires"] is None
    assert reply.json()["max_pulls"] is None


@pytest.mark.parametrize(
    "body",
    [{"max_pulls": 0}, {"expires_in": "tomorrow"}, {"images": ""}, {"scope": "push"}],
    ids=["max-pulls-0", "bad-expiry", "empty-images", "unknown-field"],
)
async def test_invalid_token_bodies_get_400(api, world, body):
    reply = await api.post(f"{PROD}/tokens", world.key("prod-admin"), json_body=body)

    assert_error(reply, 400, "INVALID_REQUEST")


async def test_an_expired_token_is_refused(api, world):
    created = await api.post(
        f"{PROD}/tokens", world.key("prod-admin"), json_body={"expires_in": 0.5}
    )
    await asyncio.sleep(0.7)

    login = Login.basic("acme/prod", created.json()["secret"])

    assert await v2_status(api, "acme/prod/app/tags/list", login) == 401
    listed = await api.get(f"{PROD}/tokens", world.key("prod-admin"))
    assert listed.json()["tokens"][0]["state"] == "expired"


async def test_revoking_a_token_refuses_it_at_once(api, world):
    created = (await api.post(f"{PROD}/tokens", world.key("prod-admin"))).json()
    login = Login.basic("acme/prod", created["secret"])
    assert await v2_status(api, "acme/prod/app/tags/list", login) == 404  # cached as valid

    reply = await api.delete(f"{PROD}/tokens/{created['id']}", world.key("prod-admin"))

    assert reply.status == 204
    assert await v2_status(api, "acme/prod/app/tags/list", login) == 401
    listed = await api.get(f"{PROD}/tokens", world.key("prod-admin"))
    assert listed.json()["tokens"][0]["state"] == "revoked"


async def test_a_token_is_revoked_only_through_its_own_registry(api, world):
    other, _ = await api.tenancy.create_token("acme", "pub")

    reply = await api.delete(f"{PROD}/tokens/{other.id}", world.key("prod-admin"))
    missing = await api.delete(f"{PROD}/tokens/0123456789abcdef", world.key("prod-admin"))

    assert_error(reply, 404, "NOT_FOUND")
    assert_error(missing, 404, "NOT_FOUND")
    assert (await api.tenancy.get_token(other.id)).revoked is False


async def test_tokens_need_the_admin_role(api, world):
    token, _ = await api.tenancy.create_token("acme", "prod")
    for user, status, code in (("writer", 403, "DENIED"), ("outsider", 404, "NAME_UNKNOWN")):
        login = world.key(user)
        assert_error(await api.get(f"{PROD}/tokens", login), status, code)
        assert_error(await api.post(f"{PROD}/tokens", login), status, code)
        assert_error(await api.delete(f"{PROD}/tokens/{token.id}", login), status, code)


# -- content ----------------------------------------------------------------------------------------


async def test_repositories_are_listed_with_their_tag_counts(api, world):
    await api.push_image("acme/prod/app", "1.0", seed="a1")
    await api.push_image("acme/prod/app", "2.0", seed="a2")
    await api.push_image("acme/prod/tools/build", "latest", seed="b")
    await api.push_image("acme/pub/elsewhere", "x", seed="c")

    reply = await api.get(f"{PROD}/repositories", world.key("reader"))

    assert reply.status == 200
    assert reply.json()["repositories"] == [
        {"name": "acme/prod/app", "image": "app", "tags": 2},
        {"name": "acme/prod/tools/build", "image": "tools/build", "tags": 1},
    ]


async def test_tags_carry_digest_media_type_and_total_size(api, world):
    pushed = await api.push_image("acme/prod/tools/build", "1.0", seed="t")
    await api.push_image("acme/prod/tools/build", "2.0", seed="u")

    reply = await api.get(f"{PROD}/repositories/tools/build/tags", world.key("reader"))

    assert reply.status == 200
    body = reply.json()
    assert body["name"] == "acme/prod/tools/build"
    assert [t["name"] for t in body["tags"]] == ["1.0", "2.0"]
    first = body["tags"][0]
    assert first["digest"] == pushed["digest"]
    assert first["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert first["size"] == pushed["total"]


async def test_an_index_counts_its_manifests_and_their_blobs_once(api, world):
    one = await api.push_image("acme/prod/multi", None, seed="amd64")
    two = await api.push_image("acme/prod/multi", None, seed="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": image["digest"],
                    "size": image["manifest_size"],
                }
                for image in (one, two)
            ],
        }
    ).encode()
    await (
        api.app[REGISTRY_KEY]
        .repository("acme/prod/multi")
        .manifests.put(index, "application/vnd.oci.image.index.v1+json", tag="latest")
    )

    reply = await api.get(f"{PROD}/repositories/multi/tags", world.key("reader"))

    [tag] = reply.json()["tags"]
    assert tag["digest"] == str(Digest.of(index))
    assert tag["size"] == len(index) + one["total"] + two["total"]


async def test_manifests_are_listed_with_sizes_and_tags(api, world):
    first = await api.push_image("acme/prod/app", "1.0", seed="m1")
    second = await api.push_image("acme/prod/app", None, seed="m2")
    repo = api.app[REGISTRY_KEY].repository("acme/prod/app")
    await repo.manifests.tag("stable", Digest.parse(first["digest"]))

    reply = await api.get(f"{PROD}/repositories/app/manifests", world.key("writer"))

    assert reply.status == 200
    found = {m["digest"]: m for m in reply.json()["manifests"]}
    assert set(found) == {first["digest"], second["digest"]}
    assert found[first["digest"]]["tags"] == ["1.0", "stable"]
    assert found[first["digest"]]["size"] == first["manifest_size"]
    assert found[first["digest"]]["total_size"] == first["total"]
    assert found[second["digest"]]["tags"] == []


async def test_content_of_a_public_registry_is_listed_for_any_user(api, world):
    await api.push_image("acme/pub/app", "1.0", seed="p")

    reply = await api.get(f"{API}/registries/acme/pub/repositories", world.key("outsider"))

    assert reply.status == 200
    assert [r["name"] for r in reply.json()["repositories"]] == ["acme/pub/app"]


async def test_content_of_a_private_registry_looks_missing_to_others(api, world):
    await api.push_image("acme/prod/app", "1.0", seed="s")
    for path in ("repositories", "repositories/app/tags", "repositories/app/manifests"):
        hidden = await api.get(f"{PROD}/{path}", world.key("outsider"))
        missing = await api.get(f"{API}/registries/acme/prof/{path}", world.key("outsider"))
        assert_error(hidden, 404, "NAME_UNKNOWN")
        assert hidden.body.replace(b"acme/prod", b"X") == missing.body.replace(b"acme/prof", b"X")


async def test_a_missing_repository_gets_404_and_an_invalid_name_400(api, world):
    missing = await api.get(f"{PROD}/repositories/nothing/tags", world.key("reader"))
    invalid = await api.get(f"{PROD}/repositories/Not..Valid/tags", world.key("reader"))

    assert_error(missing, 404, "NAME_UNKNOWN")
    assert_error(invalid, 400, "NAME_INVALID")


# -- secrets ------------------------------------------------------------------------------------------


async def test_no_secret_reaches_the_logs(api, world, caplog):
    caplog.set_level(logging.DEBUG)
    key = (await api.post(f"{API}/users/reader/api-keys", world.key("reader"))).json()["secret"]
    token = (await api.post(f"{PROD}/tokens", world.key("prod-admin"))).json()["secret"]
    await api.post(
        f"{API}/users", world.key("root"), json_body={"name": "logme", "password": "pw-in-body-123"}
    )
    await api.patch(
        f"{API}/users/logme", world.key("root"), json_body={"password": "pw-changed-456"}
    )
    await api.get(f"{API}/user", Login.basic("reader", world.passwords["reader"]))
    await api.get(f"{API}/user", Login.basic("reader", "wrong-pw-789"))
    await api.get(f"{API}/user", Login.api_key(key))
    await v2_status(api, "acme/prod/app/tags/list", Login.basic("acme/prod", token))

    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    secrets = [
        key,
        token,
        "pw-in-body-123",
        "pw-changed-456",
        world.passwords["reader"],
        "wrong-pw-789",
    ]
    secrets += [world.keys[name] for name in world.keys]
    assert caplog.records, "expected some log output (access log) to check"
    for secret in secrets:
        assert secret not in logged
