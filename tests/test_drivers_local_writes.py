"""The local driver's batched writes: many network chunks go out in as few ``writev``
calls as the kernel takes, and an upload's hashing rides in the same thread hop as the
write of the same bytes (``write_parts(parts, alongside)``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import drivers.local as local
from drivers.local import SMALL_WRITE, LocalDriver
from registry_core.storage.driver import ObjectChanged


def _parts(count: int) -> list[bytes]:
    """*count* pieces of uneven sizes (1 to 97 bytes), each with its own content."""
    return [bytes([n % 251]) * (1 + n % 97) for n in range(count)]


async def test_more_pieces_than_one_writev_takes_are_all_written_in_order(tmp_path: Path) -> None:
    driver = LocalDriver(str(tmp_path))
    parts = _parts(3 * local._IOV_MAX + 7)
    assert sum(map(len, parts)) > SMALL_WRITE  # goes out at once, not held for the commit
    writer = await driver.open_writer("a/new")
    await writer.write_parts(parts)  # type: ignore[attr-defined]
    await writer.commit()
    assert (tmp_path / "a/new").read_bytes() == b"".join(parts)


async def test_a_short_writev_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file takes a short write only when the disk fills; the rest still follows."""
    real_writev = os.writev

    def short_writev(descriptor: int, buffers: list[bytes]) -> int:
        return real_writev(descriptor, [bytes(buffers[0])[: len(buffers[0]) // 2]])

    monkeypatch.setattr(local.os, "writev", short_writev)
    driver = LocalDriver(str(tmp_path))
    parts = [os.urandom(40_000), os.urandom(50_000), os.urandom(30_000)]
    writer = await driver.open_writer("short", append=True)
    await writer.write_parts(parts)  # type: ignore[attr-defined]
    await writer.commit()
    assert (tmp_path / "short").read_bytes() == b"".join(parts)


async def test_alongside_runs_on_the_writer_thread_after_its_parts_are_written(
    tmp_path: Path,
) -> None:
    driver = LocalDriver(str(tmp_path))
    writer = await driver.open_writer("upload/data", append=True)
    parts = [os.urandom(100_000), os.urandom(60_000)]
    seen: list[tuple[int, bool]] = []

    def alongside() -> None:
        on_loop_thread = threading.current_thread() is threading.main_thread()
        seen.append((os.path.getsize(tmp_path / "upload/data"), on_loop_thread))

    await writer.write_parts(parts, alongside)  # type: ignore[attr-defined]
    await writer.commit()
    assert seen == [(160_000, False)]


async def test_alongside_runs_at_once_when_small_parts_are_held_for_the_commit(
    tmp_path: Path,
) -> None:
    driver = LocalDriver(str(tmp_path))
    writer = await driver.open_writer("small")
    calls: list[int] = []
    await writer.write_parts([b"x" * 100], lambda: calls.append(1))  # type: ignore[attr-defined]
    assert calls == [1]
    assert not (tmp_path / "small").exists()  # held: written with the commit
    await writer.commit()
    assert (tmp_path / "small").read_bytes() == b"x" * 100


async def test_alongside_does_not_run_when_the_upload_changed_under_the_writer(
    tmp_path: Path,
) -> None:
    """Another process appended meanwhile: nothing is written, so nothing is hashed."""
    driver = LocalDriver(str(tmp_path))
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload/data").write_bytes(b"start")
    writer = await driver.open_writer("upload/data", append=True)
    with open(tmp_path / "upload/data", "ab") as other:
        other.write(b"someone else's bytes")
    calls: list[int] = []
    with pytest.raises(ObjectChanged):
        await writer.write_parts([os.urandom(SMALL_WRITE + 1)], lambda: calls.append(1))  # type: ignore[attr-defined]
    await writer.cancel()
    assert calls == []
    assert (tmp_path / "upload/data").read_bytes() == b"start" + b"someone else's bytes"
