"""Listings: tags/list of a repository with many tags, _catalog of many repositories."""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

from ..client import (
    BenchError,
    SmallImage,
    expect,
    gather_limited,
    mount_blob,
    put_manifest,
    session,
)
from . import Case, CaseResult, Metric, Target, Workload, register
from .blobs import fmt

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

SETUP_CONCURRENCY = 16


class _Listing(Workload):
    one_worker = True
    metrics = (
        Metric("latency_ms", "median latency", "ms", False, digits=2),
        Metric("latency_p90_ms", "p90 latency", "ms", False, digits=2, chart=False),
        Metric("cpu_ms_per_req", "server CPU per request", "ms", False, digits=2),
        Metric("first_ms", "first request of a run", "ms", False, digits=2, chart=False),
    )

    def path(self, case: Case) -> str:
        raise NotImplementedError

    def check(self, case: Case, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        url = server.url + self.path(case)
        latencies = []
        async with session(1) as http:
            start = time.perf_counter()
            async with http.get(url) as resp:  # the correctness check, timed on its own
                self.check(case, json.loads(await expect(resp, 200)))
            first = time.perf_counter() - start
            for _ in range(ctx.listing_requests):
                start = time.perf_counter()
                async with http.get(url) as resp:
                    await expect(resp, 200)
                latencies.append(time.perf_counter() - start)
        latencies.sort()
        return {
            "latency_ms": 1000 * statistics.median(latencies),
            "latency_p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
            "first_ms": 1000 * first,
            "requests": len(latencies) + 1,
        }

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_ms_per_req"] = 1000 * values["server_cpu_s"] / values["requests"]

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        c = result.median("cargohold", "latency_ms")
        d = result.median("distribution", "latency_ms")
        if c is None or d is None:
            return []
        return [
            Target(
                f"{self.title} {case.label}: latency <= Distribution's",
                f"{fmt(c, 2)} ms ({c / d:.2f}x)",
                f"<= {fmt(d, 2)} ms",
                c <= d,
            )
        ]


@register
class TagsList(_Listing):
    name = "tags-list"
    title = "tags/list"
    description = (
        "Sequential GET /v2/<repo>/tags/list of a repository holding N tags (one manifest "
        "tagged N times during setup), back to back on one connection; median and p90 over "
        "the requests of a run, and the run's first request on its own."
    )
    repo = "bench/listing/tags"

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"{ctx.tag_count} tags", {"count": ctx.tag_count})]

    def path(self, case: Case) -> str:
        return f"/v2/{self.repo}/tags/list"

    def check(self, case: Case, body: dict[str, Any]) -> None:
        if len(body.get("tags") or []) != case.params["count"]:
            raise BenchError(f"tags/list returned {len(body.get('tags') or [])} tags")

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        image = SmallImage.make()
        body = image.manifest()
        async with session(SETUP_CONCURRENCY) as http:
            await image.push_blobs(http, server.url, self.repo)
            jobs = [
                (lambda i=i: put_manifest(http, server.url, self.repo, f"v{i:05d}", body))
                for i in range(case.params["count"])
            ]
            await gather_limited(SETUP_CONCURRENCY, jobs)


@register
class Catalog(_Listing):
    name = "catalog"
    title = "_catalog"
    description = (
        "Sequential GET /v2/_catalog?n=1000 of a registry holding N repositories (blobs "
        "mounted from a first repository, one manifest each, during setup), back to back "
        "on one connection (short-lived listing caches answer most of them)."
    )

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"{ctx.repo_count} repos", {"count": ctx.repo_count})]

    def path(self, case: Case) -> str:
        return "/v2/_catalog?n=1000"

    def check(self, case: Case, body: dict[str, Any]) -> None:
        if len(body.get("repositories") or []) != case.params["count"]:
            raise BenchError(f"_catalog returned {len(body.get('repositories') or [])} names")

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        image = SmallImage.make()
        body = image.manifest()
        first = "bench/catalog/r00000"
        (config, _), [(layer, _)] = image.refs
        async with session(SETUP_CONCURRENCY) as http:
            await image.push_blobs(http, server.url, first)
            await put_manifest(http, server.url, first, "latest", body)

            async def fill(i: int) -> None:
                repo = f"bench/catalog/r{i:05d}"
                await mount_blob(http, server.url, repo, first, config, image.config)
                await mount_blob(http, server.url, repo, first, layer, image.layer)
                await put_manifest(http, server.url, repo, "latest", body)

            jobs = [(lambda i=i: fill(i)) for i in range(1, case.params["count"])]
            await gather_limited(SETUP_CONCURRENCY, jobs)
