"""Big blobs: monolithic and chunked upload, and download."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from ..client import (
    CHUNK,
    STREAM_PIECE,
    Conn,
    GiB,
    MiB,
    timed,
    upload_chunked,
    upload_monolithic,
    upload_streamed,
)
from . import (
    SERVER_CPU,
    SERVER_MEMORY,
    SERVER_RSS,
    Case,
    CaseResult,
    Metric,
    Target,
    Workload,
    register,
)

if TYPE_CHECKING:
    from ..harness import Server
    from ..run import Context

REPO = "bench/blobs/big"
THROUGHPUT = Metric(
    "mib_s", "throughput", "MiB/s", True, limits=("sha256_mib_s", "disk_write_mib_s")
)
CPU_PER_GIB = Metric("cpu_s_per_gib", "server CPU per GiB", "s/GiB", False, digits=2)
RSS_LIMIT_MIB = 150


def size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


class _SizedBlobs(Workload):
    one_worker = True

    def cases(self, ctx: Context) -> list[Case]:
        return [Case(size_label(s), {"size": s}) for s in ctx.blob_sizes]


class _Upload(_SizedBlobs):
    metrics = (THROUGHPUT, CPU_PER_GIB)
    upload: Any = None

    async def run(
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
        c, d = result.median("cargohold", "mib_s"), result.median("distribution", "mib_s")
        sha = ctx.limit("sha256_mib_s")
        targets = []
        if c is not None and d is not None and sha is not None:
            goal = min(1.3 * d, 0.8 * sha)
            targets.append(
                Target(
                    f"{self.title} {case.label}: throughput >= min(1.3x Distribution, 80% sha256)",
                    f"{fmt(c)} MiB/s (Distribution {fmt(d)}, sha256 {fmt(sha)})",
                    f">= {fmt(goal)} MiB/s",
                    c >= goal,
                )
            )
        cc = result.median("cargohold", "cpu_s_per_gib")
        dc = result.median("distribution", "cpu_s_per_gib")
        if cc is not None and dc is not None:
            targets.append(
                Target(
                    f"{self.title} {case.label}: server CPU s per GiB <= Distribution's",
                    f"{fmt(cc, 2)} s/GiB",
                    f"<= {fmt(dc, 2)} s/GiB",
                    cc <= dc,
                )
            )
        # Peak memory with the pages forked workers share with their parent counted once
        # (``ProcTree.peak_memory_mib``); the summed VmHWM is shown beside it.
        memory = result.median("cargohold", SERVER_MEMORY.key)
        rss = result.median("cargohold", SERVER_RSS.key)
        largest = max(ctx.blob_sizes)
        if memory is not None and case.params["size"] == largest:
            note = "" if largest >= GiB else f"measured with a {case.label} blob (quick mode)"
            targets.append(
                Target(
                    f"{self.title}: Cargohold peak memory while uploading a 1 GiB blob",
                    f"{fmt(memory, 0)} MiB ({case.label}; summed VmHWM {fmt(rss, 0)} MiB)",
                    f"< {RSS_LIMIT_MIB} MiB",
                    memory < RSS_LIMIT_MIB,
                    note,
                )
            )
        return targets


@register
class UploadMonolithic(_Upload):
    name = "upload-monolithic"
    title = "Monolithic upload"
    description = (
        "POST /blobs/uploads/, then one PUT ?digest= streaming the whole blob; "
        "a new 16-byte suffix every run, so nothing is deduplicated."
    )
    upload = staticmethod(upload_monolithic)


@register
class UploadChunked(_Upload):
    name = "upload-chunked"
    title = "Chunked upload"
    description = (
        f"POST, one PATCH per {CHUNK // MiB} MiB chunk with Content-Range "
        "(following each Location), then an empty PUT ?digest=."
    )
    upload = staticmethod(upload_chunked)


@register
class UploadStreamed(_Upload):
    name = "upload-streamed"
    title = "Streamed upload"
    description = (
        "POST, one PATCH carrying the whole blob in chunked transfer encoding "
        f"({STREAM_PIECE // 1024} KiB chunks, no length: how docker's push sends a layer), "
        "then an empty PUT ?digest=."
    )
    upload = staticmethod(upload_streamed)


DOWNLOAD = Metric("mib_s", "throughput", "MiB/s", True, limits=("nginx_sendfile_mib_s",))


@register
class Download(_SizedBlobs):
    name = "download"
    title = "Blob download"
    description = (
        "GET of a blob pushed during setup, read into a reused buffer over one connection "
        "(the digest is verified once, untimed, during setup)."
    )
    metrics = (DOWNLOAD, CPU_PER_GIB)

    async def setup(self, ctx: Context, server: Server, case: Case) -> Any:
        blob = ctx.blobs.blob(case.params["size"], ctx.download_suffix)
        await asyncio.to_thread(upload_monolithic, server.url, REPO, blob)

        def verify() -> None:
            conn = Conn(server.url)
            try:
                conn.download(f"/v2/{REPO}/blobs/{blob.digest}", blob.digest)
            finally:
                conn.close()

        await asyncio.to_thread(verify)
        return blob

    async def run(
        self, ctx: Context, server: Server, case: Case, state: Any, run: int
    ) -> dict[str, float]:
        blob = state

        def get() -> int:
            conn = Conn(server.url)
            try:
                return conn.download(f"/v2/{REPO}/blobs/{blob.digest}")
            finally:
                conn.close()

        seconds, got = await asyncio.to_thread(timed, get)
        if got != blob.size:
            raise RuntimeError(f"download returned {got} bytes, expected {blob.size}")
        return {"mib_s": blob.size / MiB / seconds, "seconds": seconds}

    def derive(self, case: Case, values: dict[str, float]) -> None:
        values["cpu_s_per_gib"] = values[SERVER_CPU.key] / (case.params["size"] / GiB)

    def targets(self, ctx: Context, case: Case, result: CaseResult) -> list[Target]:
        c, d = result.median("cargohold", "mib_s"), result.median("distribution", "mib_s")
        nginx = ctx.limit("nginx_sendfile_mib_s", case.label)
        if c is None or d is None:
            return []
        targets = [
            Target(
                f"Blob download {case.label}: >= 1.0x Distribution",
                f"{fmt(c)} MiB/s ({c / d:.2f}x)",
                f">= {fmt(d)} MiB/s",
                c >= d,
            )
        ]
        if nginx is not None:
            targets.append(
                Target(
                    f"Blob download {case.label}: >= 80% of nginx sendfile",
                    f"{fmt(c)} MiB/s ({c / nginx:.0%} of {fmt(nginx)})",
                    f">= {fmt(0.8 * nginx)} MiB/s",
                    c >= 0.8 * nginx,
                )
            )
        return targets
