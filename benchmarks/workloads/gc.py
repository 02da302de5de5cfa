"""GC benchmark: a store with many manifests and blobs, half unreferenced.

Not a Cargohold-vs-Distribution HTTP workload like the others (it is not in
``WORKLOADS``): run it on its own,

    .venv/bin/python -m benchmarks.workloads.gc                 # the issue's size, local + moto
    .venv/bin/python -m benchmarks.workloads.gc --small         # 400 / 2,000, for a quick look

The store is written straight into the Distribution layout (what a registry
leaves behind after clients pushed and then deleted half the manifests by
digest): each image is a manifest, a config and ``blobs/manifests - 2`` layers
of its own, in 50 repositories; kept images have a revision link and a tag,
deleted ones only their blobs and layer links. So ``--manifests 10000 --blobs
50000`` (the default) has 50,000 blobs, 25,000 of them unreferenced. The moto
S3 variant (default 1,000 / 5,000) is written the same way through s3fs.

Measured on copies of the store (each backend):

- ``cargohold gc --grace 0s --settle 0s --nice 0`` as a process (Distribution's
  priority): mark and sweep time,
  storage requests per reclaimed object, peak RSS (the child's ``ru_maxrss``);
- Distribution's offline ``docker-registry garbage-collect`` on the same store
  (the time reference);
- push/pull/delete throughput of 8 HTTP clients against a Cargohold server
  on the store, without GC (half before, half after) and while ``cargohold
  gc`` runs back to back (goal: >= 80%), plus the server's CPU per client
  operation in both phases. GC processes run at the CLI's default priority
  (``[gc] nice``, 10), or ``--gc-nice N`` (0: none). The load runs on the
  store the first GC already collected (one copy less to write; every run
  still marks the whole store, and the clients' deletes give the runs
  garbage to sweep).

On moto each phase also records moto's CPU share and the requests it answered
(its access log). ``--gc-pacing=-/-,0/32`` compares GC request pacings
(``RATE/CONCURRENCY[/fixed]``, ``-`` the ``[gc]`` default, rate 0 unlimited, ``fixed``:
``--no-adaptive``, e.g. ``--gc-pacing=-/-,-/-/fixed``): one fresh
moto store and one timed GC per pacing, and ``--load-runs N`` load comparisons
each; ``--skip-distribution`` leaves out Distribution's (slow on moto) run.

Results are printed as JSON and written to ``benchmarks/results/gc.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ..harness import REPO_ROOT, Moto, client_env, find_executable, log, moto_available

REPOSITORIES = 50
LOAD_CLIENTS = 8


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


@attrs.frozen
class StoreShape:
    manifests: int
    blobs: int

    @property
    def layers_per_image(self) -> int:
        return max(1, self.blobs // self.manifests - 2)


def store_objects(shape: StoreShape, seed: int = 7) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of every object of the store, in Distribution's layout; every odd
    image is left as a client's DELETE by digest leaves it (blobs and layer links only)."""
    sys.path.insert(0, str(REPO_ROOT))
    from registry_core import Digest
    from registry_core.names import RepositoryName
    from registry_core.storage import layout

    rng = random.Random(seed)
    for number in range(shape.manifests):
        name = RepositoryName(f"bench/gc/img{number % REPOSITORIES}")
        layers = [
            rng.randbytes(512) + f"{number}-{n}".encode() for n in range(shape.layers_per_image)
        ]
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": number}).encode()
        body = _manifest(config, layers)
        manifest = Digest.parse(_sha(body))
        link = str(manifest).encode()
        yield layout.blob_data(manifest), body
        for data in [config, *layers]:
            digest = Digest.parse(_sha(data))
            yield layout.blob_data(digest), data
            yield layout.layer_link(name, digest), str(digest).encode()
        if number % 2 == 0:
            tag = f"t{number}"
            yield layout.revision_link(name, manifest), link
            yield layout.tag_index_link(name, tag, manifest), link
            yield layout.tag_current_link(name, tag), link


def build_local(root: Path, shape: StoreShape) -> None:
    made: set[str] = set()
    for path, data in store_objects(shape):
        target = root / path
        parent = str(target.parent)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        target.write_bytes(data)


def build_s3(filesystem: Any, base: str, shape: StoreShape, batch: int = 500) -> None:
    pending: dict[str, bytes] = {}
    for path, data in store_objects(shape):
        pending[f"{base}/{path}"] = data
        if len(pending) >= batch:
            filesystem.pipe(pending)
            pending = {}
    if pending:
        filesystem.pipe(pending)


def summarize(shape: StoreShape) -> dict[str, int]:
    kept = (shape.manifests + 1) // 2
    per_image = shape.layers_per_image + 2
    return {
        "manifests": shape.manifests,
        "blobs": shape.manifests * per_image,
        "unreferenced_blobs": (shape.manifests - kept) * per_image,
        "repositories": min(REPOSITORIES, shape.manifests),
    }


# -- one backend: where the store is and how each program reaches it -------------------------


@attrs.define
class Backend:
    name: str
    storage_url: str
    cargohold_config: Path | None = None
    distribution_storage: str = ""
    env: dict[str, str] = attrs.field(factory=dict)
    count_blobs: Any = None
    store_server: Moto | None = None
    """The emulator behind the storage, when there is one: its CPU and requests are probed."""

    def cli_args(self) -> list[str]:
        args = ["--storage", self.storage_url]
        if self.cargohold_config is not None:
            args += ["--config", str(self.cargohold_config)]
        return args


def _cargohold(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in client_env().items() if not k.startswith("CARGOHOLD_")}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "registry_server", *args],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
    )


@attrs.define
class StoreProbe:
    """CPU seconds and requests answered of a storage emulator (moto), between two reads."""

    server: Moto | None
    wall: float = 0.0
    cpu: float = 0.0
    requests: int = 0

    @classmethod
    def start(cls, server: Moto | None) -> StoreProbe:
        probe = cls(server)
        probe.wall, probe.cpu, probe.requests = probe._read()
        return probe

    def _read(self) -> tuple[float, float, int]:
        if self.server is None or self.server.tree is None:
            return time.perf_counter(), 0.0, 0
        return (
            time.perf_counter(),
            self.server.tree.cpu_seconds(),
            self.server.requests_logged(),
        )

    def since(self) -> dict[str, float]:
        """What the emulator did since the last read (then read again)."""
        wall, cpu, requests = self._read()
        elapsed = max(wall - self.wall, 1e-9)
        found = {
            "store_requests": requests - self.requests,
            "store_requests_per_s": round((requests - self.requests) / elapsed, 1),
            "store_cpu_share": round((cpu - self.cpu) / elapsed, 3),
        }
        self.wall, self.cpu, self.requests = wall, cpu, requests
        return found if self.server is not None else {}


Pacing = tuple[float | None, int | None, bool]
"""Rate, concurrency (None: the configuration's) and whether the pacing adapts."""


def _pacing_args(rate: float | None, concurrency: int | None, adaptive: bool = True) -> list[str]:
    extra = [] if rate is None else ["--rate", str(rate)]
    extra += [] if adaptive else ["--no-adaptive"]
    return extra + ([] if concurrency is None else ["--concurrency", str(concurrency)])


def run_cargohold_gc(
    backend: Backend,
    rate: float | None = None,
    concurrency: int | None = None,
    adaptive: bool = True,
) -> dict[str, Any]:
    """One run, timed against Distribution's: at the same CPU priority (``--nice 0``), with
    the given request pacing (None: the configuration's)."""
    probe = StoreProbe.start(backend.store_server)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = _cargohold(
        "gc",
        *backend.cli_args(),
        "--grace",
        "0s",
        "--settle",
        "0s",
        "--json",
        "--nice",
        "0",
        *_pacing_args(rate, concurrency, adaptive),
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads(done.stdout)
    return {
        "rate": rate,
        "concurrency": concurrency,
        "adaptive": adaptive,
        **probe.since(),
        "wall_s": round(wall, 3),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "mark_s": round(report["mark_seconds"], 3),
        "sweep_s": round(report["sweep_seconds"], 3),
        "blobs_total": report["blobs_total"],
        "blobs_deleted": report["blobs_deleted"],
        "bytes_deleted": report["bytes_deleted"],
        "objects_reclaimed": report["objects_reclaimed"],
        "storage_requests": report["storage_requests"],
        "requests_per_reclaimed_object": round(
            report["storage_requests"] / max(1, report["objects_reclaimed"]), 3
        ),
        "requests_by_operation": report["requests_by_operation"],
        "pacing": report.get("pacing"),
        # ru_maxrss of children is the largest child so far: the GC process (builds ran
        # in this process, the server afterwards).
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
    }


def run_distribution_gc(backend: Backend, workdir: Path) -> dict[str, Any]:
    binary = find_executable("docker-registry")
    if binary is None:
        return {"error": "docker-registry is not installed"}
    config = workdir / f"distribution-{backend.name}.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"{backend.distribution_storage}\n  delete:\n    enabled: true\n"
        "http:\n  addr: 127.0.0.1:0\n"
    )
    env = client_env()
    env.pop("AWS_CA_BUNDLE", None)  # its AWS SDK fails on plain-http moto with the CA bundle
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [binary, "garbage-collect", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "exit": done.returncode,
        "blobs_left": backend.count_blobs(),
    }
    if done.returncode:
        result["stderr"] = done.stderr[-400:]
    return result


def _client_loop(
    base: str, number: int, stop: threading.Event, counts: list[int], errors: list[int]
) -> None:
    import requests

    http = requests.Session()
    http.trust_env = False
    rng = random.Random(number)
    pushed: list[str] = []
    serial = 0
    while not stop.is_set():
        try:
            serial += 1
            _client_step(http, base, f"bench/load/c{number}", rng, pushed, serial)
            counts[number] += 1
        except (requests.RequestException, ValueError, KeyError) as exc:
            errors[number] += 1
            if errors[number] <= 3:  # what failed, for the report's reader
                log(f"client {number}: {type(exc).__name__}: {str(exc)[:200]}")


def _client_step(
    http: Any, base: str, repo: str, rng: random.Random, pushed: list[str], serial: int
) -> None:
    """One client operation: push a small image, pull one, or delete one by digest."""
    choice = rng.random()
    if pushed and choice < 0.1:
        # Delete an image by digest, as a client does: its blobs become garbage that
        # the GC runs of the "during" phase sweep.
        tag = pushed.pop(rng.randrange(len(pushed)))
        got = http.head(
            f"{base}/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        digest = got.headers.get("Docker-Content-Digest")
        if digest:
            http.delete(f"{base}/v2/{repo}/manifests/{digest}")
    elif not pushed or choice < 0.55:
        layer = rng.randbytes(2048)
        config = json.dumps({"n": rng.random()}).encode()
        for data in (config, layer):
            start = http.post(f"{base}/v2/{repo}/blobs/uploads/")
            location = urllib.parse.urljoin(base + "/", start.headers["Location"])
            sep = "&" if "?" in location else "?"
            http.put(f"{location}{sep}digest={urllib.parse.quote(_sha(data))}", data=data)
        tag = f"t{serial}"
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
        got.raise_for_status()
        for layer in json.loads(got.content)["layers"]:
            blob = http.get(f"{base}/v2/{repo}/blobs/{layer['digest']}")
            blob.raise_for_status()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(base: str, seconds: float, clients: int = LOAD_CLIENTS) -> float:
    """Client operations per second (a push of two blobs and a manifest, a pull, or a
    delete) of *clients* threads during *seconds*; an operation that failed is not counted
    (and is logged)."""
    stop = threading.Event()
    counts = [0] * clients
    errors = [0] * clients
    threads = [
        threading.Thread(target=_client_loop, args=(base, n, stop, counts, errors), daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    if sum(errors):
        log(f"{sum(errors)} client operation(s) failed")
    return sum(counts) / seconds


def run_concurrent(
    backend: Backend, workdir: Path, seconds: float, nice: int | None, pacing: list[str]
) -> dict[str, Any]:
    """Ops/s of the clients alone, then while ``cargohold gc`` runs back to back (with the
    extra *pacing* arguments), then alone again; with the storage emulator's CPU share and
    request rate in each phase (the GC's share of the store is the difference)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers.server import RegistryServer

    server = RegistryServer(
        backend.storage_url,
        config=backend.cargohold_config,
        env=dict(backend.env),
        workdir=workdir / f"server-{backend.name}",
    )
    with server:
        throughput(server.url, min(3.0, seconds))  # warm-up: connections, caches
        probe = StoreProbe.start(backend.store_server)
        cpu0 = _cpu_seconds(server.pid)
        alone = throughput(server.url, seconds / 2)
        cpu1 = _cpu_seconds(server.pid)
        store_alone = probe.since()
        stop = threading.Event()
        runs = [0]
        extra = ([] if nice is None else ["--nice", str(nice)]) + pacing
        gc_seconds: list[float] = []
        gc_pacing: list[Any] = []
        gc_errors: list[str] = []

        def gc_loop() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    done = _cargohold(
                        "gc",
                        *backend.cli_args(),
                        "--grace",
                        "0s",
                        "--settle",
                        "2s",
                        "--wait",
                        "30s",
                        "--json",
                        *extra,
                    )
                except subprocess.CalledProcessError as exc:
                    # Kept (the run counts as failed), not fatal to the load phase.
                    gc_errors.append(exc.stderr.strip()[-2000:])
                    log(f"gc during load failed: {exc.stderr.strip()[-300:]}")
                    continue
                gc_seconds.append(round(time.perf_counter() - started, 1))
                gc_pacing.append(json.loads(done.stdout).get("pacing"))
                runs[0] += 1

        collector = threading.Thread(target=gc_loop, daemon=True)
        collector.start()
        during = throughput(server.url, seconds)
        cpu2 = _cpu_seconds(server.pid)
        store_during = probe.since()
        stop.set()
        collector.join(600)
        cpu3 = _cpu_seconds(server.pid)
        probe.since()
        # Alone again (before and after, averaged: the store and the machine drift).
        after = throughput(server.url, seconds / 2)
        cpu4 = _cpu_seconds(server.pid)
        store_after = probe.since()
    baseline = (alone + after) / 2
    ops_alone = (alone + after) * seconds / 2
    return {
        "ops_per_s_without_gc": round(baseline, 2),
        "ops_per_s_during_gc": round(during, 2),
        "ratio": round(during / baseline, 3) if baseline else None,
        "server_cpu_ms_per_op_without_gc": round(
            1000 * ((cpu1 - cpu0) + (cpu4 - cpu3)) / max(1.0, ops_alone), 2
        ),
        "server_cpu_ms_per_op_during_gc": round(
            1000 * (cpu2 - cpu1) / max(1.0, during * seconds), 2
        ),
        "gc_runs_during": runs[0],
        "gc_run_seconds": gc_seconds,
        "gc_pacing": gc_pacing,
        "gc_errors": gc_errors,
        "load_seconds": seconds,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **({"store_alone": store_alone} if store_alone else {}),
        **({"store_during_gc": store_during} if store_during else {}),
        **({"store_after": store_after} if store_after else {}),
    }


def run_loads(backend: Backend, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The load comparison *args.load_runs* times, for each pacing asked."""
    results = []
    for rate, concurrency, adaptive in _pacings(args):
        for number in range(args.load_runs):
            log(
                f"{backend.name}: load run {number + 1}, rate {rate}, "
                f"concurrency {concurrency}, adaptive {adaptive}"
            )
            found = run_concurrent(
                backend,
                work,
                args.load_seconds,
                args.gc_nice,
                _pacing_args(rate, concurrency, adaptive),
            )
            results.append(
                {"rate": rate, "concurrency": concurrency, "adaptive": adaptive, **found}
            )
    return results


def _pacings(args: argparse.Namespace) -> list[Pacing]:
    """``--gc-pacing RATE/CONCURRENCY[/fixed],...`` (``-`` for the configuration's value),
    else one run with the configuration's pacing."""
    if not args.gc_pacing:
        return [(None, None, True)]
    found: list[Pacing] = []
    for item in args.gc_pacing.split(","):
        rate, _, rest = item.strip().partition("/")
        concurrency, _, mode = rest.partition("/")
        found.append(
            (
                None if rate in ("", "-") else float(rate),
                None if concurrency in ("", "-") else int(concurrency),
                mode != "fixed",
            )
        )
    return found


def bench_local(shape: StoreShape, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    copies = {name: work / f"local-{name}" for name in ("cargohold", "distribution")}
    log(f"local: writing {shape.manifests} manifests / {shape.blobs} blobs, twice")
    started = time.perf_counter()
    for copy in copies.values():
        build_local(copy, shape)
    built = round((time.perf_counter() - started) / len(copies), 1)

    def backend(name: str) -> Backend:
        root = copies[name]
        return Backend(
            name=f"local-{name}",
            storage_url=f"file://{root}",
            distribution_storage=f'  filesystem:\n    rootdirectory: "{root}"',
            count_blobs=lambda: sum(1 for _ in (root / "docker/registry/v2/blobs").rglob("data")),
        )

    log("local: cargohold gc")
    ours = run_cargohold_gc(backend("cargohold"), *_pacings(args)[0])
    theirs: dict[str, Any] = {"skipped": True}
    if not args.skip_distribution:
        log("local: docker-registry garbage-collect")
        theirs = run_distribution_gc(backend("distribution"), work)
    log("local: push/pull throughput without and during GC (on the collected store)")
    load = run_loads(backend("cargohold"), work, args)
    return {
        "store": {**summarize(shape), "build_s": built},
        "cargohold_gc": ours,
        "distribution_gc": theirs,
        "load": load,
    }


def bench_moto(shape: StoreShape, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if not moto_available():
        return {"error": "moto_server is not installed"}
    import s3fs

    moto = Moto(work / "moto")
    moto.start()
    try:
        options = {
            "endpoint_url": moto.url,
            "key": moto.key,
            "secret": moto.secret,
            "client_kwargs": {"region_name": moto.region},
        }
        filesystem = s3fs.S3FileSystem(**options)
        # One fresh store per GC pacing compared (each run sweeps the same garbage).
        pacings = _pacings(args)
        names = [f"cargohold{n}" for n in range(len(pacings))]
        names += [] if args.skip_distribution else ["distribution"]
        for name in names:
            moto.create_bucket(f"gc-{name}")
        log(
            f"moto: writing {shape.manifests} manifests / {shape.blobs} blobs, {len(names)} buckets"
        )
        started = time.perf_counter()
        for name in names:
            build_s3(filesystem, f"gc-{name}/store", shape)
        built = round(time.perf_counter() - started, 1)
        config = work / "moto-cargohold.toml"
        config.write_text(
            "[storage.options]\n"
            f'endpoint_url = "{moto.url}"\nkey = "{moto.key}"\nsecret = "{moto.secret}"\n'
            "[storage.options.client_kwargs]\n"
            f'region_name = "{moto.region}"\n'
        )

        def backend(name: str) -> Backend:
            bucket = f"gc-{name}"

            def count() -> int:
                filesystem.invalidate_cache()
                found = filesystem.find(f"{bucket}/store/docker/registry/v2/blobs")
                return sum(1 for key in found if key.endswith("/data"))

            return Backend(
                name=f"moto-{name}",
                storage_url=f"s3://{bucket}/store",
                cargohold_config=config,
                distribution_storage=(
                    f"  s3:\n    accesskey: {moto.key}\n    secretkey: {moto.secret}\n"
                    f"    region: {moto.region}\n    regionendpoint: {moto.url}\n"
                    f"    bucket: {bucket}\n    rootdirectory: /store\n"
                    "    secure: false\n    v4auth: true"
                ),
                count_blobs=count,
                store_server=moto,
            )

        ours = []
        for number, (rate, concurrency, adaptive) in enumerate(pacings):
            log(f"moto: cargohold gc, rate {rate}, concurrency {concurrency}, adaptive {adaptive}")
            ours.append(
                run_cargohold_gc(backend(f"cargohold{number}"), rate, concurrency, adaptive)
            )
        theirs: dict[str, Any] = {"skipped": True}
        if not args.skip_distribution:
            log("moto: docker-registry garbage-collect")
            theirs = run_distribution_gc(backend("distribution"), work)
        log("moto: push/pull throughput without and during GC (on the collected store)")
        load = run_loads(backend("cargohold0"), work, args)
    finally:
        moto.stop()
    return {
        "store": {**summarize(shape), "build_s": built},
        "cargohold_gc": ours,
        "distribution_gc": theirs,
        "load": load,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=50_000)
    parser.add_argument("--moto-manifests", type=int, default=1_000)
    parser.add_argument("--moto-blobs", type=int, default=5_000)
    parser.add_argument("--small", action="store_true", help="400 / 2,000 (moto: 100 / 500)")
    parser.add_argument("--backends", default="local,moto", help="comma-separated: local, moto")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument(
        "--load-runs", type=int, default=1, help="repeat the load comparison (per pacing)"
    )
    parser.add_argument(
        "--gc-pacing",
        default="",
        help="GC request pacing(s) to compare, RATE/CONCURRENCY,... ('-': [gc] default; "
        "rate 0: unlimited), e.g. --gc-pacing=-/-,0/32 (with '='); moto writes one fresh store per pacing",
    )
    parser.add_argument(
        "--skip-distribution", action="store_true", help="skip Distribution's garbage-collect"
    )
    parser.add_argument(
        "--gc-nice", type=int, default=None, help="the GC processes' --nice (default: [gc] nice)"
    )
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks/results/gc.json"))
    args = parser.parse_args(argv)
    if args.small:
        args.manifests, args.blobs = 400, 2000
        args.moto_manifests, args.moto_blobs = 100, 500
    wanted = {b.strip() for b in args.backends.split(",") if b.strip()}
    result: dict[str, Any] = {"load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gc-bench-") as scratch:
        work = Path(scratch)
        if "local" in wanted:
            result["local"] = bench_local(StoreShape(args.manifests, args.blobs), work, args)
        if "moto" in wanted:
            shape = StoreShape(args.moto_manifests, args.moto_blobs)
            result["moto"] = bench_moto(shape, work, args)
    result["load_average_after"] = list(os.getloadavg())
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
