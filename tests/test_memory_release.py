"""A worker hands freed heap memory back to the OS (``registry_server.memory``).

Run in a fresh interpreter, so the heap starts as the test makes it: large buffers
freed between small long-lived allocations stay resident under glibc until
``malloc_trim``; after :func:`release_free_memory` the RSS drops back.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

from registry_server import memory

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or memory._glibc() is None, reason="malloc_trim is glibc's"
)

FRAGMENT_THEN_TRIM = textwrap.dedent(
    """
    import threading
    from registry_server.memory import release_free_memory

    def rss_kib():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))

    def churn():
        big, small = [], []
        for n in range(300):  # 1 MiB buffers, each followed by a small block that stays
            big.append(bytearray(1 << 20))
            small.append(bytearray(2048))
        big.clear()
        return small

    kept = []
    thread = threading.Thread(target=lambda: kept.append(churn()))  # as the I/O threads do
    thread.start(); thread.join()
    before = rss_kib()
    assert release_free_memory()
    print(before, rss_kib())
    """
)


@glibc_only
def test_freed_buffers_leave_the_resident_set_after_a_trim() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    # glibc's default: large blocks come from the heap once one was freed (dynamic
    # threshold), which is what fragments; make that so from the first block.
    env["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)
    done = subprocess.run(
        [sys.executable, "-c", FRAGMENT_THEN_TRIM],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after = (int(x) for x in done.stdout.split())
    assert before - after > 200 * 1024, (before, after)


BUFFERS_AMID_SMALL_BLOCKS = textwrap.dedent(
    """
    import threading
    from registry_server.memory import limit_arenas

    def rss_kib():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))

    def churn():
        big, small = [], []
        for n in range(64):  # 640 KiB buffers, each followed by a small block that stays
            big.append(bytearray(640 << 10))
            small.append(bytearray(2048))
        big.clear()
        return small

    assert limit_arenas()
    kept = []
    before = rss_kib()
    thread = threading.Thread(target=lambda: kept.append(churn()))  # as the I/O threads do
    thread.start(); thread.join()
    print(before, rss_kib())
    """
)


@glibc_only
def test_buffers_of_a_few_hundred_kib_leave_the_resident_set_when_freed() -> None:
    # Without any trim: blocks at or over the fixed mmap threshold are their own mappings,
    # so 40 MiB of freed scanner-sized buffers must not stay resident between small blocks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", BUFFERS_AMID_SMALL_BLOCKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after = (int(x) for x in done.stdout.split())
    assert after - before < 8 * 1024, (before, after)


@glibc_only
def test_malloc_tuning_leaves_an_operator_setting_alone(monkeypatch) -> None:
    for variable in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.setenv(variable, "4")
    assert memory.limit_arenas() is False


def test_without_glibc_both_measures_do_nothing(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.limit_arenas() is False
    assert memory.release_free_memory() is False


def test_libc_is_found_where_the_tests_run() -> None:
    # The measures must not silently turn off on the Linux machines we ship to.
    if sys.platform == "linux" and ctypes.util.find_library("c"):
        assert memory._glibc() is not None
