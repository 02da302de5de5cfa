"""The manifest page's signature and scan sections, and the SBOM download, over plain HTTP.

An in-process server (tests/web_live.py) with signing and scanning as the server runs
them: images are stored through the library, which nudges the signer and the scan job
exactly as a push does, and the page is read until they have done their work. OSV records
are the scanning tests' fixtures (real schema), one of them carrying an HTML payload in its
summary. The browser checks are in test_web_browser_manage.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from registry_core.digest import Digest
from registry_core.names import Tenant
from registry_core.scanning.vulndb import import_sources
from registry_core.signing import SigningSettings
from registry_server.app import WEBSITE_KEY
from tests import scanning_support as fx
from tests.helpers import Image, build_index
from tests.web_live import Live, LiveVisitor, serve_site
from tests.web_support import PAYLOAD

if TYPE_CHECKING:
    from registry_core.signing import Signer

HOST = "registry.test"
TENANT = Tenant("acme", "prod")
API = "/api/v1/registries/acme/prod"
PAYLOAD_RECORD = fx.osv(
    "ALPINE-CVE-2099-0001",
    "Alpine:v3.20",
    "busybox",
    [{"introduced": "0"}, {"fixed": "1.36.1-r31"}],
    summary=PAYLOAD,
    aliases=["CVE-2099-0001"],
)


async def store(live: Live, image: Image, tag: str | None, name: str = "acme/prod/app") -> str:
    repo = live.registry.repository(name)
    for blob in image.blobs():
        async with repo.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    await repo.manifests.put(image.manifest, image.media_type, tag=tag)
    return image.digest


async def page_until(
    who: LiveVisitor, path: str, ready: Callable[[str], bool], seconds: float = 60.0
) -> str:
    deadline = time.monotonic() + seconds
    while True:
        status, text = await who.get(path)
        assert status == 200, text[:300]
        if ready(text) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.2)


def section(text: str, ident: str) -> str:
    match = re.search(rf'<(section|div)[^>]* id="{ident}".*?</\1>', text, re.S)
    assert match is not None, f"no #{ident} on the page"
    return match.group(0)


@pytest.fixture
async def signing_site(tmp_path: Path) -> AsyncIterator[Live]:
    async with serve_site(
        tmp_path,
        server={"state_dir": str(tmp_path / "state"), "public_hosts": [HOST]},
        scanning={"enabled": False},
    ) as live:
        yield live


@pytest.fixture
async def scanning_site(tmp_path: Path) -> AsyncIterator[Live]:
    async with serve_site(tmp_path, signing={"enabled": False}) as live:
        archive = fx.write_all_zip(tmp_path / "all.zip", [*fx.ALL_RECORDS, PAYLOAD_RECORD])
        await import_sources(live.registry.driver, [(str(archive), [str(archive)])])
        yield live


def signer_of(live: Live) -> Signer:
    signer = live.app[WEBSITE_KEY].signer
    assert signer is not None
    return signer


async def reader(live: Live) -> LiveVisitor:
    who = LiveVisitor(live)
    await who.login("reader")
    return who


async def test_the_signature_section_names_the_keys_that_signed_each_kind(
    signing_site: Live,
) -> None:
    digest = await store(signing_site, fx.alpine_image(), "1")
    path = f"/ui/r/acme/prod/manifests/{digest}/app"
    async with await reader(signing_site) as who:
        text = await page_until(
            who,
            path,
            lambda t: t.count('data-state="verified"') == 2,
        )
        keys = {k["kind"]: k for k in (await who.api(f"{API}/signing-keys"))["keys"]}
    for kind, key_kind in (("cosign", "cosign"), ("simple", "gpg")):
        part = section(text, f"signatures-{kind}")
        assert 'data-state="verified"' in part, part
        key = keys[key_kind]
        assert f'<tr data-key="{key["id"]}">' in part
        assert f'<code class="fingerprint">{key["fingerprint"]}</code>' in part
        assert '<td data-label="Status">active</td>' in part
        assert f"<code>{HOST}/acme/prod/app:1</code>" in part


async def test_a_retired_key_still_verifies_what_it_signed(signing_site: Live) -> None:
    signer = signer_of(signing_site)
    await signer.set_settings(TENANT, SigningSettings(simple=False))
    digest = await store(signing_site, fx.alpine_image(), "1")
    path = f"/ui/r/acme/prod/manifests/{digest}/app"
    async with await reader(signing_site) as who:
        await page_until(who, path, lambda t: 'data-state="verified"' in t)
        old = await signer.keys.current(TENANT, "cosign")
        assert old is not None
        await signer.keys.rotate(TENANT, "cosign")
        _, text = await who.get(path)
    part = section(text, "signatures-cosign")
    assert 'data-state="verified"' in part
    assert f'<tr data-key="{old.id}">' in part and '<td data-label="Status">retired</td>' in part
    simple = section(text, "signatures-simple")
    assert 'data-state="off"' in simple and "This kind of signing is off" in simple


async def test_signing_off_and_untagged_manifests_say_so(signing_site: Live) -> None:
    signer = signer_of(signing_site)
    await signer.set_settings(TENANT, SigningSettings(simple=False))
    untagged = await store(signing_site, fx.npm_image(), None)
    async with await reader(signing_site) as who:
        _, text = await who.get(f"/ui/r/acme/prod/manifests/{untagged}/app")
        part = section(text, "signatures-cosign")
        assert 'data-state="unsigned"' in part and "only tagged manifests" in part
        await signer.set_settings(TENANT, SigningSettings(enabled=False))
        digest = await store(signing_site, fx.alpine_image(), "2")
        await asyncio.sleep(1.5)  # past the signer's quiet time: it must not sign
        _, text = await who.get(f"/ui/r/acme/prod/manifests/{digest}/app")
    for kind in ("cosign", "simple"):
        part = section(text, f"signatures-{kind}")
        assert 'data-state="off"' in part and "Signing is off for this registry." in part
        assert "<tr data-key=" not in part


async def test_the_scan_section_lists_findings_escaped_with_counts_and_sbom(
    scanning_site: Live,
) -> None:
    digest = await store(scanning_site, fx.alpine_image(), "1")
    path = f"/ui/r/acme/prod/manifests/{digest}/app"
    async with await reader(scanning_site) as who:
        text = await page_until(who, path, lambda t: 'id="scan-status"' in t and ">done<" in t)
        part = section(text, "scan")
        assert '<strong id="scan-status" class="badge badge-done">done</strong>' in part
        counts = dict(re.findall(r'data-severity="(\w+)">\w+ <strong>(\d+)</strong>', part))
        assert counts == {"critical": "1", "high": "0", "medium": "0", "low": "0", "unknown": "2"}
        rows = re.findall(
            r'<tr data-id="([^"]+)"><td data-label="Vulnerability"><code>[^<]*</code></td>'
            r'<td data-label="Aliases">([^<]*)</td><td data-label="Package">([^<]*)',
            part,
        )
        assert {(ident, package.strip()) for ident, _, package in rows} == fx.ALPINE_EXPECTED | {
            ("ALPINE-CVE-2099-0001", "busybox")
        }
        assert rows[0][0] == "ALPINE-CVE-2024-5535"  # the critical one first
        assert ("ALPINE-CVE-2099-0001", "CVE-2099-0001", "busybox") in rows
        assert "<code>3.3.2-r0</code>" in part and "9.8" in part  # fixed version, score
        assert PAYLOAD not in text and "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in part
        [link] = re.findall(r'<a href="([^"]+)" class="sbom"', part)
        async with who.session.get(who.live.base + link.replace("&amp;", "&")) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("application/vnd.cyclonedx+json")
            assert "attachment" in answer.headers["Content-Disposition"]
            sbom = json.loads(await answer.read())
    assert sbom["bomFormat"] == "CycloneDX"
    assert {c["name"] for c in sbom["components"]} >= {"libcrypto3", "busybox", "musl"}


async def test_an_index_shows_findings_per_platform(scanning_site: Live) -> None:
    alpine = fx.alpine_image()
    npm_arm = fx.build_image(
        [{"app/node_modules/lodash/package.json": '{"name":"lodash","version":"4.17.20"}'}],
        architecture="arm64",
    )
    for image in (alpine, npm_arm):
        await store(scanning_site, image, None)
    index = build_index([alpine, npm_arm])
    await scanning_site.registry.repository("acme/prod/app").manifests.put(
        index.manifest, index.media_type, tag="multi"
    )
    path = f"/ui/r/acme/prod/manifests/{index.digest}/app"
    async with await reader(scanning_site) as who:
        text = await page_until(who, path, lambda t: ">done<" in t)
    platforms = re.findall(r'class="scan-platform" data-platform="([^"]+)"', text)
    assert platforms == ["linux/amd64", "linux/arm64/v8"]
    arm = text.split('data-platform="linux/arm64/v8"', 1)[1]
    assert 'data-id="GHSA-35jh-r3h4-6jhm"' in arm and "ALPINE-CVE-2024-5535" not in arm


async def test_the_sbom_download_follows_the_page_rules(scanning_site: Live) -> None:
    digest = await store(scanning_site, fx.alpine_image(), "1")
    await store(scanning_site, fx.alpine_image(), "1", name="other/secret/app")
    async with await reader(scanning_site) as who:
        await page_until(who, f"/ui/r/acme/prod/manifests/{digest}/app", lambda t: ">done<" in t)
        status, _ = await who.get(f"/ui/r/acme/prod/sbom/{digest}/app")
        assert status == 200
        status, _ = await who.get(f"/ui/r/other/secret/sbom/{digest}/app")
        assert status == 404
        status, _ = await who.get(f"/ui/r/acme/prod/sbom/{digest}/nothing-here")
        assert status == 404
    anonymous = LiveVisitor(scanning_site)
    async with anonymous:
        status, _ = await anonymous.get(f"/ui/r/acme/prod/sbom/{digest}/app")
        assert status == 404


async def test_the_tag_list_shows_counts_by_severity(scanning_site: Live) -> None:
    digest = await store(scanning_site, fx.alpine_image(), "1")
    await store(scanning_site, fx.npm_image(), "2")
    async with await reader(scanning_site) as who:
        await page_until(who, f"/ui/r/acme/prod/manifests/{digest}/app", lambda t: ">done<" in t)
        text = await page_until(
            who, "/ui/r/acme/prod/images/app", lambda t: "not scanned" not in t, seconds=30
        )
    row = text.split('<tr data-tag="1">', 1)[1].split("</tr>", 1)[0]
    assert '<span class="sev sev-critical" data-severity="critical">1 critical</span>' in row
    assert '<span class="sev sev-unknown" data-severity="unknown">2 unknown</span>' in row
    assert "high" not in row.split('class="vulns"', 1)[1]  # zero counts are left out
    assert '<th scope="col">Vulnerabilities</th>' in text


async def test_without_scanning_the_tag_list_has_no_vulnerability_column(
    signing_site: Live,
) -> None:
    await store(signing_site, fx.alpine_image(), "1")
    async with await reader(signing_site) as who:
        status, text = await who.get("/ui/r/acme/prod/images/app")
    assert status == 200 and 'data-tag="1"' in text and "Vulnerabilities" not in text
