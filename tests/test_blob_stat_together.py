"""A pull's blob GET reads the repository's link and stats the data side by side: one
round trip to the object store instead of two, the same answers as one after the other."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from drivers.memory import MemoryDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.errors import BlobUnknown
from registry_core.storage import layout

DATA = b"layer bytes"
DIGEST = Digest.parse("sha256:" + hashlib.sha256(DATA).hexdigest())


class SlowDriver(MemoryDriver):
    """Each read and stat takes a round trip; counts how many were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    async def _trip(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.in_flight -= 1

    async def read(self, path: str) -> bytes:
        await self._trip()
        return await super().read(path)

    async def stat(self, path: str) -> Any:
        await self._trip()
        return await super().stat(path)


async def _repo(driver: SlowDriver, *, linked: bool, stored: bool) -> Any:
    registry = Registry(driver)
    repo = registry.repository("acme/prod/app")
    if stored:
        await repo.blobs.store.put_small(DATA, DIGEST)
    if linked:
        await repo.blobs.link(DIGEST)
    driver.most_in_flight = 0
    return repo


@pytest.mark.parametrize("together", [False, True])
async def test_a_linked_blob_that_is_there(together: bool) -> None:
    driver = SlowDriver()
    repo = await _repo(driver, linked=True, stored=True)
    info = await repo.blobs.stat(DIGEST, together=together)
    assert info.size == len(DATA)
    assert driver.most_in_flight == (2 if together else 1)


@pytest.mark.parametrize(
    ("linked", "stored"),
    [(False, True), (True, False)],
    ids=["data-this-repository-does-not-link", "a-link-whose-data-is-gone"],
)
@pytest.mark.parametrize("together", [False, True])
async def test_a_blob_this_repository_cannot_serve_is_unknown(
    together: bool, linked: bool, stored: bool
) -> None:
    driver = SlowDriver()
    repo = await _repo(driver, linked=linked, stored=stored)
    with pytest.raises(BlobUnknown):
        await repo.blobs.stat(DIGEST, together=together)


@pytest.mark.parametrize("together", [False, True])
async def test_data_a_gc_run_set_aside_is_moved_back(together: bool) -> None:
    driver = SlowDriver()
    repo = await _repo(driver, linked=True, stored=True)
    # What a running GC's sweep does: the data moves to the run's trash.
    await driver.move(layout.blob_data(DIGEST), layout.gc_trash("run-1", DIGEST))
    info = await repo.blobs.stat(DIGEST, together=together)
    assert info.size == len(DATA)
    assert await driver.read(layout.blob_data(DIGEST)) == DATA
