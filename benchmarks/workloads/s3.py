"""Object storage (issue 4): big-blob upload and download and a skopeo push/pull with
both registries on the same moto S3 server.

Each workload starts one ``moto_server`` (objects in memory) for all its cases and
stops it at the end; before each case moto is reset (which frees what the previous
case stored) and each server gets a bucket of its own:

- Cargohold: ``--storage s3://BUCKET/cargohold`` with ``[storage.options]``
  ``endpoint_url``, ``key``, ``secret``, ``client_kwargs.region_name`` (s3fs);
- Distribution 2.8.2: its ``s3`` driver with ``regionendpoint`` = moto,
  ``rootdirectory: /distribution``, ``secure: false``, ``v4auth: true`` (the config the
  layout-compatibility test uses), ``AWS_CA_BUNDLE`` unset for its process.

Blob GETs: both registries answer 307 to a presigned moto URL by default (Cargohold's
``storage.redirect`` defaults to true on cloud drivers; Distribution redirects unless
``storage.redirect.disable``). The ``redirect`` cases keep those defaults and the
client follows the redirect (as registry clients do), so the bytes come from moto;
the ``proxied`` cases turn redirects off on both (``redirect = false`` /
``redirect: disable: true``) so each registry streams the object itself. Setup checks
that each server really did what its case says.

moto's own CPU seconds per run are reported (``moto CPU``): on this machine the
emulator, a Python server, shares the two cores with the registry and the client. So
is the number of requests moto served during the run (from its access log; in the
redirect cases that includes the client's GETs of the presigned URLs): the storage
round trips each registry needs for the same work.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import TYPE_CHECKING, Any

from ..client import Conn, GiB, MiB, timed, upload_chunked, upload_monolithic
from ..harness import Moto, moto_available
from . import Case, CaseResult, Metric, Target, Workload, register
from .blobs import CPU_PER_GIB, fmt, size_label
from .skopeo import SkopeoPull, SkopeoPush

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

REPO = "bench/s3/big"
MOTO_CPU = Metric("moto_cpu_s", "moto CPU", "s", False, digits=2, chart=False)
MOTO_REQUESTS = Metric("moto_requests", "requests moto served", "", False, digits=0, chart=False)
THROUGHPUT = Metric("mib_s", "throughput", "MiB/s", True)
_buckets = itertools.count(1)


def blob_size(ctx: Context) -> int:
    return 64 * MiB if ctx.quick else 256 * MiB


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class _OnS3(Workload):
    """Both servers on one moto S3 server, a bucket each; ``case.params["redirect"]``
    (default True) says whether blob GETs may redirect to presigned URLs."""

    one_worker = False  # its options depend on the server kind

    moto: Moto | None = None

    async def begin(self, ctx: Context) -> None:
        if not moto_available():
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
        self.moto = Moto(ctx.workdir / "services" / f"moto-{self.name}")
        await asyncio.to_thread(ctx.start_service, self.moto)

    async def begin_case(self, ctx: Context, case: Case) -> None:
        assert self.moto is not None
        self.moto.check_alive()
        await asyncio.to_thread(self.moto.reset)

    async def end(self, ctx: Context) -> None:
        if self.moto is not None:
            await asyncio.to_thread(ctx.stop_service, self.moto)
            self.moto = None

    def server_options(self, ctx: Context, kind: str, case: Case) -> dict[str, Any]:
        moto = self.moto
        assert moto is not None
        bucket = moto.create_bucket(f"{kind}-{next(_buckets)}")
        redirect = case.params.get("redirect", True)
        if kind == "cargohold":
            options = {
                "endpoint_url": moto.url,
                "key": moto.key,
                "secret": moto.secret,
                "client_kwargs": {"region_name": moto.region},
            }
            config = "[storage]\n" + f"redirect = {_toml(redirect)}\n" + "[storage.options]\n"
            config += "".join(f"{k} = {_toml(v)}\n" for k, v in options.items())
            return {"storage_url": f"s3://{bucket}/cargohold", "config": config}
        storage = (
            "  s3:\n"
            f"    accesskey: {moto.key}\n"
            f"    secretkey: {moto.secret}\n"
            f"    region: {moto.region}\n"
            f"    regionendpoint: {moto.url}\n"
            f"    bucket: {bucket}\n"
            "    rootdirectory: /distribution\n"
            "    secure: false\n"
            "    v4auth: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "  redirect:\n"
            f"    disable: {'false' if redirect else 'true'}"
        )
        # Distribution's AWS SDK fails against plain-http moto with the host's CA bundle;
        # the harness already unsets AWS_CA_BUNDLE for it.
        return {"storage_yaml": storage}

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        assert self.moto is not None and self.moto.tree is not None
        cpu0 = self.moto.tree.cpu_seconds()
        requests0 = self.moto.requests_logged()
        values = await self.measure(ctx, server, case, state, run)
        values[MOTO_CPU.key] = self.moto.tree.cpu_seconds() - cpu0
        await asyncio.sleep(0.05)  # moto's access log is written right after each answer
        values[MOTO_REQUESTS.key] = self.moto.requests_logged() - requests0
        return values

    async def measure(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        raise NotImplementedError


def _at_least(title: str, result: CaseResult, key: str, unit: str) -> list[Target]:
    c, d = result.median("cargohold", key), result.median("distribution", key)
    if c is None or d is None:
        return []
    return [
        Target(
            f"{title}: >= 1.0x Distribution (same moto)",
            f"{fmt(c)} {unit} ({c / d:.2f}x)",
            f">= {fmt(d)} {unit}",
            c >= d,
        )
    ]


class _S3Upload(_OnS3):
    metrics = (THROUGHPUT, CPU_PER_GIB, MOTO_CPU, MOTO_REQUESTS)
    upload: Any = None

    def cases(self, ctx: Context) -> list[Case]:
        size = blob_size(ctx)
        return [Case(size_label(size), {"size": size})]

    async def measure(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        size = case.params["size"]
        blob = ctx.blobs.blob(size, os.urandom(16))
        upload = type(self).upload
        seconds, _ = await asyncio.to_thread(timed, lambda: upload(server.url, REPO, blob))
        return {"mib_s": size / MiB / seconds, "seconds": seconds}

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_s_per_gib"] = values["server_cpu_s"] / (case.params["size"] / GiB)

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        return _at_least(f"{self.title} {case.label}", result, "mib_s", "MiB/s")


@register
class S3UploadMonolithic(_S3Upload):
    name = "s3-upload-monolithic"
    title = "S3: monolithic upload"
    description = (
        "As upload-monolithic (POST, one PUT ?digest= with the whole blob), both registries "
        "storing on the same moto S3 server (a bucket each)."
    )
    upload = staticmethod(upload_monolithic)


@register
class S3UploadChunked(_S3Upload):
    name = "s3-upload-chunked"
    title = "S3: chunked upload"
    description = (
        "As upload-chunked (8 MiB PATCHes, then PUT ?digest=), both registries on the same "
        "moto S3 server; S3 cannot append, so each registry stores parts and joins them."
    )
    upload = staticmethod(upload_chunked)

    def cases(self, ctx: Context) -> list[Case]:
        return [] if ctx.quick else super().cases(ctx)  # keeps --quick < 3 min


@register
class S3Download(_OnS3):
    name = "s3-download"
    title = "S3: blob download"
    description = (
        "GET of a blob pushed during setup over one connection, both registries on moto S3. "
        "redirect: the servers' defaults (307 to a presigned moto URL, followed by the "
        "client); proxied: redirects off on both, the registry streams the object."
    )
    metrics = (THROUGHPUT, CPU_PER_GIB, MOTO_CPU, MOTO_REQUESTS)

    def cases(self, ctx: Context) -> list[Case]:
        size = blob_size(ctx)
        modes = ("proxied",) if ctx.quick else ("redirect", "proxied")  # quick: < 3 min
        return [
            Case(f"{size_label(size)} {mode}", {"size": size, "redirect": mode == "redirect"})
            for mode in modes
        ]

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        blob = ctx.blobs.blob(case.params["size"], ctx.download_suffix)
        await asyncio.to_thread(upload_monolithic, server.url, REPO, blob)

        def verify() -> str | None:
            conn = Conn(server.url)
            try:
                conn.download(f"/v2/{REPO}/blobs/{blob.digest}", blob.digest, follow=True)
                return conn.redirected
            finally:
                conn.close()

        redirected = await asyncio.to_thread(verify)
        if bool(redirected) != case.params["redirect"]:
            raise RuntimeError(
                f"{server.label} {'did not redirect' if not redirected else 'redirected'} "
                f"a blob GET ({case.label} case)"
            )
        return blob

    async def measure(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        blob = state

        def get() -> int:
            conn = Conn(server.url)
            try:
                return conn.download(f"/v2/{REPO}/blobs/{blob.digest}", follow=True)
            finally:
                conn.close()

        seconds, got = await asyncio.to_thread(timed, get)
        if got != blob.size:
            raise RuntimeError(f"download returned {got} bytes, expected {blob.size}")
        return {"mib_s": blob.size / MiB / seconds, "seconds": seconds}

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_s_per_gib"] = values["server_cpu_s"] / (case.params["size"] / GiB)

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        return _at_least(f"{self.title} {case.label}", result, "mib_s", "MiB/s")


@register
class S3SkopeoPush(_OnS3, SkopeoPush):
    name = "s3-skopeo-push"
    title = "S3: skopeo push"
    description = "As skopeo-push (a fresh multi-layer image each run), both registries on moto S3."
    metrics = (*SkopeoPush.metrics, MOTO_CPU, MOTO_REQUESTS)

    async def measure(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        return await SkopeoPush.run(self, ctx, server, case, state, run)


@register
class S3SkopeoPull(_OnS3, SkopeoPull):
    name = "s3-skopeo-pull"
    title = "S3: skopeo pull"
    description = (
        "As skopeo-pull, both registries on moto S3; redirect: blob GETs answered 307 to "
        "presigned moto URLs (skopeo follows), proxied: redirects off on both."
    )
    metrics = (*SkopeoPull.metrics, MOTO_CPU, MOTO_REQUESTS)

    def cases(self, ctx: Context) -> list[Case]:
        if ctx.quick:  # skopeo-pull covers it on local storage; keeps --quick < 3 min
            return []
        (base,) = SkopeoPull.cases(self, ctx)
        return [
            Case(f"{base.label} {mode}", {"redirect": mode == "redirect"})
            for mode in ("redirect", "proxied")
        ]

    async def measure(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        return await SkopeoPull.run(self, ctx, server, case, state, run)
