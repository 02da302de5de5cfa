"""Managing a registry's upstreams: the management API, the command line and the TOML file.

The same checks everywhere; only the registry's admins may see or change upstreams; no
answer or output ever carries a password; adding an upstream never contacts it; a change
made in one place reaches every server process within ``auth.cache_ttl``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import sample_image
from tests.helpers.procs import run
from tests.helpers.registry_api import push_image
from tests.helpers.server import REPO_ROOT, free_port
from tests.helpers.tenants import Seeder, cargohold_cli, error_codes, http, store_url, write_config

API = "/api/v1/registries/acme/mirror/upstreams"
PASSWORD = "upstream-pw-" + "x" * 12


@pytest.fixture
def world(registry_factory: Any, tmp_path: Path) -> dict[str, Any]:
    """A server with auth on, the registry acme/mirror and one user per role of it."""
    (tmp_path / "store").mkdir()
    seed = Seeder(store_url(tmp_path / "store"))
    roles = seed.tenant_with_roles("acme/mirror")
    outsider = seed.user("outsider")
    config = write_config(
        tmp_path / "server.toml",
        storage={"url": seed.storage},
        auth={"cache_ttl": 1.0},
        secrets={"key": "k" * 32},
    )
    server = registry_factory(storage_url=seed.storage, auth=True, config=config)
    return {"server": server, "config": config, "outsider": outsider, **roles}


def admin(world: dict[str, Any]) -> Any:
    return http(world["admin"].auth)


def add(world: dict[str, Any], **body: Any) -> Any:
    payload = {"name": "hub", "url": "https://registry.example", **body}
    return admin(world).post(world["server"].url + API, json=payload, timeout=30)


def test_an_admin_adds_an_upstream_and_gets_it_back_without_the_password(world):
    created = add(world, username="someone", password=PASSWORD, tag_ttl="10m", images="base/*")

    assert created.status_code == 201, created.text
    body = created.json()
    assert body == {
        "name": "hub",
        "url": "https://registry.example",
        "priority": 100,
        "username": "someone",
        "has_credentials": True,
        "cache": True,
        "tag_ttl": 600.0,
        "images": "base/*",
        "prefix": None,
    }
    assert PASSWORD not in created.text


def test_upstreams_are_listed_by_priority_then_name(world):
    for name, priority in (("zeta", 5), ("beta", 50), ("alpha", 50)):
        assert add(world, name=name, priority=priority).status_code == 201

    listed = admin(world).get(world["server"].url + API, timeout=30)

    assert [u["name"] for u in listed.json()["upstreams"]] == ["zeta", "alpha", "beta"]


def test_a_second_upstream_of_the_same_name_is_a_conflict(world):
    add(world)

    again = add(world, url="https://other.example")

    assert again.status_code == 409
    assert error_codes(again) == ["CONFLICT"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "https://registry.example/v2"},
        {"url": "ftp://registry.example"},
        {"url": "https://user:pw@registry.example"},
        {"name": "Not A Slug"},
        {"tag_ttl": "forever"},
        {"tag_ttl": -1},
        {"prefix": "../etc"},
        {"unknown": 1},
    ],
)
def test_an_invalid_upstream_is_refused_with_400(world, body):
    refused = add(world, **body)

    assert refused.status_code == 400, refused.text
    assert refused.json()["errors"][0]["code"] in {"INVALID_REQUEST", "NAME_INVALID"}


def test_an_upstream_is_shown_and_removed_by_name(world):
    add(world)
    base = world["server"].url + API

    assert admin(world).get(f"{base}/hub", timeout=30).json()["name"] == "hub"
    assert admin(world).delete(f"{base}/hub", timeout=30).status_code == 204
    assert admin(world).get(f"{base}/hub", timeout=30).status_code == 404


@pytest.mark.parametrize("role", ["read", "write"])
def test_members_who_are_not_admins_may_not_see_or_change_upstreams(world, role):
    session = http(world[role].auth)
    base = world["server"].url + API

    assert session.get(base, timeout=30).status_code == 403
    assert session.post(base, json={"name": "x", "url": "https://a.example"}).status_code == 403


def test_to_an_outsider_the_registry_s_upstreams_do_not_exist(world):
    assert (
        http(world["outsider"].auth).get(world["server"].url + API, timeout=30).status_code == 404
    )


def test_adding_an_upstream_never_contacts_it(world):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(1.0)
        connections: list[Any] = []

        def accept() -> None:
            with contextlib.suppress(OSError):
                connections.append(listener.accept())

        watcher = threading.Thread(target=accept)
        watcher.start()
        created = add(world, url=f"http://127.0.0.1:{listener.getsockname()[1]}")
        watcher.join()

    assert created.status_code == 201
    assert connections == []


# -- the command line ---------------------------------------------------------------------------


def test_the_cli_adds_lists_and_removes_upstreams_without_printing_a_password(world):
    config = world["config"]

    added = cargohold_cli(
        "upstreams",
        "add",
        "acme/mirror",
        "https://registry.example",
        "--name",
        "hub",
        "--priority",
        "7",
        "--username",
        "someone",
        "--password-stdin",
        "--no-cache",
        "--tag-ttl",
        "90s",
        "--images",
        "app*",
        "--prefix",
        "library",
        config=config,
        input=PASSWORD + "\n",
    )
    listed = cargohold_cli("upstreams", "list", "acme/mirror", "--json", config=config)
    removed = cargohold_cli("upstreams", "remove", "acme/mirror", "hub", config=config)
    after = cargohold_cli("upstreams", "list", "acme/mirror", "--json", config=config)

    [upstream] = json.loads(listed.stdout)["upstreams"]
    assert upstream == {
        "name": "hub",
        "url": "https://registry.example",
        "priority": 7,
        "username": "someone",
        "has_credentials": True,
        "cache": False,
        "tag_ttl": 90.0,
        "images": "app*",
        "prefix": "library",
    }
    for output in (added, listed, removed):
        assert PASSWORD not in output.stdout + output.stderr
    assert json.loads(after.stdout) == {"upstreams": []}


def test_the_cli_refuses_an_invalid_url_with_one_clear_line(world):
    refused = cargohold_cli(
        "upstreams",
        "add",
        "acme/mirror",
        "https://x.example/path",
        "--name",
        "x",
        config=world["config"],
        check=False,
    )

    assert refused.returncode == 1
    assert "no path" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_upstream_added_by_the_cli_is_seen_by_the_api(world):
    cargohold_cli(
        "upstreams",
        "add",
        "acme/mirror",
        "https://registry.example",
        "--name",
        "cli-made",
        config=world["config"],
    )
    deadline = time.monotonic() + 10
    names: list[str] = []
    while time.monotonic() < deadline and "cli-made" not in names:
        listed = admin(world).get(world["server"].url + API, timeout=30).json()
        names = [u["name"] for u in listed["upstreams"]]
        time.sleep(0.2)

    assert "cli-made" in names


# -- server configuration --------------------------------------------------------------------------


def test_registries_made_by_configuration_get_their_upstreams_at_start(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("configured")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    (tmp_path / "store").mkdir()
    Seeder(store_url(tmp_path / "store")).registry("acme/mirror")
    config = tmp_path / "server.toml"
    config.write_text(
        "[upstreams]\n"
        'allow_networks = ["127.0.0.0/8"]\n'
        "[[upstreams.registries]]\n"
        'registry = "acme/mirror"\n'
        'name = "configured"\n'
        f'url = "{upstream.url}"\n'
        'prefix = "up/reg"\n'
        'username = "someone"\n'
        'password_env = "MIRROR_PASSWORD"\n'
    )

    proxy = registry_factory(
        storage_url=store_url(tmp_path / "store"),
        config=config,
        env={"MIRROR_PASSWORD": PASSWORD},
    )

    got = http().get(
        f"{proxy.url}/v2/acme/mirror/app/manifests/1.0",
        timeout=30,
        headers={"Accept": image.media_type},
    )
    assert got.status_code == 200, got.text
    assert got.headers["Docker-Content-Digest"] == image.digest
    assert PASSWORD not in proxy.log_text()


def test_allow_networks_comes_from_the_environment_as_a_comma_list(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    image = sample_image("env-networks")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    storage = store_url(tmp_path / "store")
    (tmp_path / "store").mkdir()
    Seeder(storage).registry("acme/mirror")
    config = write_config(tmp_path / "c.toml", secrets={"key": "k" * 32})
    cargohold_cli(
        "upstreams",
        "add",
        "acme/mirror",
        upstream.url,
        "--name",
        "up",
        "--prefix",
        "up/reg",
        storage=storage,
        config=config,
    )

    proxy = registry_factory(
        storage_url=storage,
        config=config,
        env={"CARGOHOLD_UPSTREAMS_ALLOW_NETWORKS": "10.0.0.0/8,127.0.0.0/8"},
    )

    got = http().get(
        f"{proxy.url}/v2/acme/mirror/app/manifests/1.0",
        timeout=30,
        headers={"Accept": image.media_type},
    )
    assert got.status_code == 200, got.text


def test_a_loopback_upstream_without_allow_networks_is_refused_with_a_clear_error(
    registry_factory: Any, tmp_path: Path
) -> None:
    upstream = registry_factory()
    push_image(upstream.url, "up/reg/app", sample_image("refused-net"), "1.0")
    storage = store_url(tmp_path / "store")
    (tmp_path / "store").mkdir()
    Seeder(storage).registry("acme/mirror")
    config = write_config(tmp_path / "c.toml", secrets={"key": "k" * 32})
    cargohold_cli(
        "upstreams",
        "add",
        "acme/mirror",
        upstream.url,
        "--name",
        "local",
        "--prefix",
        "up/reg",
        storage=storage,
        config=config,
    )
    proxy = registry_factory(storage_url=storage, config=config)

    got = http().get(f"{proxy.url}/v2/acme/mirror/app/manifests/1.0", timeout=30)

    assert got.status_code == 502
    assert error_codes(got) == ["UNAVAILABLE"]
    assert "upstream local" in got.json()["errors"][0]["message"]
    assert "allow_networks" in got.json()["errors"][0]["message"]


def test_a_malformed_allow_networks_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", upstreams={"allow_networks": ["nonsense"]})

    result = run(
        [
            sys.executable,
            "-m",
            "registry_server",
            "serve",
            "--config",
            str(config),
            "--storage",
            store_url(tmp_path / "store"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        env={"CARGOHOLD_AUTH_ENABLED": "false", "PYTHONPATH": str(REPO_ROOT)},
        check=False,
        timeout=60,
    )

    assert result.returncode == 2
    assert "upstreams.allow_networks" in result.stderr
    assert "Traceback" not in result.stderr


def test_deleting_a_registry_forgets_its_upstreams(world):
    add(world, username="someone", password=PASSWORD)
    superuser = Seeder(world["server"].storage_url).user("root", superuser=True)
    session = http(superuser.auth)
    base = world["server"].url

    assert session.delete(f"{base}/api/v1/registries/acme/mirror", timeout=30).status_code == 204
    created = session.post(
        f"{base}/api/v1/owners/acme/registries", json={"name": "mirror"}, timeout=30
    )
    assert created.status_code == 201
    listed = session.get(base + API, timeout=30)

    assert listed.json() == {"upstreams": []}


def test_an_upstream_added_through_one_server_is_used_by_another_within_cache_ttl(
    registry_factory: Any, world: dict[str, Any]
) -> None:
    upstream = registry_factory()
    image = sample_image("two-processes")
    push_image(upstream.url, "up/reg/app", image, "1.0")
    first = world["server"]
    with world["config"].open("a") as handle:
        handle.write('\n[upstreams]\nallow_networks = ["127.0.0.0/8"]\n')
    second = registry_factory(storage_url=first.storage_url, auth=True, config=world["config"])
    manifest = f"{second.url}/v2/acme/mirror/app/manifests/1.0"
    assert admin(world).get(manifest, timeout=30).status_code == 404

    add(world, url=upstream.url, prefix="up/reg")
    time.sleep(1.5)  # auth.cache_ttl is 1 s
    got = admin(world).get(manifest, headers={"Accept": image.media_type}, timeout=30)

    assert got.status_code == 200, got.text
    assert got.headers["Docker-Content-Digest"] == image.digest


def test_a_configured_upstream_with_a_bad_url_stops_start_up_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[[upstreams.registries]]\nregistry = "acme/hub"\nname = "hub"\n'
        'url = "https://docker.io/v2/library"\n'
    )

    result = run(
        [
            sys.executable,
            "-m",
            "registry_server",
            "serve",
            "--config",
            str(config),
            "--storage",
            store_url(tmp_path / "store"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        env={"CARGOHOLD_AUTH_ENABLED": "false", "PYTHONPATH": str(REPO_ROOT)},
        check=False,
        timeout=60,
    )

    assert result.returncode == 2
    assert "upstreams.registries (acme/hub, 'hub')" in result.stderr
    assert "Traceback" not in result.stderr
