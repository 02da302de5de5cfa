"""``--workers N``: N server processes sharing one port through SO_REUSEPORT.

Each worker is a forked copy that builds its own app and event loop after the
fork (nothing asynchronous crosses it), binds the port with SO_REUSEPORT and
lets the kernel spread connections. All state lives in storage, so workers
need no coordination. The parent only forwards SIGTERM/SIGINT, waits, and
replaces a worker that dies on its own; whatever the first start creates
(bootstrap admin, secrets key) it has created before forking. A worker gets
SIGTERM when the parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so no
orphan keeps the port. Counters, caches and single-flight fetches are per
worker process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

LOGGER = logging.getLogger("cargohold.server")


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent exits; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _spawn(run_worker: Callable[[], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent(parent)
        code = 0
        try:
            run_worker()
        except SystemExit as exc:
            code = int(exc.code or 0)
        except BaseException:
            LOGGER.exception("worker crashed")
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return pid


def run_workers(count: int, run_worker: Callable[[], None]) -> int:
    """Run *count* workers until SIGTERM/SIGINT; return the exit status."""
    stopping = False
    children = {_spawn(run_worker) for _ in range(count)}

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        if not stopping:
            LOGGER.error("worker %d exited (status %d); starting a new one", pid, code)
            time.sleep(0.5)
            children.add(_spawn(run_worker))
        elif os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM):
            status = 1
    return status
