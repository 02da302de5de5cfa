"""The website's policy and security pages over plain HTTP: admins edit, others only read.

An in-process server (tests/web_live.py) with real HTTP on 127.0.0.1. Every change made
through a form is read back through the management API, which must show it; refused
changes (no CSRF token, a reader, a registry admin setting a quota, bad input) must leave
the API's answer as it was. The browser versions of these flows are in
test_web_browser_manage.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.web_live import Live, LiveVisitor, serve_site

SETTINGS = "/ui/r/acme/prod/settings"
SECURITY = "/ui/r/acme/prod/security"
API = "/api/v1/registries/acme/prod"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with serve_site(tmp_path, scanning={"enabled": False}) as served:
        yield served


async def visitor(live: Live, user: str) -> LiveVisitor:
    who = LiveVisitor(live)
    await who.login(user)
    return who


async def test_an_admin_saves_retention_rules_that_the_api_then_shows(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        status, page = await admin.get(SETTINGS)
        assert status == 200 and 'id="retention-form"' in page
        form = {
            "keep_last": "5",
            "delete_older_than": "30d",
            "delete_unpulled_after": "",
            "delete_untagged_after": "12h",
            "protected": "v*\nlatest",
        }
        status, page = await admin.post(f"{SETTINGS}/retention", form)
        assert status == 200 and "Retention rules saved." in page
        assert 'value="30d"' in page and 'value="12h"' in page
        rules = await admin.api(f"{API}/retention")
    assert rules["keep_last"] == 5 and rules["delete_older_than"] == 30 * 86400
    assert rules["delete_untagged_after"] == 12 * 3600 and rules["delete_unpulled_after"] is None
    assert rules["protected"] == ["v*", "latest"] and rules["source"] == "storage"


async def test_a_bad_duration_is_a_clear_400_and_stores_nothing(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        await admin.get(SETTINGS)
        status, page = await admin.post(f"{SETTINGS}/retention", {"delete_older_than": "soon"})
        assert status == 400 and "invalid duration" in page
        status, page = await admin.post(f"{SETTINGS}/retention", {"keep_last": "-1"})
        assert status == 400 and "whole number" in page
        assert (await admin.api(f"{API}/retention"))["source"] == "none"


async def test_an_admin_saves_immutable_tag_patterns(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        await admin.get(SETTINGS)
        status, page = await admin.post(f"{SETTINGS}/immutable", {"patterns": "v1.*\nrelease-*"})
        assert status == 200 and "Immutable tag patterns saved." in page
        assert (await admin.api(f"{API}/immutable-tags"))["patterns"] == ["v1.*", "release-*"]
        await admin.post(f"{SETTINGS}/immutable", {"patterns": ""})
        assert (await admin.api(f"{API}/immutable-tags"))["patterns"] == []


async def test_a_superuser_sets_a_quota_and_a_registry_admin_may_not(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        status, page = await admin.get(SETTINGS)
        assert 'id="quota-form"' not in page and "set by the platform's superusers" in page
        status, page = await admin.post(f"{SETTINGS}/quota", {"max_bytes": "1GiB"})
        assert status == 403
        assert (await admin.api(f"{API}/quota"))["max_bytes"] is None
    async with await visitor(live, "root") as root:
        status, page = await root.get(SETTINGS)
        assert 'id="quota-form"' in page
        status, page = await root.post(
            f"{SETTINGS}/quota", {"max_bytes": "10GiB", "max_images": "50"}
        )
        assert status == 200 and "Quota saved" in page
        quota = await root.api(f"{API}/quota")
        assert quota["max_bytes"] == 10 * 2**30 and quota["max_images"] == 50
        status, page = await root.post(f"{SETTINGS}/quota", {"max_bytes": "lots"})
        assert status == 400 and "invalid size" in page
        assert (await root.api(f"{API}/quota"))["max_bytes"] == 10 * 2**30


async def test_an_upstream_password_is_stored_but_never_shown_back(live: Live) -> None:
    secret = "upstream-secret-4242"
    async with await visitor(live, "admin") as admin:
        await admin.get(SETTINGS)
        form = {
            "name": "hub",
            "url": "https://registry.example.test",
            "priority": "10",
            "images": "library/*",
            "tag_ttl": "5m",
            "username": "mirror",
            "password": secret,
            "cache": "on",
            "sign": "on",
        }
        status, page = await admin.post(f"{SETTINGS}/upstreams", form)
        assert status == 200 and "Upstream added." in page
        assert 'data-upstream="hub"' in page and "password set" in page
        assert secret not in page
        [upstream] = (await admin.api(f"{API}/upstreams", "admin"))["upstreams"]
        assert upstream["name"] == "hub" and upstream["priority"] == 10
        assert upstream["has_credentials"] is True and upstream["tag_ttl"] == 300
        status, page = await admin.post(f"{SETTINGS}/upstreams", form)
        assert status == 409  # the API's rule: names are unique
        status, page = await admin.post(f"{SETTINGS}/upstreams/hub/remove", {})
        assert status == 200 and "Upstream removed." in page
        assert (await admin.api(f"{API}/upstreams", "admin"))["upstreams"] == []


async def test_a_reader_sees_the_rules_without_forms_and_cannot_post_them(live: Live) -> None:
    async with await visitor(live, "reader") as reader:
        status, page = await reader.get(SETTINGS)
        assert status == 200 and "<form" not in page.split("<main", 1)[1].split("</main>")[0]
        status, page = await reader.get(SECURITY)
        assert status == 200 and 'id="policy-form"' not in page
        assert 'id="signing-form"' not in page and 'id="rotate-cosign"' not in page
        for path, form in [
            (f"{SETTINGS}/retention", {"keep_last": "1"}),
            (f"{SETTINGS}/immutable", {"patterns": "*"}),
            (f"{SETTINGS}/upstreams", {"name": "x", "url": "https://x.example.test"}),
            (f"{SECURITY}/scan-policy", {"block_severity": "low"}),
            (f"{SECURITY}/signing", {"enabled": "off"}),
            (f"{SECURITY}/rotate", {"kind": "cosign"}),
        ]:
            status, _ = await reader.post(path, form)
            assert status == 403, path
        assert (await reader.api(f"{API}/retention"))["source"] == "none"
        assert (await reader.api(f"{API}/immutable-tags"))["patterns"] == []
        assert (await reader.api(f"{API}/scan-policy"))["block_severity"] is None


async def test_another_tenants_policy_pages_answer_like_missing_ones(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        missing, _ = await admin.get("/ui/r/other/nothing/settings")
        for path in ("/ui/r/other/secret/settings", "/ui/r/other/secret/security"):
            status, _ = await admin.get(path)
            assert status == missing == 404
        await admin.get(SETTINGS)
        status, _ = await admin.post("/ui/r/other/secret/settings/retention", {"keep_last": "1"})
        assert status == 404


async def test_a_form_post_without_the_csrf_token_is_refused(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        await admin.get(SETTINGS)
        status, page = await admin.post(f"{SETTINGS}/retention", {"keep_last": "3"}, csrf=False)
        assert status == 403 and "CSRF" in page
        status, _ = await admin.post(
            f"{SECURITY}/scan-policy", [("block_severity", "high"), ("csrf", "forged")], csrf=False
        )
        assert status == 403
        assert (await admin.api(f"{API}/retention"))["source"] == "none"
        assert (await admin.api(f"{API}/scan-policy"))["block_severity"] is None


async def test_an_admin_saves_the_scan_pull_policy_with_an_allowlist(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        await admin.get(SECURITY)
        form = {
            "block_severity": "high",
            "block_unscanned": "on",
            "allowlist": "CVE-2024-1234 until 2030-01-31 accepted risk\nGHSA-xxxx-yyyy-zzzz\n",
        }
        status, page = await admin.post(f"{SECURITY}/scan-policy", form)
        assert status == 200 and "Pull policy saved." in page
        assert "CVE-2024-1234 until 2030-01-31 accepted risk" in page
        policy = await admin.api(f"{API}/scan-policy")
    assert policy["block_severity"] == "high" and policy["block_unscanned"] is True
    first, second = policy["allowlist"]
    assert first["id"] == "CVE-2024-1234" and first["reason"] == "accepted risk"
    end_of_day = datetime(2030, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert first["expires"] == end_of_day and second == {"id": "GHSA-xxxx-yyyy-zzzz"}


async def test_an_admin_turns_signing_off_and_rotates_a_key(live: Live) -> None:
    async with await visitor(live, "admin") as admin:
        keys = (await admin.api(f"{API}/signing-keys"))["keys"]  # made on first look
        [first] = [k for k in keys if k["kind"] == "cosign"]
        status, page = await admin.get(SECURITY)
        assert first["fingerprint"] in page
        status, page = await admin.post(f"{SECURITY}/rotate", {"kind": "cosign"})
        assert status == 200 and "A new key signs from now on" in page
        keys = (await admin.api(f"{API}/signing-keys"))["keys"]
        cosign = {k["id"]: k for k in keys if k["kind"] == "cosign"}
        assert cosign[first["id"]]["status"] == "retired"
        [new] = [k for k in cosign.values() if k["status"] == "active"]
        assert new["fingerprint"] in page and new["id"] != first["id"]
        form = {"enabled": "off", "cosign": "", "simple": "off", "referrers": "on"}
        status, page = await admin.post(f"{SECURITY}/signing", form)
        assert status == 200 and "Signing settings saved." in page
        shown = await admin.api(f"{API}/signing-keys")
    assert shown["enabled"] is False and shown["simple"] is False and shown["referrers"] is True
    assert shown["cosign"] is True  # left to the server's default
