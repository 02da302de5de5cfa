"""Subprocess helpers: running commands, memory of a process, isolated client env."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "CommandError",
    "client_env",
    "client_home",
    "current_rss_kib",
    "merged_env",
    "peak_rss_kib",
    "run",
    "skopeo",
]


class CommandError(RuntimeError):
    """A command exited non-zero (or timed out); carries its output."""

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int | None,
        stdout: str | bytes | None,
        stderr: str | bytes | None,
        reason: str = "",
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = reason or f"exit status {returncode}"
        super().__init__(
            f"command failed ({what}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{_as_text(stdout)}\n--- stderr ---\n{_as_text(stderr)}"
        )


def _as_text(data: str | bytes | None, limit: int = 20_000) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    if len(data) > limit:
        data = f"[... {len(data) - limit} chars cut ...]\n" + data[-limit:]
    return data


def merged_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """``os.environ`` with ``overrides`` applied; a ``None`` value removes the variable."""
    env = dict(os.environ)
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 120.0,
    env: Mapping[str, str | None] | None = None,
    check: bool = True,
    text: bool = True,
    input: str | bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` capturing stdout/stderr.

    ``env`` holds overrides merged into ``os.environ`` (``None`` unsets a variable).
    Raises :class:`CommandError` (with both outputs) on a non-zero exit when ``check``
    is true, and always on timeout. ``text=False`` returns bytes (exact manifests).
    """
    argv = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=timeout,
            env=merged_env(env),
            text=text,
            input=input,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            argv, None, exc.stdout, exc.stderr, f"timed out after {timeout}s"
        ) from None
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                value, unit = line.split()[1:3]
                assert unit == "kB", line
                return int(value)
    raise LookupError(f"{field} not in /proc/{pid}/status")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size (``VmHWM``) of a live process, in KiB."""
    return _status_kib(pid, "VmHWM")


def current_rss_kib(pid: int) -> int:
    """Current resident set size (``VmRSS``) of a live process, in KiB."""
    return _status_kib(pid, "VmRSS")


# --- registry clients ---------------------------------------------------------------------

_client_home: Path | None = None


def client_home() -> Path:
    """A private, per-test-process HOME for registry clients.

    It holds an empty ``auth.json`` (``REGISTRY_AUTH_FILE``) and an empty docker
    ``config.json`` (``DOCKER_CONFIG``) so credentials of the host never leak into tests.
    Removed when the interpreter exits.
    """
    global _client_home
    if _client_home is None:
        home = Path(tempfile.mkdtemp(prefix="cargohold-client-home-"))
        (home / ".docker").mkdir()
        (home / ".docker" / "config.json").write_text(json.dumps({"auths": {}}))
        (home / "auth.json").write_text(json.dumps({"auths": {}}))
        atexit.register(shutil.rmtree, home, True)
        _client_home = home
    return _client_home


def client_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Environment overrides (for :func:`run`) isolating a registry client.

    Points ``REGISTRY_AUTH_FILE``, ``DOCKER_CONFIG`` and ``HOME`` at :func:`client_home`
    and drops ``XDG_RUNTIME_DIR``/``XDG_CONFIG_HOME`` (where containers tools also look
    for auth files). ``extra`` is applied last.
    """
    home = client_home()
    env: dict[str, str | None] = {
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "DOCKER_CONFIG": str(home / ".docker"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": None,
        "XDG_CONFIG_HOME": None,
    }
    env.update(extra or {})
    return env


def skopeo(
    *args: str | os.PathLike[str],
    timeout: float = 300.0,
    env: Mapping[str, str | None] | None = None,
    check: bool = True,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``skopeo --insecure-policy ARGS...`` with an isolated, empty auth file.

    Global options go first in ``args`` (``skopeo("--override-arch", "arm64", "inspect",
    ...)``). TLS flags are the caller's business, e.g.
    ``skopeo("copy", "--dest-tls-verify=false", src, f"docker://{server.host}/{repo}:1")``.
    Credentials: pass ``--creds``/``--src-creds``/``--dest-creds`` or ``--authfile``.
    """
    return run(
        ["skopeo", "--insecure-policy", *args],
        timeout=timeout,
        env=client_env(env),
        check=check,
        text=text,
    )
