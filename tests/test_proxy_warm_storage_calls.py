"""A warm pull through the cache costs the storage calls a pull of local content costs.

One server process over the local driver (wrapped to record every call), a scripted
upstream on 127.0.0.1 for registry ``calls/mirror``, and the same image pushed to
``calls/local``. After one pull of each (the cold one fetches and stores the image), a
second pull of each is recorded: manifest by tag, then every blob. The cache's own state
(tag origins) is cached per process exactly as long as tag links are
(``manifests.link_cache_ttl``), so within that time the two lists are equal (the first
warm pull after the cold one reads the origin it just wrote once more: the cache is
dropped on every origin write, so this test pulls twice warm); with that cache off, the
one extra call is the origin read per tagged manifest GET. Settings are cached for
longer than the test (``auth.cache_ttl``) so a slow machine cannot add a settings read.
The upstream is asked nothing on the warm pull.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drivers.local import LocalDriver
from registry_core import Registry, load_config
from registry_core.names import RepositoryName
from registry_core.storage import layout
from registry_server.app import build_app
from tests.helpers import sample_image
from tests.helpers.images import Image
from tests.helpers.registry_api import MANIFEST_ACCEPT
from tests.proxy_support import ScriptedUpstream
from tests.test_v2_storage_calls import RecordingDriver

MIRROR = "calls/mirror"
LOCAL = "calls/local"


class Setup:
    def __init__(self, url: str, driver: RecordingDriver, upstream: ScriptedUpstream) -> None:
        self.url, self.driver, self.upstream = url, driver, upstream


async def _serve(tmp_path: Path, link_cache_ttl: float) -> AsyncIterator[Setup]:
    async with ScriptedUpstream().running() as upstream:
        driver = RecordingDriver(LocalDriver(str(tmp_path / "store")))
        config = load_config(
            overrides={
                "auth": {"enabled": False, "cache_ttl": 600.0},
                "storage": {"url": f"file://{tmp_path}/store"},
                "manifests": {"link_cache_ttl": link_cache_ttl},
                "secrets": {"key": "calls-test-key-0123456789abcdef"},
                "upstreams": {
                    "allow_networks": ["127.0.0.0/8"],
                    "registries": [
                        {"registry": MIRROR, "name": "up", "url": upstream.url, "tag_ttl": "1h"}
                    ],
                },
            },
            environ={},
        )
        registry = Registry(driver, link_cache_ttl=link_cache_ttl, settings_ttl=600.0)
        runner = web.AppRunner(build_app(config, registry), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield Setup(f"http://127.0.0.1:{runner.addresses[0][1]}", driver, upstream)
        finally:
            await runner.cleanup()


@pytest.fixture
async def cached_links(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _serve(tmp_path, 60.0):
        yield setup


@pytest.fixture
async def no_link_cache(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _serve(tmp_path, 0.0):
        yield setup


async def push(http: aiohttp.ClientSession, url: str, repo: str, image: Image) -> None:
    for blob in image.blobs():
        async with http.post(
            f"{url}/v2/{repo}/blobs/uploads/?digest={blob.digest}", data=blob.data
        ) as answer:
            assert answer.status == 201, await answer.text()
    async with http.put(
        f"{url}/v2/{repo}/manifests/1.0",
        data=image.manifest,
        headers={"Content-Type": image.media_type},
    ) as answer:
        assert answer.status == 201, await answer.text()


async def pull(http: aiohttp.ClientSession, url: str, repo: str, image: Image) -> None:
    """What a client does: the manifest by tag, then each blob, bodies read and checked."""
    async with http.get(
        f"{url}/v2/{repo}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}
    ) as answer:
        assert answer.status == 200, await answer.text()
        assert await answer.read() == image.manifest
    for blob in image.blobs():
        async with http.get(f"{url}/v2/{repo}/blobs/{blob.digest}") as answer:
            assert answer.status == 200, await answer.text()
            assert await answer.read() == blob.data


async def settle(driver: RecordingDriver) -> None:
    """Wait until background work a push nudged (signing and usage checks) leaves storage
    alone for a moment, so the recorded pulls see only their own calls."""
    driver.recording = True
    try:
        for _ in range(40):
            driver.calls.clear()
            await asyncio.sleep(0.25)
            if not driver.calls:
                return
        raise AssertionError(f"storage never went quiet: {driver.recorded()}")
    finally:
        driver.recording = False


async def recorded_pull(setup: Setup, http: aiohttp.ClientSession, repo: str, image: Any) -> list:
    setup.driver.calls.clear()
    setup.driver.recording = True
    try:
        await pull(http, setup.url, repo, image)
    finally:
        setup.driver.recording = False
    return sorted(setup.driver.recorded())


async def warm_pulls(setup: Setup) -> tuple[list[str], list[str]]:
    image = sample_image("warm-calls", layers=3)
    setup.upstream.add_image("app", "1.0", image)
    async with aiohttp.ClientSession() as http:
        await push(http, setup.url, f"{LOCAL}/app", image)
        await pull(http, setup.url, f"{MIRROR}/app", image)  # cold: fetched and stored
        await pull(http, setup.url, f"{MIRROR}/app", image)  # warm: caches filled
        await pull(http, setup.url, f"{LOCAL}/app", image)
        await settle(setup.driver)
        asked = sum(setup.upstream.requests.values())
        proxied = await recorded_pull(setup, http, f"{MIRROR}/app", image)
        local = await recorded_pull(setup, http, f"{LOCAL}/app", image)
    assert sum(setup.upstream.requests.values()) == asked  # the warm pull asked nothing
    return proxied, local


async def test_a_warm_pull_through_the_cache_costs_what_a_local_pull_costs(
    cached_links: Setup,
) -> None:
    proxied, local = await warm_pulls(cached_links)

    assert proxied == local


async def test_without_the_link_cache_the_only_extra_call_is_the_tag_origin_read(
    no_link_cache: Setup,
) -> None:
    proxied, local = await warm_pulls(no_link_cache)

    extra = list(proxied)
    for call in local:
        extra.remove(call)
    origin = layout.proxy_tag_origin(RepositoryName(f"{MIRROR}/app"), "1.0")
    assert extra == [f"read {origin}"]
