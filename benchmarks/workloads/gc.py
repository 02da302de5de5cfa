"""GC benchmark: a store with many manifests and blobs, half unreferenced.

Not a Cargohold-vs-Distribution HTTP workload like the others (it is not in
``WORKLOADS``): run it on its own,

    .venv/bin/python -m benchmarks.workloads.gc --manifests 10000 --blobs 50000   # the issue's size
    .venv/bin/python -m benchmarks.workloads.gc --small                           # 400 / 2000

It builds the store through the library (each manifest has ``blobs/manifests``
layers of its own; half the manifests are then deleted by digest, as a client's
DELETE does), copies it, and measures on the copies:

- ``cargohold gc --grace 0s --settle 0s`` as a process: mark and sweep time,
  storage requests per reclaimed object, peak RSS (the child's ``ru_maxrss``);
- Distribution's offline ``docker-registry garbage-collect`` on the same store
  (the time reference);
- push+pull throughput of 8 HTTP clients against a Cargohold server on the
  store, without GC and while ``cargohold gc`` runs in a loop (goal: >= 80%).

Results are printed as JSON and written to ``benchmarks/results/gc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ..harness import REPO_ROOT, find_executable, log

LAYERS_PER_IMAGE_MAX = 16


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(config: bytes, layers: list[bytes]) -> bytes:
    def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": _sha(data), "size": len(data)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", d) for d in layers],
        }
    ).encode()


async def build_store(root: Path, manifests: int, blobs: int, seed: int = 7) -> dict[str, int]:
    """Push *manifests* images with *blobs* blobs in all; delete half the manifests."""
    sys.path.insert(0, str(REPO_ROOT))
    from drivers.local import LocalDriver
    from registry_core import Digest, Registry

    registry = Registry(LocalDriver(str(root)))
    rng = random.Random(seed)
    per_image = max(1, min(LAYERS_PER_IMAGE_MAX, blobs // manifests - 1))
    semaphore = asyncio.Semaphore(32)
    deleted = 0

    async def one(number: int) -> None:
        nonlocal deleted
        repo = registry.repository(f"bench/gc/img{number % 50}")
        layers = [rng.randbytes(512) + f"{number}-{n}".encode() for n in range(per_image)]
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": number}).encode()
        async with semaphore:
            for data in [config, *layers]:
                async with repo.blobs.upload() as upload:
                    await upload.write(data)
                    await upload.commit(Digest.parse(_sha(data)))
            body = _manifest(config, layers)
            await repo.manifests.put(body, None, tag=f"t{number}")
            if number % 2:
                await repo.manifests.delete(_sha(body))
                deleted += 1

    await asyncio.gather(*(one(n) for n in range(manifests)))
    await registry.close()
    return {
        "manifests": manifests,
        "blobs": manifests * (per_image + 2),
        "manifests_deleted": deleted,
    }


def _cargohold(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "registry_server", *args],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
    )


def run_cargohold_gc(store: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = _cargohold("gc", "--storage", str(store), "--grace", "0s", "--settle", "0s", "--json")
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(done.stdout)
    return {
        "wall_s": round(wall, 3),
        "mark_s": round(report["mark_seconds"], 3),
        "sweep_s": round(report["sweep_seconds"], 3),
        "blobs_deleted": report["blobs_deleted"],
        "bytes_deleted": report["bytes_deleted"],
        "objects_reclaimed": report["objects_reclaimed"],
        "storage_requests": report["storage_requests"],
        "requests_per_reclaimed_object": round(
            report["storage_requests"] / max(1, report["objects_reclaimed"]), 3
        ),
        "requests_by_operation": report["requests_by_operation"],
        "peak_rss_mib": round(max(peak, before) / 1024, 1),
    }


def run_distribution_gc(store: Path, workdir: Path) -> dict[str, Any]:
    binary = find_executable("docker-registry")
    if binary is None:
        return {"error": "docker-registry is not installed"}
    config = workdir / "distribution.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f'    rootdirectory: "{store}"\n  delete:\n    enabled: true\n'
        "http:\n  addr: 127.0.0.1:0\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [binary, "garbage-collect", str(config)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    blobs_left = sum(1 for _ in (store / "docker/registry/v2/blobs").rglob("data"))
    return {"wall_s": round(wall, 3), "exit": done.returncode, "blobs_left": blobs_left}


def _client_loop(base: str, number: int, stop: threading.Event, counts: list[int]) -> None:
    import requests

    http = requests.Session()
    http.trust_env = False
    rng = random.Random(number)
    pushed: list[str] = []
    while not stop.is_set():
        repo = f"bench/load/c{number}"
        if not pushed or rng.random() < 0.5:
            layer = rng.randbytes(2048)
            config = json.dumps({"n": rng.random()}).encode()
            for data in (config, layer):
                start = http.post(f"{base}/v2/{repo}/blobs/uploads/")
                location = urllib.parse.urljoin(base + "/", start.headers["Location"])
                sep = "&" if "?" in location else "?"
                http.put(f"{location}{sep}digest={urllib.parse.quote(_sha(data))}", data=data)
            tag = f"t{len(pushed)}"
            answer = http.put(
                f"{base}/v2/{repo}/manifests/{tag}",
                data=_manifest(config, [layer]),
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            if answer.status_code == 201:
                pushed.append(tag)
        else:
            tag = rng.choice(pushed)
            got = http.get(
                f"{base}/v2/{repo}/manifests/{tag}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            for layer in json.loads(got.content)["layers"]:
                http.get(f"{base}/v2/{repo}/blobs/{layer['digest']}")
        counts[number] += 1


def throughput(base: str, seconds: float, clients: int = 8) -> float:
    stop = threading.Event()
    counts = [0] * clients
    threads = [
        threading.Thread(target=_client_loop, args=(base, n, stop, counts), daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return sum(counts) / seconds


def run_concurrent(store: Path, workdir: Path, seconds: float) -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers.server import RegistryServer

    with RegistryServer(f"file://{store}", workdir=workdir / "server") as server:
        alone = throughput(server.url, seconds)
        stop = threading.Event()
        runs = [0]

        def gc_loop() -> None:
            while not stop.is_set():
                _cargohold(
                    "gc",
                    "--storage",
                    str(store),
                    "--grace",
                    "0s",
                    "--settle",
                    "2s",
                    "--wait",
                    "10s",
                )
                runs[0] += 1

        collector = threading.Thread(target=gc_loop, daemon=True)
        collector.start()
        during = throughput(server.url, seconds)
        stop.set()
        collector.join(120)
    return {
        "ops_per_s_without_gc": round(alone, 1),
        "ops_per_s_during_gc": round(during, 1),
        "ratio": round(during / alone, 3) if alone else None,
        "gc_runs_during": runs[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=50_000)
    parser.add_argument("--small", action="store_true", help="400 manifests, 2000 blobs")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks/results/gc.json"))
    args = parser.parse_args(argv)
    if args.small:
        args.manifests, args.blobs = 400, 2000
    with tempfile.TemporaryDirectory(prefix="gc-bench-") as scratch:
        work = Path(scratch)
        original = work / "store"
        log(f"building a store of {args.manifests} manifests / ~{args.blobs} blobs")
        started = time.perf_counter()
        shape = asyncio.run(build_store(original, args.manifests, args.blobs))
        shape["build_s"] = round(time.perf_counter() - started, 1)
        copies = {name: work / name for name in ("cargohold", "distribution", "load")}
        for copy in copies.values():
            shutil.copytree(original, copy, symlinks=True)
        log("cargohold gc")
        ours = run_cargohold_gc(copies["cargohold"])
        log("docker-registry garbage-collect")
        theirs = run_distribution_gc(copies["distribution"], work)
        log("push/pull throughput without and during GC")
        load = run_concurrent(copies["load"], work, args.load_seconds)
    result = {"store": shape, "cargohold_gc": ours, "distribution_gc": theirs, "load": load}
    print(json.dumps(result, indent=2))
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
