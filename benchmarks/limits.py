"""The machine's own limits, measured in the same benchmark run.

- ``sha256_mib_s``: hashlib.sha256 over a big buffer on one core (what an
  upload that verifies its digest can reach at best on one core);
- ``disk_write_mib_s``: a dd-like write of 1 GiB (256 MiB in quick mode) in
  8 MiB writes plus fsync, to the filesystem the registries store on, and
  ``disk_write_cpu_s_per_gib``, the writing thread's CPU for it (what the
  kernel charges a server for the bytes it writes, before any hashing);
- ``nginx_sendfile_mib_s[SIZE]``: nginx (sendfile on) serving a file of each
  blob size over loopback, read by the same client as the download workload;
- ``nginx_small_req_s``: wrk against nginx serving a manifest-sized static file
  with the same script, connections and threads as the manifest GET workload
  (shows the load generator's ceiling is far above the servers' numbers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from .client import Conn, GiB, MiB, SmallImage, timed
from .harness import Nginx, log
from .workloads.blobs import size_label
from .wrk import run_wrk

if TYPE_CHECKING:
    from .run import Context

SHA_BUFFER = 256 * MiB
SHA_RUNS = 5


def summary(values: list[float], unit: str, **extra: Any) -> dict[str, Any]:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    spread = (ordered[-1] - ordered[0]) / median if median else 0.0
    return {
        "unit": unit,
        "runs": values,
        "median": median,
        "min": ordered[0],
        "max": ordered[-1],
        "spread": spread,
        **extra,
    }


def sha256_rate(ctx: Context) -> dict[str, Any]:
    buf = bytearray(SHA_BUFFER)
    for i in range(0, SHA_BUFFER, len(ctx.blobs.buffer)):
        buf[i : i + len(ctx.blobs.buffer)] = ctx.blobs.buffer
    values = []
    for _ in range(SHA_RUNS):
        seconds, _ = timed(lambda: hashlib.sha256(buf).digest())
        values.append(SHA_BUFFER / MiB / seconds)
    return summary(values, "MiB/s", buffer_mib=SHA_BUFFER // MiB)


def disk_write_rate(ctx: Context) -> dict[str, Any]:
    size = ctx.disk_write_size
    path = ctx.workdir / "disk-write.bin"
    values, cpu = [], []
    view = memoryview(ctx.blobs.buffer)
    for _ in range(ctx.runs):
        cpu0 = time.thread_time()
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(size // len(view)):
                os.write(fd, view)
            os.fsync(fd)
        finally:
            os.close(fd)
        values.append(size / MiB / (time.perf_counter() - start))
        cpu.append((time.thread_time() - cpu0) / (size / GiB))
        path.unlink()
    return summary(values, "MiB/s", size_mib=size // MiB), summary(cpu, "s/GiB")


async def nginx_limits(ctx: Context) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    nginx = Nginx(ctx.workdir / "nginx")
    small = SmallImage.make().manifest(purpose="manifest-get")
    (nginx.storage / "manifest.json").write_bytes(small)
    try:
        nginx.start()
        for size in ctx.blob_sizes:
            name = f"blob-{size}"
            blob = ctx.blobs.blob(size, ctx.download_suffix)
            await asyncio.to_thread(blob.write_to, str(nginx.storage / name))

            def get(name: str = name) -> int:
                conn = Conn(nginx.url)
                try:
                    return conn.download("/" + name)
                finally:
                    conn.close()

            await asyncio.to_thread(get)  # page cache warm, like the registries' blobs
            values = []
            for _ in range(ctx.runs):
                seconds, got = await asyncio.to_thread(timed, get)
                assert got == size
                values.append(size / MiB / seconds)
            results[f"nginx_sendfile_mib_s[{size_label(size)}]"] = summary(values, "MiB/s")
            (nginx.storage / name).unlink()
        values, raw = [], []
        for _ in range(ctx.runs):
            out = await run_wrk(
                f"{nginx.url}/manifest.json",
                connections=64,
                threads=ctx.wrk_threads,
                duration=ctx.get_duration,
            )
            raw.append(out)
            values.append(out["req_s"])
        results["nginx_small_req_s"] = summary(
            values, "req/s", file_bytes=len(small), errors=sum(r["errors"] for r in raw)
        )
    finally:
        nginx.stop()
    return results


async def measure(ctx: Context, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Every limit; one that cannot be measured becomes a note, not a failed run."""
    limits: dict[str, dict[str, Any]] = {}
    log("limits: sha256 of one core")
    try:
        limits["sha256_mib_s"] = await asyncio.to_thread(sha256_rate, ctx)
        log(f"limits: disk write {ctx.disk_write_size // MiB} MiB + fsync")
        rate, cpu = await asyncio.to_thread(disk_write_rate, ctx)
        limits["disk_write_mib_s"] = rate
        limits["disk_write_cpu_s_per_gib"] = cpu
        log("limits: nginx sendfile and small-file req/s")
        limits.update(await nginx_limits(ctx))
    except Exception as exc:
        notes.append(f"measuring the machine limits failed: {type(exc).__name__}: {exc}")
        log(notes[-1])
    return limits


LABELS = {
    "sha256_mib_s": "sha256, one core (hashlib)",
    "disk_write_mib_s": "disk write + fsync",
    "disk_write_cpu_s_per_gib": "CPU of that write (kernel page cache + fsync)",
    "nginx_sendfile_mib_s": "nginx sendfile GET",
    "nginx_small_req_s": "nginx small static file (wrk)",
}
