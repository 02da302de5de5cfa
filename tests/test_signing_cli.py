"""``cargohold signing-keys ...`` and ``cargohold verify`` on a storage folder, no server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.local import LocalDriver
from registry_core import Registry
from tests.helpers.tenants import Seeder, cargohold_cli, new_store, write_config

from .test_signing_feed import push_image

TENANT = "acme/prod"
REPO = "acme/prod/app"


@pytest.fixture
def store(tmp_path: Path) -> Seeder:
    seed = new_store(tmp_path)
    seed.registry(TENANT)
    return seed


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.toml", server={"public_hosts": ["registry.example"]})


def _push(store: Seeder, tag: str = "1.0", seed: str = "") -> str:
    path = store.storage.removeprefix("file://")

    async def go() -> str:
        registry = Registry(LocalDriver(path))
        try:
            return str(await push_image(registry, REPO, tag=tag, seed=seed))
        finally:
            await registry.close()

    return asyncio.run(go())


def cli(store: Seeder, config: Path, *args: str, check: bool = True, input: str | None = None):
    return cargohold_cli(
        *args, storage=store.storage, config=config, check=check, input=input, timeout=120
    )


def test_sign_missing_signs_what_was_stored_without_a_server(store: Seeder, config: Path) -> None:
    _push(store)  # as if the server crashed right after storing it
    assert cli(store, config, "verify", f"{REPO}:1.0", check=False).returncode == 1
    done = cli(store, config, "signing-keys", "sign-missing", TENANT)
    assert "1 cosign and 1 simple" in done.stdout
    verified = cli(store, config, "verify", f"{REPO}:1.0")
    assert "signed by cosign-1, gpg-1" in verified.stdout


def test_sign_missing_without_a_registry_walks_everything(store: Seeder, config: Path) -> None:
    _push(store)
    cli(store, config, "signing-keys", "sign-missing")
    assert cli(store, config, "verify", f"{REPO}:1.0").returncode == 0


def test_rotation_keeps_old_images_verifiable(store: Seeder, config: Path) -> None:
    _push(store, tag="old", seed="old")
    cli(store, config, "signing-keys", "sign-missing", TENANT)
    cli(store, config, "signing-keys", "rotate", TENANT)
    _push(store, tag="new", seed="new")
    cli(store, config, "signing-keys", "sign-missing", TENANT)
    listed = json.loads(cli(store, config, "signing-keys", "list", TENANT, "--json").stdout)
    assert [(k["id"], k["status"]) for k in listed["keys"]] == [
        ("cosign-1", "retired"),
        ("cosign-2", "active"),
        ("gpg-1", "retired"),
        ("gpg-2", "active"),
    ]
    old = cli(store, config, "verify", f"{REPO}:old").stdout
    assert "valid  key=cosign-1" in old and "valid  key=gpg-1" in old
    assert "signed by cosign-2, gpg-2" in cli(store, config, "verify", f"{REPO}:new").stdout


def test_listing_never_shows_a_private_key(store: Seeder, config: Path) -> None:
    cli(store, config, "signing-keys", "show", TENANT, "--kind", "gpg")
    listed = cli(store, config, "signing-keys", "list", TENANT, "--json").stdout
    assert "PRIVATE" not in listed and "sealed" not in listed
    assert "BEGIN PGP PUBLIC KEY BLOCK" in listed


def test_an_imported_key_signs_and_verifies_with_its_public_half(
    store: Seeder, config: Path, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cli(store, config, "signing-keys", "import", TENANT, "-", input=pem)
    _push(store)
    cli(store, config, "signing-keys", "sign-missing", TENANT)
    public = tmp_path / "mine.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verified = cli(store, config, "verify", f"{REPO}:1.0", "--key", str(public))
    assert "signed by mine.pub" in verified.stdout


def test_verify_with_another_key_fails(store: Seeder, config: Path, tmp_path: Path) -> None:
    _push(store)
    cli(store, config, "signing-keys", "sign-missing", TENANT)
    other = tmp_path / "other.pub"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = cli(store, config, "verify", f"{REPO}:1.0", "--key", str(other), check=False)
    assert result.returncode == 1 and "no valid signature" in result.stderr


def test_a_bad_import_is_refused_with_a_message(store: Seeder, config: Path) -> None:
    result = cli(store, config, "signing-keys", "import", TENANT, "-", input="junk", check=False)
    assert result.returncode == 1 and "PEM" in result.stderr


def test_an_unknown_registry_is_refused(store: Seeder, config: Path) -> None:
    result = cli(store, config, "signing-keys", "rotate", "nobody/here", check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_a_registry_s_rsa_bits_setting_sizes_its_next_key(store: Seeder, config: Path) -> None:
    shown = cli(store, config, "signing-keys", "settings", TENANT, "--rsa-bits", "4096")
    assert "rsa_bits 4096" in shown.stdout
    cli(store, config, "signing-keys", "rotate", TENANT, "--kind", "gpg")
    listed = json.loads(cli(store, config, "signing-keys", "list", TENANT, "--json").stdout)
    assert [(k["id"], k["algorithm"]) for k in listed["keys"]] == [("gpg-1", "rsa4096")]
