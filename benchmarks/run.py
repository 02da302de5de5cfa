"""``python -m benchmarks.run``: Cargohold and CNCF Distribution, side by side.

Installs what it needs (Debian docker-registry, wrk, nginx, skopeo, if missing),
measures the machine's limits, then for every workload case starts a fresh
Cargohold and a fresh Distribution on 127.0.0.1 (free ports, empty local-folder
storage, no auth), runs the same workload against both ``--runs`` times,
alternating which goes first, and writes ``benchmarks/results/latest.json``,
``latest.md`` and ``latest.png``. Everything it started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import limits, profile
from .client import BlobSource, GiB, MiB
from .harness import (
    REPO_ROOT,
    Cargohold,
    CargoholdOneWorker,
    Distribution,
    Server,
    ServerError,
    cargohold_supports_workers,
    ensure_packages,
    loadavg,
    log,
    machine_busy_seconds,
    moto_available,
    tool_versions,
)
from .workloads import COMMON_METRICS, WORKLOADS, CaseResult, Workload

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER_KINDS = ("cargohold", "cargohold-1", "distribution")
SERVER_CLASSES: dict[str, type[Server]] = {
    "cargohold": Cargohold,
    "cargohold-1": CargoholdOneWorker,
    "distribution": Distribution,
}


@dataclass
class Context:
    """Everything a workload may read: mode, sizes, counts, the limits measured."""

    quick: bool
    runs: int
    workdir: Path
    seed: int = 6
    workers: int | None = None
    one_worker: bool = True
    blob_sizes: list[int] = field(default_factory=list)
    get_duration: float = 10.0
    wrk_threads: int = 1
    small_blob_count: int = 500
    manifest_push_count: int = 200
    tag_count: int = 1000
    repo_count: int = 500
    listing_requests: int = 50
    image_layers: int = 5
    image_layer_mib: tuple[int, int] = (8, 32)
    disk_write_size: int = GiB
    blobs: BlobSource = field(default_factory=BlobSource)
    download_suffix: bytes = b"download-suffix!"
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile_dir: Path | None = None

    @classmethod
    def create(cls, args: argparse.Namespace, workdir: Path) -> Context:
        ctx = cls(quick=args.quick, runs=args.runs or 3, workdir=workdir, workers=args.workers)
        ctx.one_worker = not args.no_one_worker
        if args.quick:
            ctx.blob_sizes = [64 * MiB]
            ctx.get_duration = 3.0
            ctx.small_blob_count = 200
            ctx.manifest_push_count = 100
            ctx.tag_count = 200
            ctx.repo_count = 60
            ctx.listing_requests = 20
            ctx.image_layers = 3
            ctx.image_layer_mib = (2, 8)
            ctx.disk_write_size = 256 * MiB
        else:
            ctx.blob_sizes = [256 * MiB, GiB]
        if args.duration:
            ctx.get_duration = args.duration
        ctx.wrk_threads = args.wrk_threads
        ctx.profile_dir = args.profile
        return ctx

    def start_service(self, service: Server, timeout: float = 60.0) -> Server:
        """Start a helper process (an S3 emulator) that stop_all() also stops."""
        LIVE.append(service)
        service.launch()
        service.wait_ready(timeout)
        return service

    def stop_service(self, service: Server) -> None:
        service.stop()
        with contextlib.suppress(ValueError):
            LIVE.remove(service)

    def limit(self, key: str, label: str | None = None) -> float | None:
        """Median of a machine limit; ``key[label]`` first when the limit is per case."""
        for name in ([f"{key}[{label}]"] if label else []) + [key]:
            if name in self.limits:
                return float(self.limits[name]["median"])
        return None


# -- measuring one run ------------------------------------------------------------------


def _client_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


async def measure_run(
    ctx: Context, workload: Workload, case: Any, server: Server, state: Any, run: int
) -> dict[str, float]:
    server.check_alive()
    assert server.tree is not None
    server.tree.reset_peak_rss()
    cpu0, client0, busy0 = server.tree.cpu_seconds(), _client_cpu(), machine_busy_seconds()
    start = time.perf_counter()
    values = await workload.run(ctx, server, case, state, run)
    wall = time.perf_counter() - start
    cpu1, client1, busy1 = server.tree.cpu_seconds(), _client_cpu(), machine_busy_seconds()
    server.check_alive()
    values.update(
        wall_s=wall,
        server_cpu_s=cpu1 - cpu0,
        server_peak_rss_mib=server.tree.peak_rss_mib(),
        server_peak_memory_mib=server.tree.peak_memory_mib(),
        client_cpu_s=client1 - client0,
        # Whatever else ran on the machine meanwhile (other jobs, the kernel's writeback).
        other_cpu_s=max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (client1 - client0)),
    )
    workload.derive(case, values)
    return values


LIVE: list[Server] = []


def start_server(ctx: Context, workload: Workload, case: Any, kind: str, where: Path) -> Server:
    options = dict(workload.server_options(ctx, kind, case))
    if kind == "cargohold" and ctx.workers:
        options.setdefault("workers", ctx.workers)
    server = SERVER_CLASSES[kind](where / kind, options=options)
    LIVE.append(server)
    server.launch()
    return server


def stop_all() -> None:
    while LIVE:
        server = LIVE.pop()
        with contextlib.suppress(Exception):
            server.stop()


def _primary(workload: Workload, values: dict[str, float]) -> str:
    if not workload.metrics:
        return f"{values['wall_s']:.2f} s"
    m = workload.metrics[0]
    return f"{values.get(m.key, float('nan')):,.{m.digits}f} {m.unit}"


async def run_case(ctx: Context, workload: Workload, case: Any, index: int) -> CaseResult:
    result = CaseResult(workload, case)
    where = ctx.workdir / "servers" / f"{index:02d}-{workload.name}"
    servers: dict[str, Server] = {}
    states: dict[str, Any] = {}
    wanted = workload.servers
    if workload.one_worker and ctx.one_worker and "cargohold" in wanted:
        wanted = (*wanted, "cargohold-1")
    kinds = tuple(k for k in SERVER_KINDS if k in wanted)
    recorder: subprocess.Popen[bytes] | None = None
    profile_raw: Path | None = None
    try:
        try:
            await workload.begin_case(ctx, case)
        except Exception as exc:
            for kind in kinds:
                result.runs[kind] = []
                result.errors.setdefault(kind, []).append(f"begin: {_describe(exc, None)}")
            log(f"  begin FAILED: {_describe(exc, None)}")
            kinds = ()
        for kind in kinds:  # both start at once; setup once each is ready
            result.runs[kind] = []
            try:
                servers[kind] = start_server(ctx, workload, case, kind, where)
            except Exception as exc:
                result.errors.setdefault(kind, []).append(f"start: {_describe(exc, None)}")
                log(f"  {kind}: start FAILED: {result.errors[kind][-1]}")
        for kind, server in servers.items():
            try:
                await asyncio.to_thread(server.wait_ready)
                states[kind] = await workload.setup(ctx, server, case)
            except Exception as exc:
                result.errors.setdefault(kind, []).append(f"setup: {_describe(exc, server)}")
                log(f"  {kind}: setup FAILED: {result.errors[kind][-1]}")
        if ctx.profile_dir is not None and "cargohold" in states:
            ctx.profile_dir.mkdir(parents=True, exist_ok=True)
            profile_raw = ctx.profile_dir / f"{index:02d}-{result.key}.txt".replace(" ", "_")
            tree = servers["cargohold"].tree
            assert tree is not None
            recorder = profile.start(tree.pid, profile_raw)
            if recorder is None:
                log("  --profile: py-spy is not installed (pip install py-spy)")
        for run in range(ctx.runs):
            order = kinds if run % 2 == 0 else tuple(reversed(kinds))
            for kind in order:
                if kind not in states:
                    continue
                server = servers[kind]
                await asyncio.sleep(0.1)  # let the previous run's tail settle
                try:
                    values = await measure_run(ctx, workload, case, server, states[kind], run)
                except Exception as exc:
                    message = f"run {run}: {_describe(exc, server)}"
                    result.errors.setdefault(kind, []).append(message)
                    log(f"  {kind} run {run}: FAILED: {message}")
                    if not server.alive():
                        del states[kind]
                    continue
                result.runs[kind].append(values)
                log(
                    f"  run {run} {kind:12s} {_primary(workload, values):>18s}  "
                    f"cpu {values['server_cpu_s']:.2f}s  rss {values['server_peak_rss_mib']:.0f} MiB"
                )
    finally:
        if recorder is not None and profile_raw is not None:
            profile.stop(recorder)
            if profile_raw.exists():
                summary = profile_raw.with_suffix(".md")
                summary.write_text(profile.summarize(profile_raw, result.key))
                log(f"  profile: {summary}")
        for server in servers.values():
            stopping = time.monotonic()
            server.stop()
            if time.monotonic() - stopping > 2:
                log(f"  {server.label} took {time.monotonic() - stopping:.1f} s to stop")
            with contextlib.suppress(ValueError):
                LIVE.remove(server)
        for kind, server in servers.items():
            if result.errors.get(kind):
                keep = ctx.workdir.parent / f"{ctx.workdir.name}-logs"
                keep.mkdir(exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy(server.log_path, keep / f"{index:02d}-{workload.name}-{kind}.log")
        shutil.rmtree(where, ignore_errors=True)
    return result


def _describe(exc: BaseException, server: Server | None) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if server is not None and not isinstance(exc, ServerError) and not server.alive():
        text += f" — server exited ({server.log_tail(8)})"
    if not isinstance(exc, (ServerError, RuntimeError, OSError, asyncio.TimeoutError)):
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            text += f" @ {Path(frames[-1].filename).name}:{frames[-1].lineno}"
    return text[:2000]


# -- machine description ----------------------------------------------------------------


def git_describe() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()


def machine_info(workdir: Path) -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cpuinfo = read("/proc/cpuinfo")
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    meminfo = {
        ln.split(":")[0]: ln.split(":")[1].strip() for ln in read("/proc/meminfo").splitlines()
    }
    mem_kib = int(meminfo.get("MemTotal", "0 kB").split()[0])
    fs = subprocess.run(
        ["df", "--output=source,fstype", str(workdir)], capture_output=True, text=True
    ).stdout.splitlines()[-1:]
    versions = {}
    for dist in ("cargohold", "aiohttp", "uvloop", "msgspec", "fsspec", "matplotlib"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    git = git_describe()
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "storage_filesystem": " ".join(fs[0].split()) if fs else "",
        "packages": versions,
        "tools": tool_versions(),
        "git": git,
    }


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 s GETs: < 3 min")
    parser.add_argument("--only", help="comma-separated workload names (see --list)")
    parser.add_argument("--runs", type=int, help="runs per workload and server (default 3)")
    parser.add_argument("--workers", type=int, help="cargohold serve --workers N, if supported")
    parser.add_argument(
        "--no-one-worker",
        action="store_true",
        help="do not also run Cargohold with --workers 1 beside its default",
    )
    parser.add_argument("--duration", type=float, help="seconds of each wrk run (default 10/3)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--skip-limits", action="store_true", help="do not measure the limits")
    parser.add_argument("--no-install", action="store_true", help="never call apt-get")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--name", default="latest", help="results file names: NAME.json/.md/.png (default latest)"
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp dir)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record Cargohold during every case into DIR (slows it: explain, don't measure)",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def ensure_matplotlib() -> None:
    """The chart needs matplotlib (the ``bench`` extra); install it if it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("installing matplotlib (the bench extra) for the chart")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib>=3.7"])


def ensure_s3_tools(workloads: list[Workload]) -> None:
    """The S3 workloads need s3fs (Cargohold's s3 driver) and moto's server; install both
    in one pip run if either is missing (one resolver run keeps botocore's pins agreed)."""
    if not any(w.name.startswith("s3-") for w in workloads):
        return
    if importlib.util.find_spec("s3fs") is not None and moto_available():
        return
    log("installing s3fs and moto[server] for the S3 workloads")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "s3fs>=2024.2", "moto[server]>=5.0"]
    )


def select(only: str | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    return [WORKLOADS[n] for n in names]


async def main_async(args: argparse.Namespace, ctx: Context, notes: list[str]) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    load_start = loadavg()
    git_start = git_describe()
    workloads = select(args.only)
    results: list[CaseResult] = []
    if not args.skip_limits:
        ctx.limits = await limits.measure(ctx, notes)
        for key, value in ctx.limits.items():
            log(f"  {key}: {value['median']:,.1f} {value['unit']} (spread {value['spread']:.1%})")
    index = 0
    for workload in workloads:
        cases = workload.cases(ctx)
        if not cases:
            log(f"{workload.name}: skipped ({'quick mode' if ctx.quick else 'no case'})")
            continue
        try:
            await workload.begin(ctx)
        except Exception as exc:
            log(f"{workload.name}: FAILED to begin: {_describe(exc, None)}")
            for case in cases:
                failed = CaseResult(workload, case)
                for kind in workload.servers:
                    failed.runs[kind] = []
                    failed.errors[kind] = [f"begin: {_describe(exc, None)}"]
                results.append(failed)
            await workload.end(ctx)
            continue
        try:
            for case in cases:
                index += 1
                log(f"{workload.name} {case.label}".rstrip())
                results.append(await run_case(ctx, workload, case, index))
        finally:
            await workload.end(ctx)
    git_end = git_describe()
    if git_end != git_start:
        # The working tree is shared: the servers ran whatever code was there at each start.
        notes.append(
            f"the checkout changed during the run: {git_start} at the start, {git_end} at the "
            "end (each server ran the code on disk when it started)"
        )
    targets = []
    for result in results:
        try:
            targets += [(result, t) for t in result.workload.targets(ctx, result.case, result)]
        except Exception as exc:
            notes.append(f"targets of {result.key} failed: {exc!r}")
    return {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - clock, 1),
        "command": " ".join(["python -m benchmarks.run", *map(shlex.quote, sys.argv[1:])]),
        "options": {
            "quick": ctx.quick,
            "runs": ctx.runs,
            "workers": ctx.workers,
            "blob_sizes_mib": [s // MiB for s in ctx.blob_sizes],
            "get_duration_s": ctx.get_duration,
            "wrk_threads": ctx.wrk_threads,
            "small_blob_count": ctx.small_blob_count,
            "manifest_push_count": ctx.manifest_push_count,
            "tag_count": ctx.tag_count,
            "repo_count": ctx.repo_count,
            "listing_requests": ctx.listing_requests,
            "image_layers": ctx.image_layers,
            "image_layer_mib": list(ctx.image_layer_mib),
            "disk_write_mib": ctx.disk_write_size // MiB,
            "peak_rss": "VmHWM reset with `echo 5 > /proc/PID/clear_refs` before each run",
        },
        "notes": notes,
        "machine": {
            **machine_info(ctx.workdir),
            "git_start": git_start,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
        },
        "limits": ctx.limits,
        "workloads": {
            r.key: {
                "workload": r.workload.name,
                "case": r.case.label,
                "title": r.workload.title,
                "description": r.workload.description,
                "params": r.case.params,
                "metrics": {
                    m.key: {
                        "label": m.label,
                        "unit": m.unit,
                        "higher_is_better": m.higher_is_better,
                        "limits": list(m.limits),
                        "digits": m.digits,
                        "chart": m.chart,
                    }
                    for m in (*r.workload.metrics, *COMMON_METRICS)
                },
                "runs": {k: [_round(v) for v in runs] for k, runs in r.runs.items()},
                "errors": r.errors,
            }
            for r in results
        },
        "targets": [
            {
                "workload": r.key,
                "name": t.name,
                "measured": t.measured,
                "goal": t.goal,
                "status": t.status,
                "note": t.note,
            }
            for r, t in targets
        ],
    }


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}


async def interruptible(coro: Any) -> Any:
    """Run ``coro``; SIGINT or SIGTERM cancels it, so every ``finally`` stops its servers
    and subprocesses (SIGINT too, even when the shell started us with it ignored)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, workload in WORKLOADS.items():
            print(f"{name:22s} {workload.description}")
        return 0
    selected = select(args.only)  # fail fast on a typo
    if not args.no_install:
        ensure_packages()
        ensure_matplotlib()
        ensure_s3_tools(selected)
    notes: list[str] = []
    if args.profile:
        notes.append(
            f"--profile: py-spy sampled every Cargohold server (profiles in {args.profile}); "
            "sampling slows it, so these figures explain rather than measure"
        )
    if args.workers and not cargohold_supports_workers():
        notes.append(f"--workers {args.workers} ignored: `cargohold serve` has no --workers flag")
        log(notes[-1])
        args.workers = None
    own_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cargohold-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # nginx workers (another user) read files below it
    ctx = Context.create(args, workdir)
    log(f"work dir {workdir}; {'quick' if ctx.quick else 'full'} mode, {ctx.runs} runs")

    try:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        report = runner(interruptible(main_async(args, ctx, notes)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; stopping servers")
        return 130
    finally:
        stop_all()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    from .report import write_outputs

    args.output.mkdir(parents=True, exist_ok=True)
    paths = write_outputs(report, args.output, args.name)
    for path in paths:
        log(f"wrote {path}")
    print((args.output / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
