"""A registry's signing keys are made when the registry is made: by the CLI, the API and
the configuration's bootstrap registry; sealed in storage before the creation returns."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from drivers.local import LocalDriver
from registry_core import load_config
from registry_core.names import Tenant
from registry_core.secrets import SecretBox, check_canary
from registry_core.signing.keys import KeyRecord
from registry_core.storage import layout
from registry_core.storage.driver import StorageDriver
from registry_server.app import REGISTRY_KEY, first_start
from tests.api_support import seed_world, serve_api
from tests.helpers.tenants import cargohold_cli, new_store, write_config

API = "/api/v1"


async def _stored_keys(driver: StorageDriver, tenant: Tenant) -> dict[str, KeyRecord]:
    """The key records as they are in storage (not through the key store's cache)."""
    try:
        names = await driver.list(layout.signing_keys_dir(tenant))
    except Exception:
        return {}
    records = {}
    for name in names:
        raw = await driver.read(layout.signing_key_record(tenant, name))
        assert b"PRIVATE KEY" not in raw  # sealed, never in clear
        records[name] = msgspec.json.decode(raw, type=KeyRecord)
    return records


def _keys_in_folder(storage: str, tenant: Tenant) -> dict[str, KeyRecord]:
    async def go() -> dict[str, KeyRecord]:
        driver = LocalDriver(storage.removeprefix("file://"))
        try:
            return await _stored_keys(driver, tenant)
        finally:
            await driver.close()

    return asyncio.run(go())


def _check_made(records: dict[str, KeyRecord]) -> None:
    assert sorted(records) == ["cosign-1", "gpg-1"]
    assert {r.algorithm for r in records.values()} == {"ecdsa-p256", "rsa3072"}
    assert all(r.status == "active" and r.sealed for r in records.values())


def test_registries_create_makes_the_keys_before_it_returns(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.owner("acme")
    config = write_config(tmp_path / "c.toml", signing={"rsa_bits": 3072})
    done = cargohold_cli(
        "registries", "create", "acme/fresh", storage=store.storage, config=config, timeout=120
    )
    assert "created registry acme/fresh" in done.stdout
    records = _keys_in_folder(store.storage, Tenant("acme", "fresh"))
    _check_made(records)
    for record in records.values():
        assert f"signing key {record.id} ({record.algorithm}, {record.fingerprint})" in done.stdout


def test_registries_create_makes_no_keys_when_new_registries_do_not_sign(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.owner("acme")
    config = write_config(tmp_path / "c.toml", signing={"enabled": False})
    cargohold_cli("registries", "create", "acme/quiet", storage=store.storage, config=config)
    assert _keys_in_folder(store.storage, Tenant("acme", "quiet")) == {}


def test_registries_create_with_another_secrets_key_refuses_and_creates_nothing(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path)
    store.owner("acme")

    async def canary_of_other_servers() -> None:
        driver = LocalDriver(store.storage.removeprefix("file://"))
        await check_canary(driver, SecretBox("the servers' own secrets key"), create=True)
        await driver.close()

    asyncio.run(canary_of_other_servers())
    config = write_config(tmp_path / "c.toml", secrets={"key": "some other secrets key!!"})
    refused = cargohold_cli(
        "registries", "create", "acme/lost", storage=store.storage, config=config, check=False
    )
    assert refused.returncode == 1 and "same [secrets] key" in refused.stderr
    listed = cargohold_cli("registries", "list", storage=store.storage).stdout
    assert "acme/lost" not in listed


async def test_the_api_answers_201_once_the_keys_are_stored() -> None:
    async with serve_api() as api:
        world = await seed_world(api.tenancy)
        driver = api.app[REGISTRY_KEY].driver
        reply = await api.post(
            f"{API}/owners/acme/registries", world.key("acme-admin"), json_body={"name": "new"}
        )
        assert reply.status == 201
        _check_made(await _stored_keys(driver, Tenant("acme", "new")))
        published = await api.get(f"{API}/registries/acme/new/signing-keys", world.key("root"))
        assert {k["id"] for k in json.loads(published.body)["keys"]} == {"cosign-1", "gpg-1"}


async def test_the_bootstrap_registry_of_a_first_start_gets_its_keys(tmp_path: Path) -> None:
    """``[auth] bootstrap_admin`` makes ``admin/default`` from configuration (here the path
    ``serve --workers N`` takes before it forks; one worker makes it the same way)."""
    store = tmp_path / "store"
    store.mkdir()
    config = load_config(
        overrides={
            "storage": {"url": f"file://{store}"},
            "auth": {"enabled": True, "bootstrap_admin": True},
        },
        environ={},
    )
    await first_start(config)
    driver = LocalDriver(str(store))
    try:
        _check_made(await _stored_keys(driver, Tenant("admin", "default")))
    finally:
        await driver.close()


def test_a_server_s_bootstrap_registry_has_keys_when_it_answers(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = new_store(tmp_path)
    config = write_config(tmp_path / "boot.toml", auth={"bootstrap_admin": True})
    registry_factory(storage_url=store.storage, auth=True, config=config)
    _check_made(_keys_in_folder(store.storage, Tenant("admin", "default")))


async def test_the_key_types_are_a_registry_setting_of_the_api() -> None:
    async with serve_api() as api:
        world = await seed_world(api.tenancy)
        admin = world.key("prod-admin")
        change = {"simple": False, "rsa_bits": 4096}
        reply = await api.put(f"{API}/registries/acme/prod/signing", admin, json_body=change)
        assert reply.status == 200
        shown = json.loads(reply.body)
        assert (shown["simple"], shown["rsa_bits"]) == (False, 4096)
        assert [k["kind"] for k in shown["keys"]] == ["cosign"]
        bad = {"rsa_bits": 1024}
        refused = await api.put(f"{API}/registries/acme/prod/signing", admin, json_body=bad)
        assert refused.status == 400
