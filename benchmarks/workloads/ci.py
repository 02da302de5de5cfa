"""A CI system's pushes: many concurrent skopeo pushes of small images sharing layers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..client import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from . import Case, CaseResult, Metric, Target, Workload, register
from .skopeo import _gzip, _tar_one_file, skopeo_copy

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

KiB = 1 << 10
PIPELINES = 8
"""Concurrent pushers (CI jobs), each pushing its images one after another."""
LAYERS = 6
SHARED = 3
"""Layers of each image taken from a pool shared by every image of the run (base layers)."""
SHARED_POOL = 6
LAYER_SIZE = (10 * KiB, 200 * KiB)


def _build_layout(path: Path, images: int, run_seed: int, pipeline: int) -> int:
    """One OCI layout holding *images* tagged images; returns the bytes of their blobs."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    total = 0

    def put(data: bytes) -> tuple[str, int]:
        nonlocal total
        hexdigest = hashlib.sha256(data).hexdigest()
        target = blobs / hexdigest
        if not target.exists():
            target.write_bytes(data)
        total += len(data)
        return "sha256:" + hexdigest, len(data)

    def layer(seed: str) -> tuple[tuple[str, int], str]:
        rng = random.Random(seed)
        tar = _tar_one_file("app/data.bin", rng.randbytes(rng.randint(*LAYER_SIZE)))
        return put(_gzip(tar)), "sha256:" + hashlib.sha256(tar).hexdigest()

    entries = []
    rng = random.Random(f"{run_seed}/{pipeline}")
    for image in range(images):
        picked = rng.sample(range(SHARED_POOL), SHARED)
        seeds = [f"{run_seed}/shared/{n}" for n in picked]
        seeds += [f"{run_seed}/{pipeline}/{image}/{n}" for n in range(LAYERS - SHARED)]
        built = [layer(seed) for seed in seeds]
        config = put(
            json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Cmd": ["/bin/true"], "Labels": {"build": f"{pipeline}-{image}"}},
                    "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in built]},
                }
            ).encode()
        )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
                "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for (d, s), _ in built],
            }
        ).encode()
        digest, size = put(manifest)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": f"img{image}"},
            }
        )
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return total


@register
class CiPush(Workload):
    name = "ci-push"
    title = "CI pushes"
    description = (
        f"{PIPELINES} concurrent pipelines, each skopeo-pushing its images one after another "
        f"(each {LAYERS} gzip layers of 10-200 KiB, {SHARED} of them from a pool of "
        f"{SHARED_POOL} shared by all images, a config and a manifest); new content every run."
    )
    metrics = (
        Metric("seconds", "wall time", "s", False, digits=2),
        Metric("images_s", "images pushed", "images/s", True, digits=1, chart=False),
    )
    one_worker = True

    def images(self, ctx: Context) -> int:
        return 5 if ctx.quick else 20

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"{PIPELINES}x{self.images(ctx)} images")]

    def layouts(self, ctx: Context, run: int) -> list[Path]:
        """The pipelines' OCI layouts of *run* (built once per benchmark run)."""
        paths = []
        for pipeline in range(PIPELINES):
            path = ctx.workdir / "images" / f"ci-{run}" / f"p{pipeline}"
            marker = path / "size"
            if not marker.exists():
                shutil.rmtree(path, ignore_errors=True)
                size = _build_layout(
                    path / "layout", self.images(ctx), ctx.seed * 1000 + run, pipeline
                )
                marker.write_text(str(size))
            paths.append(path / "layout")
        return paths

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        for run in range(ctx.runs):
            await asyncio.to_thread(self.layouts, ctx, run)

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        count = self.images(ctx)

        async def pipeline(index: int, layout: Path) -> None:
            home = ctx.workdir / "scratch" / server.kind / f"ci-{run}-{index}"
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            for image in range(count):
                await skopeo_copy(
                    f"oci:{layout}:img{image}",
                    f"docker://{server.host}/ci/run{run}/app{index}:img{image}",
                    home,
                )
            shutil.rmtree(home, ignore_errors=True)

        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(pipeline(i, p) for i, p in enumerate(self.layouts(ctx, run))))
        seconds = loop.time() - start
        return {"seconds": seconds, "images_s": PIPELINES * count / seconds}

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        c, d = result.median("cargohold", "seconds"), result.median("distribution", "seconds")
        if c is None or d is None:
            return []
        return [
            Target(
                f"{self.title} {case.label}: >= 1.5x Distribution",
                f"{c:,.2f} s ({d / c:.2f}x)",
                f"<= {d / 1.5:,.2f} s",
                d / c >= 1.5,
            )
        ]
