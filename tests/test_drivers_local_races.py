"""The local driver's folder delete racing another remover and a writer (a client's DELETE
and GC removing one revision while GC's re-check writes its link back): either order is a
valid outcome, a storage error (which the server answers 503) is not."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from drivers.local import LocalDriver
from registry_core.storage.driver import PathNotFound

ROUNDS = 20


async def _race(driver: LocalDriver, folder: str) -> None:
    async def remove() -> None:
        with contextlib.suppress(PathNotFound):  # the other remover was first
            await driver.delete(folder)

    async def write() -> None:
        for n in range(8):
            with contextlib.suppress(PathNotFound):  # its folder went meanwhile
                await driver.write(f"{folder}/sub{n % 2}/w{n}", b"y")

    await asyncio.gather(remove(), remove(), write())


async def test_deleting_a_folder_while_another_deletes_it_and_a_writer_adds_to_it(
    tmp_path: Path,
) -> None:
    driver = LocalDriver(str(tmp_path))
    for round_ in range(ROUNDS):
        folder = f"repo/_manifests/revisions/sha256/r{round_}"
        for n in range(8):
            await driver.write(f"{folder}/sub{n % 2}/f{n}", b"x")
        await _race(driver, folder)
