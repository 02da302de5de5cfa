"""``CARGOHOLD_MEMORY_DUMP_DIR``: a server process dumps its traced heap on ``SIGUSR2``.

The debugging aid that traced issue 14's soak growth (registry_server/memory_dump.py):
two dumps around some manifest pushes must show, grouped by traceback, the allocations
the pushes left behind in the manifest cache, and count the live objects by type.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
import tracemalloc
from pathlib import Path

import requests

from registry_server import memory_dump
from tests.helpers.server import RegistryServer

MANIFESTS = 40


def wait_for(path: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s"
        time.sleep(0.1)
    return path


def dump(server: RegistryServer, folder: Path, number: int) -> tuple[tracemalloc.Snapshot, dict]:
    os.kill(server.pid, signal.SIGUSR2)
    stem = f"{server.pid}-{number}"
    types = json.loads(wait_for(folder / f"{stem}.types.json").read_text())
    return tracemalloc.Snapshot.load(str(wait_for(folder / f"{stem}.snap"))), types


def push_manifests(base: str, count: int) -> None:
    with requests.Session() as s:
        s.trust_env = False
        config = b'{"architecture":"amd64","os":"linux"}'
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        url = f"{base}/v2/acme/prod/dump/blobs/uploads/?digest={digest}"
        assert s.post(url, data=config, timeout=30).status_code == 201
        for index in range(count):
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": digest,
                        "size": len(config),
                    },
                    "layers": [],
                    "annotations": {"n": str(index), "pad": "x" * 2000},
                }
            ).encode()
            put = s.put(
                f"{base}/v2/acme/prod/dump/manifests/t{index}",
                data=manifest,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                timeout=30,
            )
            assert put.status_code == 201, put.text


def dumping_server(tmp_path: Path, variables: dict[str, str]) -> tuple[RegistryServer, Path]:
    """A started server on a fresh local store that dumps into ``tmp_path/dumps``."""
    folder = tmp_path / "dumps"
    store = tmp_path / "store"
    store.mkdir()
    env = {memory_dump.DUMP_DIR_VARIABLE: str(folder), **variables}
    server = RegistryServer(f"file://{store}", env=env, workdir=tmp_path)
    server.start()
    return server, folder


def test_sigusr2_dumps_show_where_the_heap_grew_between_two_points(tmp_path: Path) -> None:
    server, folder = dumping_server(tmp_path, {memory_dump.FRAMES_VARIABLE: "32"})
    try:
        before, before_types = dump(server, folder, 1)
        push_manifests(server.url, MANIFESTS)
        after, after_types = dump(server, folder, 2)
        assert server.proc is not None and server.proc.poll() is None, "SIGUSR2 ended it"
    finally:
        server.stop()

    assert before.traceback_limit == 32
    assert before_types["blocks"] > 0 and after_types["types"]
    counted = dict(after_types["types"])
    assert counted.get("builtins.dict", 0) > 0
    # The pushed manifests (each over 2 KB) stay in the manifest cache: compared by
    # traceback, the largest growth is their bodies, allocated where the HTTP parser
    # read them, at least one block a manifest.
    grown = after.compare_to(before, "traceback")[0]
    assert grown.size_diff >= MANIFESTS * 2000, grown
    assert grown.count_diff >= MANIFESTS, grown
    assert any(frame.filename.endswith("aiohttp/web_protocol.py") for frame in grown.traceback)
    # The comparison the soak prints (python -m registry_server.memory_dump A B) names it.
    report = memory_dump.compare(folder / f"{server.pid}-1", folder / f"{server.pid}-2")
    head, first = report.splitlines()[:2]
    assert head.startswith("traced "), report
    assert first.startswith(f"{grown.size_diff / 1024:+.1f} KiB in {grown.count_diff:+d} blocks")
    assert "aiohttp/web_protocol.py" in report
    assert f"allocated blocks {before_types['blocks']} -> {after_types['blocks']}" in report


def test_nothing_is_traced_or_handled_without_the_variable(monkeypatch) -> None:
    monkeypatch.delenv(memory_dump.DUMP_DIR_VARIABLE, raising=False)
    loop = asyncio.new_event_loop()
    try:
        assert memory_dump.install(loop) is None
        assert not tracemalloc.is_tracing()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        loop.close()


def test_untraced_dumps_give_both_allocators_figures(tmp_path: Path) -> None:
    """With tracing off (CARGOHOLD_MEMORY_DUMP_TRACE=0) a dump has no snapshot but says what
    pymalloc and glibc hold: RSS that grows while Python's objects stay level sits in one
    of them, and these figures say which (issue 14's soak)."""
    server, folder = dumping_server(tmp_path, {memory_dump.TRACE_VARIABLE: "0"})
    try:
        os.kill(server.pid, signal.SIGUSR2)
        first = json.loads(wait_for(folder / f"{server.pid}-1.types.json").read_text())
        push_manifests(server.url, MANIFESTS)
        os.kill(server.pid, signal.SIGUSR2)
        second = json.loads(wait_for(folder / f"{server.pid}-2.types.json").read_text())
        assert server.proc is not None and server.proc.poll() is None, "SIGUSR2 ended it"
    finally:
        server.stop()
    assert not list(folder.glob("*.snap"))
    for figures in (first, second):
        pymalloc, glibc = figures["pymalloc"], figures["glibc"]
        assert pymalloc["arenas allocated current"] >= 1
        assert pymalloc["bytes in allocated blocks"] > 1_000_000  # a server's modules, at least
        assert glibc["arena"] >= glibc["uordblks"] > 0
    # The manifest bodies the cache keeps (each over 2 KB) are glibc's, not pymalloc's.
    assert second["glibc"]["uordblks"] - first["glibc"]["uordblks"] >= MANIFESTS * 2000
    report = memory_dump.compare(folder / f"{server.pid}-1", folder / f"{server.pid}-2")
    assert not report.startswith("traced ")
    assert "glibc uordblks: " in report
