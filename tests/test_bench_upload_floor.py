"""The upload floor server (``benchmarks.upload_floor``): the CPU it is compared by is real work.

Its figures stand for what reading, hashing and storing an upload costs with nothing
else, so it must store and hash every byte and check the digest like a registry: each
mode takes monolithic and chunked uploads from the benchmark's own client, and a wrong
digest is refused.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from benchmarks.client import BenchError, BlobSource, MiB, upload_chunked, upload_monolithic
from benchmarks.upload_floor import MODES, start_floor

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", MODES)
def test_floor_server_stores_hashes_and_checks_uploads(tmp_path: Path, mode: str) -> None:
    process, url = start_floor(mode, str(tmp_path))
    try:
        source = BlobSource()
        upload_monolithic(url, "floor", source.blob(24 * MiB, os.urandom(16)))
        upload_chunked(url, "floor", source.blob(24 * MiB, os.urandom(16)))
        wrong = dataclasses.replace(
            source.blob(16 * MiB, os.urandom(16)), digest="sha256:" + "0" * 64
        )
        with pytest.raises(BenchError, match="400"):
            upload_monolithic(url, "floor", wrong)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
