"""The management API never leaves the registry without a superuser.

Deleting or demoting the last superuser is refused with 409 CONFLICT (nobody could
create users or repair tenants afterwards); with a second superuser both work. The
check lives in the library (``TenancyStore``), so the command line gets it too.
"""

from __future__ import annotations

import pytest

from drivers import open_driver
from registry_core.tenancy import LastSuperuser, TenancyStore
from tests.api_support import ApiClient, World, assert_error, remembered_hash, seed_world, serve_api

API = "/api/v1"


@pytest.fixture
async def api():
    async with serve_api() as client:
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


async def test_deleting_the_last_superuser_is_refused(api: ApiClient, world: World) -> None:
    reply = await api.delete(f"{API}/users/root", world.key("root"))
    assert "last superuser" in assert_error(reply, 409, "CONFLICT")["message"]
    assert (await api.tenancy.get_user("root")) is not None


async def test_demoting_the_last_superuser_is_refused(api: ApiClient, world: World) -> None:
    reply = await api.patch(f"{API}/users/root", world.key("root"), json_body={"superuser": False})
    assert "last superuser" in assert_error(reply, 409, "CONFLICT")["message"]
    record = await api.tenancy.get_user("root")
    assert record is not None and record.superuser


async def test_a_superuser_can_be_deleted_while_another_remains(
    api: ApiClient, world: World
) -> None:
    await api.tenancy.create_user("root2", "pw-root2-0123456789", superuser=True)
    reply = await api.delete(f"{API}/users/root2", world.key("root"))
    assert reply.status == 204
    assert (await api.tenancy.get_user("root2")) is None


async def test_a_superuser_can_be_demoted_while_another_remains(
    api: ApiClient, world: World
) -> None:
    await api.tenancy.create_user("root2", "pw-root2-0123456789", superuser=True)
    reply = await api.patch(f"{API}/users/root", world.key("root"), json_body={"superuser": False})
    assert reply.status == 200
    assert reply.json()["superuser"] is False


async def test_setting_the_flag_again_on_the_last_superuser_is_allowed(
    api: ApiClient, world: World
) -> None:
    reply = await api.patch(f"{API}/users/root", world.key("root"), json_body={"superuser": True})
    assert reply.status == 200


async def test_the_library_refuses_to_delete_or_demote_the_last_superuser(monkeypatch) -> None:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    store = TenancyStore(open_driver("memory://"))
    await store.create_user("root", "pw-root-0123456789", superuser=True)
    await store.create_user("alice", "pw-alice-0123456789")

    with pytest.raises(LastSuperuser, match="cannot delete 'root'"):
        await store.delete_user("root")
    with pytest.raises(LastSuperuser, match="cannot demote 'root'"):
        await store.update_user("root", password="pw-new-0123456789", superuser=False)

    record = await store.get_user("root")
    assert record is not None and record.superuser
    assert await store.verify_user_password("root", "pw-root-0123456789")
    await store.delete_user("alice")  # not a superuser: no check in the way
