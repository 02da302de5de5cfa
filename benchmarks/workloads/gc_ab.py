"""GC's own cost on moto, two checkouts compared: CPU of the GC process and of moto, and
moto's requests, for a run that sweeps (half the store unreferenced) and a run that only
marks (what each back-to-back run of the load phase of ``benchmarks.workloads.gc`` is).

    .venv/bin/python -m benchmarks.workloads.gc_ab /work/main /work/wt-gc4 --rounds 2
    .venv/bin/python -m benchmarks.workloads.gc_ab . ".::--no-adaptive"   # one checkout, two ways

A checkout may carry extra ``cargohold gc`` arguments after ``::`` (space separated).

One moto, one fresh store per (checkout, round), checkouts alternated; CPU seconds
rather than wall time, so the comparison holds on a busy machine. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..harness import Moto, client_env
from . import gc as bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="+", help="repository roots to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--manifests", type=int, default=400)
    parser.add_argument("--blobs", type=int, default=2000)
    args = parser.parse_args(argv)
    import s3fs

    order = [tree for _ in range(args.rounds) for tree in args.checkouts]
    with tempfile.TemporaryDirectory(prefix="gc-ab-") as scratch:
        work = Path(scratch)
        moto = Moto(work / "moto")
        moto.start()
        try:
            fs = s3fs.S3FileSystem(
                endpoint_url=moto.url,
                key=moto.key,
                secret=moto.secret,
                client_kwargs={"region_name": moto.region},
            )
            for number in range(len(order)):
                moto.create_bucket(f"ab{number}")
                bench.build_s3(
                    fs, f"ab{number}/store", bench.StoreShape(args.manifests, args.blobs)
                )
            config = work / "moto.toml"
            config.write_text(
                f'[storage.options]\nendpoint_url = "{moto.url}"\nkey = "{moto.key}"\n'
                f'secret = "{moto.secret}"\n[storage.options.client_kwargs]\n'
                f'region_name = "{moto.region}"\n'
            )
            for number, tree in enumerate(order):
                env = {k: v for k, v in client_env().items() if not k.startswith("CARGOHOLD_")}
                path, _, extra = tree.partition("::")
                env["PYTHONPATH"] = path
                for run in ("sweep", "mark-only"):
                    found = _one(moto, config, f"ab{number}", path, run, env, extra.split())
                    print(json.dumps({**found, "checkout": tree}), flush=True)
        finally:
            moto.stop()
    return 0


def _one(
    moto: Moto,
    config: Path,
    bucket: str,
    tree: str,
    run: str,
    env: dict[str, str],
    extra: list[str],
) -> dict[str, object]:
    assert moto.tree is not None
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m0, q0, t0 = moto.tree.cpu_seconds(), moto.requests_logged(), time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "registry_server",
            "gc",
            *("--storage", f"s3://{bucket}/store", "--config", str(config)),
            *("--grace", "0s", "--settle", "0s", "--json", "--nice", "0"),
            *extra,
        ],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(done.stdout)
    return {
        "checkout": tree,
        "run": run,
        "wall_s": round(wall, 1),
        "gc_cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
        "moto_cpu_s": round(moto.tree.cpu_seconds() - m0, 2),
        "moto_requests": moto.requests_logged() - q0,
        "blobs_deleted": report["blobs_deleted"],
        "mark_s": round(report["mark_seconds"], 1),
        "sweep_s": round(report["sweep_seconds"], 1),
        "load_average": round(os.getloadavg()[0], 1),
        "pacing": report.get("pacing"),
    }


if __name__ == "__main__":
    sys.exit(main())
