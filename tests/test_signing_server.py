"""Signing in the running server: archive uploads, pull-through caching, crash repair,
entitlement tokens, open mode, and no private key in storage or logs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import requests

from drivers.local import LocalDriver
from registry_core import Registry
from tests.helpers import RegistryServer, free_port, sample_image, write_docker_archive
from tests.helpers.registry_api import get_manifest, push_image
from tests.helpers.tenants import Seeder, cargohold_cli, new_store, store_url, write_config
from tests.helpers.upstreams import MIRROR, HtpasswdDistribution, seed, start_pull_through

from .test_signing_feed import push_image as store_image

TENANT = "acme/prod"


def _server(registry_factory: Any, tmp_path: Path, store: Seeder, **signing: Any) -> RegistryServer:
    port = free_port()
    config = write_config(
        tmp_path / "server.toml",
        server={"public_hosts": [f"127.0.0.1:{port}"]},
        signing=signing,
    )
    return registry_factory(storage_url=store.storage, auth=True, config=config, port=port)


def _wait_for_cosign(
    url: str, repo: str, digest: str, auth: Any = None, *, simple: int = 0
) -> requests.Response:
    """The cosign attachment once it exists (and *simple* simple signatures with it)."""
    deadline = time.monotonic() + 30
    tag = f"sha256-{digest.split(':')[1]}.sig"
    while True:
        resp = requests.get(
            f"{url}/v2/{repo}/manifests/{tag}",
            auth=auth,
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        done = resp.status_code == 200 and len(_simple(url, repo, digest, auth)) >= simple
        if done or time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


def _simple(url: str, repo: str, digest: str, auth: Any = None) -> list[dict[str, Any]]:
    resp = requests.get(f"{url}/extensions/v2/{repo}/signatures/{digest}", auth=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()["signatures"]


def test_a_docker_save_archive_upload_is_signed(registry_factory: Any, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT)
    writer = store.user("writer")
    store.member(TENANT, "writer", "write")
    server = _server(registry_factory, tmp_path, store)
    archive = tmp_path / "app.tar"
    write_docker_archive(archive, "imported:1.0", [{"hello.txt": "hello\n"}])
    resp = requests.post(
        f"{server.url}/api/v1/registries/{TENANT}/archives",
        data=archive.read_bytes(),
        auth=writer.auth,
    )
    assert resp.status_code == 201, resp.text
    digest = resp.json()["images"][0]["digest"]
    signature = _wait_for_cosign(server.url, f"{TENANT}/imported", digest, writer.auth, simple=1)
    assert signature.status_code == 200
    assert len(_simple(server.url, f"{TENANT}/imported", digest, writer.auth)) == 1


def test_a_crash_between_storing_and_signing_is_repaired_by_the_catch_up(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT)
    reader = store.user("reader")
    store.member(TENANT, "reader", "read")

    async def stored_without_a_server() -> str:
        registry = Registry(LocalDriver(store.storage.removeprefix("file://")))
        try:
            return str(await store_image(registry, f"{TENANT}/app"))
        finally:
            await registry.close()

    digest = asyncio.run(stored_without_a_server())
    server = _server(registry_factory, tmp_path, store, interval=1.0)
    signed = _wait_for_cosign(server.url, f"{TENANT}/app", digest, reader.auth, simple=1)
    assert signed.status_code == 200
    assert len(_simple(server.url, f"{TENANT}/app", digest, reader.auth)) == 1


def test_private_keys_are_never_in_storage_or_logs(registry_factory: Any, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT)
    writer = store.user("writer")
    store.member(TENANT, "writer", "write")
    server = _server(registry_factory, tmp_path, store)
    image = sample_image("secret-check")
    digest = push_image(server.url, f"{TENANT}/app", image, "1.0", auth=writer.auth)
    assert _wait_for_cosign(server.url, f"{TENANT}/app", digest, writer.auth).status_code == 200
    root = Path(store.storage.removeprefix("file://"))
    found = [p for p in root.rglob("*") if p.is_file()]
    assert any("signing/keys" in str(p) for p in found)
    for path in found:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert b"PGP PRIVATE KEY BLOCK" not in data, path
    logs = server.log_text()
    assert "PRIVATE KEY" not in logs and "PGP PRIVATE" not in logs


def test_an_entitlement_token_reads_signatures_without_spending_a_pull(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT)
    writer = store.user("writer")
    store.member(TENANT, "writer", "write")
    token = store.token(TENANT, max_pulls=1)
    server = _server(registry_factory, tmp_path, store)
    digest = push_image(server.url, f"{TENANT}/app", sample_image("token"), "1.0", auth=writer.auth)
    for _ in range(3):
        assert _simple(server.url, f"{TENANT}/app", digest, token.auth) is not None
    resp = requests.get(
        f"{server.url}/v2/{TENANT}/app/manifests/1.0",
        auth=token.auth,
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status_code == 200, resp.text


def test_anyone_reads_the_keys_of_a_public_registry(registry_factory: Any, tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT, public=True)
    server = _server(registry_factory, tmp_path, store)
    resp = requests.get(f"{server.url}/api/v1/registries/{TENANT}/signing-keys")
    assert resp.status_code == 200, resp.text
    kinds = sorted(k["kind"] for k in resp.json()["keys"])
    assert kinds == ["cosign", "gpg"]


def test_open_mode_signs_nothing_unless_configured(registry_factory: Any, tmp_path: Path) -> None:
    server = registry_factory(storage_url=store_url(tmp_path / "open"))
    resp = requests.get(f"{server.url}/api/v1/registries/{TENANT}/signing-keys")
    assert resp.status_code == 200
    assert resp.json()["enabled"] is False and resp.json()["keys"] == []


def _pull_through(registry_factory: Any, tmp_path: Path, dist: HtpasswdDistribution, *extra: str):
    pt = start_pull_through(registry_factory, tmp_path)
    cargohold_cli(
        "upstreams",
        "add",
        MIRROR,
        dist.url,
        "--name",
        "dist",
        "--username",
        dist.username,
        "--password-stdin",
        *extra,
        config=pt.config,
        input=dist.password + "\n",
    )
    cargohold_cli("signing-keys", "settings", MIRROR, "--enabled", "on", config=pt.config)
    time.sleep(1.2)  # the server's settings cache (auth.cache_ttl) lets the change in
    return pt


def test_images_pulled_through_an_upstream_are_signed(
    registry_factory: Any, tmp_path: Path
) -> None:
    with HtpasswdDistribution(tmp_path / "dist-store", workdir=tmp_path / "dist") as dist:
        seeded = seed(dist.url, auth=dist.auth)
        pt = _pull_through(registry_factory, tmp_path, dist)
        resp = get_manifest(pt.url, pt.repo("app"), "1.0")
        assert resp.status_code == 200, resp.text
        signature = _wait_for_cosign(pt.url, pt.repo("app"), seeded.single.digest)
        assert signature.status_code == 200, signature.text


def test_an_upstream_marked_no_sign_is_not_signed(registry_factory: Any, tmp_path: Path) -> None:
    with HtpasswdDistribution(tmp_path / "dist-store", workdir=tmp_path / "dist") as dist:
        seeded = seed(dist.url, auth=dist.auth)
        pt = _pull_through(registry_factory, tmp_path, dist, "--no-sign")
        assert get_manifest(pt.url, pt.repo("app"), "1.0").status_code == 200
        cargohold_cli("signing-keys", "sign-missing", MIRROR, config=pt.config)
        tag = f"sha256-{seeded.single.digest.split(':')[1]}.sig"
        assert get_manifest(pt.url, pt.repo("app"), tag).status_code == 404
        assert _simple(pt.url, pt.repo("app"), seeded.single.digest) == []


def test_bad_names_and_digests_get_4xx_answers(registry_factory: Any, tmp_path: Path) -> None:
    server = registry_factory(storage_url=store_url(tmp_path / "open"))
    keys = requests.get(f"{server.url}/api/v1/registries/ACME%20X/prod/signing-keys")
    assert keys.status_code == 404 and keys.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    digest = requests.get(f"{server.url}/extensions/v2/acme/prod/app/signatures/sha256:nothex")
    assert digest.status_code == 400 and digest.json()["errors"][0]["code"] == "DIGEST_INVALID"
    name = requests.get(f"{server.url}/extensions/v2/ACME/x/signatures/sha256:{'0' * 64}")
    assert name.status_code == 400 and name.json()["errors"][0]["code"] == "NAME_INVALID"
    body = requests.put(
        f"{server.url}/extensions/v2/acme/prod/app/signatures/sha256:{'0' * 64}", data=b"{}"
    )
    assert body.status_code == 404  # no such manifest: nothing is stored


def test_a_registry_admin_turns_signing_off_for_the_registry(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = new_store(tmp_path)
    store.registry(TENANT)
    admin, reader = store.user("boss"), store.user("reader")
    store.member(TENANT, "boss", "admin")
    store.member(TENANT, "reader", "read")
    server = _server(registry_factory, tmp_path, store)
    url = f"{server.url}/api/v1/registries/{TENANT}/signing"
    assert requests.put(url, json={"enabled": False}, auth=reader.auth).status_code == 403
    resp = requests.put(url, json={"enabled": False}, auth=admin.auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["enabled"] is False
    keys = requests.get(f"{url}-keys", auth=reader.auth)
    assert keys.json()["enabled"] is False


def test_a_registry_made_through_the_api_gets_its_keys(
    registry_factory: Any, tmp_path: Path
) -> None:
    store = new_store(tmp_path)
    root = store.user("root", superuser=True)
    store.owner("acme")
    server = _server(registry_factory, tmp_path, store)
    made = requests.post(
        f"{server.url}/api/v1/owners/acme/registries", json={"name": "fresh"}, auth=root.auth
    )
    assert made.status_code == 201, made.text
    keys = Path(store.storage.removeprefix("file://")) / "cargohold/signing/keys/acme/fresh"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(keys.glob("*"))) < 2:
        time.sleep(0.1)
    assert sorted(p.name for p in keys.glob("*")) == ["cosign-1", "gpg-1"]
