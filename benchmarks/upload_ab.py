"""A/B of upload cost between checkouts: server CPU per GiB, one worker each, alternating.

``python -m benchmarks.upload_ab /work/main /work/wt-upl3 --size 64 --runs 16``

Each checkout's own ``.venv/bin/cargohold`` serves a fresh local folder with
``--workers 1``; all of them are up at once and every round uploads one blob to each
(monolithic PUT, then 8 MiB PATCHes), rotating which goes first, so that foreign load
on a shared machine falls on all of them alike. CPU is the sum of the server's
threads' ``schedstat`` run time (nanoseconds; ``/proc/PID/stat`` ticks are 10 ms, too
coarse for a 64 MiB upload); context switches per MiB come from the threads'
``status``. Throughput under foreign load mostly measures the scheduler: decide on
CPU per GiB, and take throughput from ``benchmarks.run`` on a quiet machine.
A name ``PATH@VAR=VALUE`` runs that checkout with an environment variable set.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from registry_core.storage.layout import ROOT

from .client import BlobSource, GiB, MiB, upload_chunked, upload_monolithic, upload_streamed
from .harness import ProcTree, free_port, loadavg

REPO = "bench/blobs/ab"
KINDS: dict[str, Callable[..., None]] = {
    "mono": upload_monolithic,
    "chunked": upload_chunked,
    "streamed": upload_streamed,
}


def _thread_files(pids: list[int], name: str) -> list[str]:
    return [f for pid in pids for f in glob.glob(f"/proc/{pid}/task/*/{name}")]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for path in _thread_files(pids, "schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def context_switches(pids: list[int]) -> int:
    total = 0
    for path in _thread_files(pids, "status"):
        try:
            with open(path) as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            continue
    return total


@dataclass
class Served:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    store: str
    results: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)


def start(name: str, scratch: str) -> Served:
    checkout, *settings = name.split("@")
    env = dict(os.environ, CARGOHOLD_AUTH_ENABLED="false")
    env.update(setting.split("=", 1) for setting in settings)
    store = tempfile.mkdtemp(prefix="store-", dir=scratch)
    port = free_port()
    command = [
        f"{checkout}/.venv/bin/cargohold",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--storage",
        f"file://{store}",
        "--workers",
        "1",
    ]
    with open(f"{store}.log", "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} did not start (see {store}.log)") from None
            time.sleep(0.1)
    return Served(name, process, url, store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", help="folders with a .venv (PATH[@VAR=VALUE])")
    parser.add_argument("--size", type=int, default=64, help="MiB per upload (multiple of 8)")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--kinds", default="mono,chunked")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    size = args.size * MiB
    blobs = BlobSource()
    scratch = tempfile.mkdtemp(prefix="upload-ab-")
    servers = [start(name, scratch) for name in args.checkouts]
    try:
        for run in range(args.runs):
            order = servers[run % len(servers) :] + servers[: run % len(servers)]
            for kind in kinds:
                for server in order:
                    blob = blobs.blob(size, os.urandom(16))
                    pids = ProcTree(server.process.pid).pids()
                    cpu, switches, began = (
                        cpu_seconds(pids),
                        context_switches(pids),
                        time.monotonic(),
                    )
                    KINDS[kind](server.url, REPO, blob)
                    wall = time.monotonic() - began
                    per_gib = (cpu_seconds(pids) - cpu) / (size / GiB)
                    per_mib = (context_switches(pids) - switches) / (size / MiB)
                    server.results.setdefault(kind, []).append(
                        (per_gib, size / MiB / wall, per_mib)
                    )
                    print(
                        f"run {run} {kind:7} {server.name}: {per_gib:.2f} CPU s/GiB, "
                        f"{size / MiB / wall:.0f} MiB/s, {per_mib:.1f} switches/MiB, "
                        f"load {loadavg()[0]:.1f}",
                        flush=True,
                    )
                    shutil.rmtree(f"{server.store}/{ROOT}/blobs", ignore_errors=True)
    finally:
        for server in servers:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"medians of {args.runs}, {args.size} MiB per upload:")
    for kind in kinds:
        for server in servers:
            rows = server.results.get(kind, [])
            print(
                f"  {kind:7} {server.name}: "
                f"{statistics.median(r[0] for r in rows):.2f} CPU s/GiB "
                f"(quartiles {_quartiles([r[0] for r in rows])}), "
                f"{statistics.median(r[1] for r in rows):.0f} MiB/s, "
                f"{statistics.median(r[2] for r in rows):.1f} switches/MiB"
            )


def _quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.2f}-{q3:.2f}"


if __name__ == "__main__":
    main()
