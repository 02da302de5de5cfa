"""The shared StorageDriver test suite: a backend proves itself by passing it.

Subclass :class:`StorageDriverContract` in a test module and give it a
``driver`` fixture that yields a fresh, empty driver for every test::

    from drivers.testing import StorageDriverContract

    class TestMyDriver(StorageDriverContract):
        @pytest.fixture
        async def driver(self, tmp_path):
            driver = MyDriver(tmp_path)
            yield driver
            await driver.close()

Each test checks one clause of the contract written down in
``registry_core.storage.driver``. This module is a test kit: it imports pytest
(and expects pytest-asyncio in auto mode), so only test code should import it;
the library itself never does, and pytest stays a development dependency.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from registry_core.storage.driver import (
    FileInfo,
    InvalidPath,
    ObjectChanged,
    PathNotFound,
    StorageDriver,
    check_path,
)

__all__ = ["BAD_PATHS", "GOOD_PATHS", "StorageDriverContract"]

LARGE = 3 * 1024 * 1024 + 4321
"""Bigger than any sensible read chunk and not a multiple of one."""

RACERS = 16

GOOD_PATHS = [
    "a",
    "a/b/c",
    "docker/registry/v2/blobs/sha256/ab/abcdef/data",
    "repositories/acme/prod/app/_manifests/tags/v1.0-rc_1/current/link",
    "_referrers/sha256-abc",
    "x/.hidden",
    "a/b..c",
    "k=v,w+z@host:1",
]

BAD_PATHS = [
    "/leading/slash",
    "trailing/slash/",
    "..",
    "a/../b",
    "../escape",
    ".",
    "a/./b",
    "a//b",
    "caf\u00e9",
    "a/\u2603/b",
    "a b",
    "new\nline",
    "trailing-newline\n",
    "back\\slash",
]
"""Paths every driver must refuse. The empty path is not listed: the built-in
drivers read it as their root (for ``list`` and ``walk``)."""


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that are not all alike (so offsets are checked for real)."""
    return random.Random(seed).randbytes(size)


async def read_all(
    driver: StorageDriver, path: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in driver.read_stream(path, offset, length)])


async def walk_all(driver: StorageDriver, path: str, prune: Any = None) -> list[FileInfo]:
    return [entry async for entry in driver.walk(path, prune)]


async def write_streamed(
    driver: StorageDriver, path: str, data: bytes, *, append: bool = False, step: int = 1 << 20
) -> None:
    writer = await driver.open_writer(path, append=append)
    for start in range(0, len(data), step):
        await writer.write(data[start : start + step])
    await writer.commit()


def _move_exact_of(driver: StorageDriver) -> Callable[[str, str, int], Awaitable[None]]:
    """The driver's ``move_exact``; for a driver without one, what an upload commit does
    instead (stat the size, then ``move``), so the contract holds for every driver."""
    move_exact = getattr(driver, "move_exact", None)
    if move_exact is not None:
        return move_exact  # type: ignore[no-any-return]

    async def stat_then_move(source: str, destination: str, size: int) -> None:
        held = (await driver.stat(source)).size
        if held != size:
            raise ObjectChanged(f"{source} holds {held} bytes, not {size}")
        await driver.move(source, destination)

    return stat_then_move


async def _move_to_bad(driver: StorageDriver, path: str) -> None:
    await driver.write("contract/source", b"x")
    await driver.move("contract/source", path)


async def _open_writer(driver: StorageDriver, path: str, *, append: bool = False) -> None:
    writer = await driver.open_writer(path, append=append)
    await writer.cancel()


def _file_bytes(local: str) -> bytes | None:
    if not os.path.isfile(local):
        return None
    with open(local, "rb") as handle:
        return handle.read()


PATH_OPERATIONS: dict[str, Callable[[StorageDriver, str], Awaitable[Any]]] = {
    "read": lambda d, p: d.read(p),
    "write": lambda d, p: d.write(p, b"x"),
    "write_if_absent": lambda d, p: d.write_if_absent(p, b"x"),
    "read_stream": lambda d, p: read_all(d, p),
    "open_writer": lambda d, p: _open_writer(d, p),
    "open_writer_append": lambda d, p: _open_writer(d, p, append=True),
    "stat": lambda d, p: d.stat(p),
    "list": lambda d, p: d.list(p),
    "walk": lambda d, p: walk_all(d, p),
    "move_from": lambda d, p: d.move(p, "contract/destination"),
    "move_to": _move_to_bad,
    "delete": lambda d, p: d.delete(p),
}


NOT_FOUND_OPERATIONS: dict[str, Callable[[StorageDriver, str], Awaitable[Any]]] = {
    "read": lambda d, p: d.read(p),
    "read_stream": lambda d, p: read_all(d, p),
    "stat": lambda d, p: d.stat(p),
    "list": lambda d, p: d.list(p),
    "move_from": lambda d, p: d.move(p, "contract/destination"),
    "delete": lambda d, p: d.delete(p),
}


class StorageDriverContract:
    """Every clause of the StorageDriver contract, one test each.

    Not collected by itself (its name does not start with ``Test``); a
    subclass supplies the ``driver`` fixture.
    """

    @pytest.fixture
    async def driver(self) -> AsyncIterator[StorageDriver]:
        pytest.fail("a StorageDriverContract subclass must define a `driver` fixture")
        yield  # pragma: no cover

    # -- shape ------------------------------------------------------------------

    async def test_driver_implements_the_protocol(self, driver: StorageDriver) -> None:
        assert isinstance(driver, StorageDriver)

    async def test_driver_has_a_name(self, driver: StorageDriver) -> None:
        assert isinstance(driver.name, str)
        assert driver.name

    # -- small objects ------------------------------------------------------------

    async def test_write_then_read_returns_the_bytes(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"hello")
        assert await driver.read("contract/small") == b"hello"

    async def test_write_creates_missing_parent_directories(self, driver: StorageDriver) -> None:
        await driver.write("contract/deep/er/still/small", b"nested")
        assert await driver.read("contract/deep/er/still/small") == b"nested"

    async def test_write_of_empty_bytes_makes_an_empty_object(self, driver: StorageDriver) -> None:
        await driver.write("contract/empty", b"")
        assert await driver.read("contract/empty") == b""
        assert (await driver.stat("contract/empty")).size == 0

    async def test_write_replaces_an_existing_object(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"a much longer first version")
        await driver.write("contract/small", b"second")
        assert await driver.read("contract/small") == b"second"

    async def test_concurrent_readers_see_whole_versions_only(self, driver: StorageDriver) -> None:
        versions = [payload(256 * 1024, seed) for seed in range(4)]
        await driver.write("contract/atomic", versions[0])

        async def reader() -> bytes:
            return await driver.read("contract/atomic")

        writes = [driver.write("contract/atomic", version) for version in versions * 3]
        reads = [reader() for _ in range(len(writes))]
        results = await asyncio.gather(
            *(item for pair in zip(writes, reads, strict=True) for item in pair)
        )
        for seen in results[1::2]:
            assert seen in versions

    async def test_read_of_a_missing_object_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await driver.read("contract/missing")

    async def test_read_of_a_directory_raises_path_not_found(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/child", b"x")
        with pytest.raises(PathNotFound):
            await driver.read("contract/dir")

    # -- write_if_absent ------------------------------------------------------------

    async def test_write_if_absent_creates_a_missing_object(self, driver: StorageDriver) -> None:
        assert await driver.write_if_absent("contract/once", b"first") is True
        assert await driver.read("contract/once") == b"first"

    async def test_write_if_absent_leaves_an_existing_object_alone(
        self, driver: StorageDriver
    ) -> None:
        await driver.write_if_absent("contract/once", b"first")
        assert await driver.write_if_absent("contract/once", b"second") is False
        assert await driver.read("contract/once") == b"first"

    async def test_write_if_absent_does_not_replace_a_written_object(
        self, driver: StorageDriver
    ) -> None:
        await driver.write("contract/once", b"written")
        assert await driver.write_if_absent("contract/once", b"second") is False
        assert await driver.read("contract/once") == b"written"

    async def test_write_if_absent_has_exactly_one_winner_among_racers(
        self, driver: StorageDriver
    ) -> None:
        contenders = [f"contender {n}".encode() for n in range(RACERS)]
        results = await asyncio.gather(
            *(driver.write_if_absent("contract/race", data) for data in contenders)
        )
        assert results.count(True) == 1
        winner = contenders[results.index(True)]
        assert await driver.read("contract/race") == winner

    # -- streamed writers --------------------------------------------------------------

    async def test_committed_writer_makes_the_object_visible(self, driver: StorageDriver) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/large", data)
        assert await read_all(driver, "contract/large") == data

    async def test_committed_writer_object_has_the_written_size(
        self, driver: StorageDriver
    ) -> None:
        await write_streamed(driver, "contract/large", payload(LARGE))
        assert (await driver.stat("contract/large")).size == LARGE

    async def test_writer_size_counts_the_bytes_written(self, driver: StorageDriver) -> None:
        writer = await driver.open_writer("contract/large")
        assert writer.size == 0
        await writer.write(b"12345")
        await writer.write(b"678")
        assert writer.size == 8
        await writer.commit()

    async def test_writer_object_is_not_visible_before_commit(self, driver: StorageDriver) -> None:
        writer = await driver.open_writer("contract/pending")
        await writer.write(b"not yet")
        try:
            with pytest.raises(PathNotFound):
                await driver.stat("contract/pending")
        finally:
            await writer.cancel()

    async def test_writer_keeps_the_old_object_until_commit(self, driver: StorageDriver) -> None:
        await driver.write("contract/replaced", b"old")
        writer = await driver.open_writer("contract/replaced")
        await writer.write(b"new")
        assert await driver.read("contract/replaced") == b"old"
        await writer.commit()
        assert await driver.read("contract/replaced") == b"new"

    async def test_cancelled_writer_leaves_no_object(self, driver: StorageDriver) -> None:
        writer = await driver.open_writer("contract/cancelled")
        await writer.write(payload(1024))
        await writer.cancel()
        with pytest.raises(PathNotFound):
            await driver.stat("contract/cancelled")

    async def test_cancelled_writer_leaves_the_old_object(self, driver: StorageDriver) -> None:
        await driver.write("contract/cancelled", b"old")
        writer = await driver.open_writer("contract/cancelled")
        await writer.write(b"new bytes")
        await writer.cancel()
        assert await driver.read("contract/cancelled") == b"old"

    async def test_cancelled_writer_leaves_nothing_in_the_listing(
        self, driver: StorageDriver
    ) -> None:
        await driver.write("contract/dir/kept", b"x")
        writer = await driver.open_writer("contract/dir/cancelled")
        await writer.write(b"gone")
        await writer.cancel()
        assert await driver.list("contract/dir") == ["kept"]

    async def test_pending_writer_is_not_listed_or_walked(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/kept", b"x")
        writer = await driver.open_writer("contract/dir/pending")
        await writer.write(b"in flight")
        try:
            assert await driver.list("contract/dir") == ["kept"]
            assert [e.path for e in await walk_all(driver, "contract/dir")] == ["contract/dir/kept"]
        finally:
            await writer.cancel()

    async def test_append_writer_continues_an_existing_object(self, driver: StorageDriver) -> None:
        await write_streamed(driver, "contract/upload", b"first part, ")
        await write_streamed(driver, "contract/upload", b"second part", append=True)
        assert await read_all(driver, "contract/upload") == b"first part, second part"

    async def test_append_writer_size_counts_existing_bytes(self, driver: StorageDriver) -> None:
        await write_streamed(driver, "contract/upload", b"12345")
        writer = await driver.open_writer("contract/upload", append=True)
        assert writer.size == 5
        await writer.write(b"678")
        assert writer.size == 8
        await writer.commit()

    async def test_append_writer_creates_a_missing_object(self, driver: StorageDriver) -> None:
        await write_streamed(driver, "contract/fresh", b"started", append=True)
        assert await driver.read("contract/fresh") == b"started"

    async def test_append_writer_committed_empty_creates_an_empty_object(
        self, driver: StorageDriver
    ) -> None:
        writer = await driver.open_writer("contract/fresh", append=True)
        await writer.commit()
        assert (await driver.stat("contract/fresh")).size == 0

    async def test_append_writers_in_sequence_build_a_large_object(
        self, driver: StorageDriver
    ) -> None:
        data = payload(LARGE)
        third = LARGE // 3
        for start in range(0, LARGE, third):
            await write_streamed(
                driver, "contract/upload", data[start : start + third], append=True
            )
        assert await read_all(driver, "contract/upload") == data

    async def test_append_moves_the_modification_time_forward(self, driver: StorageDriver) -> None:
        await write_streamed(driver, "contract/upload", b"start", append=True)
        before = (await driver.stat("contract/upload")).mtime
        await asyncio.sleep(0.05)
        await write_streamed(driver, "contract/upload", b" more", append=True)
        assert (await driver.stat("contract/upload")).mtime > before

    async def test_concurrent_writers_to_different_objects_keep_their_bytes(
        self, driver: StorageDriver
    ) -> None:
        datas = {f"contract/parallel/{n}": payload(300_000 + n, seed=n) for n in range(8)}

        async def one(path: str, data: bytes) -> None:
            await write_streamed(driver, path, data, step=64 * 1024)

        await asyncio.gather(*(one(path, data) for path, data in datas.items()))
        for path, data in datas.items():
            assert await read_all(driver, path) == data

    async def test_concurrent_small_writes_to_different_objects_all_land(
        self, driver: StorageDriver
    ) -> None:
        paths = [f"contract/many/{n}" for n in range(32)]
        await asyncio.gather(*(driver.write(path, path.encode()) for path in paths))
        for path in paths:
            assert await driver.read(path) == path.encode()

    # -- read_stream ----------------------------------------------------------------

    async def test_read_stream_returns_the_whole_object(self, driver: StorageDriver) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/large", data)
        assert await read_all(driver, "contract/large") == data

    async def test_read_stream_starts_at_the_offset(self, driver: StorageDriver) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/large", data)
        assert await read_all(driver, "contract/large", offset=1_500_000) == data[1_500_000:]

    async def test_read_stream_stops_after_length_bytes(self, driver: StorageDriver) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/large", data)
        got = await read_all(driver, "contract/large", offset=1_000_001, length=2_000_003)
        assert got == data[1_000_001:3_000_004]

    async def test_read_stream_with_length_but_no_offset(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"0123456789")
        assert await read_all(driver, "contract/small", length=4) == b"0123"

    async def test_read_stream_length_past_the_end_stops_at_the_end(
        self, driver: StorageDriver
    ) -> None:
        await driver.write("contract/small", b"0123456789")
        assert await read_all(driver, "contract/small", offset=6, length=100) == b"6789"

    async def test_read_stream_at_the_end_yields_nothing(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"0123456789")
        assert await read_all(driver, "contract/small", offset=10) == b""

    async def test_read_stream_of_zero_length_yields_nothing(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"0123456789")
        assert await read_all(driver, "contract/small", offset=3, length=0) == b""

    async def test_read_stream_of_a_missing_object_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await read_all(driver, "contract/missing")

    async def test_concurrent_read_streams_of_one_object_do_not_interfere(
        self, driver: StorageDriver
    ) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/large", data)
        offsets = [0, 1, 1_048_575, 1_048_577, 2_500_000]

        async def slow_reader(offset: int) -> bytes:
            chunks = []
            async for chunk in driver.read_stream("contract/large", offset):
                chunks.append(chunk)
                await asyncio.sleep(0)  # as a server does while the socket drains
            return b"".join(chunks)

        results = await asyncio.gather(*(slow_reader(offset) for offset in offsets))
        for offset, got in zip(offsets, results, strict=True):
            assert got == data[offset:]

    # -- stat ---------------------------------------------------------------------

    async def test_stat_reports_an_object_size(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"0123456789")
        info = await driver.stat("contract/small")
        assert info.size == 10
        assert info.is_dir is False

    async def test_stat_reports_a_recent_modification_time(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"x")
        assert abs((await driver.stat("contract/small")).mtime - time.time()) < 3600

    async def test_stat_reports_a_directory(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/child", b"x")
        assert (await driver.stat("contract/dir")).is_dir is True

    async def test_stat_of_a_missing_path_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await driver.stat("contract/missing")

    # -- list -----------------------------------------------------------------------

    async def test_list_names_direct_children_only(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/a", b"1")
        await driver.write("contract/dir/b", b"2")
        await driver.write("contract/dir/sub/c", b"3")
        await driver.write("contract/dir/sub/deeper/d", b"4")
        assert sorted(await driver.list("contract/dir")) == ["a", "b", "sub"]

    async def test_list_of_a_missing_directory_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await driver.list("contract/missing")

    async def test_list_of_an_object_raises_path_not_found(self, driver: StorageDriver) -> None:
        await driver.write("contract/object", b"x")
        with pytest.raises(PathNotFound):
            await driver.list("contract/object")

    # -- bulk deletes (the optional ``delete_many``, or single deletes in its place) ---

    async def test_bulk_delete_removes_objects_and_skips_missing_ones(
        self, driver: StorageDriver
    ) -> None:
        from registry_core.lifecycle.counting import CountingDriver

        paths = [f"contract/bulk/{n}" for n in range(5)]
        for path in paths:
            await driver.write(path, b"x")
        await driver.write("contract/bulk-kept", b"kept")
        await CountingDriver(driver).delete_many([*paths, "contract/bulk/missing"])
        for path in paths:
            with pytest.raises(PathNotFound):
                await driver.stat(path)
        assert await driver.read("contract/bulk-kept") == b"kept"

    # -- walk -----------------------------------------------------------------------

    async def test_walk_yields_every_object_and_directory_below(
        self, driver: StorageDriver
    ) -> None:
        await driver.write("contract/tree/a", b"1")
        await driver.write("contract/tree/sub/b", b"22")
        await driver.write("contract/tree/sub/deeper/c", b"333")
        await driver.write("contract/other", b"not below")
        found = {(e.path, e.is_dir) for e in await walk_all(driver, "contract/tree")}
        assert found == {
            ("contract/tree/a", False),
            ("contract/tree/sub", True),
            ("contract/tree/sub/b", False),
            ("contract/tree/sub/deeper", True),
            ("contract/tree/sub/deeper/c", False),
        }

    async def test_walk_reports_object_sizes(self, driver: StorageDriver) -> None:
        await driver.write("contract/tree/a", b"1")
        await driver.write("contract/tree/sub/b", b"22")
        sizes = {e.path: e.size for e in await walk_all(driver, "contract/tree") if not e.is_dir}
        assert sizes == {"contract/tree/a": 1, "contract/tree/sub/b": 2}

    async def test_walk_yields_a_pruned_directory_but_not_its_contents(
        self, driver: StorageDriver
    ) -> None:
        await driver.write("contract/tree/keep/a", b"1")
        await driver.write("contract/tree/skip/b", b"2")
        await driver.write("contract/tree/skip/deeper/c", b"3")
        asked: list[str] = []

        def prune(directory: str) -> bool:
            asked.append(directory)
            return directory.endswith("/skip")

        found = {e.path for e in await walk_all(driver, "contract/tree", prune)}
        assert found == {"contract/tree/keep", "contract/tree/keep/a", "contract/tree/skip"}
        assert "contract/tree/skip/deeper" not in asked

    async def test_walk_of_a_missing_path_yields_nothing(self, driver: StorageDriver) -> None:
        assert await walk_all(driver, "contract/missing") == []

    # -- move -----------------------------------------------------------------------

    async def test_move_puts_the_object_at_the_destination(self, driver: StorageDriver) -> None:
        data = payload(LARGE)
        await write_streamed(driver, "contract/from", data)
        await driver.move("contract/from", "contract/elsewhere/to")
        assert await read_all(driver, "contract/elsewhere/to") == data

    async def test_move_removes_the_source(self, driver: StorageDriver) -> None:
        await driver.write("contract/from", b"x")
        await driver.move("contract/from", "contract/to")
        with pytest.raises(PathNotFound):
            await driver.stat("contract/from")

    async def test_move_replaces_the_destination(self, driver: StorageDriver) -> None:
        await driver.write("contract/from", b"new")
        await driver.write("contract/to", b"old and longer")
        await driver.move("contract/from", "contract/to")
        assert await driver.read("contract/to") == b"new"

    async def test_move_of_a_missing_source_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await driver.move("contract/missing", "contract/to")

    async def test_racing_moves_of_one_source_end_in_one_move_and_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        # GC's rescue and a reader's recovery may move the same set-aside blob at once.
        for round_ in range(5):
            await driver.write(f"contract/race{round_}", b"set aside")
            outcomes = await asyncio.gather(
                *(
                    driver.move(f"contract/race{round_}", f"contract/back{round_}")
                    for _ in range(4)
                ),
                return_exceptions=True,
            )
            assert all(o is None or isinstance(o, PathNotFound) for o in outcomes), outcomes
            assert any(o is None for o in outcomes)
            assert await driver.read(f"contract/back{round_}") == b"set aside"

    # -- move_exact (optional: an upload commit's size check folded into its move) -----

    async def test_move_exact_moves_an_object_of_that_size(self, driver: StorageDriver) -> None:
        move_exact = _move_exact_of(driver)
        await write_streamed(driver, "contract/upload", b"first ", append=True)
        await write_streamed(driver, "contract/upload", b"second", append=True)
        await move_exact("contract/upload", "contract/blob", 12)
        assert await read_all(driver, "contract/blob") == b"first second"
        with pytest.raises(PathNotFound):
            await driver.stat("contract/upload")

    async def test_move_exact_of_another_size_moves_nothing(self, driver: StorageDriver) -> None:
        move_exact = _move_exact_of(driver)
        await write_streamed(driver, "contract/upload", b"first second", append=True)
        with pytest.raises(ObjectChanged):
            await move_exact("contract/upload", "contract/blob", 6)
        assert await read_all(driver, "contract/upload") == b"first second"
        with pytest.raises(PathNotFound):
            await driver.stat("contract/blob")

    # -- delete -----------------------------------------------------------------------

    async def test_delete_removes_an_object(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/gone", b"x")
        await driver.delete("contract/dir/gone")
        with pytest.raises(PathNotFound):
            await driver.read("contract/dir/gone")

    async def test_delete_keeps_sibling_objects(self, driver: StorageDriver) -> None:
        await driver.write("contract/dir/gone", b"x")
        await driver.write("contract/dir/kept", b"y")
        await driver.delete("contract/dir/gone")
        assert await driver.read("contract/dir/kept") == b"y"

    async def test_delete_removes_a_directory_tree(self, driver: StorageDriver) -> None:
        await driver.write("contract/tree/a", b"1")
        await driver.write("contract/tree/sub/b", b"2")
        await driver.delete("contract/tree")
        assert await walk_all(driver, "contract/tree") == []
        with pytest.raises(PathNotFound):
            await driver.stat("contract/tree")

    async def test_delete_of_a_directory_keeps_its_siblings(self, driver: StorageDriver) -> None:
        await driver.write("contract/tree/a", b"1")
        await driver.write("contract/treehouse", b"similar prefix")
        await driver.delete("contract/tree")
        assert await driver.read("contract/treehouse") == b"similar prefix"

    async def test_delete_of_a_missing_path_raises_path_not_found(
        self, driver: StorageDriver
    ) -> None:
        with pytest.raises(PathNotFound):
            await driver.delete("contract/missing")

    # -- path rules ---------------------------------------------------------------------

    @pytest.mark.parametrize("path", GOOD_PATHS)
    def test_check_path_accepts_a_valid_path(self, path: str) -> None:
        assert check_path(path) == path

    @pytest.mark.parametrize("path", [*BAD_PATHS, ""])
    def test_check_path_rejects_an_invalid_path(self, path: str) -> None:
        with pytest.raises(InvalidPath):
            check_path(path)

    @pytest.mark.parametrize("path", GOOD_PATHS)
    async def test_valid_paths_round_trip(self, driver: StorageDriver, path: str) -> None:
        await driver.write(path, path.encode())
        assert await driver.read(path) == path.encode()

    @pytest.mark.parametrize("operation", sorted(PATH_OPERATIONS))
    @pytest.mark.parametrize("path", BAD_PATHS)
    async def test_driver_refuses_an_invalid_path(
        self, driver: StorageDriver, operation: str, path: str
    ) -> None:
        with pytest.raises(InvalidPath):
            await PATH_OPERATIONS[operation](driver, path)

    @pytest.mark.parametrize("operation", sorted(NOT_FOUND_OPERATIONS))
    async def test_path_below_an_object_is_not_found(
        self, driver: StorageDriver, operation: str
    ) -> None:
        await driver.write("contract/object", b"x")
        with pytest.raises(PathNotFound):
            await NOT_FOUND_OPERATIONS[operation](driver, "contract/object/child")

    async def test_walk_below_an_object_yields_nothing(self, driver: StorageDriver) -> None:
        await driver.write("contract/object", b"x")
        assert await walk_all(driver, "contract/object/child") == []

    # -- optional abilities ---------------------------------------------------------------

    async def test_local_path_is_none_or_a_file_holding_the_object(
        self, driver: StorageDriver
    ) -> None:
        data = payload(4096)
        await write_streamed(driver, "contract/blob", data)
        local = driver.local_path("contract/blob")
        assert local is None or (isinstance(local, str) and _file_bytes(local) == data)

    async def test_signed_url_is_a_string_or_none(self, driver: StorageDriver) -> None:
        await driver.write("contract/small", b"x")
        assert isinstance(await driver.signed_url("contract/small", 60), str | None)
