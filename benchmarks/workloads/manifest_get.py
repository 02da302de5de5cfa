"""Manifest GET by tag and by digest under wrk at concurrency 64."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..client import ACCEPT_MANIFESTS, OCI_MANIFEST, BenchError, SmallImage, session, sha256
from ..wrk import run_wrk
from . import Case, CaseResult, Metric, Target, Workload, register
from .blobs import fmt

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

REPO = "bench/manifests/get"
CONNECTIONS = 64


class _ManifestGet(Workload):
    one_worker = True
    by = ""
    metrics = (
        Metric("req_s", "requests/s", "req/s", True, limits=("nginx_small_req_s",), digits=0),
        Metric("cpu_us_per_req", "server CPU per request", "µs", False, digits=0),
        Metric("latency_p99_ms", "p99 latency", "ms", False, digits=2, chart=False),
        Metric("errors", "errors (non-2xx, socket)", "", False, digits=0, chart=False),
    )

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(f"c{CONNECTIONS} {ctx.get_duration:g}s", {"duration": ctx.get_duration})]

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        image = SmallImage.make()
        body = image.manifest(purpose="manifest-get")
        digest = sha256(body)
        async with session(4) as http:
            await image.push_blobs(http, server.url, REPO)
            async with http.put(
                f"{server.url}/v2/{REPO}/manifests/latest",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            ) as resp:
                if resp.status != 201:
                    raise BenchError(f"manifest PUT answered {resp.status}: {await resp.text()}")
            for ref in ("latest", digest):
                async with http.get(
                    f"{server.url}/v2/{REPO}/manifests/{ref}", headers={"Accept": ACCEPT_MANIFESTS}
                ) as resp:
                    got = await resp.read()
                    if resp.status != 200 or got != body:
                        raise BenchError(f"GET manifest {ref} answered {resp.status} {got[:200]!r}")
                    if resp.headers.get("Content-Type") != OCI_MANIFEST:
                        raise BenchError(f"GET manifest {ref}: Content-Type {resp.content_type}")
        return {"tag": "latest", "digest": digest}

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        ref = state[self.by]
        return await run_wrk(
            f"{server.url}/v2/{REPO}/manifests/{ref}",
            connections=CONNECTIONS,
            threads=ctx.wrk_threads,
            duration=case.params["duration"],
        )

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_us_per_req"] = 1e6 * values["server_cpu_s"] / max(values["requests"], 1)

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        c, d = result.median("cargohold", "req_s"), result.median("distribution", "req_s")
        cc = result.median("cargohold", "cpu_us_per_req")
        dc = result.median("distribution", "cpu_us_per_req")
        if None in (c, d, cc, dc):
            return []
        assert c is not None and d is not None and cc is not None and dc is not None
        return [
            Target(
                f"{self.title}: >= 3x Distribution's req/s",
                f"{fmt(c, 0)} req/s ({c / d:.2f}x)",
                f">= {fmt(3 * d, 0)} req/s",
                c >= 3 * d,
            ),
            Target(
                f"{self.title}: <= 1/3 of Distribution's CPU per request",
                f"{fmt(cc, 0)} µs/req ({cc / dc:.2f}x)",
                f"<= {fmt(dc / 3, 0)} µs/req",
                cc <= dc / 3,
            ),
        ]


@register
class ManifestGetTag(_ManifestGet):
    name = "manifest-get-tag"
    title = "Manifest GET by tag"
    description = (
        f"wrk, {CONNECTIONS} connections, GET /v2/<repo>/manifests/latest with the "
        "clients' Accept header (lua/manifest_get.lua); body and digest checked once first."
    )
    by = "tag"


@register
class ManifestGetDigest(_ManifestGet):
    name = "manifest-get-digest"
    title = "Manifest GET by digest"
    description = f"As manifest-get-tag, GET /v2/<repo>/manifests/sha256:... ({CONNECTIONS} conns)."
    by = "digest"
