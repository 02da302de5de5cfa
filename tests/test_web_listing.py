"""The registry and home pages of a registry of 5,000 images, over HTTP with auth on.

The registry ``acme/prod`` holds 5,000 repositories laid out as Distribution writes them
(one manifest revision each, no repository index yet: the server builds it from a walk);
``acme/small`` holds one image pushed through the server. The pages list images from the
repository index (pagination and search), count them, and say "not counted yet" for
storage until a usage count (GC, a quota, ``cargohold quotas recompute``) has run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.lifecycle.usage import recompute_usage
from registry_core.names import Tenant
from tests.helpers import RegistryServer, sample_image
from tests.helpers.registry_api import push_image
from tests.helpers.tenants import Credential, http, new_store
from tests.test_repo_index import write_repositories
from tests.web_support import WebClient

IMAGES = 5000


@dataclass
class Site:
    server: RegistryServer
    store: Path
    names: list[str]
    root: Credential

    def client(self) -> WebClient:
        client = WebClient(self.server.url)
        assert client.login(self.root.username, self.root.secret).status_code == 200
        return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web-listing")
    seed = new_store(tmp)
    root = seed.user("root", superuser=True)
    seed.registry("acme/prod")
    seed.registry("acme/small")
    names = write_repositories(tmp / "store", IMAGES)
    server = RegistryServer(seed.storage, auth=True, workdir=tmp / "server")
    with server:
        push_image(server.url, "acme/small/app", sample_image(), "1.0", session=http(root.auth))
        yield Site(server, tmp / "store", names, root)


def shown_images(html: str) -> list[str]:
    return re.findall(r'/ui/r/acme/prod/images/([a-z0-9/-]+)">', html)


def fact(html: str, ident: str) -> str:
    found = re.search(rf'<strong id="{ident}">([^<]*)</strong>', html)
    assert found is not None, html[:2000]
    return found.group(1)


def test_the_registry_page_counts_and_lists_the_first_page_of_5000_images(site: Site) -> None:
    page = site.client().get("/ui/r/acme/prod")
    assert page.status_code == 200
    assert fact(page.text, "image-count") == "5000"
    assert shown_images(page.text) == site.names[:50]
    assert "Page 1 of 100 (5000 in all)" in page.text


@pytest.mark.parametrize("number", [2, 57, 100])
def test_every_page_of_5000_images_shows_its_fifty_names_in_order(site: Site, number: int) -> None:
    page = site.client().get(f"/ui/r/acme/prod?page={number}")
    start = (number - 1) * 50
    assert shown_images(page.text) == site.names[start : start + 50]


def test_a_page_past_the_end_shows_the_last_page(site: Site) -> None:
    page = site.client().get("/ui/r/acme/prod?page=999")
    assert shown_images(page.text) == site.names[-50:]


def test_searching_5000_images_by_name_finds_every_match(site: Site) -> None:
    page = site.client().get("/ui/r/acme/prod", params={"q": "0042"})
    assert shown_images(page.text) == [n for n in site.names if "0042" in n]
    none = site.client().get("/ui/r/acme/prod", params={"q": "nothing-like-it"})
    assert shown_images(none.text) == []
    assert "No images match" in none.text


def test_storage_says_not_counted_yet_until_usage_is_counted(site: Site) -> None:
    client = site.client()
    before = client.get("/ui/r/acme/small")
    assert fact(before.text, "image-count") == "1"
    assert fact(before.text, "storage-used") == "not counted yet"
    assert "not counted yet" in client.get("/ui/").text

    async def count() -> None:
        registry = Registry(LocalDriver(str(site.store)))
        await recompute_usage(registry, [Tenant("acme", "small")])

    asyncio.run(count())
    after = client.get("/ui/r/acme/small")
    assert re.fullmatch(r"[0-9.]+ (B|kB|MB)", fact(after.text, "storage-used"))
    assert fact(after.text, "storage-used") != "0 B"


def test_home_lists_registries_with_their_image_counts(site: Site) -> None:
    home = site.client().get("/ui/").text
    rows = re.findall(
        r'<a href="/ui/r/(acme/[a-z]+)">[^<]*</a></td><td>[a-z]+</td><td>([0-9]+)</td>', home
    )
    assert dict(rows) == {"acme/prod": "5000", "acme/small": "1"}


def test_a_new_image_pushed_through_the_server_shows_at_once(site: Site) -> None:
    root = http(site.root.auth)
    push_image(site.server.url, "acme/prod/image-02500a", sample_image("extra"), "x", session=root)
    page = site.client().get("/ui/r/acme/prod?page=51")
    assert fact(page.text, "image-count") == "5001"
    assert "image-02500a" in shown_images(page.text)


def test_two_server_processes_on_one_store_list_what_either_created(
    site: Site, tmp_path: Path
) -> None:
    other = RegistryServer(f"file://{site.store}", auth=True, workdir=tmp_path / "second")
    with other:
        root = http(site.root.auth)
        servers = [site.server.url, other.url]
        pushes = [
            (servers[n % 2], f"acme/prod/twin-{n}", sample_image(f"twin-{n}")) for n in range(6)
        ]
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: push_image(p[0], p[1], p[2], "1", session=root), pushes))
        twins = [f"twin-{n}" for n in range(6)]
        for url in servers:
            client = WebClient(url)
            client.login(site.root.username, site.root.secret)
            page = client.get("/ui/r/acme/prod", params={"q": "twin-"})
            assert shown_images(page.text) == twins
        gone = pushes[3][2].digest
        deleted = root.delete(f"{other.url}/v2/acme/prod/twin-3/manifests/{gone}")
        assert deleted.status_code == 202
        page = site.client().get("/ui/r/acme/prod", params={"q": "twin-"})
        assert shown_images(page.text) == [t for t in twins if t != "twin-3"]
