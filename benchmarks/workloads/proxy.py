"""Pull-through caching: Cargohold's upstreams vs Distribution 2.8 in proxy mode.

One upstream Distribution (an open registry on its own port, started in ``begin``) holds
every image; Cargohold pulls through it with an upstream of registry ``bench/proxy``
(prefix ``bench/proxy``, so both servers ask the upstream for the same names) and
Distribution with ``proxy: remoteurl:``. Each run pulls, with skopeo, a 5-layer image
that neither server has seen (cold) and one both cached during setup (warm); it times
the first byte of a cold big blob through the server and straight from the upstream;
Cargohold also pulls the warm image pushed to a plain registry of its own (local), which
is what a cache hit should cost, and skopeo copies the warm image from one layout on disk
to another (``floor_s``): the client's own share of a pull, which bounds the warm ratio
any server can reach. First bytes are timed to the first ``recv`` of the body.

Because skopeo's own work dominates a warm pull, each run then pulls the warm image again
with a lean HTTP client (``client.pull_image``: manifest by tag, then config and layers
at once, each on its own connection and thread, hashed and dropped, nothing written):
``lean_pulls`` times one at a time, alternating on Cargohold between the cached and the
local copy (``lean_*``: median per run, and the server's, upstream's and client's CPU per
warm pull), then as ``PULLERS`` concurrent pullers (``conc_*``: warm pulls per second and
CPU per pull). ``lean_floor_ms`` is that client's own share: hashing the same blobs,
already in memory, each on its own thread. The warm goals are judged one pull at a time
(``lean_warm_ms``, targets named ``GOAL:``): the wait a user has for a warm pull. The
concurrent rate is reported beside it with its ceiling, but cannot judge: on a machine of
few cores the pullers' own hashing takes most of the CPU, so even a server costing
nothing would not reach 1.5x there (session 4: at most 1.49x on 2 cores). This module
never measures against anything but 127.0.0.1 and never leaves a server running (the
runner stops services on any exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import statistics
import time
from typing import TYPE_CHECKING, Any

from ..client import OCI_MANIFEST, BenchError, MiB, pull_image
from ..harness import Distribution
from . import Case, CaseResult, Metric, Target, Workload, register
from .skopeo import build_oci_image, skopeo_copy

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

LAYERS = 5
PULLERS = 4
"""Concurrent lean pullers in the throughput figures (``conc_*``)."""
CORES = len(os.sched_getaffinity(0))
"""CPUs this benchmark (clients and servers together) may use: the concurrent ceiling."""
PREFIX = "bench/proxy"
LOCAL = "bench/local"
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def _first_byte(host: str, path: str, accept: str | None = None) -> tuple[float, float, bytes]:
    """GET ``path``: (seconds to the first body byte, seconds to the last, the body's
    first bytes). The first read is one ``recv`` (``read1``: whatever arrived, not a full
    buffer), so the first figure is the time to the first byte; the rest is read into a
    reused buffer, never held whole."""
    hostname, port = host.split(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=600)
    try:
        headers = {"Accept": accept} if accept else {}
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {host}{path} -> {resp.status}: {resp.read(500)!r}")
        head = resp.read1(65536)
        first = time.perf_counter() - start
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := resp.readinto(view):
            if len(head) < 65536:
                head += bytes(view[: min(n, 65536 - len(head))])
        return first, time.perf_counter() - start, head
    finally:
        conn.close()


@register
class ProxyPull(Workload):
    name = "proxy-pull"
    title = "pull-through cache"
    description = (
        "skopeo pulls through each server from one upstream Distribution: a cold 5-layer "
        "image (never pulled before), a warm one (cached during setup), and on Cargohold the "
        "same image pushed locally; skopeo copying the warm image from one layout on disk to "
        "another (no server: the client's own share of a pull); time to first byte of a cold "
        "big blob, through the server and straight from the upstream; then the warm (and "
        "local) image pulled again several times by a lean HTTP client (hash and drop, "
        "nothing written): the servers' own speed without skopeo's cost; one pull at a time and as "
        f"{PULLERS} concurrent pullers, with each server's CPU per pull."
    )
    metrics = (
        Metric("cold_s", "skopeo: cold pull (5 layers)", "s", False, digits=2),
        Metric("warm_s", "skopeo: warm pull (cached)", "s", False, digits=2),
        Metric("local_s", "skopeo: same image pushed locally", "s", False, digits=2, chart=False),
        Metric("floor_s", "skopeo alone: layout to layout", "s", False, digits=2, chart=False),
        Metric("cold_ttfb_ms", "cold big blob: first byte", "ms", False, digits=0),
        Metric("cold_blob_s", "cold big blob: whole", "s", False, digits=2),
        Metric("upstream_ttfb_ms", "upstream's own first byte", "ms", False, digits=0, chart=False),
        Metric("lean_warm_ms", "lean HTTP client: warm pull (cached)", "ms", False, digits=0),
        Metric(
            "lean_local_ms",
            "lean HTTP client: same image pushed locally",
            "ms",
            False,
            digits=0,
            chart=False,
        ),
        Metric(
            "lean_floor_ms",
            "lean HTTP client alone: hashing the blobs",
            "ms",
            False,
            digits=0,
            chart=False,
        ),
        Metric("lean_cpu_ms", "server CPU per warm pull", "ms", False, digits=1),
        Metric(
            "lean_upstream_cpu_ms",
            "upstream's CPU per warm pull",
            "ms",
            False,
            digits=1,
            chart=False,
        ),
        Metric(
            "lean_client_cpu_ms", "client CPU per warm pull", "ms", False, digits=0, chart=False
        ),
        Metric("conc_pulls_s", f"{PULLERS} concurrent pullers: warm pulls", "/s", True, digits=2),
        Metric(
            "conc_local_pulls_s",
            f"{PULLERS} concurrent pullers: same image pushed locally",
            "/s",
            True,
            digits=2,
            chart=False,
        ),
        Metric(
            "conc_cpu_ms",
            f"{PULLERS} concurrent pullers: server CPU per warm pull",
            "ms",
            False,
            digits=1,
        ),
        Metric(
            "conc_upstream_cpu_ms",
            f"{PULLERS} concurrent pullers: upstream's CPU per warm pull",
            "ms",
            False,
            digits=1,
            chart=False,
        ),
    )

    def __init__(self) -> None:
        self.upstream: Distribution | None = None
        self.warm_blobs: list[bytes] = []

    # -- the images -------------------------------------------------------------------------
    def sizes(self, ctx: Context) -> list[int]:
        low, high = (2, 8) if ctx.quick else (8, 32)
        rng = random.Random(ctx.seed)
        return [rng.randint(low * MiB, high * MiB) for _ in range(LAYERS)]

    def lean_pulls(self, ctx: Context) -> int:
        """Lean-client pulls of the warm image per run and server (each copy on Cargohold)."""
        return 5 if ctx.quick else 11

    def big_size(self, ctx: Context) -> int:
        return (64 if ctx.quick else 200) * MiB

    def images(self, ctx: Context) -> list[tuple[str, list[int]]]:
        """(name at the upstream, layer sizes): warm, and one cold and one big per run."""
        found = [("warm", self.sizes(ctx))]
        for run in range(ctx.runs):
            found.append((f"cold{run}", self.sizes(ctx)))
            found.append((f"big{run}", [self.big_size(ctx)]))
        return found

    def cases(self, ctx: Context) -> list[Case]:
        low, high = (2, 8) if ctx.quick else (8, 32)
        return [Case(f"{LAYERS} layers {low}-{high} MiB, blob {self.big_size(ctx) // MiB} MiB")]

    async def begin(self, ctx: Context) -> None:
        self.upstream = Distribution(ctx.workdir / "proxy-upstream")
        ctx.start_service(self.upstream)
        home = ctx.workdir / "proxy-seed-home"
        for name, sizes in self.images(ctx):
            layout = ctx.workdir / "proxy-images" / name
            # Content unique to this benchmark run: no cache anywhere has seen it.
            seed = random.Random(f"{ctx.seed}/{name}/{secrets.token_hex(4)}").getrandbits(32)
            await asyncio.to_thread(build_oci_image, layout, sizes, seed)
            home.mkdir(parents=True, exist_ok=True)
            await skopeo_copy(
                f"oci:{layout}:latest", f"docker://{self.upstream.host}/{PREFIX}/{name}:1", home
            )
            if name != "warm":
                shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        self.warm_blobs = []

    async def end(self, ctx: Context) -> None:
        self.warm_blobs = []
        if self.upstream is not None:
            ctx.stop_service(self.upstream)
            self.upstream = None

    def server_options(self, ctx: Context, kind: str, case: Case) -> dict[str, Any]:
        assert self.upstream is not None, "begin() starts the upstream"
        if kind == "distribution":
            return {"config_extra": f"proxy:\n  remoteurl: {self.upstream.url}\n"}
        return {
            "config": (
                "[secrets]\n"
                f'key = "bench-{secrets.token_urlsafe(24)}"\n'
                "[upstreams]\n"
                'allow_networks = ["127.0.0.0/8"]\n'
                "[[upstreams.registries]]\n"
                f'registry = "{PREFIX}"\n'
                'name = "upstream"\n'
                f'url = "{self.upstream.url}"\n'
                f'prefix = "{PREFIX}"\n'
                'tag_ttl = "1h"\n'
            )
        }

    # -- setup and runs ---------------------------------------------------------------------
    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        home = ctx.workdir / "scratch" / server.kind / "proxy-setup"
        home.mkdir(parents=True, exist_ok=True)
        await skopeo_copy(
            f"docker://{server.host}/{PREFIX}/warm:1", f"oci:{home / 'warm'}:latest", home
        )
        if server.kind == "cargohold":
            layout = ctx.workdir / "proxy-images" / "warm"
            await skopeo_copy(
                f"oci:{layout}:latest", f"docker://{server.host}/{LOCAL}/warm:1", home
            )
        shutil.rmtree(home, ignore_errors=True)
        return None

    async def _pull(self, ctx: Context, server: Server, ref: str, tag: str) -> float:
        home = ctx.workdir / "scratch" / server.kind / tag
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        try:
            seconds = await skopeo_copy(
                f"docker://{server.host}/{ref}", f"oci:{home / 'out'}:latest", home
            )
            if not (home / "out" / "index.json").exists():
                raise BenchError(f"skopeo pull of {ref} wrote no index.json")
            return seconds
        finally:
            shutil.rmtree(home, ignore_errors=True)

    async def _floor(self, ctx: Context, run: int) -> float:
        """skopeo copying the warm image from a layout on disk to a fresh one, no server:
        the client's own cost of a pull (hashing, writing), which no registry can remove."""
        home = ctx.workdir / "scratch" / "floor" / str(run)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        try:
            layout = ctx.workdir / "proxy-images" / "warm"
            return await skopeo_copy(f"oci:{layout}:latest", f"oci:{home / 'out'}:latest", home)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    async def _big_blob(self, server: Server, run: int) -> dict[str, float]:
        assert self.upstream is not None
        repo = f"{PREFIX}/big{run}"
        _, _, body = await asyncio.to_thread(
            _first_byte, server.host, f"/v2/{repo}/manifests/1", ACCEPT
        )
        layer = json.loads(body)["layers"][0]["digest"]
        ttfb, whole, _ = await asyncio.to_thread(
            _first_byte, server.host, f"/v2/{repo}/blobs/{layer}"
        )
        upstream_ttfb, _, _ = await asyncio.to_thread(
            _first_byte, self.upstream.host, f"/v2/{repo}/blobs/{layer}"
        )
        return {
            "cold_ttfb_ms": ttfb * 1000,
            "cold_blob_s": whole,
            "upstream_ttfb_ms": upstream_ttfb * 1000,
        }

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        values = {
            "cold_s": await self._pull(ctx, server, f"{PREFIX}/cold{run}:1", f"cold{run}"),
            "warm_s": await self._pull(ctx, server, f"{PREFIX}/warm:1", f"warm{run}"),
        }
        if server.kind == "cargohold":
            values["local_s"] = await self._pull(ctx, server, f"{LOCAL}/warm:1", f"local{run}")
            values["floor_s"] = await self._floor(ctx, run)
        values.update(await self._big_blob(server, run))
        values.update(await self._lean(ctx, server, run))
        values.update(await self._concurrent(ctx, server, run))
        if server.kind == "cargohold":
            values["lean_floor_ms"] = await self._lean_floor(ctx)
        return values

    async def _lean_floor(self, ctx: Context) -> float:
        """Median milliseconds of hashing the warm image's config and layers from memory,
        each on its own thread in 1 MiB steps, as ``pull_image`` hashes them: the lean
        client's own cost of a pull, which bounds the warm ratio any server can reach
        with it."""
        if not self.warm_blobs:
            blobs = ctx.workdir / "proxy-images" / "warm" / "blobs" / "sha256"
            self.warm_blobs = [path.read_bytes() for path in sorted(blobs.iterdir())]

        def digest(blob: bytes) -> str:
            h = hashlib.sha256()
            view = memoryview(blob)
            for offset in range(0, len(blob), MiB):
                h.update(view[offset : offset + MiB])
            return h.hexdigest()

        times = []
        with concurrent.futures.ThreadPoolExecutor(len(self.warm_blobs)) as pool:
            for _ in range(3):
                start = time.perf_counter()
                list(pool.map(digest, self.warm_blobs))
                times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    def _cpu(self, server: Server) -> tuple[float, float, float]:
        """(server CPU s, upstream CPU s, this process's CPU s, its threads included)."""
        assert server.tree is not None and self.upstream is not None
        assert self.upstream.tree is not None
        return server.tree.cpu_seconds(), self.upstream.tree.cpu_seconds(), time.process_time()

    async def _lean(self, ctx: Context, server: Server, run: int) -> dict[str, float]:
        """Median milliseconds of ``lean_pulls`` warm pulls by the lean HTTP client, one at
        a time (and, on Cargohold, as many of the local copy, alternating which goes first),
        with the server's, the upstream's and the client's CPU per warm pull."""
        base = f"http://{server.host}"
        refs = {"lean_warm_ms": f"{PREFIX}/warm"}
        if server.kind == "cargohold":
            refs["lean_local_ms"] = f"{LOCAL}/warm"
        times: dict[str, list[float]] = {key: [] for key in refs}
        spent = [0.0, 0.0, 0.0]
        for i in range(self.lean_pulls(ctx)):
            order = list(refs.items())
            if (i + run) % 2:
                order.reverse()
            for key, repo in order:
                before = self._cpu(server)
                pulled = await pull_image(base, repo, "1")
                if key == "lean_warm_ms":
                    spent = [
                        t + b - a for t, a, b in zip(spent, before, self._cpu(server), strict=True)
                    ]
                if pulled.blobs != LAYERS + 1:
                    raise BenchError(f"lean pull of {repo}: {pulled.blobs} blobs")
                times[key].append(pulled.seconds * 1000)
        found = {key: statistics.median(values) for key, values in times.items()}
        pulls = self.lean_pulls(ctx)
        found["lean_cpu_ms"] = spent[0] * 1000 / pulls
        found["lean_upstream_cpu_ms"] = spent[1] * 1000 / pulls
        found["lean_client_cpu_ms"] = spent[2] * 1000 / pulls
        return found

    def concurrent_pulls(self, ctx: Context) -> int:
        """Warm pulls each of the ``PULLERS`` concurrent pullers makes per run."""
        return 2 if ctx.quick else 3

    async def _concurrent(self, ctx: Context, server: Server, run: int) -> dict[str, float]:
        """``PULLERS`` lean pullers at once, each pulling the warm image
        ``concurrent_pulls`` times back to back: warm pulls per second, with the server's
        and the upstream's CPU per pull; on Cargohold the local copy the same way (which
        goes first alternates by run). Every byte is still received and hashed, but with
        the machine's cores busy, what a server costs per pull shows in the rate instead
        of hiding behind a single client's waits."""
        base = f"http://{server.host}"
        refs = {"conc_pulls_s": f"{PREFIX}/warm"}
        if server.kind == "cargohold":
            refs["conc_local_pulls_s"] = f"{LOCAL}/warm"
        order = list(refs.items())
        if run % 2:
            order.reverse()
        each = self.concurrent_pulls(ctx)
        found: dict[str, float] = {}
        with concurrent.futures.ThreadPoolExecutor(PULLERS * (LAYERS + 1)) as pool:

            async def puller(repo: str) -> None:
                for _ in range(each):
                    pulled = await pull_image(base, repo, "1", pool)
                    if pulled.blobs != LAYERS + 1:
                        raise BenchError(f"lean pull of {repo}: {pulled.blobs} blobs")

            for key, repo in order:
                before = self._cpu(server)
                start = time.perf_counter()
                await asyncio.gather(*(puller(repo) for _ in range(PULLERS)))
                wall = time.perf_counter() - start
                after = self._cpu(server)
                found[key] = PULLERS * each / wall
                if key == "conc_pulls_s":
                    found["conc_cpu_ms"] = (after[0] - before[0]) * 1000 / (PULLERS * each)
                    found["conc_upstream_cpu_ms"] = (after[1] - before[1]) * 1000 / (PULLERS * each)
        return found

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        found: list[Target] = []
        cw, dw = result.median("cargohold", "warm_s"), result.median("distribution", "warm_s")
        floor = result.median("cargohold", "floor_s")
        if cw is not None and dw is not None:
            # The best any server could do is skopeo's own cost (floor_s): dw / floor.
            ceiling = f"; at most {dw / floor:.2f}x with a free server" if floor else ""
            found.append(
                Target(
                    "skopeo: proxy warm pull >= 1.5x Distribution's proxy",
                    f"{cw:.2f} s ({dw / cw:.2f}x{ceiling})",
                    f"<= {dw / 1.5:.2f} s",
                    cw <= dw / 1.5,
                )
            )
        local = result.median("cargohold", "local_s")
        if cw is not None and local is not None:
            found.append(
                Target(
                    "skopeo: proxy warm pull within 10% of Cargohold serving local content",
                    f"{cw:.2f} s ({cw / local:.2f}x local)",
                    f"<= {1.1 * local:.2f} s",
                    cw <= 1.1 * local,
                )
            )
        found.extend(self._lean_targets(result))
        cc, dc = result.median("cargohold", "cold_s"), result.median("distribution", "cold_s")
        if cc is not None and dc is not None:
            found.append(
                Target(
                    "skopeo: proxy cold pull no slower than Distribution's proxy",
                    f"{cc:.2f} s ({cc / dc:.2f}x)",
                    f"<= {dc:.2f} s",
                    cc <= dc,
                )
            )
        ct = result.median("cargohold", "cold_ttfb_ms")
        ut = result.median("cargohold", "upstream_ttfb_ms")
        if ct is not None and ut:
            found.append(
                Target(
                    f"proxy cold {self.big_size(ctx) // MiB} MiB blob: first byte < 2x upstream's",
                    f"{ct:.0f} ms ({ct / ut:.2f}x)",
                    f"< {2 * ut:.0f} ms",
                    ct < 2 * ut,
                )
            )
        return found

    def _lean_targets(self, result: CaseResult) -> list[Target]:
        """The two warm goals from the lean HTTP client: judged one pull at a time (see
        ``GOAL``), and again as ``PULLERS`` concurrent pullers, with each server's CPU.

        Each figure states its ceiling, what it would be with a server that costs
        nothing: one at a time, Distribution's time over the client's own hashing; with
        concurrent pullers, the rate the machine's cores allow once the Cargohold run's
        CPU less its server's (client, kernel, upstream) is all a pull costs. That one
        assumes the cores are the benchmark's alone: on a busy machine it understates."""
        found: list[Target] = []
        cw = result.median("cargohold", "lean_warm_ms")
        dw = result.median("distribution", "lean_warm_ms")
        local_ms = result.median("cargohold", "lean_local_ms")
        floor = result.median("cargohold", "lean_floor_ms")
        if cw and dw:
            detail = ""
            if floor:
                # What is left once the client's own hashing is taken out: the servers' share.
                detail = f"; at most {dw / floor:.2f}x with a free server"
                if cw > floor and dw > floor:
                    detail += (
                        f"; less the client's {floor:.0f} ms: {cw - floor:.0f} vs "
                        f"{dw - floor:.0f} ms, {(dw - floor) / (cw - floor):.2f}x"
                    )
            found.append(
                Target(
                    "GOAL: proxy warm pull >= 1.5x Distribution's proxy "
                    "(lean HTTP client, one pull at a time)",
                    f"{cw:.0f} ms ({dw / cw:.2f}x; Distribution {dw:.0f} ms{detail})",
                    f"<= {dw / 1.5:.0f} ms",
                    cw <= dw / 1.5,
                )
            )
        if cw and local_ms:
            found.append(
                Target(
                    "GOAL: proxy warm pull within 10% of Cargohold local "
                    "(lean HTTP client, one pull at a time)",
                    f"{cw:.0f} ms ({cw / local_ms:.2f}x local {local_ms:.0f} ms)",
                    f"<= {1.1 * local_ms:.0f} ms",
                    cw <= 1.1 * local_ms,
                )
            )
        cr, dr = (
            result.median("cargohold", "conc_pulls_s"),
            result.median("distribution", "conc_pulls_s"),
        )
        c_cpu, d_cpu = (
            result.median("cargohold", "conc_cpu_ms"),
            result.median("distribution", "conc_cpu_ms"),
        )
        d_up = result.median("distribution", "conc_upstream_cpu_ms")
        if cr and dr:
            cpu = ""
            if c_cpu and d_cpu:
                cpu = f"; server CPU per pull {c_cpu:.1f} vs {d_cpu:.1f} ms"
                if d_up is not None:
                    cpu += f" (+{d_up:.1f} ms at the upstream)"
                rest = CORES * 1000 / cr - c_cpu  # ms of the cores per pull not the server's
                if rest > 0:
                    cpu += f"; at most {CORES * 1000 / rest / dr:.2f}x with a free server"
            found.append(
                Target(
                    f"proxy warm pull >= 1.5x Distribution's proxy "
                    f"({PULLERS} concurrent lean pullers, pulls/s)",
                    f"{cr:.2f}/s ({cr / dr:.2f}x; Distribution {dr:.2f}/s{cpu})",
                    f">= {1.5 * dr:.2f}/s",
                    cr >= 1.5 * dr,
                )
            )
        local = result.median("cargohold", "conc_local_pulls_s")
        if cr and local:
            found.append(
                Target(
                    f"proxy warm pull within 10% of Cargohold local "
                    f"({PULLERS} concurrent lean pullers)",
                    f"{cr:.2f}/s ({cr / local:.2f}x local {local:.2f}/s)",
                    f">= {local / 1.1:.2f}/s",
                    cr >= local / 1.1,
                )
            )
        c_one, d_one = (
            result.median("cargohold", "lean_cpu_ms"),
            result.median("distribution", "lean_cpu_ms"),
        )
        if c_one and d_one:
            d_up = result.median("distribution", "lean_upstream_cpu_ms") or 0.0
            c_up = result.median("cargohold", "lean_upstream_cpu_ms") or 0.0
            found.append(
                Target(
                    "server CPU per warm pull (one at a time) <= Distribution's / 1.5",
                    f"{c_one:.1f} ms (+{c_up:.1f} at the upstream) vs {d_one:.1f} ms "
                    f"(+{d_up:.1f} at the upstream): {d_one / c_one:.2f}x less",
                    f"<= {d_one / 1.5:.1f} ms",
                    c_one <= d_one / 1.5,
                )
            )
        return found
