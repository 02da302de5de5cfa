"""Secrets at rest: upstream passwords sealed with the key-encryption key.

One key per deployment (``[secrets] key`` / ``CARGOHOLD_SECRETS_KEY``, else generated
into ``state_dir`` with mode 0600); a canary in storage makes a process with another
key refuse to start, saying which setting to fix; a copy of the bucket alone never
reveals a password.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from drivers import open_driver
from registry_core.secrets import (
    KeyMismatch,
    SecretBox,
    SecretsError,
    check_canary,
    key_from_state_dir,
)
from tests.helpers import sample_image
from tests.helpers.registry_api import push_image
from tests.helpers.server import REPO_ROOT, free_port
from tests.helpers.tenants import Seeder, http, store_url

KEY_A = "key-a-" + "a" * 32
KEY_B = "key-b-" + "b" * 32


def test_a_sealed_secret_opens_with_the_same_key_and_context():
    box = SecretBox(KEY_A)

    assert box.open(box.seal("hunter2", "upstream:acme/x:hub"), "upstream:acme/x:hub") == "hunter2"


def test_a_sealed_secret_does_not_open_with_another_key():
    sealed = SecretBox(KEY_A).seal("hunter2", "ctx")

    with pytest.raises(SecretsError):
        SecretBox(KEY_B).open(sealed, "ctx")


def test_a_sealed_secret_moved_to_another_record_does_not_open():
    box = SecretBox(KEY_A)

    with pytest.raises(SecretsError):
        box.open(box.seal("hunter2", "upstream:acme/x:hub"), "upstream:evil/y:hub")


def test_the_sealed_form_does_not_contain_the_secret():
    assert "hunter2" not in SecretBox(KEY_A).seal("hunter2", "ctx")


def test_a_short_key_is_refused():
    with pytest.raises(SecretsError, match="at least"):
        SecretBox("short")


def test_a_generated_key_file_is_private_and_reused(tmp_path: Path):
    first = key_from_state_dir(tmp_path / "state")
    second = key_from_state_dir(tmp_path / "state")

    assert first == second
    assert stat.S_IMODE((tmp_path / "state" / "secrets-key").stat().st_mode) == 0o600


async def test_the_canary_refuses_a_second_key(tmp_path: Path):
    driver = open_driver(store_url(tmp_path / "store"))
    try:
        await check_canary(driver, SecretBox(KEY_A), create=True)
        await check_canary(driver, SecretBox(KEY_A), create=True)

        with pytest.raises(KeyMismatch, match=r"same \[secrets\] key"):
            await check_canary(driver, SecretBox(KEY_B))
    finally:
        await driver.close()


async def test_storage_that_holds_no_secret_binds_no_key(tmp_path: Path):
    driver = open_driver(store_url(tmp_path / "store"))
    try:
        await check_canary(driver, SecretBox(KEY_A))

        await check_canary(driver, SecretBox(KEY_B))
    finally:
        await driver.close()


def seeded_store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir(exist_ok=True)
    storage = store_url(tmp_path / "store")
    Seeder(storage).registry("acme/mirror")
    return storage


def cli(
    storage: str, key: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["CARGOHOLD_SECRETS_KEY"] = key
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "registry_server", *args, "--storage", storage],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def seal_a_password(storage: str, key: str) -> None:
    added = cli(
        storage,
        key,
        "upstreams",
        "add",
        "acme/mirror",
        "https://registry.example",
        "--name",
        "hub",
        "--username",
        "someone",
        "--password-stdin",
        input="pw\n",
    )
    assert added.returncode == 0, added.stderr


def test_a_server_with_another_key_refuses_to_start_and_names_the_setting(tmp_path: Path):
    storage = seeded_store(tmp_path)
    seal_a_password(storage, KEY_A)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env.update(
        CARGOHOLD_SECRETS_KEY=KEY_B, CARGOHOLD_AUTH_ENABLED="false", PYTHONPATH=str(REPO_ROOT)
    )

    server = subprocess.run(
        [
            sys.executable,
            "-m",
            "registry_server",
            "serve",
            "--storage",
            storage,
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )

    assert server.returncode == 2
    assert "[secrets] key" in server.stderr


def test_an_admin_command_with_another_key_refuses_to_run(tmp_path: Path):
    storage = seeded_store(tmp_path)
    seal_a_password(storage, KEY_A)

    other = cli(storage, KEY_B, "upstreams", "list", "acme/mirror")

    assert other.returncode == 2
    assert "[secrets] key" in other.stderr


def test_an_upstream_password_is_not_stored_in_clear(tmp_path: Path):
    storage = seeded_store(tmp_path)
    password = "pw-never-in-storage-42"

    added = cli(
        storage,
        KEY_A,
        "upstreams",
        "add",
        "acme/mirror",
        "https://registry.example",
        "--name",
        "hub",
        "--username",
        "someone",
        "--password-stdin",
        input=password + "\n",
    )

    assert added.returncode == 0, added.stderr
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_server_without_a_key_generates_one_beside_its_store(
    registry_factory: Any, tmp_path: Path
):
    (tmp_path / "store").mkdir()

    registry_factory(storage_url=store_url(tmp_path / "store"))

    key_file = tmp_path / "store-state" / "secrets-key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_workers_share_the_key_generated_before_they_fork(registry_factory: Any, tmp_path: Path):
    upstream = registry_factory()
    image = sample_image("workers-key")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    storage = seeded_store(tmp_path)
    config = tmp_path / "server.toml"
    config.write_text('[upstreams]\nallow_networks = ["127.0.0.0/8"]\n[auth]\ncache_ttl = 1.0\n')
    server = registry_factory(storage_url=storage, config=config, extra_args=["--workers", "2"])
    key = (tmp_path / "store-state" / "secrets-key").read_text().strip()
    added = cli(
        storage,
        key,
        "upstreams",
        "add",
        "acme/mirror",
        upstream.url,
        "--name",
        "up",
        "--prefix",
        "up/reg",
        "--username",
        "someone",
        "--password-stdin",
        "--no-cache",
        input="pw\n",
    )
    assert added.returncode == 0, added.stderr
    time.sleep(1.5)  # auth.cache_ttl: every worker sees the upstream
    manifest = f"{server.url}/v2/acme/mirror/app/manifests/{image.digest}"

    # Uncached, every pull asks the upstream and so opens the sealed password; each pull
    # is a new connection, which the kernel spreads over both workers.
    statuses = [
        http().get(manifest, headers={"Accept": image.media_type}, timeout=30).status_code
        for _ in range(20)
    ]

    assert set(statuses) == {200}
