"""``CARGOHOLD_MEMORY_DUMP_DIR``: on ``SIGUSR2``, a server process writes what its heap holds.

A debugging aid for memory growth (issue 14's soak), off unless the variable is set. When
it is, each server process (each worker with ``--workers``) starts ``tracemalloc`` as it
starts serving, keeping ``CARGOHOLD_MEMORY_DUMP_FRAMES`` frames (default 16) per
allocation, and on ``SIGUSR2`` writes two files into the folder:

- ``PID-N.snap``: a ``tracemalloc`` snapshot (``tracemalloc.Snapshot.load``); compare two
  with ``later.compare_to(earlier, "traceback")`` to see which allocation sites hold the
  growth;
- ``PID-N.types.json``: live objects the cyclic collector tracks, counted by type, after a
  full collection, ``sys.getallocatedblocks()``, and what the two allocators hold:
  pymalloc's figures (``sys._debugmallocstats``: arenas, free pools) and glibc's
  (``mallinfo2``: heap bytes in use and free, mapped blocks). RSS that grows while the
  Python objects stay level is memory one of them keeps; these say which.

With ``CARGOHOLD_MEMORY_DUMP_TRACE=0`` nothing is traced (no ``.snap``): tracing changes
how memory is allocated, and while it runs pymalloc gives no figures at all.

Signal the worker processes, not the parent of ``--workers`` (which does not serve and
would end on the signal). Tracing costs CPU and memory on every allocation: never in
production. Only what is allocated after tracing starts is traced, which is what growth
is made of.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path

from .memory import _glibc

DUMP_DIR_VARIABLE = "CARGOHOLD_MEMORY_DUMP_DIR"
TRACE_VARIABLE = "CARGOHOLD_MEMORY_DUMP_TRACE"
FRAMES_VARIABLE = "CARGOHOLD_MEMORY_DUMP_FRAMES"
DEFAULT_FRAMES = 16
TYPES_KEPT = 500
"""Types listed in a dump, most numerous first."""


def install(loop: asyncio.AbstractEventLoop) -> Path | None:
    """Start tracing and dump on ``SIGUSR2`` when the variable names a folder; that folder."""
    folder = os.environ.get(DUMP_DIR_VARIABLE)
    if not folder:
        return None
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    if os.environ.get(TRACE_VARIABLE, "1") != "0" and not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get(FRAMES_VARIABLE, DEFAULT_FRAMES)))
    taken = iter(range(1, sys.maxsize))
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(dump(target, next(taken))))
    return target


async def dump(folder: Path, number: int) -> Path:
    """Take the snapshot and the counts on the loop (one consistent moment), write them
    from a thread; each file appears whole (written aside, then renamed)."""
    gc.collect()
    counts = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )
    types = {
        "blocks": sys.getallocatedblocks(),
        "pymalloc": pymalloc_figures(),
        "glibc": glibc_figures(),
        "types": counts.most_common(TYPES_KEPT),
    }
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    stem = folder / f"{os.getpid()}-{number}"

    def write() -> None:
        if snapshot is not None:
            snapshot.dump(f"{stem}.snap.part")
            os.replace(f"{stem}.snap.part", f"{stem}.snap")
        Path(f"{stem}.types.json.part").write_text(json.dumps(types))
        os.replace(f"{stem}.types.json.part", f"{stem}.types.json")

    await asyncio.get_running_loop().run_in_executor(None, write)
    return stem


_FIGURE = re.compile(r"^#\s*(.+?)\s+=\s+([\d,]+)\s*$")


def pymalloc_figures() -> dict[str, int]:
    """pymalloc's own summary (arenas allocated, bytes in used and free blocks, unused
    pools), parsed from ``sys._debugmallocstats``, which prints it on the C stderr: that
    descriptor is pointed at a file meanwhile (a log line written in that instant by
    another thread lands there too; a debugging aid)."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("ascii", "replace")
    figures: dict[str, int] = {}
    for line in text.splitlines():
        if match := _FIGURE.match(line):
            figures[match.group(1)] = int(match.group(2).replace(",", ""))
        elif "unused pools *" in line:
            figures["unused pools"] = int(line.split()[0].replace(",", ""))
    return figures


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def glibc_figures() -> dict[str, int]:
    """glibc's ``mallinfo2`` over all its heaps: ``arena`` (heap bytes from the OS),
    ``uordblks`` (in use), ``fordblks`` (free, kept), ``hblkhd`` (bytes in blocks mapped
    one by one); empty when not glibc."""
    libc = _glibc()
    call = getattr(libc, "mallinfo2", None)  # glibc 2.33 and later
    if call is None:
        return {}
    call.restype = _Mallinfo2
    info = call()
    return {field: int(getattr(info, field)) for field, _ in _Mallinfo2._fields_}


def compare(earlier: Path, later: Path, top: int = 10) -> str:
    """What grew from one dump to the next (the stems, ``PID-N``): the allocation sites
    holding the growth, by traceback, and the live object counts that changed most."""
    lines: list[str] = []
    if Path(f"{earlier}.snap").exists() and Path(f"{later}.snap").exists():
        first = tracemalloc.Snapshot.load(f"{earlier}.snap")
        second = tracemalloc.Snapshot.load(f"{later}.snap")
        lines.append(f"traced {_total(first) / 1024:.0f} -> {_total(second) / 1024:.0f} KiB")
        for stat in second.compare_to(first, "traceback")[:top]:
            lines.append(f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks:")
            lines += [f"    {line}" for line in stat.traceback.format(limit=8)]
    counts = [json.loads(Path(f"{stem}.types.json").read_text()) for stem in (earlier, later)]
    lines.append(f"allocated blocks {counts[0]['blocks']} -> {counts[1]['blocks']}")
    for allocator in ("pymalloc", "glibc"):
        before_figures = counts[0].get(allocator, {})
        after_figures = counts[1].get(allocator, {})
        for key in after_figures:
            was, now = before_figures.get(key, 0), after_figures[key]
            if was != now:
                lines.append(f"{allocator} {key}: {was:,} -> {now:,} ({now - was:+,})")
    before, after = dict(counts[0]["types"]), dict(counts[1]["types"])
    changed = sorted(
        before.keys() | after.keys(), key=lambda t: -abs(after.get(t, 0) - before.get(t, 0))
    )
    lines += [f"{after.get(t, 0) - before.get(t, 0):+d} {t}" for t in changed[:top]]
    return "\n".join(lines)


def _total(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.statistics("filename"))


if __name__ == "__main__":  # python -m registry_server.memory_dump DIR/PID-1 DIR/PID-2
    print(compare(Path(sys.argv[1]), Path(sys.argv[2])))
