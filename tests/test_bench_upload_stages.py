"""The upload stage meter (``benchmarks.upload_stages``) against a real ``cargohold serve``.

The uploads gate's bounds are argued from its figures, so it must attribute CPU to
the right stage: the server's event loop thread, its pool threads (where batches are
written and hashed) and the client. Its per-thread totals must add up to what the
server's threads ran in all, and the uploads it times must be real, stored uploads.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest

from benchmarks.client import BlobSource, MiB
from benchmarks.harness import ProcTree
from benchmarks.upload_ab import REPO, cpu_seconds, start
from benchmarks.upload_stages import Row, measure, summarize

pytestmark = pytest.mark.timeout(180)

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["mono", "chunked", "streamed"])
def test_each_stage_of_a_real_upload_is_measured(tmp_path: Path, kind: str) -> None:
    served = start(str(CHECKOUT), str(tmp_path))
    try:
        pids = ProcTree(served.process.pid).pids()
        blob = BlobSource().blob(16 * MiB, os.urandom(16))
        before = cpu_seconds(pids)
        row = measure(served.url, pids, kind, blob, 0.005)
        ran = cpu_seconds(pids) - before

        head = urllib.request.Request(f"{served.url}/v2/{REPO}/blobs/{blob.digest}", method="HEAD")
        with urllib.request.urlopen(head) as response:
            assert int(response.headers["Content-Length"]) == blob.size
    finally:
        os.killpg(served.process.pid, signal.SIGTERM)
        served.process.wait()

    assert row.kind == kind
    assert row.loop > 0  # receiving and parsing, on the event loop's thread
    assert row.pool > 0  # writing and hashing, on the pool's threads
    assert row.client > 0
    gib = blob.size / (1024 * MiB)
    sampled = (row.loop + row.pool) * gib
    # The sampler's totals are what the server's threads ran between its first and
    # last look: inside the outer measurement, and most of it.
    assert 0.5 * ran <= sampled <= ran + 0.001
    assert 0 <= row.overlap <= min(row.busy_loop, row.busy_pool) + 1e-9
    assert row.mib_s > 0
    assert row.other >= 0


def test_bounds_follow_from_the_stages() -> None:
    rows = [
        Row("mono", 500, 0.6, 1.0, 0.3, busy_loop=0.3, busy_pool=0.5, overlap=0.2, other=0.3),
        Row("mono", 700, 0.8, 1.2, 0.2, busy_loop=0.4, busy_pool=0.6, overlap=0.3, other=0.5),
        Row("mono", 600, 0.7, 1.1, 0.4, busy_loop=0.5, busy_pool=0.7, overlap=0.4, other=0.4),
    ]
    summary = summarize(rows, sha_mib_s=1024, cores=2)
    assert summary.mib_s == 600
    assert summary.server == pytest.approx(1.8)  # the median of 1.6, 2.0, 1.8
    assert summary.client == pytest.approx(0.3)
    assert summary.hash == pytest.approx(1.0)
    # Two cores, 2.1 CPU seconds per GiB in all: at best 2 GiB per 2.1 s.
    assert summary.all_cores == pytest.approx(2048 / 2.1)
    # With the machine's other CPU (median 0.4 s per GiB) on the same cores too.
    assert summary.all_cores_other == pytest.approx(2048 / 2.5)
    # The slowest stage (the pool, median 1.1 s per GiB) on a core of its own.
    assert summary.own_cores == pytest.approx(1024 / 1.1)
