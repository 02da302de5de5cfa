"""What signing costs a push: manifest PUT throughput with signing off, cosign only, and both.

Cargohold only (Distribution does not sign). Signing runs after the manifest is
stored, through the manifest feed's nudge and a worker task in the same process:
the worker waits for a pause in the pushes but never more than a second, so over
a stream of pushes longer than that it competes with the PUTs for the same CPU,
and ``manifests_s`` shows it. ``signed_s`` is the rate at which every pushed tag
carries its signatures, from the first PUT until the last signature is visible,
and ``lag_s`` how long after the last PUT that was: signing deferred is not
free, so all three count. ``put_cpu_ms`` is the server's CPU per manifest while the
PUTs run (``cpu_ms_per_manifest`` adds the signing after them): beside the off case it
shows what signing took from the burst itself, which a loaded machine's throughput
figures hide. The setup signs one manifest first, so the keys exist
(a registry made with tenancy gets them at creation; this open-mode server
would make them on first use) and the runs measure signing alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from ..client import SmallImage, gather_limited, put_manifest, session
from . import Case, CaseResult, Metric, Target, Workload, register

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

CONCURRENCY = 16
MODES = {
    "off": "enabled = false",
    "cosign": "enabled = true\ncosign = true\nsimple = false",
    "both": "enabled = true\ncosign = true\nsimple = true",
}


@register
class SigningManifestPush(Workload):
    name = "signing-manifest-push"
    title = "Manifest pushes with signing"
    description = (
        f"Distinct OCI manifests PUT by tag at concurrency {CONCURRENCY} with [signing] off, "
        "cosign only (ECDSA P-256) and cosign + simple signing (RSA 3072 via gpg); signing "
        "happens after the PUT, in a worker task of the same process."
    )
    servers = ("cargohold",)
    metrics = (
        Metric("manifests_s", "manifests pushed", "manifests/s", True),
        Metric("signed_s", "manifests pushed and signed", "manifests/s", True),
        Metric("lag_s", "last signature after the last PUT", "s", False, digits=2),
        Metric("cpu_ms_per_manifest", "server CPU per manifest", "ms", False, digits=2),
        Metric("put_cpu_ms", "server CPU per manifest while the PUTs run", "ms", False, digits=2),
    )
    repo = "bench/signing/push"

    def cases(self, ctx: Context) -> list[Case]:
        # Long enough (several seconds of PUTs) for the worker to sign while pushes go on.
        count = max(100, ctx.manifest_push_count * 2)
        return [Case(mode, {"mode": mode, "count": count}) for mode in MODES]

    def server_options(self, ctx: Context, kind: str, case: Case) -> dict[str, Any]:
        return {"config": f"[signing]\n{MODES[case.params['mode']]}\n"}

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        image = SmallImage.make()
        async with session(4) as http:
            await image.push_blobs(http, server.url, self.repo)
            if case.params["mode"] != "off":
                warm = image.manifest(run="setup", index="warm")
                digest = await put_manifest(http, server.url, self.repo, "warm", warm)
                await _wait_signed(
                    http, server.url, self.repo, [digest], case.params["mode"] == "both"
                )
        return image

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        image: SmallImage = state
        count, mode = case.params["count"], case.params["mode"]
        nonce = os.urandom(8).hex()
        bodies = [image.manifest(run=nonce, index=str(i)) for i in range(count)]
        async with session(CONCURRENCY) as http:
            jobs = [
                (lambda i=i, b=b: put_manifest(http, server.url, self.repo, f"r{run}-{i}", b))
                for i, b in enumerate(bodies)
            ]
            assert server.tree is not None
            cpu0 = server.tree.cpu_seconds()
            start = time.perf_counter()
            digests = await gather_limited(CONCURRENCY, jobs)
            seconds = time.perf_counter() - start
            put_cpu = server.tree.cpu_seconds() - cpu0
            if mode != "off":
                await _wait_signed(http, server.url, self.repo, digests, mode == "both")
            signed = time.perf_counter() - start
        return {
            "manifests_s": count / seconds,
            "signed_s": count / signed,
            "lag_s": signed - seconds,
            "seconds": seconds,
            "put_cpu_ms": 1000 * put_cpu / count,
        }

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_ms_per_manifest"] = 1000 * values["server_cpu_s"] / case.params["count"]

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        return []


async def _wait_signed(
    http: Any, base_url: str, repo: str, digests: list[str], simple: bool
) -> None:
    """Until every manifest has its cosign attachment (and a simple signature); a run
    whose signatures never all appear fails rather than report a rate."""
    deadline = time.monotonic() + 600
    for digest in digests:
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{digest} was not signed within 600 s")
            tag = "sha256-" + digest.split(":", 1)[1] + ".sig"
            async with http.head(f"{base_url}/v2/{repo}/manifests/{tag}") as resp:
                ok = resp.status == 200
            if ok and simple:
                url = f"{base_url}/extensions/v2/{repo}/signatures/{digest}"
                async with http.get(url) as resp:
                    ok = resp.status == 200 and bool((await resp.json())["signatures"])
            if ok:
                break
            await asyncio.sleep(0.05)
