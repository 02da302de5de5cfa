"""``--workers N``: N server processes sharing one port through SO_REUSEPORT.

Each worker is a forked copy that builds its own app and event loop after the
fork (nothing asynchronous crosses it), binds the port with SO_REUSEPORT and
lets the kernel spread connections. All state lives in storage, so workers
need no coordination. The parent only forwards SIGTERM/SIGINT, waits, and
replaces a worker that dies on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

LOGGER = logging.getLogger("cargohold.server")


def _spawn(run_worker: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
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
