"""The sealed driver proves itself the way any third-party driver does: by passing
Cargohold's shared contract suite, opened by name through its entry point.

Run from this folder, with the package installed: ``pytest``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers import available_drivers, open_driver
from drivers.testing import StorageDriverContract, payload, read_all, write_streamed
from registry_core.storage.driver import StorageDriver

KEY = secrets.token_hex(32)


def open_sealed_folder(folder: Path, key: str = KEY) -> StorageDriver:
    return open_driver("sealed://", key=key, inner=f"file://{folder}")


class TestSealedDriver(StorageDriverContract):
    @pytest.fixture
    async def driver(self, tmp_path: Path) -> AsyncIterator[StorageDriver]:
        driver = open_sealed_folder(tmp_path / "store")
        yield driver
        await driver.close()


def test_the_driver_is_installed_under_its_name() -> None:
    assert "sealed" in available_drivers()


async def test_objects_at_rest_are_not_the_plaintext(tmp_path: Path) -> None:
    driver = open_sealed_folder(tmp_path)
    data = b"a manifest, in the clear only in memory " * 100
    await driver.write("secret/object", data)
    stored = (tmp_path / "secret" / "object").read_bytes()
    assert data not in stored
    assert b"in the clear" not in stored
    assert len(stored) == len(data) + 20


async def test_the_same_bytes_are_sealed_differently_each_time(tmp_path: Path) -> None:
    driver = open_sealed_folder(tmp_path)
    await driver.write("one", b"same bytes")
    await driver.write("two", b"same bytes")
    assert (tmp_path / "one").read_bytes() != (tmp_path / "two").read_bytes()


async def test_appends_continue_the_keystream(tmp_path: Path) -> None:
    driver = open_sealed_folder(tmp_path)
    data = payload(100_003)
    await write_streamed(driver, "upload", data[:33_333], append=True)
    await write_streamed(driver, "upload", data[33_333:], append=True)
    assert await read_all(driver, "upload", offset=33_300, length=100) == data[33_300:33_400]


async def test_another_key_reads_noise(tmp_path: Path) -> None:
    await open_sealed_folder(tmp_path).write("object", b"readable with the right key")
    stranger = open_sealed_folder(tmp_path, key=secrets.token_hex(32))
    assert await stranger.read("object") != b"readable with the right key"


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32-byte"):
        open_sealed_folder(tmp_path, key="00" * 16)
