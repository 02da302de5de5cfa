"""Where an upload's time goes: CPU per GiB of each stage, and how much the stages overlap.

``python -m benchmarks.upload_stages /work/main --size 256 --runs 3``

One checkout's ``cargohold serve --workers 1`` (as ``upload_ab`` starts it) takes
monolithic and chunked uploads from this process, while a sampler thread reads every
thread's ``schedstat`` each ``--interval`` seconds. The stages are the server's event
loop thread (receiving and parsing the body), its pool threads (writing and hashing
each batch) and the client's sending thread. Per upload it reports each stage's CPU
per GiB, how busy each was over the upload's wall time, and the share of the wall
time both server stages ran at once (a timeline of ``min(loop, pool)`` per interval):
a pipelined upload has the two overlapping, a serial one has them alternate.

It also prints the bounds that a 2-core machine sets, from the same run:
``cores / (server + client CPU per GiB)`` (every core busy, nothing else running),
the same with the machine's other busy time counted (``/proc/stat`` minus these
threads: loopback softirqs and writeback charged to no thread, and foreign jobs) and
``1 / max(stage CPU per GiB)`` (each stage on a core of its own), each as a share of
one core's SHA-256 rate measured here first, the ratio the issue's gate uses.
Numbers under foreign load are the scheduler's: report the load average beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry_core.storage.layout import ROOT

from .client import Blob, BlobSource, GiB, MiB
from .harness import ProcTree, loadavg, machine_busy_seconds
from .upload_ab import KINDS, REPO, start

SHA_BUFFER = 256 * MiB


def sha256_mib_s(source: BlobSource, runs: int = 3) -> float:
    """One core's hashlib SHA-256 rate over a large buffer (as ``benchmarks.limits``)."""
    buf = bytearray(SHA_BUFFER)
    for i in range(0, SHA_BUFFER, len(source.buffer)):
        buf[i : i + len(source.buffer)] = source.buffer
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        hashlib.sha256(buf).digest()
        rates.append(SHA_BUFFER / MiB / (time.perf_counter() - began))
    return statistics.median(rates)


def _run_ns(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # the thread ended


class Sampler:
    """Samples the run time of the server's loop and pool threads and of the client."""

    def __init__(self, server_pids: list[int], client_tid: int, interval: float) -> None:
        self._server_pids = server_pids
        self._client = f"/proc/{os.getpid()}/task/{client_tid}/schedstat"
        self._interval = interval
        self._stop = threading.Event()
        self.totals = {"loop": 0.0, "pool": 0.0, "client": 0.0}
        self.both = 0.0
        """Seconds during which the loop and the pool threads ran at the same time."""
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _read(self) -> dict[str, dict[str, int]]:
        seen: dict[str, dict[str, int]] = {"loop": {}, "pool": {}, "client": {}}
        for pid in self._server_pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                ns = _run_ns(f"/proc/{pid}/task/{tid}/schedstat")
                if ns is not None:
                    seen["loop" if int(tid) == pid else "pool"][tid] = ns
        ns = _run_ns(self._client)
        if ns is not None:
            seen["client"]["client"] = ns
        return seen

    def _run(self) -> None:
        before, then = self._read(), time.monotonic()
        while True:
            stopping = self._stop.wait(self._interval)
            now, after = time.monotonic(), self._read()
            span = now - then
            busy = {}
            for stage, threads in after.items():
                spent = sum(ns - before[stage].get(tid, ns) for tid, ns in threads.items()) / 1e9
                self.totals[stage] += spent
                busy[stage] = min(1.0, spent / span) if span > 0 else 0.0
            self.both += min(busy["loop"], busy["pool"]) * span
            before, then = after, now
            if stopping:
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Row:
    kind: str
    mib_s: float
    loop: float
    pool: float
    client: float
    busy_loop: float
    busy_pool: float
    overlap: float
    other: float = 0.0
    """CPU s/GiB the machine spent beyond these threads (loopback softirqs charged to no
    thread, writeback; and any foreign job: read it only from a quiet machine)."""

    @property
    def server(self) -> float:
        return self.loop + self.pool


def measure(url: str, pids: list[int], kind: str, blob: Blob, interval: float) -> Row:
    """Upload *blob* the *kind* way while sampling; the stages' figures for it."""
    upload: Callable[..., None] = KINDS[kind]
    gib = blob.size / GiB
    busy = machine_busy_seconds()
    with Sampler(pids, threading.get_native_id(), interval) as sampler:
        began = time.monotonic()
        upload(url, REPO, blob)
        wall = time.monotonic() - began
    t = sampler.totals
    other = max(0.0, machine_busy_seconds() - busy - sum(t.values()))
    return Row(
        kind,
        blob.size / MiB / wall,
        t["loop"] / gib,
        t["pool"] / gib,
        t["client"] / gib,
        t["loop"] / wall,
        t["pool"] / wall,
        sampler.both / wall,
        other / gib,
    )


@dataclass
class Summary:
    mib_s: float
    server: float
    loop: float
    pool: float
    client: float
    other: float
    hash: float
    """CPU seconds per GiB that SHA-256 alone takes at the probe's rate (part of ``pool``)."""
    overlap: float
    all_cores: float
    """MiB/s with every core busy on this upload's server and client, nothing else."""
    own_cores: float
    """MiB/s with each stage on a core of its own: the slowest one sets the pace."""
    all_cores_other: float
    """``all_cores`` with the machine's other CPU per GiB counted too (quiet machine only)."""


def summarize(rows: list[Row], sha_mib_s: float, cores: int) -> Summary:
    """Medians of *rows* and the two bounds they imply."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    server, client = med([r.server for r in rows]), med([r.client for r in rows])
    other = med([r.other for r in rows])
    return Summary(
        mib_s=med([r.mib_s for r in rows]),
        server=server,
        loop=med([r.loop for r in rows]),
        pool=med([r.pool for r in rows]),
        client=client,
        other=other,
        hash=1024 / sha_mib_s,
        overlap=med([r.overlap for r in rows]),
        all_cores=cores * 1024 / (server + client),
        own_cores=1024 / med([max(r.loop, r.pool, r.client) for r in rows]),
        all_cores_other=cores * 1024 / (server + client + other),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", help="a folder with a .venv (PATH[@VAR=VALUE])")
    parser.add_argument("--size", type=int, default=256, help="MiB per upload (multiple of 8)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="mono,chunked")
    parser.add_argument("--interval", type=float, default=0.005, help="sampling seconds")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    source = BlobSource()
    sha = sha256_mib_s(source)
    print(f"sha256 one core: {sha:.0f} MiB/s, load {loadavg()[0]:.1f}", flush=True)
    scratch = tempfile.mkdtemp(prefix="upload-stages-")
    served = start(args.checkout, scratch)
    rows: list[Row] = []
    try:
        pids = ProcTree(served.process.pid).pids()
        # A warm-up upload: the first one pays for imports, the page cache and the pool.
        measure(served.url, pids, "mono", source.blob(64 * MiB, os.urandom(16)), args.interval)
        for run in range(args.runs):
            for kind in args.kinds.split(","):
                blob = source.blob(args.size * MiB, os.urandom(16))
                row = measure(served.url, pids, kind, blob, args.interval)
                rows.append(row)
                print(
                    f"run {run} {kind:7}: {row.mib_s:.0f} MiB/s ({row.mib_s / sha:.0%} of sha256);"
                    f" CPU s/GiB loop {row.loop:.2f} pool {row.pool:.2f} client {row.client:.2f}"
                    f" other {row.other:.2f};"
                    f" busy loop {row.busy_loop:.0%} pool {row.busy_pool:.0%},"
                    f" both {row.overlap:.0%}; load {loadavg()[0]:.1f}",
                    flush=True,
                )
                shutil.rmtree(f"{served.store}/{ROOT}/blobs", ignore_errors=True)
    finally:
        os.killpg(served.process.pid, signal.SIGTERM)
        served.process.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"medians of {args.runs}, {args.size} MiB per upload, sha256 {sha:.0f} MiB/s:")
    for kind in args.kinds.split(","):
        m = summarize([r for r in rows if r.kind == kind], sha, args.cores)
        print(
            f"  {kind:7}: {m.mib_s:.0f} MiB/s = {m.mib_s / sha:.0%} of sha256; server "
            f"{m.server:.2f} CPU s/GiB (loop {m.loop:.2f}, pool {m.pool:.2f} of which sha256 "
            f"{m.hash:.2f}), client {m.client:.2f}, machine other {m.other:.2f}; both server "
            f"stages busy {m.overlap:.0%} "
            f"of the time\n"
            f"           bounds: {args.cores} cores all busy {m.all_cores:.0f} MiB/s "
            f"({m.all_cores / sha:.0%}), each stage on its own core {m.own_cores:.0f} MiB/s "
            f"({m.own_cores / sha:.0%}); all cores busy, other CPU counted "
            f"{m.all_cores_other:.0f} MiB/s ({m.all_cores_other / sha:.0%})"
        )


if __name__ == "__main__":
    main()
