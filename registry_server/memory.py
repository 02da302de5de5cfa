"""Hand freed heap memory back to the OS, so a worker's RSS follows what it really holds.

Blob chunks, layer reads and signatures allocate large buffers, many of them in the
threads that run storage I/O; Python frees them, but glibc keeps the freed memory in
its heaps (one per thread, up to eight per CPU) for reuse, and fragmentation lets it
pile up: under the soak's mixed load a worker's RSS grew by tens of MiB while the
Python objects it held stayed level (issue 14; tracemalloc saw under 1 MiB of that).
Two measures, on glibc only (elsewhere both are no-ops). At start, :func:`limit_arenas`
caps the number of heaps and fixes the mmap and trim thresholds: glibc otherwise raises
both after the first large block is freed (up to 32 and 64 MiB), after which blob-sized
buffers come from the heaps and the free top of a thread's heap is kept instead of
returned (seen: 36 MiB free of 38 in the I/O threads' heap). An operator's
``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` wins.
And :func:`trim_forever` calls ``malloc_trim(0)`` periodically, which returns the free
pages inside every heap. Neither changes what the process can allocate.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("cargohold.server")

ARENAS = 2
"""glibc heaps per process: the event loop's and one shared by the I/O threads."""
TRIM_INTERVAL = 10.0
"""Seconds between two ``malloc_trim`` calls (each takes well under a millisecond)."""
MMAP_THRESHOLD = 512 * 1024
"""Blocks at least this large (file and layer reads, decompressed tar data) get their
own mapping, unmapped as soon as they are freed. At 1 MiB, the I/O threads' buffers below
it came from their shared heap, small long-lived blocks settled between them, and that
heap grew to ~8 MiB mapped, +1.2-2.6 MiB resident over five minutes of the soak (after
``malloc_trim``); at 512 KiB it stayed at 1.7-2.7 MiB mapped and each worker's RSS grew
+1.8% and +2.2% (issue 14, session 6: benchmarks/results/s6-soak-memory.md). Not lower:
at 128 KiB the body pieces an upload reads (up to 256 KiB) are mapped and unmapped one by
one, which cost uploads 35-39% more CPU per GiB; at 512 KiB upload CPU did not move."""
TRIM_THRESHOLD = 4 * 1024 * 1024
"""Free memory at the top of a heap beyond this is returned at once."""
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.malloc_trim  # noqa: B018 - missing on musl and macOS
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's heaps and fix its thresholds (call before threads start and before
    forking); False when not glibc or when the environment sets all three."""
    libc = _glibc()
    if libc is None:
        return False
    done = False
    for variable, option, value in (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, arenas),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ):
        if variable not in os.environ:
            done = bool(libc.mallopt(option, value)) or done
    return done


def release_free_memory() -> bool:
    """Return the free pages of every glibc heap to the OS; False when not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


async def trim_forever(interval: float = TRIM_INTERVAL) -> None:
    """:func:`release_free_memory` every *interval* seconds (a task of each server process)."""
    if _glibc() is None:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            release_free_memory()
        except Exception:  # never let housekeeping end the process
            log.warning("malloc_trim failed", exc_info=True)
