"""Where the clients' throughput goes while GC runs on moto: a diagnostic run of the GC benchmark.

    .venv/bin/python -m benchmarks.workloads.gc_probe --moto-manifests 400 --moto-blobs 2000

runs ``benchmarks.workloads.gc --backends moto --skip-distribution --load-runs 1`` (extra
arguments are passed on) with three probes, and prints per load phase (warm-up, alone,
during GC, after):

- CPU seconds per process class (``moto``, ``server`` workers, ``gc`` processes, ``bench``:
  this process, the load generator), from ``/proc/PID/stat`` sampled every 0.2 s;
- moto's requests and thread CPU per ``(caller, kind)`` (``gc_moto_timing``: the GC
  processes run with ``AWS_SDK_UA_APP_ID=gc``), so the clients' requests per operation
  with and without GC, and what each kind of GC request costs moto;
- each GC run's start, end, mark and sweep seconds, against the phases.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..harness import CLK_TCK, Moto, log
from . import gc as bench

SAMPLE_SECONDS = 0.2


def _classify(pid: int) -> str | None:
    if pid == os.getpid():
        return "bench"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "-m registry_server " in cmd:
        return "gc" if " gc " in cmd else "server"
    if "moto" in cmd:
        return "moto"
    return None


class CpuSampler:
    """Last CPU seconds seen of every process below this one, by class."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(SAMPLE_SECONDS)

    def sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) not in self.seen and pid != os.getpid() and not self._ours(pid):
                continue
            kind = self.seen.get(pid, (None,))[0] or _classify(pid)
            if kind is None:
                continue
            with self.lock:
                self.seen[pid] = (kind, (int(fields[11]) + int(fields[12])) / CLK_TCK)

    def _ours(self, pid: int) -> bool:
        """A descendant of this process (moto, the server and its workers, GC runs)."""
        me = os.getpid()
        for _ in range(6):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False

    def snapshot(self) -> dict[int, tuple[str, float]]:
        self.sample()
        with self.lock:
            return dict(self.seen)


def _delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict:
    found: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        found[kind] = found.get(kind, 0.0) + cpu - before.get(pid, (kind, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(found.items())}


def _timing_delta(before: dict, after: dict) -> dict:
    found = {}
    for name, (count, cpu, _wall) in after.items():
        c0, cpu0, _ = before.get(name, (0, 0.0, 0.0))
        if count - c0:
            found[name] = {
                "n": count - c0,
                "cpu_s": round(cpu - cpu0, 3),
                "cpu_ms_each": round(1000 * (cpu - cpu0) / (count - c0), 2),
            }
    return found


def main(argv: list[str] | None = None) -> int:
    timing_file = Path(os.environ.get("MOTO_TIMING_FILE", "/tmp/gc-probe-moto-timing.json"))
    timing_file.unlink(missing_ok=True)

    class TimedMoto(Moto):
        def command(self) -> list[str]:
            return [
                sys.executable,
                "-m",
                "benchmarks.workloads.gc_moto_timing",
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ]

        def env(self) -> dict[str, str]:
            env = super().env()
            env["MOTO_TIMING_FILE"] = str(timing_file)
            env["PYTHONPATH"] = str(bench.REPO_ROOT)
            return env

    def timings() -> dict:
        time.sleep(0.3)  # the file is rewritten at most every 0.2 s
        try:
            return json.loads(timing_file.read_text())["totals"]
        except (OSError, ValueError):
            return {}

    sampler = CpuSampler()
    sampler.thread.start()
    phases: list[dict[str, Any]] = []
    gc_runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    original_throughput = bench.throughput
    original_cargohold = bench._cargohold
    names = ["warm-up", "alone", "during", "after"]

    def throughput(base: str, seconds: float, clients: int = bench.LOAD_CLIENTS) -> float:
        cpu0, moto0, start = sampler.snapshot(), timings(), time.perf_counter()
        ops = original_throughput(base, seconds, clients)
        cpu1, moto1, end = sampler.snapshot(), timings(), time.perf_counter()
        phase = {
            "phase": names[len(phases) % 4],
            "start": round(start - t0, 1),
            "end": round(end - t0, 1),
            "ops": round(ops * seconds),
            "ops_per_s": round(ops, 2),
            "cpu_s": _delta(cpu0, cpu1),
            "moto": _timing_delta(moto0, moto1),
            "load_average": os.getloadavg()[0],
        }
        client_requests = sum(v["n"] for k, v in phase["moto"].items() if k.startswith("- "))
        phase["client_moto_requests_per_op"] = round(client_requests / max(1, phase["ops"]), 1)
        phases.append(phase)
        log(json.dumps(phase))
        return ops

    def cargohold(*args: str, env: dict[str, str] | None = None):
        if args[0] != "gc":
            return original_cargohold(*args, env=env)
        args = (*args, "--json") if "--json" not in args else args
        start = time.perf_counter()
        done = original_cargohold(*args, env={**(env or {}), "AWS_SDK_UA_APP_ID": "gc"})
        end = time.perf_counter()
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {}
        gc_runs.append(
            {
                "start": round(start - t0, 1),
                "end": round(end - t0, 1),
                "mark_s": round(report.get("mark_seconds", 0), 1),
                "sweep_s": round(report.get("sweep_seconds", 0), 1),
                "blobs_deleted": report.get("blobs_deleted"),
                "requests": report.get("requests_by_operation"),
            }
        )
        log(json.dumps(gc_runs[-1]))
        return done

    original_gc = bench.run_cargohold_gc

    def run_cargohold_gc(*args: Any, **kwargs: Any) -> dict[str, Any]:
        cpu0, moto0 = sampler.snapshot(), timings()
        found = original_gc(*args, **kwargs)
        cpu1, moto1 = sampler.snapshot(), timings()
        phases.append(
            {"phase": "gc alone", "cpu_s": _delta(cpu0, cpu1), "moto": _timing_delta(moto0, moto1)}
        )
        log(json.dumps(phases[-1]))
        phases.clear()  # the load phases are named by their position
        return found

    bench.run_cargohold_gc = run_cargohold_gc
    bench.throughput = throughput
    bench._cargohold = cargohold
    bench.Moto = TimedMoto
    args = [
        "--backends",
        "moto",
        "--skip-distribution",
        "--load-runs",
        "1",
        *(argv or sys.argv[1:]),
    ]
    args += ["--output", "/tmp/gc-probe-bench.json"]
    bench.main(args)
    sampler.stop.set()
    print(json.dumps({"phases": phases, "gc_runs": gc_runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
