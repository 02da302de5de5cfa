"""A real client: skopeo copies a multi-layer OCI image to the registry and back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import shutil
import tarfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, BenchError, MiB
from ..harness import client_env
from . import Case, CaseResult, Metric, Target, Workload, register

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _tar_one_file(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    pad = (-len(data)) % 512
    return header + data + b"\0" * pad + b"\0" * 1024


def build_oci_image(path: Path, layer_sizes: list[int], seed: int, tag: str = "latest") -> int:
    """An OCI layout at ``path``: gzip layers, each a tar with one random file.

    Returns the total size of the blobs (config + layers + manifest)."""
    rng = random.Random(seed)
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> tuple[str, int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return "sha256:" + hexdigest, len(data)

    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        tar = _tar_one_file(f"layer{i}/data.bin", rng.randbytes(size))
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        layers.append(put(_gzip(tar)))
    config = put(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/true"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
        }
    ).encode()
    mdigest, msize = put(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": mdigest,
                        "size": msize,
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            }
        )
    )
    return config[1] + msize + sum(s for _, s in layers)


def layer_sizes(ctx: Context) -> list[int]:
    """The same sizes for every image of a benchmark run: runs differ in content only."""
    rng = random.Random(ctx.seed)
    low, high = ctx.image_layer_mib
    return [rng.randint(low * MiB, high * MiB) for _ in range(ctx.image_layers)]


async def skopeo_copy(src: str, dest: str, home: Path) -> float:
    """Wall seconds of one ``skopeo copy`` (plain HTTP to loopback, no signatures)."""
    env = client_env()
    env["HOME"] = str(home)  # a fresh blob-info cache: no mount hints between runs
    cmd = [
        "skopeo",
        "--tmpdir",
        str(home),
        "copy",
        "--quiet",
        "--retry-times=0",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        src,
        dest,
    ]
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"skopeo copy {src} {dest} failed ({proc.returncode}): {out[-800:]!r}")
    return seconds


class _Skopeo(Workload):
    one_worker = True

    def cases(self, ctx: Context) -> list[Case]:
        low, high = ctx.image_layer_mib
        return [Case(f"{ctx.image_layers} layers {low}-{high} MiB")]

    def image(self, ctx: Context, key: str) -> tuple[Path, int]:
        """The OCI layout for ``key`` (built once per benchmark run and reused)."""
        path = ctx.workdir / "images" / key
        marker = path / "size"
        if not marker.exists():
            shutil.rmtree(path, ignore_errors=True)
            seed = int.from_bytes(hashlib.sha256(f"{ctx.seed}/{key}".encode()).digest()[:4])
            size = build_oci_image(path / "layout", layer_sizes(ctx), seed)
            marker.write_text(str(size))
        return path / "layout", int(marker.read_text())

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        # Issue 4: a real client's push and pull at least as fast as Distribution's.
        c, d = result.median("cargohold", "seconds"), result.median("distribution", "seconds")
        if c is None or d is None:
            return []
        return [
            Target(
                f"{self.title} {case.label}: wall time <= Distribution's",
                f"{c:,.2f} s ({c / d:.2f}x)",
                f"<= {d:,.2f} s",
                c <= d,
            )
        ]

    def scratch(self, ctx: Context, server: Server, name: str) -> Path:
        path = ctx.workdir / "scratch" / server.kind / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


@register
class SkopeoPush(_Skopeo):
    name = "skopeo-push"
    title = "skopeo push"
    description = (
        "skopeo copy oci:<layout> docker://<server>/...: a new random multi-layer image "
        "(gzip layers) every run, so no blob is already there; wall time."
    )
    metrics = (
        Metric("seconds", "wall time", "s", False, digits=2),
        Metric("mib_s", "throughput", "MiB/s", True, chart=False),
    )

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        for run in range(ctx.runs):
            await asyncio.to_thread(self.image, ctx, f"push-{run}")

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        layout, size = self.image(ctx, f"push-{run}")
        home = self.scratch(ctx, server, f"push-{run}")
        seconds = await skopeo_copy(
            f"oci:{layout}:latest", f"docker://{server.host}/bench/skopeo/push{run}:latest", home
        )
        shutil.rmtree(home, ignore_errors=True)
        return {"seconds": seconds, "mib_s": size / MiB / seconds}


@register
class SkopeoPull(_Skopeo):
    name = "skopeo-pull"
    title = "skopeo pull"
    description = (
        "skopeo copy docker://<server>/... oci:<fresh dir> of the image pushed during setup "
        "(skopeo verifies every digest); wall time."
    )
    metrics = SkopeoPush.metrics

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        layout, size = await asyncio.to_thread(self.image, ctx, "pull")
        home = self.scratch(ctx, server, "pull-setup")
        await skopeo_copy(
            f"oci:{layout}:latest", f"docker://{server.host}/bench/skopeo/pull:latest", home
        )
        return size

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        home = self.scratch(ctx, server, f"pull-{run}")
        seconds = await skopeo_copy(
            f"docker://{server.host}/bench/skopeo/pull:latest", f"oci:{home / 'out'}:latest", home
        )
        if not (home / "out" / "index.json").exists():
            raise BenchError("skopeo pull wrote no index.json")
        shutil.rmtree(home, ignore_errors=True)
        return {"seconds": seconds, "mib_s": state / MiB / seconds}
