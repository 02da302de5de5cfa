"""``CARGOHOLD_MEMORY_DUMP_DIR``: on ``SIGUSR2``, a server process writes what its heap holds.

A debugging aid for memory growth (issue 14's soak), off unless the variable is set. When
it is, each server process (each worker with ``--workers``) starts ``tracemalloc`` as it
starts serving, keeping ``CARGOHOLD_MEMORY_DUMP_FRAMES`` frames (default 16) per
allocation, and on ``SIGUSR2`` writes two files into the folder:

- ``PID-N.snap``: a ``tracemalloc`` snapshot (``tracemalloc.Snapshot.load``); compare two
  with ``later.compare_to(earlier, "traceback")`` to see which allocation sites hold the
  growth;
- ``PID-N.types.json``: live objects the cyclic collector tracks, counted by type, after a
  full collection, and ``sys.getallocatedblocks()``.

Signal the worker processes, not the parent of ``--workers`` (which does not serve and
would end on the signal). Tracing costs CPU and memory on every allocation: never in
production. Only what is allocated after tracing starts is traced, which is what growth
is made of.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import signal
import sys
import tracemalloc
from pathlib import Path

DUMP_DIR_VARIABLE = "CARGOHOLD_MEMORY_DUMP_DIR"
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
    if not tracemalloc.is_tracing():
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
    types = {"blocks": sys.getallocatedblocks(), "types": counts.most_common(TYPES_KEPT)}
    snapshot = tracemalloc.take_snapshot()
    stem = folder / f"{os.getpid()}-{number}"

    def write() -> None:
        snapshot.dump(f"{stem}.snap.part")
        os.replace(f"{stem}.snap.part", f"{stem}.snap")
        Path(f"{stem}.types.json.part").write_text(json.dumps(types))
        os.replace(f"{stem}.types.json.part", f"{stem}.types.json")

    await asyncio.get_running_loop().run_in_executor(None, write)
    return stem


def compare(earlier: Path, later: Path, top: int = 10) -> str:
    """What grew from one dump to the next (the stems, ``PID-N``): the allocation sites
    holding the growth, by traceback, and the live object counts that changed most."""
    first = tracemalloc.Snapshot.load(f"{earlier}.snap")
    second = tracemalloc.Snapshot.load(f"{later}.snap")
    lines = [
        f"traced {_total(first) / 1024:.0f} -> {_total(second) / 1024:.0f} KiB",
    ]
    for stat in second.compare_to(first, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks:")
        lines += [f"    {line}" for line in stat.traceback.format(limit=8)]
    counts = [json.loads(Path(f"{stem}.types.json").read_text()) for stem in (earlier, later)]
    lines.append(f"allocated blocks {counts[0]['blocks']} -> {counts[1]['blocks']}")
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
