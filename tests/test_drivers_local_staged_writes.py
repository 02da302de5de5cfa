"""Batches of ``LocalWriter.write_parts`` staged into an aligned buffer and written with
``O_DIRECT`` (drivers/local.py: ``_write_staged``).

These are the bodies aiohttp's parser hands on in pieces (chunked transfer encoding, as
docker's push sends every layer, TLS, compression): through the page cache they cost a
page fault per page in this kind of VM and stall once dirty pages pile up. What matters
is what a reader gets (exactly the bytes, whatever the batch sizes and the offset the
upload had reached), that whole blocks really went with ``O_DIRECT`` (``direct_io``
counts them), that the unaligned tail of a batch waits for the next batch or the commit
(and is stored when the writer is cancelled too), that the hash of each batch still runs
once written, and that the staging buffers are given back and capped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import drivers.local as local
from drivers.local import DIRECT_ALIGN, SMALL_WRITE, STAGED_MIN, LocalDriver, direct_io
from tests.helpers.direct_io import refuse_o_direct, takes_direct_io

MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    assert takes_direct_io(tmp_path), f"{tmp_path} is on a file system without O_DIRECT"
    return tmp_path


def _batches() -> list[list[bytes]]:
    """Batches as ``_pump`` gathers them (1 MiB and a piece, of pieces of odd sizes), a
    small one that is held back, and an odd last one."""
    sizes = [
        [32 * 1024 + 9] * 33,  # 1 MiB and a bit, in 32 KiB chunks of a chunked body
        [300 * 1024 + 1, 700 * 1024 + 3, 100 * 1024],
        [5000],  # held back (small): goes with the next batch
        [MiB + 4095],
        [STAGED_MIN - 1 - 5000],  # with the held tail, just under the staging threshold
        [2 * MiB + 1],
    ]
    return [[os.urandom(size) for size in batch] for batch in sizes]


def _direct_bytes(start: int, batches: list[list[bytes]]) -> int:
    """The bytes the staged path writes with ``O_DIRECT``: per written batch (with the
    tail held from before), the whole blocks after the file's next aligned offset."""
    stored, held, direct = start, 0, 0
    for batch in batches:
        size = sum(map(len, batch))
        if held + size <= SMALL_WRITE:
            held += size
            continue
        total = held + size
        if total < STAGED_MIN:
            stored, held = stored + total, 0
            continue
        lead = (-stored) % DIRECT_ALIGN
        whole = max(total - lead, 0) // DIRECT_ALIGN * DIRECT_ALIGN
        direct += whole
        stored += lead + whole
        held = total - lead - whole
    return direct


async def _write_batches(
    driver: LocalDriver, path: str, batches: list[list[bytes]], append: bool
) -> list[bytes]:
    """Write every batch with a hash-like ``alongside``; returns what it saw, in order."""
    writer = await driver.open_writer(path, append=append)
    seen: list[bytes] = []
    for batch in batches:
        await writer.write_parts(batch, lambda batch=batch: seen.extend(batch))
    await writer.commit()
    return seen


async def test_an_append_at_an_odd_offset_reads_back_exactly_with_whole_blocks_direct(
    disk: Path,
) -> None:
    driver = LocalDriver(str(disk))
    (disk / "uploads").mkdir()
    (disk / "uploads/data").write_bytes(b"x" * 12345)  # an earlier PATCH of odd length
    batches = _batches()
    before = direct_io.bytes
    seen = await _write_batches(driver, "uploads/data", batches, append=True)
    expected = b"".join(b"".join(batch) for batch in batches)
    assert (disk / "uploads/data").read_bytes() == b"x" * 12345 + expected
    assert b"".join(seen) == expected  # every batch hashed once, in order
    direct = direct_io.bytes - before
    assert direct == _direct_bytes(12345, batches)
    assert direct > len(expected) - 2 * STAGED_MIN
    assert local._staging_in_use == 0


async def test_a_new_object_reads_back_exactly(disk: Path) -> None:
    driver = LocalDriver(str(disk))
    batches = _batches()
    before = direct_io.bytes
    await _write_batches(driver, "blobs/new", batches, append=False)
    assert (disk / "blobs/new").read_bytes() == b"".join(b"".join(b) for b in batches)
    assert direct_io.bytes - before == _direct_bytes(0, batches)
    assert not [name for name in os.listdir(disk / "blobs") if ".tmp-" in name]
    assert local._staging_in_use == 0


async def test_a_cancelled_append_keeps_its_held_tail(disk: Path) -> None:
    """Appended bytes stay when a writer is cancelled (a client gone mid-body): the tail
    held for the next batch included, so the client resumes from the stored offset."""
    driver = LocalDriver(str(disk))
    (disk / "uploads").mkdir()
    (disk / "uploads/data").write_bytes(b"")
    writer = await driver.open_writer("uploads/data", append=True)
    data = os.urandom(MiB + 777)
    await writer.write_parts([data])
    assert (disk / "uploads/data").stat().st_size == MiB  # the tail waits
    await writer.cancel()
    assert (disk / "uploads/data").read_bytes() == data
    assert local._staging_in_use == 0


async def test_an_append_still_refuses_a_file_that_changed_under_it(disk: Path) -> None:
    driver = LocalDriver(str(disk))
    (disk / "uploads").mkdir()
    (disk / "uploads/data").write_bytes(b"")
    writer = await driver.open_writer("uploads/data", append=True)
    await writer.write_parts([os.urandom(MiB)])
    os.replace(disk / "uploads/data", disk / "moved")
    with pytest.raises(local.ObjectChanged):
        await writer.write_parts([os.urandom(MiB)])
    await writer.cancel()
    assert (disk / "moved").stat().st_size == MiB
    assert local._staging_in_use == 0


async def test_without_a_staging_buffer_to_spare_batches_go_through_the_page_cache(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers that stage at once are capped (memory stays bounded); the others write
    as before, and take a buffer once one is given back."""
    monkeypatch.setattr(local, "STAGING_BUFFERS", 1)
    driver = LocalDriver(str(disk))
    first = await driver.open_writer("blobs/first")
    second = await driver.open_writer("blobs/second")
    a, b = os.urandom(MiB + 3), os.urandom(MiB + 5)
    before = direct_io.bytes
    await first.write_parts([a])
    assert direct_io.bytes - before == MiB  # the only buffer
    await second.write_parts([b])
    assert direct_io.bytes - before == MiB  # none to spare: buffered
    await first.commit()
    c = os.urandom(MiB)
    await second.write_parts([c])  # the buffer is free again
    # After the 5 odd bytes, 4,091 realign the file: all but the last block goes direct.
    assert direct_io.bytes - before == MiB + MiB - DIRECT_ALIGN
    await second.commit()
    assert (disk / "blobs/first").read_bytes() == a
    assert (disk / "blobs/second").read_bytes() == b + c
    assert local._staging_in_use == 0


async def test_spare_staging_buffers_are_kept_up_to_their_cap_and_reused(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_spare_staging", [])
    driver = LocalDriver(str(disk))
    writers = [await driver.open_writer(f"blobs/{n}") for n in range(local.SPARE_STAGING + 2)]
    for writer in writers:
        await writer.write_parts([os.urandom(MiB)])
    staged = [writer._staging for writer in writers]  # type: ignore[attr-defined]
    assert all(staging is not None for staging in staged)
    for writer in writers:
        await writer.commit()
    assert len(local._spare_staging) == local.SPARE_STAGING
    assert [staging.closed for staging in staged] == [False] * local.SPARE_STAGING + [True] * 2
    again = await driver.open_writer("blobs/again")
    await again.write_parts([os.urandom(MiB)])
    assert any(again._staging is staging for staging in staged)  # type: ignore[attr-defined]
    await again.commit()


async def test_switched_off_or_refused_nothing_goes_direct(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = LocalDriver(str(disk))
    batches = _batches()
    expected = b"".join(b"".join(batch) for batch in batches)
    refuse_o_direct(monkeypatch, local)
    before = (direct_io.bytes, direct_io.refusals)
    await _write_batches(driver, "blobs/refused", batches, append=False)
    assert (direct_io.bytes, direct_io.refusals) == (before[0], before[1] + 1)
    monkeypatch.setattr(local, "DIRECT_IO", False)
    await _write_batches(driver, "blobs/off", batches, append=False)
    assert (direct_io.bytes, direct_io.refusals) == (before[0], before[1] + 1)
    assert (disk / "blobs/refused").read_bytes() == expected
    assert (disk / "blobs/off").read_bytes() == expected
    assert local._staging_in_use == 0
