"""A/B of manifest PUT cost between checkouts: server CPU per PUT and p99, alternating.

``python -m benchmarks.manifest_ab /work/main /work/wt-mput4 --count 200 --runs 8``

Each checkout's own ``.venv/bin/cargohold`` serves a fresh local folder with
``--workers 1`` (as ``benchmarks.upload_ab`` starts them); all are up at once and every
round PUTs *count* distinct manifests by tag at concurrency 16 to each (the
``manifest-push`` workload's shape), rotating which goes first, so that foreign load on a
shared machine falls on all of them alike. CPU is the server threads' ``schedstat`` run
time. Throughput under foreign load mostly measures the scheduler: decide on CPU per PUT,
and take throughput from ``benchmarks.run`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time

from .client import SmallImage, gather_limited, put_manifest, session
from .harness import ProcTree, loadavg
from .upload_ab import Served, _quartiles, cpu_seconds, start

REPO = "bench/manifests/ab"
CONCURRENCY = 16


async def _push(server: Served, image: SmallImage, count: int, run: int) -> list[float]:
    nonce = os.urandom(8).hex()
    bodies = [image.manifest(run=nonce, index=str(i)) for i in range(count)]
    latencies: list[float] = []
    async with session(CONCURRENCY) as http:

        async def one(i: int, body: bytes) -> None:
            began = time.perf_counter()
            await put_manifest(http, server.url, REPO, f"r{run}-{i}", body)
            latencies.append(time.perf_counter() - began)

        await gather_limited(
            CONCURRENCY, [lambda i=i, b=b: one(i, b) for i, b in enumerate(bodies)]
        )
    return latencies


async def _setup(server: Served, image: SmallImage) -> None:
    async with session(4) as http:
        await image.push_blobs(http, server.url, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="folders with a .venv (PATH[@VAR=VALUE])")
    parser.add_argument("--count", type=int, default=200, help="manifests per round")
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    image = SmallImage.make()
    scratch = tempfile.mkdtemp(prefix="manifest-ab-")
    servers = [start(name, scratch) for name in args.checkouts]
    rows: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            asyncio.run(_setup(server, image))
        for run in range(args.runs):
            order = servers[run % len(servers) :] + servers[: run % len(servers)]
            for server in order:
                pids = ProcTree(server.process.pid).pids()
                cpu, began = cpu_seconds(pids), time.monotonic()
                latencies = asyncio.run(_push(server, image, args.count, run))
                wall = time.monotonic() - began
                per_put = 1000 * (cpu_seconds(pids) - cpu) / args.count
                p99 = 1000 * statistics.quantiles(latencies, n=100)[98]
                rows[server.name].append((per_put, args.count / wall, p99))
                print(
                    f"run {run} {server.name}: {per_put:.2f} CPU ms/PUT, "
                    f"{args.count / wall:.0f} PUT/s, p99 {p99:.1f} ms, load {loadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        for server in servers:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait()
    print(f"medians of {args.runs} rounds of {args.count} PUTs:")
    for server in servers:
        data = rows[server.name]
        print(
            f"  {server.name}: {statistics.median(r[0] for r in data):.2f} CPU ms/PUT "
            f"(quartiles {_quartiles([r[0] for r in data])}), "
            f"{statistics.median(r[1] for r in data):.0f} PUT/s, "
            f"p99 {statistics.median(r[2] for r in data):.1f} ms"
        )


if __name__ == "__main__":
    main()
