"""An object store's read streams fetch the next piece while the caller sends this one.

``read_ahead`` wraps a driver stream: pieces arrive in order, at most ``depth`` more are
held, an error reaches the caller where it happened, and a caller that stops early (a
client gone mid-download) stops the fetching and closes the source. On moto, a proxied
blob GET streams through it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncGenerator

import pytest

from drivers.object_store import read_ahead
from registry_core.storage.driver import DriverSettings, StorageError
from tests.helpers.emulators import CloudEmulator, cloud_driver


class Source:
    """Pieces on demand, recording when each was fetched and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.fetched: list[int] = []
        self.closed = False

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        try:
            for number in range(self.count):
                await asyncio.sleep(0)
                if number == self.fail_at:
                    raise StorageError(f"piece {number} failed")
                self.fetched.append(number)
                yield bytes([number]) * 4
        finally:
            self.closed = True


async def test_pieces_come_in_order_and_the_next_is_fetched_meanwhile() -> None:
    source = Source(5)
    stream = read_ahead(source.pieces(), depth=1)
    received: list[bytes] = []
    async for piece in stream:
        received.append(piece)
        if len(received) == 1:
            await asyncio.sleep(0.01)  # the caller is busy sending the first piece
            # The next piece was fetched, and one more is being held back (depth 1).
            assert source.fetched[:3] == [0, 1, 2]
            assert len(source.fetched) == 3
    assert received == [bytes([n]) * 4 for n in range(5)]
    assert source.closed


async def test_an_error_reaches_the_caller_where_it_happened() -> None:
    source = Source(5, fail_at=2)
    received: list[bytes] = []
    with pytest.raises(StorageError, match="piece 2"):
        async for piece in read_ahead(source.pieces()):
            received.append(piece)
    assert received == [bytes([0]) * 4, bytes([1]) * 4]


async def test_a_caller_that_stops_early_stops_the_fetching() -> None:
    source = Source(1000)
    stream = read_ahead(source.pieces(), depth=2)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert source.closed
    assert len(source.fetched) <= 4  # never ran ahead beyond its depth


async def test_a_proxied_stream_from_moto_is_whole_and_ranged(moto_server: CloudEmulator) -> None:
    bucket = moto_server.create_bucket(f"ahead-{secrets.token_hex(4)}")
    driver = cloud_driver(moto_server, bucket, settings=DriverSettings(timeout=30.0, retries=3))
    data = secrets.token_bytes(5 * 1024 * 1024 + 17)  # six pieces of at most 1 MiB
    try:
        await driver.write("a/blob", data)
        assert b"".join([piece async for piece in driver.read_stream("a/blob")]) == data
        part = b"".join([p async for p in driver.read_stream("a/blob", 1_000_000, 3_000_000)])
        assert part == data[1_000_000:4_000_000]
    finally:
        await driver.close()
