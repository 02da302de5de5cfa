"""The sigstore-capable skopeo (Debian trixie's 1.18, unpacked by scripts/install-sigstore-skopeo.sh).

Bookworm's skopeo cannot check cosign signatures; this one can. It runs through
its own dynamic loader from the cache folder, never installed system-wide. A
missing tool fails the test that needs it (never a skip).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from .procs import client_env, run

TOOLS = Path(os.environ.get("CARGOHOLD_TEST_TOOLS", "/var/cache/cargohold-test-tools"))


def sigstore_skopeo_command() -> list[str]:
    """The argv prefix that runs trixie's skopeo; fails the test when it is not installed."""
    root = TOOLS / "skopeo-trixie"
    lib = root / "usr/lib/x86_64-linux-gnu"
    binary = root / "usr/bin/skopeo"
    loader = lib / "ld-linux-x86-64.so.2"
    if not binary.exists() or not loader.exists():
        pytest.fail(
            f"sigstore-capable skopeo missing under {root}: run scripts/install-sigstore-skopeo.sh"
        )
    return [str(loader), "--library-path", str(lib), str(binary)]


def sigstore_skopeo(
    *args: str | os.PathLike[str],
    check: bool = True,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess:
    """Run trixie's skopeo with ARGS (global options first) in an isolated client home."""
    return run(
        [*sigstore_skopeo_command(), *args],
        check=check,
        env=client_env(env),
        timeout=timeout,
    )
