"""The benchmark's peak memory of a forked server: shared pages once, growth whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from benchmarks.harness import ProcTree

MIB = 1024 * 1024

# A parent touches 64 MiB, forks a worker (which shares those pages), and the worker
# touches 32 MiB more of its own when told to (a file appears), then frees it.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    def touched(size):  # every page written once, no second copy on the way
        block = bytearray(size)
        block[::4096] = b"\x01" * len(block[::4096])
        return block
    held = touched(64 * 1024 * 1024)
    go, ready = Path(sys.argv[1]), Path(sys.argv[2])
    if os.fork() == 0:
        ready.write_text("forked")
        while not go.exists():
            time.sleep(0.01)
        extra = touched(32 * 1024 * 1024)
        del extra
        Path(sys.argv[3]).write_text("grown")
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
    """
)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_peak_memory_counts_shared_pages_once_and_growth_whole(tmp_path: Path) -> None:
    go, ready, grown = tmp_path / "go", tmp_path / "ready", tmp_path / "grown"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(go), str(ready), str(grown)])
    try:
        _wait_for(ready)
        tree = ProcTree(proc.pid)
        deadline = time.monotonic() + 10
        while len(tree.pids()) < 2:
            assert time.monotonic() < deadline, "the worker never showed"
            time.sleep(0.01)
        tree.reset_peak_rss()
        go.write_text("go")
        _wait_for(grown)
        summed, memory = tree.peak_rss_mib(), tree.peak_memory_mib()
    finally:
        for pid in reversed(ProcTree(proc.pid).pids()):  # the worker, then the parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    # Summed VmHWM: the 64 MiB twice (parent and worker) plus the worker's 32 MiB.
    assert summed >= 64 * 2 + 32, summed
    # Once: 64 MiB shared, 32 MiB grown, plus two interpreters (well under 64 MiB).
    assert 64 + 32 <= memory < 64 + 32 + 40, (memory, summed)
