"""Run wrk with a Lua script and parse the JSON line the script prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from .harness import client_env

LUA_DIR = Path(__file__).resolve().parent / "lua"


class WrkError(RuntimeError):
    pass


async def run_wrk(
    url: str,
    *,
    script: str = "manifest_get.lua",
    connections: int = 64,
    threads: int = 1,
    duration: float = 10.0,
    timeout: float = 5.0,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """One wrk run; returns requests, req_s, latency percentiles (ms) and error counts.

    ``env`` is added to wrk's environment (the Lua script reads e.g. WRK_AUTHORIZATION
    there, which keeps credentials off the command line)."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        f"--timeout={timeout:g}s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**client_env(), **(env or {})},
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise WrkError(f"wrk exited {proc.returncode}: {text[-800:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(v for k, v in raw.items() if k.startswith("errors_"))
    return {
        "requests": raw["requests"],
        "req_s": raw["requests"] / seconds,
        "latency_p50_ms": raw["latency_p50_us"] / 1000,
        "latency_p99_ms": raw["latency_p99_us"] / 1000,
        "errors": errors,
        "errors_status": raw["errors_status"],
        "seconds": seconds,
    }
