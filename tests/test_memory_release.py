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


def churn_script(buffer: int, count: int, setup: str, measure: str) -> str:
    """A child Python that, on a thread of its own (as the I/O threads do), allocates *count*
    buffers of *buffer* bytes, each followed by a small block that stays, then frees the
    buffers; it prints its RSS (KiB) before and after *measure*. *setup* runs first."""
    return textwrap.dedent(
        f"""
        import threading
        from registry_server.memory import limit_arenas, release_free_memory

        def rss_kib():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))

        def churn():
            big, small = [], []
            for n in range({count}):
                big.append(bytearray({buffer}))
                small.append(bytearray(2048))
            big.clear()
            return small

        {setup}
        kept = []
        before = rss_kib()
        thread = threading.Thread(target=lambda: kept.append(churn()))
        thread.start(); thread.join()
        {measure}
        print(before, rss_kib())
        """
    )


def run_churn(script: str, **env_extra: str) -> tuple[int, int]:
    """Run *script* without inherited ``MALLOC_`` settings; its RSS before and after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after = (int(x) for x in done.stdout.split())
    return before, after


@glibc_only
def test_freed_buffers_leave_the_resident_set_after_a_trim() -> None:
    # glibc's default: large blocks come from the heap once one was freed (dynamic
    # threshold), which is what fragments; make that so from the first block. RSS is
    # compared before and after the trim, with 1 MiB buffers freed amid small blocks.
    script = churn_script(1 << 20, 300, "", "before = rss_kib(); assert release_free_memory()")
    before, after = run_churn(script, MALLOC_MMAP_THRESHOLD_=str(4 << 20))
    assert before - after > 200 * 1024, (before, after)


@glibc_only
def test_buffers_of_a_few_hundred_kib_leave_the_resident_set_when_freed() -> None:
    # Without any trim: blocks at or over the fixed mmap threshold are their own mappings,
    # so 40 MiB of freed scanner-sized buffers must not stay resident between small blocks.
    before, after = run_churn(churn_script(640 << 10, 64, "assert limit_arenas()", "pass"))
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
