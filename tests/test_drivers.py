"""The built-in drivers against the shared contract, and finding drivers by name."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import drivers
from drivers import ENTRY_POINT_GROUP, UnknownDriver, available_drivers, open_driver
from drivers.local import LocalDriver
from drivers.memory import MemoryDriver
from drivers.testing import StorageDriverContract
from registry_core.storage.driver import PathNotFound


class TestLocalDriver(StorageDriverContract):
    @pytest.fixture
    async def driver(self, tmp_path: Path) -> AsyncIterator[LocalDriver]:
        driver = LocalDriver(str(tmp_path / "root"))
        yield driver
        await driver.close()


class TestMemoryDriver(StorageDriverContract):
    @pytest.fixture
    async def driver(self) -> AsyncIterator[MemoryDriver]:
        driver = MemoryDriver()
        yield driver
        await driver.close()


# -- the driver registry ----------------------------------------------------------


class PluginDriver(MemoryDriver):
    name = "myscheme"

    def __init__(self, url: str, options: dict[str, object]) -> None:
        super().__init__()
        self.url = url
        self.options = options


def plugin_factory(url: str, **options: object) -> PluginDriver:
    """What a third-party package would name in its ``cargohold.drivers`` entry point."""
    return PluginDriver(url, options)


@pytest.fixture
def plugin_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EntryPoint(name="myscheme", value=f"{__name__}:plugin_factory", group=ENTRY_POINT_GROUP)

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [entry] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(drivers, "entry_points", fake_entry_points)


def test_memory_url_opens_a_memory_driver() -> None:
    assert isinstance(open_driver("memory://"), MemoryDriver)


def test_file_url_opens_a_local_driver_at_that_folder(tmp_path: Path) -> None:
    driver = open_driver(f"file://{tmp_path}/store")
    assert isinstance(driver, LocalDriver)
    assert driver.root == str(tmp_path / "store")


def test_plain_path_opens_a_local_driver(tmp_path: Path) -> None:
    driver = open_driver(str(tmp_path / "plain"))
    assert isinstance(driver, LocalDriver)
    assert driver.root == str(tmp_path / "plain")


def test_local_driver_creates_its_folder(tmp_path: Path) -> None:
    open_driver(str(tmp_path / "made"))
    assert (tmp_path / "made").is_dir()


def test_unknown_scheme_raises_unknown_driver() -> None:
    with pytest.raises(UnknownDriver):
        open_driver("nosuch://bucket/prefix")


def test_unknown_driver_message_lists_installed_drivers() -> None:
    with pytest.raises(UnknownDriver) as caught:
        open_driver("nosuch://bucket/prefix")
    message = str(caught.value)
    assert "nosuch" in message
    assert "file" in message
    assert "memory" in message


def test_builtin_drivers_are_available() -> None:
    assert {"file", "memory"} <= set(available_drivers())


def test_driver_options_are_refused_by_the_memory_driver() -> None:
    with pytest.raises(ValueError, match="option"):
        open_driver("memory://", region="x")


@pytest.mark.usefixtures("plugin_installed")
def test_entry_point_driver_is_opened_by_its_scheme() -> None:
    driver = open_driver("myscheme://bucket/prefix", anon=True)
    assert isinstance(driver, PluginDriver)
    assert driver.url == "myscheme://bucket/prefix"
    assert driver.options == {"anon": True}


@pytest.mark.usefixtures("plugin_installed")
def test_entry_point_driver_is_listed_as_available() -> None:
    assert "myscheme" in available_drivers()


@pytest.mark.usefixtures("plugin_installed")
def test_unknown_driver_message_lists_entry_point_drivers() -> None:
    with pytest.raises(UnknownDriver, match="myscheme"):
        open_driver("nosuch://x")


async def test_two_memory_drivers_do_not_share_objects() -> None:
    first, second = open_driver("memory://"), open_driver("memory://")
    await first.write("shared/object", b"first")
    assert await first.read("shared/object") == b"first"
    with pytest.raises(PathNotFound):
        await second.read("shared/object")


async def test_local_path_of_a_written_object_exists(tmp_path: Path) -> None:
    driver = LocalDriver(str(tmp_path))
    await driver.write("blobs/data", b"payload")
    local = driver.local_path("blobs/data")
    assert local is not None
    assert os.path.isfile(local)
    assert Path(local).read_bytes() == b"payload"
