"""The manifest page's slot for capabilities that describe a manifest (signatures, scans).

A capability registers a provider in ``Website.manifest_sections``; the page renders each
section it returns, escaped like the rest. In-process server (the provider is Python).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from registry_core import Registry, load_config
from registry_core.registry import Repository
from registry_core.tenancy import TenancyStore
from registry_server.app import WEBSITE_KEY, build_app
from registry_server.web.pages import ManifestView
from tests.helpers import sample_image
from tests.web_support import PAYLOAD


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[web.Application, str, str]]:
    config = load_config(
        overrides={
            "auth": {"enabled": True, "bootstrap_admin": False},
            "storage": {"url": f"file://{tmp_path / 'store'}"},
        },
        environ={},
    )
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry: Registry = app[WEBSITE_KEY].registry
    tenancy = TenancyStore(registry.driver)
    await tenancy.create_user("ann", "pw-ann-123", superuser=True)
    await tenancy.create_owner("acme")
    await tenancy.create_registry("acme", "prod")
    image = sample_image()
    await registry.repository("acme/prod/app").manifests.put(
        image.manifest, image.media_type, "1", check_references=False
    )
    try:
        yield app, f"http://127.0.0.1:{port}", image.digest
    finally:
        await runner.cleanup()


async def page(base: str, path: str) -> str:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(base + "/ui/") as answer:
            token = re.search(r'name="login_token" value="([^"]+)"', await answer.text())
        assert token is not None
        form = {"login_token": token.group(1), "username": "ann", "password": "pw-ann-123"}
        async with session.post(base + "/ui/login", data=form) as answer:
            assert answer.status == 200
        async with session.get(base + path) as answer:
            assert answer.status == 200
            return await answer.text()


async def test_a_registered_section_appears_on_the_manifest_page_escaped(
    served: tuple[web.Application, str, str],
) -> None:
    app, base, digest = served

    async def signatures(repo: Repository, view: ManifestView) -> tuple[str, dict[str, Any]]:
        facts = [("Status", "verified"), ("Key", PAYLOAD), ("Digest", view.digest)]
        return "section_facts.html", {"id": "signatures", "title": "Signatures", "facts": facts}

    app[WEBSITE_KEY].manifest_sections[:] = [signatures]  # in place of the real ones
    text = await page(base, f"/ui/r/acme/prod/manifests/{digest}/app")
    assert '<section aria-labelledby="signatures-title" id="signatures">' in text
    assert "<dd>verified</dd>" in text and f"<dd>{digest}</dd>" in text
    assert PAYLOAD not in text and "&lt;script&gt;" in text


async def test_a_section_that_has_nothing_to_say_is_left_out(
    served: tuple[web.Application, str, str],
) -> None:
    app, base, digest = served

    async def nothing(repo: Repository, view: ManifestView) -> None:
        return None

    app[WEBSITE_KEY].manifest_sections[:] = [nothing]
    text = await page(base, f"/ui/r/acme/prod/manifests/{digest}/app")
    assert "facts-list" in text  # the page itself
    assert 'id="signatures"' not in text
