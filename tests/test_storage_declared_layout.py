"""What the registry's layout tells an object-store driver, and the S3 requests it saves.

The registry declares which paths may ever be appended to (only an upload's data) and
which are never folders (blob data, links, an upload's data and start record). On moto
S3, behind a proxy that records every request, a miss of such a path costs one request
(no parts or folder listing after it), while folders, parts and paths outside the
registry's trees behave as before. The layout rules are checked on their own too,
including the names a repository may have (a repository may be called ``.../link``).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.object_store import PARTS, parts_prefix
from registry_core import Digest, Registry
from registry_core.names import RepositoryName
from registry_core.storage import layout
from registry_core.storage.driver import DriverSettings, InvalidPath, PathNotFound
from tests.helpers.emulators import CloudEmulator, RecordingProxy, cloud_driver

SETTINGS = DriverSettings(timeout=30.0, retries=3)
NAME = RepositoryName.parse("acme/prod/app")
LINKED = RepositoryName.parse("acme/prod/link")
DIGEST = Digest.of(b"declared")


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "appendable", "leaf"),
    [
        (layout.upload_data(NAME, "u1"), True, True),
        (layout.upload_started_at(NAME, "u1"), False, True),
        (layout.upload_dir(NAME, "u1"), False, False),
        (layout.blob_data(DIGEST), False, True),
        (layout.blob_dir(DIGEST), False, False),
        (layout.layer_link(NAME, DIGEST), False, True),
        (layout.layer_link_dir(NAME, DIGEST), False, False),
        (layout.revision_link(NAME, DIGEST), False, True),
        (layout.tag_current_link(NAME, "v1"), False, True),
        (layout.tag_index_link(NAME, "v1", DIGEST), False, True),
        (layout.repository(NAME), False, False),
        # A repository whose last name part is "link" is a folder, not a link; so is the
        # folder of a tag named "link" (its links are below it).
        (layout.repository(LINKED), False, False),
        (layout.tag_dir(NAME, "link"), False, False),
        (layout.tag_current_link(NAME, "link"), False, True),
        (layout.tag_index_link(NAME, "link", DIGEST), False, True),
        (layout.revision_dir(NAME, DIGEST), False, False),
        (layout.upload_marker(NAME.tenant, "1-abc-u1"), False, False),
        (layout.settings_record("acme", "prod", "quota"), False, False),
        # Outside the registry's trees nothing is promised.
        ("elsewhere/own/data", True, False),
    ],
)
def test_layout_declares_which_paths_are_appended_and_which_are_leaves(
    path: str, appendable: bool, leaf: bool
) -> None:
    assert layout.may_be_appended(path) is appendable
    assert layout.is_leaf(path) is leaf


# -- on moto S3 ------------------------------------------------------------------------


@pytest.fixture
async def recorded(moto_server: CloudEmulator) -> AsyncIterator[tuple[Any, RecordingProxy]]:
    """An S3 driver with the registry's declaration, behind a recording proxy."""
    bucket = moto_server.create_bucket(f"declared-{secrets.token_hex(4)}")
    async with RecordingProxy(moto_server.url) as proxy:
        options = {**moto_server.storage_options(), "endpoint_url": proxy.url}
        driver = cloud_driver(moto_server, bucket, settings=SETTINGS, options=options)
        driver.declare_layout(appendable=layout.may_be_appended, leaf=layout.is_leaf)
        try:
            yield driver, proxy
        finally:
            await driver.close()


def methods(proxy: RecordingProxy) -> list[str]:
    """The requests recorded so far, listings named apart from plain GETs."""
    return ["LIST" if "list-type" in query else method for method, _, query in proxy.requests]


async def test_a_missing_link_costs_one_get(recorded: tuple[Any, RecordingProxy]) -> None:
    driver, proxy = recorded
    proxy.requests.clear()
    with pytest.raises(PathNotFound):
        await driver.read(layout.layer_link(NAME, DIGEST))
    assert methods(proxy) == ["GET"]


async def test_a_blob_not_stored_yet_costs_one_head(recorded: tuple[Any, RecordingProxy]) -> None:
    driver, proxy = recorded
    proxy.requests.clear()
    with pytest.raises(PathNotFound):
        await driver.stat(layout.blob_data(DIGEST))
    assert methods(proxy) == ["HEAD"]


async def test_a_stored_link_is_read_stat_and_deleted_as_one_object(
    recorded: tuple[Any, RecordingProxy],
) -> None:
    driver, proxy = recorded
    link = layout.layer_link(NAME, DIGEST)
    await driver.write(link, str(DIGEST).encode())
    proxy.requests.clear()
    assert await driver.read(link) == str(DIGEST).encode()
    assert (await driver.stat(link)).size == len(str(DIGEST))
    await driver.delete(link)
    assert methods(proxy) == ["GET", "HEAD", "HEAD", "POST"]
    with pytest.raises(PathNotFound):
        await driver.read(link)


async def test_folders_are_still_folders(recorded: tuple[Any, RecordingProxy]) -> None:
    """A repository named ``.../link`` is a folder: stat and delete still look below it."""
    driver, _ = recorded
    inside = layout.layer_link(LINKED, DIGEST)
    await driver.write(inside, b"x")
    info = await driver.stat(layout.repository(LINKED))
    assert info.is_dir
    await driver.delete(layout.repository(LINKED))
    with pytest.raises(PathNotFound):
        await driver.read(inside)


async def test_only_declared_paths_take_appends(recorded: tuple[Any, RecordingProxy]) -> None:
    driver, _ = recorded
    with pytest.raises(InvalidPath):
        await driver.open_writer(layout.layer_link(NAME, DIGEST), append=True)
    data = layout.upload_data(NAME, "u2")
    for chunk in (b"first ", b"second"):
        writer = await driver.open_writer(data, append=True)
        await writer.write(chunk)
        await writer.commit()
    assert await driver.read(data) == b"first second"
    assert (await driver.stat(data)).size == 12


async def test_paths_outside_the_registry_may_still_have_parts(
    recorded: tuple[Any, RecordingProxy],
) -> None:
    driver, _ = recorded
    for chunk in (b"own ", b"bytes"):
        writer = await driver.open_writer("elsewhere/own/object", append=True)
        await writer.write(chunk)
        await writer.commit()
    assert await driver.read("elsewhere/own/object") == b"own bytes"


async def test_a_registry_declares_its_layout_to_the_driver(moto_server: CloudEmulator) -> None:
    driver = cloud_driver(moto_server, moto_server.create_bucket(f"decl-{secrets.token_hex(4)}"))
    registry = Registry(driver)
    try:
        with pytest.raises(InvalidPath):
            await driver.open_writer(layout.layer_link(NAME, DIGEST), append=True)
    finally:
        await registry.close()


async def test_parts_named_by_earlier_versions_are_still_read(
    recorded: tuple[Any, RecordingProxy],
) -> None:
    """Parts now carry a random suffix (two sessions opened in one microsecond stay
    apart); parts without one, as earlier versions wrote them, still make the object."""
    driver, _ = recorded
    path = layout.upload_data(NAME, "old")
    key = driver._key(path)
    await driver.store.put(f"{key}{PARTS}/{0:020d}-{1:017d}", b"old ")
    writer = await driver.open_writer(path, append=True)
    await writer.write(b"new")
    await writer.commit()
    assert await driver.read(path) == b"old new"
    names = [info.key.rsplit("/", 1)[1] for info in await driver._list_all(parts_prefix(key))]
    assert names[0] == f"{0:020d}-{1:017d}"
    assert len(names) == 2 and len(names[1]) == 20 + 1 + 17 + 1 + 8
