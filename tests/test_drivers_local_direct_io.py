"""The local driver's ``O_DIRECT`` writes of received bodies (``LocalWriter.taker``).

Whole aligned blocks go through a second, ``O_DIRECT`` descriptor; the unaligned rest
through the buffered one, in between, in order. What matters is what a reader of the
file gets afterwards (exactly the bytes, both kinds of write mixed), and that the
direct path really ran where it can (``direct_io`` counts its bytes) and, on tmpfs,
did not (one refusal per writer, then buffered writes as before).
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import drivers.local as local
from drivers.local import DIRECT_ALIGN, LocalDriver, direct_io
from tests.helpers.direct_io import refuse_o_direct, takes_direct_io

MiB = 1 << 20
SHM = Path("/dev/shm")


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    # The disk of every machine this suite runs on takes O_DIRECT (ext4): a missing
    # direct path there is a failure, not a skip. Refusal is tested on tmpfs (which
    # refuses it before Linux 6.6) and with the switch off.
    assert takes_direct_io(tmp_path), f"{tmp_path} is on a file system without O_DIRECT"
    return tmp_path


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    assert SHM.is_dir(), "no tmpfs at /dev/shm: the refusing file system cannot be tested"
    folder = SHM / f"cargohold-direct-{tmp_path.name}-{os.getpid()}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)


def _buffer(data: bytes) -> memoryview:
    """A page-aligned receiving buffer holding *data* (as ``RequestBody.receive`` uses)."""
    buffer = mmap.mmap(-1, max(len(data), 1))
    buffer[: len(data)] = data
    return memoryview(buffer)[: len(data)]


def _pieces() -> list[bytes]:
    """Unaligned start, aligned blocks, an odd piece, blocks again (now misaligned in the
    file), a realigning piece, blocks, a tail: every mix of the two kinds of write."""
    sizes = [777, DIRECT_ALIGN - 777, 2 * MiB, 4096 * 3 + 5, MiB, DIRECT_ALIGN - 5, 3 * MiB, 99]
    return [os.urandom(size) for size in sizes]


async def _take_all(driver: LocalDriver, path: str, pieces: list[bytes], append: bool) -> None:
    writer = await driver.open_writer(path, append=append)
    start = writer.size
    take = writer.taker()  # type: ignore[attr-defined]
    for piece in pieces:
        take(_buffer(piece))
    assert writer.size == start + sum(map(len, pieces))
    await writer.commit()


async def test_a_new_object_mixes_direct_and_buffered_writes_exactly(disk: Path) -> None:
    driver = LocalDriver(str(disk))
    pieces = _pieces()
    before = direct_io.bytes
    await _take_all(driver, "blobs/new", pieces, append=False)
    assert (disk / "blobs/new").read_bytes() == b"".join(pieces)
    # Direct: the 2 MiB after the realigning piece, the next piece's 3 whole blocks
    # (its 5 bytes buffered), the 3 MiB after the second realigning piece.
    assert direct_io.bytes - before == 5 * MiB + 3 * 4096
    assert not [name for name in os.listdir(disk / "blobs") if ".tmp-" in name]


async def test_appends_to_an_upload_with_an_odd_size_mix_writes_exactly(disk: Path) -> None:
    driver = LocalDriver(str(disk))
    (disk / "uploads").mkdir()
    (disk / "uploads/data").write_bytes(b"x" * 12345)  # an earlier PATCH of odd length
    pieces = [os.urandom((-12345) % DIRECT_ALIGN), *_pieces()]
    before = direct_io.bytes
    await _take_all(driver, "uploads/data", pieces, append=True)
    assert (disk / "uploads/data").read_bytes() == b"x" * 12345 + b"".join(pieces)
    assert direct_io.bytes - before == 5 * MiB + 3 * 4096


async def test_an_append_still_refuses_a_file_that_changed_under_it(disk: Path) -> None:
    """``_append_to``'s check (another process moved the upload away) holds for direct writes."""
    driver = LocalDriver(str(disk))
    (disk / "uploads").mkdir()
    (disk / "uploads/data").write_bytes(b"")
    writer = await driver.open_writer("uploads/data", append=True)
    take = writer.taker()  # type: ignore[attr-defined]
    take(_buffer(os.urandom(MiB)))
    os.replace(disk / "uploads/data", disk / "moved")
    with pytest.raises(local.ObjectChanged):
        take(_buffer(os.urandom(MiB)))
    await writer.cancel()
    assert (disk / "moved").stat().st_size == MiB


async def test_switched_off_nothing_goes_direct(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "DIRECT_IO", False)
    driver = LocalDriver(str(disk))
    pieces = _pieces()
    before = (direct_io.bytes, direct_io.refusals)
    await _take_all(driver, "blobs/off", pieces, append=False)
    assert (disk / "blobs/off").read_bytes() == b"".join(pieces)
    assert (direct_io.bytes, direct_io.refusals) == before


async def _both_writers(driver: LocalDriver, root: Path) -> None:
    """A new object and an append to an odd-sized upload, each of every mix of pieces."""
    pieces = _pieces()
    await _take_all(driver, "blobs/new", pieces, append=False)
    (root / "uploads").mkdir()
    (root / "uploads/data").write_bytes(b"y" * 100)
    appended = [os.urandom(DIRECT_ALIGN - 100), *pieces]
    await _take_all(driver, "uploads/data", appended, append=True)
    assert (root / "blobs/new").read_bytes() == b"".join(pieces)
    assert (root / "uploads/data").read_bytes() == b"y" * 100 + b"".join(appended)


async def test_a_file_system_refusing_o_direct_gets_buffered_writes_one_refusal_per_writer(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As tmpfs did before Linux 6.6 (and ramfs, and some FUSE file systems): EINVAL at open."""
    refuse_o_direct(monkeypatch, local)
    before = (direct_io.bytes, direct_io.refusals)
    await _both_writers(LocalDriver(str(disk)), disk)
    assert (direct_io.bytes, direct_io.refusals) == (before[0], before[1] + 2)


async def test_on_tmpfs_the_bytes_are_exact_whichever_way_it_answers_o_direct(shm: Path) -> None:
    """tmpfs refuses ``O_DIRECT`` before Linux 6.6 and takes it (into its page cache) since."""
    refused = not takes_direct_io(shm)
    before = (direct_io.bytes, direct_io.refusals)
    await _both_writers(LocalDriver(str(shm)), shm)
    if refused:
        assert (direct_io.bytes, direct_io.refusals) == (before[0], before[1] + 2)
    else:
        # Each writer as on disk: 2 MiB, 3 blocks and 3 MiB.
        direct = 2 * (5 * MiB + 3 * 4096)
        assert (direct_io.bytes, direct_io.refusals) == (before[0] + direct, before[1])


async def test_a_stricter_alignment_rule_falls_back_to_buffered_writes(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system wanting more than DIRECT_ALIGN answers EINVAL to the write itself."""
    real_pwrite = os.pwrite
    direct_descriptors: set[int] = set()
    real_open_direct = local._open_direct

    def open_direct(descriptor: int) -> int | None:
        opened = real_open_direct(descriptor)
        if opened is not None:
            direct_descriptors.add(opened)
        return opened

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        if descriptor in direct_descriptors and offset % (64 * 1024):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(local, "_open_direct", open_direct)
    monkeypatch.setattr(local.os, "pwrite", pwrite)
    driver = LocalDriver(str(disk))
    pieces = [os.urandom(64 * 1024), os.urandom(MiB), os.urandom(4096), os.urandom(MiB), b"z"]
    before = (direct_io.bytes, direct_io.refusals)
    await _take_all(driver, "blobs/strict", pieces, append=False)
    assert (disk / "blobs/strict").read_bytes() == b"".join(pieces)
    # 64 KiB, 1 MiB and 4 KiB went direct (offsets on 64 KiB), then the write at an
    # offset 4 KiB past one was refused: written buffered, and so was all after it.
    direct = 64 * 1024 + MiB + 4096
    assert (direct_io.bytes, direct_io.refusals) == (before[0] + direct, before[1] + 1)
