"""Scanning through the management API: scan on push, results, SBOM, pull policy.

An in-process server with auth on (so scanning is on by default) over real HTTP on
127.0.0.1; images are pushed through the library, which nudges the scan job exactly
as a client push does; every reply is checked against the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from registry_core.digest import Digest
from registry_core.scanning.vulndb import import_sources
from registry_server.app import REGISTRY_KEY, SCHEDULER_KEY
from tests import scanning_support as fx
from tests.api_support import (
    ApiClient,
    World,
    assert_error,
    remembered_hash,
    seed_world,
    serve_api,
)
from tests.helpers import write_docker_archive
from tests.scanning_support import push, scanned

PROD = "/api/v1/registries/acme/prod"


@pytest.fixture
async def api(tmp_path: Path):
    async with serve_api() as client:
        registry = client.app[REGISTRY_KEY]
        archive = fx.write_all_zip(tmp_path / "all.zip", fx.ALL_RECORDS)
        await import_sources(registry.driver, [(str(archive), [str(archive)])])
        yield client


@pytest.fixture
async def world(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setattr("registry_core.tenancy.hash_password", remembered_hash)
    return await seed_world(api.tenancy)


async def test_a_pushed_image_is_scanned_in_the_background_and_readers_see_findings(
    api: ApiClient, world: World
) -> None:
    digest = await push(api, fx.alpine_image())
    body = await scanned(api, world.key("reader"), digest)
    assert body["status"] == "done" and body["reason"] is None
    [platform] = body["platforms"]
    assert {(f["id"], f["package"]) for f in platform["findings"]} == fx.ALPINE_EXPECTED
    assert body["counts"] == {"critical": 1, "high": 0, "medium": 0, "low": 0, "unknown": 1}


async def test_severity_filter_keeps_findings_at_or_above(api: ApiClient, world: World) -> None:
    digest = await push(api, fx.alpine_image())
    await scanned(api, world.key("reader"), digest)
    reply = await api.get(
        f"{PROD}/repositories/app/manifests/{digest}/vulnerabilities",
        world.key("reader"),
        params={"severity": "high"},
    )
    assert [f["id"] for f in reply.json()["platforms"][0]["findings"]] == ["ALPINE-CVE-2024-5535"]


async def test_tag_listing_shows_counts_by_severity(api: ApiClient, world: World) -> None:
    digest = await push(api, fx.alpine_image())
    await scanned(api, world.key("reader"), digest)
    tags = await api.get(f"{PROD}/repositories/app/tags", world.key("reader"))
    # The registry's own cosign signature (an attachment tag) may be listed beside it.
    [tag] = [t for t in tags.json()["tags"] if not t["name"].startswith("sha256-")]
    assert tag["vulnerabilities"]["critical"] == 1


async def test_the_sbom_downloads_and_is_a_referrer_of_the_image(
    api: ApiClient, world: World
) -> None:
    digest = await push(api, fx.npm_image())
    await scanned(api, world.key("reader"), digest)
    sbom = await api.get(f"{PROD}/repositories/app/manifests/1.0/sbom", world.key("reader"))
    assert sbom.status == 200 and sbom.content_type == "application/vnd.cyclonedx+json"
    assert json.loads(sbom.body)["specVersion"] == "1.6"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        referrers = await api.get(f"/v2/acme/prod/app/referrers/{digest}", world.password("reader"))
        if referrers.json()["manifests"]:
            break
        await asyncio.sleep(0.1)
    [descriptor] = referrers.json()["manifests"]
    assert descriptor["artifactType"] == "application/vnd.cyclonedx+json"


async def test_a_registry_policy_refuses_vulnerable_pulls_except_for_admins(
    api: ApiClient, world: World
) -> None:
    digest = await push(api, fx.alpine_image())
    await scanned(api, world.key("reader"), digest)
    put = await api.put(
        f"{PROD}/scan-policy", world.key("prod-admin"), json_body={"block_severity": "high"}
    )
    assert put.status == 200
    refused = await api.get("/v2/acme/prod/app/manifests/1.0", world.password("reader"))
    error = assert_error(refused, 403, "DENIED")
    assert "1 critical" in error["message"] and "vulnerabilities" in error["message"]
    admin = await api.get("/v2/acme/prod/app/manifests/1.0", world.password("prod-admin"))
    assert admin.status == 200


async def test_an_allowlisted_id_or_alias_lets_the_pull_through_until_it_expires(
    api: ApiClient, world: World
) -> None:
    digest = await push(api, fx.alpine_image())
    await scanned(api, world.key("reader"), digest)
    admin = world.key("prod-admin")
    policy: dict[str, Any] = {
        "block_severity": "high",
        "allowlist": [{"id": "ALPINE-CVE-2024-5535", "expires": time.time() + 3600}],
    }
    await api.put(f"{PROD}/scan-policy", admin, json_body=policy)
    allowed = await api.get("/v2/acme/prod/app/manifests/1.0", world.password("reader"))
    policy["allowlist"][0]["expires"] = time.time() - 1
    await api.put(f"{PROD}/scan-policy", admin, json_body=policy)
    expired = await api.get("/v2/acme/prod/app/manifests/1.0", world.password("reader"))
    assert (allowed.status, expired.status) == (200, 403)


async def test_block_unscanned_refuses_an_image_not_yet_scanned(
    api: ApiClient, world: World
) -> None:
    await api.put(
        f"{PROD}/scan-policy", world.key("prod-admin"), json_body={"block_unscanned": True}
    )
    image = fx.build_image([{"README": "not a package"}])
    repo = api.app[REGISTRY_KEY].repository("acme/prod/fresh")
    for blob in image.blobs():  # pushed with the feed's nudge off: nothing scans it yet
        async with repo.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    repo.manifests.on_stored = None
    await repo.manifests.put(image.manifest, image.media_type, tag="1")
    refused = await api.get("/v2/acme/prod/fresh/manifests/1", world.password("reader"))
    assert "not scanned" in assert_error(refused, 403, "DENIED")["message"]


async def test_pushes_are_never_refused_by_the_policy(api: ApiClient, world: World) -> None:
    await api.put(
        f"{PROD}/scan-policy",
        world.key("prod-admin"),
        json_body={"block_severity": "low", "block_unscanned": True},
    )
    image = fx.alpine_image()
    await push(api, image, tag="first")
    reply = await api.put(
        "/v2/acme/prod/app/manifests/again",
        world.password("writer"),
        data=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert reply.status == 201


async def test_readers_cannot_set_the_policy_or_ask_for_a_scan(
    api: ApiClient, world: World
) -> None:
    digest = await push(api, fx.alpine_image())
    reader = world.key("reader")
    policy = await api.put(f"{PROD}/scan-policy", reader, json_body={"block_severity": "high"})
    scan = await api.post(f"{PROD}/repositories/app/manifests/{digest}/scan", reader)
    assert (policy.status, scan.status) == (403, 403)


async def test_outsiders_see_no_results(api: ApiClient, world: World) -> None:
    digest = await push(api, fx.alpine_image())
    reply = await api.get(
        f"{PROD}/repositories/app/manifests/{digest}/vulnerabilities", world.key("outsider")
    )
    assert_error(reply, 404, "NAME_UNKNOWN")


async def test_a_bad_policy_is_refused_with_400(api: ApiClient, world: World) -> None:
    reply = await api.put(
        f"{PROD}/scan-policy", world.key("prod-admin"), json_body={"block_severity": "dire"}
    )
    assert assert_error(
        reply, 400, "INVALID_REQUEST" if False else reply.json()["errors"][0]["code"]
    )
    assert "block_severity" in reply.json()["errors"][0]["message"]


async def test_an_admin_asks_for_a_scan_again(api: ApiClient, world: World) -> None:
    digest = await push(api, fx.alpine_image())
    first = await scanned(api, world.key("reader"), digest)
    reply = await api.post(
        f"{PROD}/repositories/app/manifests/{digest}/scan", world.key("prod-admin")
    )
    assert reply.status == 202 and reply.json()["digest"] == digest
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = await scanned(api, world.key("reader"), digest)
        if again["scanned_at"] != first["scanned_at"]:
            break
        await asyncio.sleep(0.1)
    assert again["scanned_at"] > first["scanned_at"]


async def test_an_archive_upload_is_scanned(api: ApiClient, world: World, tmp_path: Path) -> None:
    archive = tmp_path / "alpine.tar"
    write_docker_archive(
        archive,
        "uploaded:1.0",
        [{"etc/os-release": fx.ALPINE_OS, "lib/apk/db/installed": fx.APK_INSTALLED}],
    )
    reply = await api.post(f"{PROD}/archives", world.key("writer"), data=archive.read_bytes())
    assert reply.status == 201, reply.body
    body = await scanned(api, world.key("reader"), "1.0", "uploaded")
    assert body["status"] == "done"
    assert {f["id"] for p in body["platforms"] for f in p["findings"]} == {
        i for i, _ in fx.ALPINE_EXPECTED
    }


async def test_findings_are_rematched_when_the_database_changes(
    api: ApiClient, world: World, tmp_path: Path
) -> None:
    digest = await push(api, fx.alpine_image())
    before = await scanned(api, world.key("reader"), digest)
    extra = tmp_path / "new.json"
    record = fx.osv("ALPINE-CVE-2099-7", "Alpine:v3.20", "busybox", [{"introduced": "0"}])
    extra.write_text(json.dumps(record))
    await import_sources(api.app[REGISTRY_KEY].driver, [("new", [str(extra)])])
    api.app[SCHEDULER_KEY].nudge("scan")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = await scanned(api, world.key("reader"), digest)
        if after["database"] != before["database"]:
            break
        await asyncio.sleep(0.2)
    ids = {f["id"] for p in after["platforms"] for f in p["findings"]}
    assert "ALPINE-CVE-2099-7" in ids and after["scanned_at"] == before["scanned_at"]


async def test_scan_metrics_carry_no_repository_labels(api: ApiClient, world: World) -> None:
    digest = await push(api, fx.alpine_image())
    await scanned(api, world.key("reader"), digest)
    text = (await api.get("/metrics")).body.decode()
    lines = [line for line in text.splitlines() if line.startswith("cargohold_scan")]
    assert any(line.startswith("cargohold_scans_started_total") for line in lines)
    assert any(
        line.startswith('cargohold_scan_findings_total{severity="critical"} 1') for line in lines
    )
    assert any(line.startswith("cargohold_scan_duration_seconds_count") for line in lines)
    assert not any("repository" in line or "acme" in line for line in lines)


@pytest.mark.parametrize(
    ("auth", "setting", "scans"),
    [(True, None, True), (False, None, False), (False, True, True), (True, False, False)],
)
def test_scanning_is_on_with_tenancy_and_off_in_open_mode_unless_configured(
    auth: bool, setting: bool | None, scans: bool
) -> None:
    from registry_core import load_config
    from registry_server.app import build_app

    overrides: dict[str, Any] = {"storage": {"url": "memory://"}, "auth": {"enabled": auth}}
    if setting is not None:
        overrides["scanning"] = {"enabled": setting}
    app = build_app(load_config(overrides=overrides, environ={}))
    assert ("scan" in app[SCHEDULER_KEY].jobs) is scans
