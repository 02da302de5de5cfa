"""The local driver's small operations that share a thread hop: same outcomes as alone.

Deletes of files and small flat folders, short listings and new empty objects run in
the loop turn's shared hop; anything bigger (a folder with subfolders or many files, a
long listing, an empty object replacing one that exists) takes the full path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.local import SMALL_FOLDER, SMALL_LISTING, LocalDriver, _Batches
from drivers.threads import Delivery, Workers
from registry_core.storage.driver import PathNotFound


@pytest.fixture
def driver(tmp_path: Path) -> LocalDriver:
    return LocalDriver(str(tmp_path / "store"))


async def test_a_new_empty_object_reads_back_empty(driver: LocalDriver) -> None:
    await driver.write("tenant/markers/one", b"")
    assert await driver.read("tenant/markers/one") == b""


async def test_an_empty_write_replaces_an_object_that_exists(driver: LocalDriver) -> None:
    await driver.write("tenant/record", b"older bytes")
    await driver.write("tenant/record", b"")
    assert await driver.read("tenant/record") == b""
    leftovers = [n for n in os.listdir(driver._full("tenant")) if n != "record"]
    assert leftovers == []  # no temporary file left behind


async def test_deleting_a_small_folder_removes_it(driver: LocalDriver) -> None:
    await asyncio.gather(*(driver.write(f"upload/{n}", b"x") for n in range(3)))
    await driver.delete("upload")
    assert not os.path.exists(driver._full("upload"))


@pytest.mark.parametrize("count", [SMALL_FOLDER, SMALL_FOLDER + 5])
async def test_deleting_a_flat_folder_of_any_size_removes_it(
    driver: LocalDriver, count: int
) -> None:
    await asyncio.gather(*(driver.write(f"flat/{n}", b"x") for n in range(count)))
    await driver.delete("flat")
    assert not os.path.exists(driver._full("flat"))


async def test_deleting_a_folder_with_subfolders_removes_the_whole_tree(
    driver: LocalDriver,
) -> None:
    await asyncio.gather(
        driver.write("repo/a", b"x"), driver.write("repo/sub/b", b"x"), driver.write("repo/z", b"x")
    )
    await driver.delete("repo")
    assert not os.path.exists(driver._full("repo"))


async def test_deleting_what_is_not_there_is_path_not_found(driver: LocalDriver) -> None:
    with pytest.raises(PathNotFound):
        await driver.delete("nothing/here")


@pytest.mark.parametrize("count", [3, SMALL_LISTING - 1, SMALL_LISTING, SMALL_LISTING + 40])
async def test_a_listing_is_complete_whatever_its_length(driver: LocalDriver, count: int) -> None:
    await asyncio.gather(*(driver.write(f"tags/t{n:04d}", b"x") for n in range(count)))
    assert sorted(await driver.list("tags")) == [f"t{n:04d}" for n in range(count)]


async def test_a_long_listing_reads_the_folder_once(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SMALL_LISTING names the listing goes on in a hop of its own from where the
    shared hop stopped: the folder is opened and read once (a repository's 1,000 tags)."""
    count = SMALL_LISTING * 3 + 7
    await asyncio.gather(*(driver.write(f"tags/t{n:04d}", b"x") for n in range(count)))
    (Path(driver.root) / "tags" / ".t0001.tmp-123-1").write_bytes(b"")  # a write in flight
    opened: list[str] = []
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        opened.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert sorted(await driver.list("tags")) == [f"t{n:04d}" for n in range(count)]
    assert len(opened) == 1


async def test_a_listing_of_a_missing_folder_is_path_not_found(driver: LocalDriver) -> None:
    with pytest.raises(PathNotFound):
        await driver.list("no/such/folder")


# -- commit_small_upload: an upload finished by one request, in one thread hop ---------------

SESSION = "repo/_uploads/u1"


async def test_a_small_upload_commit_stores_the_blob_and_ends_the_session(
    driver: LocalDriver,
) -> None:
    await driver.write(f"{SESSION}/startedat", b"when")
    started = await driver.commit_small_upload(
        f"{SESSION}/startedat", f"{SESSION}/data", SESSION, "blobs/ab/data", b"body"
    )
    assert started == b"when"
    assert await driver.read("blobs/ab/data") == b"body"
    assert not os.path.exists(driver._full(SESSION))
    assert [n for n in os.listdir(driver._full("blobs/ab")) if n != "data"] == []


async def test_a_small_upload_commit_keeps_a_blob_that_is_already_stored(
    driver: LocalDriver,
) -> None:
    await driver.write("blobs/ab/data", b"body")
    before = os.stat(driver._full("blobs/ab/data")).st_ino
    await driver.write(f"{SESSION}/startedat", b"when")
    await driver.commit_small_upload(
        f"{SESSION}/startedat", f"{SESSION}/data", SESSION, "blobs/ab/data", b"body"
    )
    assert os.stat(driver._full("blobs/ab/data")).st_ino == before
    assert not os.path.exists(driver._full(SESSION))


async def test_a_small_upload_commit_of_a_session_holding_bytes_does_nothing(
    driver: LocalDriver,
) -> None:
    await driver.write(f"{SESSION}/startedat", b"when")
    await driver.write(f"{SESSION}/data", b"sent before")
    started = await driver.commit_small_upload(
        f"{SESSION}/startedat", f"{SESSION}/data", SESSION, "blobs/ab/data", b"body"
    )
    assert started is None
    assert await driver.read(f"{SESSION}/data") == b"sent before"
    with pytest.raises(PathNotFound):
        await driver.stat("blobs/ab/data")


async def test_a_small_upload_commit_of_an_unknown_session_is_path_not_found(
    driver: LocalDriver,
) -> None:
    with pytest.raises(PathNotFound):
        await driver.commit_small_upload(
            f"{SESSION}/startedat", f"{SESSION}/data", SESSION, "blobs/ab/data", b"body"
        )
    with pytest.raises(PathNotFound):
        await driver.stat("blobs/ab/data")


# -- a batch never strands a caller: each one hears its own outcome, or why there is none --


async def test_an_outcome_a_future_refuses_still_ends_every_wait_of_its_batch(
    driver: LocalDriver,
) -> None:
    # Three calls of one loop turn share a hop; the middle one raises StopIteration,
    # which a future refuses. It used to stop the delivery there: the middle and the
    # last caller then waited forever.
    calls = [
        driver._batches.run(lambda: "first"),
        driver._batches.run(lambda: next(iter(()))),
        driver._batches.run(lambda: "last"),
    ]
    first, refused, last = await asyncio.wait_for(
        asyncio.gather(*calls, return_exceptions=True), 10
    )
    assert (first, last) == ("first", "last")
    assert isinstance(refused, RuntimeError)
    assert isinstance(refused.__cause__, StopIteration)


class _NoThreads(Workers):
    """Worker threads that cannot start (the process is out of threads)."""

    def submit(self, func: Callable[[], Any], deliver: Delivery) -> None:
        raise RuntimeError("can't start new thread")


async def test_a_batch_that_cannot_reach_a_worker_thread_fails_each_caller() -> None:
    # The batch's hop used to raise inside the loop's callback (logged, nobody told):
    # every caller of that loop turn then waited forever.
    batches = _Batches(_NoThreads(1))
    calls = [batches.run(lambda: 1), batches.run(lambda: 2)]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert [str(outcome) for outcome in outcomes] == ["can't start new thread"] * 2
    assert batches._pending == {}
