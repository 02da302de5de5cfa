"""A/B of small-blob push cost between checkouts: server CPU per push, one worker each.

``python -m benchmarks.small_ab /work/main /work/wt-small4 --count 500 --runs 6``

Like :mod:`benchmarks.upload_ab` (whose server start-up and CPU accounting it uses):
each checkout's own ``cargohold serve --workers 1`` on a fresh local folder, all up at
once, and every round pushes *count* 4 KiB blobs (HEAD + POST + PUT, as
``benchmarks.run``'s small-blobs workload) to each, rotating which goes first, so
foreign load on a shared machine falls on all of them alike. Decide on server CPU per
push; pushes/s and p99 under foreign load mostly measure the scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import time

from .client import gather_limited, push_blob, session
from .harness import ProcTree, loadavg
from .upload_ab import Served, cpu_seconds, start

BLOB = 4096


async def _push_all(url: str, repo: str, count: int, concurrency: int) -> list[float]:
    latencies: list[float] = []

    async def one(data: bytes) -> None:
        began = time.perf_counter()
        await push_blob(http, url, repo, data)
        latencies.append(time.perf_counter() - began)

    async with session(concurrency) as http:
        bodies = [os.urandom(BLOB) for _ in range(count)]
        await gather_limited(concurrency, [lambda d=d: one(d) for d in bodies])
    return latencies


def _round(server: Served, run: int, count: int, concurrency: int) -> tuple[float, float, float]:
    pids = ProcTree(server.process.pid).pids()
    cpu, began = cpu_seconds(pids), time.monotonic()
    latencies = asyncio.run(_push_all(server.url, f"bench/small/r{run}", count, concurrency))
    wall = time.monotonic() - began
    per_push_ms = (cpu_seconds(pids) - cpu) / count * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return per_push_ms, count / wall, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="folders with a .venv (PATH[@VAR=VALUE])")
    parser.add_argument("--count", type=int, default=500, help="pushes per round and server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="small-ab-")
    servers = [start(name, scratch) for name in args.checkouts]
    results: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in servers}
    try:
        for server in servers:  # warm-up: imports, first folders
            asyncio.run(_push_all(server.url, "bench/small/warm", 32, args.concurrency))
        for run in range(args.runs):
            order = servers[run % len(servers) :] + servers[: run % len(servers)]
            for server in order:
                row = _round(server, run, args.count, args.concurrency)
                results[server.name].append(row)
                print(
                    f"run {run} {server.name}: {row[0]:.3f} ms CPU/push, {row[1]:.0f} pushes/s, "
                    f"p99 {row[2]:.1f} ms, load {loadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        for server in servers:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"medians of {args.runs} rounds of {args.count} pushes at concurrency {args.concurrency}:"
    )
    for name, rows in results.items():
        print(
            f"  {name}: {statistics.median(r[0] for r in rows):.3f} ms CPU/push, "
            f"{statistics.median(r[1] for r in rows):.0f} pushes/s, "
            f"p99 {statistics.median(r[2] for r in rows):.1f} ms"
        )


if __name__ == "__main__":
    main()
