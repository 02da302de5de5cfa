"""Scan throughput, re-matching after a database update, and a scan's peak memory.

Scanning never runs on a request, so this workload measures the library the
server's scan job runs (``registry_core.scanning``), in this process, on a local
folder: a 5-layer image (300 MiB of gzip layers; 40 MiB with ``--quick``) whose
files compress about 2:1, with a real-sized dpkg database and Python packages in
it. ``mib_s_per_core`` is compressed MiB scanned per CPU second of this process
(decompression, tar, analyzers, SBOM, matching); ``rematch_s`` the time to
re-match 1,000 stored results (each with its own SBOM of ~1,050 packages) after an
import that changes 2% of the records; ``scan_rss_mib`` the growth of peak
RSS during the scan (the kernel's high-water mark is reset first). Run it alone with
``make bench ARGS="--only scanning [--quick]"``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import Case, CaseResult, Metric, Target, Workload, register

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

MiB = 1024 * 1024
SBOMS = 1000


def _layer(index: int, size: int) -> bytes:
    """A gzip'ed tar of ~1 MiB files whose bytes compress about 2:1, plus package files."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        if index == 0:
            add("etc/os-release", b"ID=debian\nVERSION_ID=12\nPRETTY_NAME=Debian 12\n")
            status = "".join(
                f"Package: pkg{i}\nStatus: install ok installed\nArchitecture: amd64\n"
                f"Source: src{i // 2} (1.{i // 2}-1)\nVersion: 1.{i // 2}-1+b1\nDescription: x\n\n"
                for i in range(800)
            )
            add("var/lib/dpkg/status", status.encode())
        for i in range(50):
            add(
                f"usr/lib/python3/dist-packages/p{index}_{i}-1.0.dist-info/METADATA",
                f"Name: p{index}-{i}\nVersion: 1.{i}\n".encode(),
            )
        written = 0
        n = 0
        while written < size * 2:
            chunk = base64.b64encode(os.urandom(768 * 1024))  # ~1 MiB, ~2:1 with gzip
            add(f"usr/share/data{index}/{n}.bin", chunk)
            written += len(chunk)
            n += 1
    return gzip.compress(raw.getvalue(), compresslevel=1)


def _osv(count: int, seed: str, changed: int = 0) -> list[dict[str, Any]]:
    """One record per source package; a quarter of the image's sources are affected.

    About *changed* of the affecting records (spread over the range) get a later fix, as
    a daily update does.
    """
    step = max(1, count // 4 // changed) if changed else 0

    def fixed(i: int) -> str:
        if i % 4:
            return "1.0-1"  # fixed before the installed version: not affected
        return f"1.{i}-{3 if step and (i // 4) % step == 0 else 2}"

    return [
        {
            "id": f"BENCH-{seed}-{i}",
            "summary": "bench",
            "affected": [
                {
                    "package": {"ecosystem": "Debian:12", "name": f"src{i}"},
                    "ranges": [
                        {
                            "type": "ECOSYSTEM",
                            "events": [{"introduced": "0"}, {"fixed": fixed(i)}],
                        }
                    ],
                }
            ],
        }
        for i in range(count)
    ]


async def _store_results(registry: Any, scanner: Any, report: Any, count: int) -> None:
    """*count* scanned images, each with its own SBOM: the scanned inventory, a few versions moved.

    Images share most packages (base layers) but not all: in image *i*, one package in
    thirteen carries one of five rebuilt versions, so SBOMs, queries and findings differ.
    """
    import attrs
    import msgspec

    from registry_core.digest import Digest
    from registry_core.scanning.sbom import build_sbom, inventory_from_sbom
    from registry_core.storage import layout

    base = inventory_from_sbom(await scanner.sbom(Digest.parse(report.digest)) or b"")
    status = b'{"status":"done","updated":0,"attempts":1}'
    for i in range(count):
        fake = Digest.of(f"bench-{i}".encode())
        packages = tuple(
            attrs.evolve(p, version=f"{p.version}.{i % 5}") if (j + i) % 13 == 0 else p
            for j, p in enumerate(base.packages)
        )
        sbom = build_sbom(attrs.evolve(base, packages=packages), str(fake))
        sbom_digest = Digest.of(sbom)
        await registry.blob_store.put_small(sbom, sbom_digest)
        result = msgspec.structs.replace(
            report.platforms[0],
            manifest=str(fake),
            sbom=str(sbom_digest),
            sbom_size=len(sbom),
            findings=[],
        )
        stored = msgspec.structs.replace(
            report, digest=str(fake), platforms=[result], db_version=""
        )
        await registry.driver.write(layout.scan_report(fake), msgspec.json.encode(stored))
        await registry.driver.write(layout.scan_status(fake), status)


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the scan's own peak shows.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(total_mib: int, workdir: str) -> dict[str, float]:
    """Scan a 5-layer image of *total_mib* compressed MiB, then re-match 1,000 SBOMs."""

    from drivers.local import LocalDriver
    from registry_core import Registry
    from registry_core import mediatypes as mt
    from registry_core.digest import Digest
    from registry_core.scanning import Scanner
    from registry_core.scanning.vulndb import import_sources

    registry = Registry(LocalDriver(os.path.join(workdir, "store")))
    layers = [_layer(i, total_mib * MiB // 5 // 2) for i in range(5)]
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    repo = registry.repository("bench/scan/image")
    for blob in (config, *layers):
        async with repo.blobs.upload() as upload:
            for start in range(0, len(blob), 4 * MiB):
                await upload.write(blob[start : start + 4 * MiB])
            await upload.commit(Digest.of(blob))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": str(Digest.of(layer)),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
    ).encode()
    await repo.manifests.put(manifest, mt.OCI_MANIFEST, tag="1")
    compressed = sum(len(layer) for layer in layers) / MiB
    del layers
    osv_file = os.path.join(workdir, "osv.json")
    Path(osv_file).write_text(json.dumps(_osv(2000, "a")))
    await import_sources(registry.driver, [("bench", [osv_file])])

    scanner = Scanner(registry)
    digest = Digest.of(manifest)
    _reset_peak_rss()
    rss_before = _peak_rss_mib()
    cpu = time.process_time()
    wall = time.perf_counter()
    report = await scanner.scan(digest, force=True)
    scan_cpu = time.process_time() - cpu
    scan_wall = time.perf_counter() - wall
    rss = _peak_rss_mib() - rss_before

    await _store_results(registry, scanner, report, SBOMS)
    await scanner.rematch_all()  # every stored result matched against the first data set
    Path(osv_file).write_text(json.dumps(_osv(2000, "a", changed=40)))
    await import_sources(registry.driver, [("bench", [osv_file])])
    start, cpu = time.perf_counter(), time.process_time()
    changed = await scanner.rematch_all()
    rematch, rematch_cpu = time.perf_counter() - start, time.process_time() - cpu
    await registry.close()
    return {
        "mib_s_per_core": compressed / scan_cpu,
        "mib_s": compressed / scan_wall,
        "scan_rss_mib": rss,
        "rematch_s": rematch,
        "rematch_cpu_s": rematch_cpu,
        "rematched": float(changed),
        "packages": float(report.platforms[0].packages),
        "compressed_mib": compressed,
    }


@register
class Scanning(Workload):
    name = "scanning"
    title = "Security scanning"
    description = __doc__.split("\n\n")[1].replace("\n", " ")
    servers = ("cargohold",)
    metrics = (
        Metric("mib_s_per_core", "compressed layers scanned per CPU second", "MiB/s", True),
        Metric("rematch_s", f"re-match of {SBOMS} stored SBOMs", "s", False, digits=2),
        Metric("rematch_cpu_s", f"CPU of re-matching {SBOMS} SBOMs", "s", False, digits=2),
        Metric("scan_rss_mib", "peak RSS growth during a scan", "MiB", False, digits=0),
    )

    def cases(self, ctx: Context) -> list[Case]:
        size = 40 if ctx.quick else 300
        return [Case(f"5 layers, {size} MiB", {"mib": size})]

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as scratch:
            return await measure(case.params["mib"], scratch)

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        speed = result.median("cargohold", "mib_s_per_core")
        rematch = result.median("cargohold", "rematch_s")
        rss = result.median("cargohold", "scan_rss_mib")
        found = []
        if speed is not None:
            found.append(
                Target("scan >= 60 MiB/s per core", f"{speed:.0f} MiB/s", ">= 60", speed >= 60)
            )
        if rematch is not None:
            found.append(
                Target(f"re-match {SBOMS} SBOMs < 10 s", f"{rematch:.2f} s", "< 10 s", rematch < 10)
            )
        if rss is not None:
            found.append(Target("scan peak RSS < 200 MiB", f"{rss:.0f} MiB", "< 200", rss < 200))
        return found
