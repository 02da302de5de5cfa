"""Names meant to be unique per process stay unique in forked ``--workers`` processes.

The server imports everything, then forks its workers: a prefix drawn at import time is
the parent's in every worker, and their counters start level. Two workers writing one
object at once then named the same temporary file (one's link or rename found it gone:
a 503 in the benchmark's setup of 1,000 tags), and request ids repeated across workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from drivers import local
from registry_server.state import new_request_id


def _in_a_forked_child(make: Callable[[], str]) -> str:
    """What *make* returns in a child forked now (the child does nothing else)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer and leave at once (no atexit, no pytest)
        try:
            os.write(write_end, make().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as answer:
            child = answer.read().decode()
    finally:
        os.waitpid(pid, 0)
    assert child, "the child answered nothing"
    return child


def test_a_forked_worker_names_its_temporary_files_apart_from_its_parent() -> None:
    target = "/store/docker/registry/v2/blobs/sha256/f5/f5d8/data"
    theirs = _in_a_forked_child(lambda: local._temporary(target))
    mine = local._temporary(target)  # the same position of the same counter
    assert theirs != mine
    assert os.path.dirname(theirs) == os.path.dirname(mine) == os.path.dirname(target)
    sibling = _in_a_forked_child(lambda: local._temporary(target))
    assert sibling not in (theirs, mine)


def test_a_forked_worker_draws_its_own_request_ids() -> None:
    theirs = _in_a_forked_child(new_request_id)
    mine = new_request_id()
    assert theirs != mine
    assert len(theirs) == len(mine)
    sibling = _in_a_forked_child(new_request_id)
    assert sibling[:12] not in (theirs[:12], mine[:12])  # another process: another prefix
