"""Many small writes: 4 KiB blob pushes and manifest pushes, concurrently."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..client import SmallImage, gather_limited, push_blob, put_manifest, session, sha256
from . import Case, CaseResult, Metric, Target, Workload, register
from .blobs import fmt

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

CONCURRENCY = 16


def _ratio_target(
    title: str, result: CaseResult, metric: str, unit: str, factor: float
) -> list[Target]:
    c, d = result.median("cargohold", metric), result.median("distribution", metric)
    if c is None or d is None:
        return []
    return [
        Target(
            f"{title}: >= {factor:g}x Distribution",
            f"{fmt(c)} {unit} ({c / d:.2f}x)",
            f">= {fmt(factor * d)} {unit}",
            c >= factor * d,
        )
    ]


def _p99_target(title: str, result: CaseResult) -> list[Target]:
    """The gates ask for a p99 latency no worse than Distribution's."""
    c, d = (result.median(s, "latency_p99_ms") for s in ("cargohold", "distribution"))
    if c is None or d is None:
        return []
    return [
        Target(f"{title}: p99 no worse than Distribution", f"{c:.1f} ms", f"<= {d:.1f} ms", c <= d)
    ]


async def _timed(latencies: list[float], operation: Awaitable[Any]) -> None:
    began = time.perf_counter()
    await operation
    latencies.append(time.perf_counter() - began)


def _p99_ms(latencies: list[float]) -> float:
    return 1000 * statistics.quantiles(latencies, n=100)[98]


@register
class SmallBlobs(Workload):
    one_worker = True
    name = "small-blobs"
    title = "Small-blob pushes"
    description = (
        f"Distinct 4 KiB blobs at concurrency {CONCURRENCY}, each pushed as clients do: "
        "HEAD /blobs/<digest> (404), POST /blobs/uploads/, PUT ?digest= with the body."
    )
    metrics = (
        Metric("blobs_s", "blobs pushed", "blobs/s", True),
        Metric("cpu_ms_per_blob", "server CPU per blob", "ms", False, digits=2),
        # Per push: its HEAD, POST and PUT.
        Metric("latency_p99_ms", "p99 latency", "ms", False, digits=1, chart=False),
    )

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"{ctx.small_blob_count} x 4 KiB", {"count": ctx.small_blob_count})]

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        count = case.params["count"]
        blobs = [os.urandom(4096) for _ in range(count)]
        digests = [sha256(b) for b in blobs]
        repo = f"bench/small/r{run}"
        latencies: list[float] = []
        async with session(CONCURRENCY) as http:
            jobs = [
                (lambda b=b, d=d: _timed(latencies, push_blob(http, server.url, repo, b, d)))
                for b, d in zip(blobs, digests, strict=True)
            ]
            start = time.perf_counter()
            await gather_limited(CONCURRENCY, jobs)
            seconds = time.perf_counter() - start
        return {
            "blobs_s": count / seconds,
            "seconds": seconds,
            "latency_p99_ms": _p99_ms(latencies),
        }

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_ms_per_blob"] = 1000 * values["server_cpu_s"] / case.params["count"]

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        return _ratio_target(self.title, result, "blobs_s", "blobs/s", 3) + _p99_target(
            self.title, result
        )


@register
class ManifestPush(Workload):
    one_worker = True
    name = "manifest-push"
    title = "Manifest pushes"
    description = (
        f"Distinct OCI image manifests (same config and layer, different annotations) "
        f"PUT by tag at concurrency {CONCURRENCY}; the blobs are pushed during setup."
    )
    metrics = (
        Metric("manifests_s", "manifests pushed", "manifests/s", True),
        Metric("cpu_ms_per_manifest", "server CPU per manifest", "ms", False, digits=2),
        # The gate asks for a p99 no worse than Distribution's.
        Metric("latency_p99_ms", "p99 latency", "ms", False, digits=1, chart=False),
    )
    repo = "bench/manifests/push"

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"{ctx.manifest_push_count}", {"count": ctx.manifest_push_count})]

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        image = SmallImage.make()
        async with session(4) as http:
            await image.push_blobs(http, server.url, self.repo)
        return image

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        image: SmallImage = state
        count = case.params["count"]
        nonce = os.urandom(8).hex()
        bodies = [image.manifest(run=nonce, index=str(i)) for i in range(count)]
        latencies: list[float] = []
        async with session(CONCURRENCY) as http:
            jobs = [
                (
                    lambda i=i, b=b: _timed(
                        latencies, put_manifest(http, server.url, self.repo, f"r{run}-{i}", b)
                    )
                )
                for i, b in enumerate(bodies)
            ]
            start = time.perf_counter()
            await gather_limited(CONCURRENCY, jobs)
            seconds = time.perf_counter() - start
        p99 = _p99_ms(latencies)
        return {"manifests_s": count / seconds, "seconds": seconds, "latency_p99_ms": p99}

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_ms_per_manifest"] = 1000 * values["server_cpu_s"] / case.params["count"]

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        found = _ratio_target(self.title, result, "manifests_s", "manifests/s", 2)
        return found + _p99_target(self.title, result)
