"""``cargohold gc`` and ``cargohold scrub`` as processes on a local store: dry runs, real runs,
kill -9 in the middle of a run, and a corrupt blob found and repaired."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from drivers.local import LocalDriver
from registry_core import Digest, Registry
from registry_core.jobs import Leases
from registry_core.storage import layout
from tests.gc_support import blob_present, image, image_complete, push_blob, push_image
from tests.helpers.images import Blob
from tests.helpers.server import REPO_ROOT

REPO = "acme/prod/app"
GC = [sys.executable, "-m", "registry_server", "gc"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def cargohold(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry_server", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def populate(store: Path, kept: int = 2, stray: int = 40) -> tuple[list[str], list[str]]:
    """Tagged images (kept) and unreferenced blobs (garbage); returns (tags, stray digests)."""

    async def go() -> tuple[list[str], list[str]]:
        registry = Registry(LocalDriver(str(store)))
        tags = []
        for n in range(kept):
            await push_image(registry, REPO, image(f"cli-{n}"), tag=f"v{n}")
            tags.append(f"v{n}")
        strays = []
        for n in range(stray):
            blob = Blob("application/octet-stream", f"stray blob {n} ".encode() * 100)
            await push_blob(registry, REPO, blob)
            strays.append(blob.digest)
        return tags, strays

    return asyncio.run(go())


def check_store(store: Path, tags: list[str], gone: list[str] | None = None) -> None:
    async def go() -> None:
        registry = Registry(LocalDriver(str(store)))
        for tag in tags:
            assert await image_complete(registry, REPO, tag), tag
        for digest in gone or []:
            assert not await blob_present(registry, digest), digest

    asyncio.run(go())


def test_gc_dry_run_lists_what_the_real_run_deletes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tags, strays = populate(store, stray=5)
    dry = cargohold("gc", "--storage", str(store), "--grace", "0s", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert sorted(d["digest"] for d in would["deleted"]) == sorted(strays)
    real = cargohold("gc", "--storage", str(store), "--grace", "0s", "--settle", "0s", "--json")
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["deleted"] == would["deleted"]
    assert done["bytes_deleted"] == would["bytes_deleted"] > 0
    check_store(store, tags, gone=strays)


def test_gc_prints_bytes_objects_and_duration(tmp_path: Path) -> None:
    store = tmp_path / "store"
    populate(store, stray=3)
    result = cargohold("gc", "--storage", str(store), "--grace", "0s", "--settle", "0s")
    assert result.returncode == 0, result.stderr
    assert "deleted 3 of" in result.stdout
    assert "storage requests" in result.stdout and "mark" in result.stdout


def test_gc_keeps_young_blobs_by_default(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _, strays = populate(store, stray=2)
    result = cargohold("gc", "--storage", str(store), "--settle", "0s", "--json")
    assert json.loads(result.stdout)["blobs_deleted"] == 0
    check_store(store, [], gone=[])
    assert (store / layout.blob_data(Digest.parse(strays[0]))).exists()


def _kill_when(
    proc: subprocess.Popen[str], ready: Callable[[], bool], deadline: float = 60.0
) -> None:
    end = time.monotonic() + deadline
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the run never reached the point to kill it at"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _start_gc(store: Path, settle: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GC, "--storage", str(store), "--grace", "0s", "--settle", settle],
        env=cli_env(CARGOHOLD_GC_LEASE_TTL="2s"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish_after_kill(store: Path, tags: list[str], strays: list[str]) -> None:
    check_store(store, tags)  # consistent right after the kill
    result = cargohold(
        "gc",
        "--storage",
        str(store),
        "--grace",
        "0s",
        "--settle",
        "0s",
        "--wait",
        "30s",
        "--json",
        CARGOHOLD_GC_LEASE_TTL="2s",
    )
    assert result.returncode == 0, result.stderr
    check_store(store, tags, gone=strays)
    assert not any(p.is_file() for p in (store / layout.gc_trash_dir()).rglob("*"))


def test_kill_9_during_the_sweep_leaves_storage_consistent(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tags, strays = populate(store)
    trash = store / layout.gc_trash_dir()
    proc = _start_gc(store, settle="30s")
    # Killed while blobs sit in the trash, links already removed (the settle window).
    _kill_when(proc, lambda: trash.exists() and any(p.is_file() for p in trash.rglob("*")))
    _finish_after_kill(store, tags, strays)


def test_kill_9_during_the_mark_leaves_storage_consistent(tmp_path: Path) -> None:
    store = tmp_path / "store"
    tags, strays = populate(store, stray=400)
    lease = store / layout.job_lease_dir("gc")
    proc = _start_gc(store, settle="30s")
    # The lease is the run's first write; the mark follows at once.
    _kill_when(proc, lambda: lease.exists() and any(lease.iterdir()))
    _finish_after_kill(store, tags, strays)


def test_scrub_finds_a_corrupt_blob_and_repair_makes_it_a_clean_404(tmp_path: Path) -> None:
    store = tmp_path / "store"
    img = image("scrub-cli")

    async def push() -> None:
        await push_image(Registry(LocalDriver(str(store))), REPO, img, tag="1.0")

    asyncio.run(push())
    path = store / layout.blob_data(Digest.parse(img.layers[0].digest))
    path.write_bytes(path.read_bytes()[:-10])  # truncated, as by an old crash
    found = cargohold("scrub", "--storage", str(store))
    assert found.returncode == 3, found.stderr
    assert "blob-corrupt: stored bytes hash to" in found.stdout
    repaired = cargohold("scrub", "--storage", str(store), "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "(repaired)" in repaired.stdout
    clean = cargohold("scrub", "--storage", str(store))
    assert clean.returncode == 0 and "0 problem(s)" in clean.stdout


def test_worker_runs_the_scheduled_gc_at_lower_priority_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    tags, strays = populate(store, stray=3)
    worker = subprocess.Popen(
        [sys.executable, "-m", "registry_server", "worker", "--storage", str(store)],
        env=cli_env(CARGOHOLD_GC_INTERVAL="1s", CARGOHOLD_GC_GRACE="0s", CARGOHOLD_GC_SETTLE="0s"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        blob = store / layout.blob_data(Digest.parse(strays[0]))
        deadline = time.monotonic() + 60
        while blob.exists():
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker never collected"
            time.sleep(0.2)
        # [gc] nice (10): batch work yields the CPU to serving processes.
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, own + 10)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "worker running gc" in err
    check_store(store, tags, gone=strays)


def test_gc_refuses_to_run_while_another_process_holds_the_lease(tmp_path: Path) -> None:
    store = tmp_path / "store"
    populate(store, stray=1)

    async def hold() -> None:
        await Leases(LocalDriver(str(store)), "elsewhere:1").acquire("gc", ttl=300)

    asyncio.run(hold())
    result = cargohold("gc", "--storage", str(store), "--grace", "0s", "--settle", "0s")
    assert result.returncode == 1
    assert "running elsewhere (holder elsewhere:1)" in result.stderr


def test_gc_last_shows_the_report_of_the_last_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    populate(store, stray=2)
    assert cargohold("gc", "--storage", str(store), "--last").returncode == 1
    cargohold("gc", "--storage", str(store), "--grace", "0s", "--settle", "0s")
    last = cargohold("gc", "--storage", str(store), "--last")
    assert last.returncode == 0, last.stderr
    assert json.loads(last.stdout)["blobs_deleted"] == 2
