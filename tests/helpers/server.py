"""Real server processes for integration tests: Cargohold and CNCF Distribution."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "DistributionServer",
    "ManagedServer",
    "RegistryServer",
    "free_port",
    "http_status",
    "wait_for_port",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION_BINARY = "/usr/bin/docker-registry"

# A direct opener: never route loopback health checks through an HTTP proxy from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``host:port``; TimeoutError if not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from exc
            time.sleep(0.05)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of ``GET url`` (no proxy, no redirects followed); None if unreachable."""
    try:
        with _OPENER.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def _port_owned_by_group(port: int, pgid: int) -> bool | None:
    """Whether a process of group ``pgid`` holds the socket listening on ``port``.

    None when it cannot be told (no /proc). Guards against a free_port() race where
    another server grabbed the port and answers the readiness probe.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in wanted:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False


_LIVE: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.kill9()


class ManagedServer:
    """A server subprocess with a log file, a readiness probe and stop/kill/restart.

    Subclasses provide :meth:`command` and :attr:`ready_path`. The process runs in its
    own session (process group), so :meth:`kill9` also takes down any worker children.
    """

    ready_path = "/"
    name = "server"

    def __init__(
        self,
        *,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.port = port or free_port()
        self.env_overrides = dict(env or {})
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    # -- to override ------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def base_env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- addresses --------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (for ``docker://HOST/repo`` references)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far (all runs, appended)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> ManagedServer:
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.pid})")
        env = self.base_env()
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"=== {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill9()
            raise
        return self

    def _wait_ready(self) -> None:
        url = self.url + self.ready_path
        deadline = time.monotonic() + self.startup_timeout
        last: int | None = None
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {code} during start-up "
                    f"(waiting for {url})\n--- log {self.log_path} ---\n{self.log_text()}"
                )
            last = http_status(url, timeout=1.0)
            if last == 200:
                if _port_owned_by_group(self.port, self.proc.pid) is False:
                    raise RuntimeError(
                        f"port {self.port} answers, but not from {self.name} (pid "
                        f"{self.proc.pid}): another process holds it\n--- log ---\n"
                        f"{self.log_text()}"
                    )
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self.name} not ready after {self.startup_timeout}s: GET {url} -> {last}"
                    f"\n--- log {self.log_path} ---\n{self.log_text()}"
                )
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` and wait up to ``timeout`` s; SIGKILL (whole group) if still alive.

        Returns the exit status (negative signal number if killed by a signal), or None
        if the server was not started. Leftover children of the group are killed too.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(timeout=10)
        self._killpg()
        _LIVE.discard(self)
        return self.proc.returncode

    def kill9(self) -> int | None:
        """SIGKILL the server and its process group at once (crash simulation)."""
        if self.proc is None:
            return None
        self._killpg()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)
        _LIVE.discard(self)
        return self.proc.returncode

    def _killpg(self) -> None:
        assert self.proc is not None
        # The group id is the leader's pid; ESRCH once every member is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def restart(self, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> ManagedServer:
        """Stop (if running) and start again on the same port, storage and workdir."""
        self.stop(sig=sig, timeout=timeout)
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running and self.proc else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


class RegistryServer(ManagedServer):
    """The Cargohold server (``python -m registry_server serve``) in a subprocess.

    ``storage_url``: ``memory://`` or ``file:///abs/path`` (or any driver URL).
    ``config``: path of a TOML config passed as ``--config``. ``extra_args`` are appended
    to the ``serve`` command line. ``env`` overrides the inherited environment (a ``None``
    value unsets); inherited ``CARGOHOLD_*`` variables are dropped so the developer's
    shell cannot change test behaviour. Ready when ``GET /healthz`` answers 200.
    ``auth``: False (the default) serves an open registry (``CARGOHOLD_AUTH_ENABLED=false``);
    True leaves authentication on, configured by ``config`` (tests create users with the
    CLI on the storage before starting the server).

    Usage::

        with RegistryServer("memory://") as srv:
            requests.get(srv.url + "/v2/")
    """

    ready_path = "/healthz"
    name = "cargohold"

    def __init__(
        self,
        storage_url: str = "memory://",
        *,
        port: int | None = None,
        config: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str | None] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        auth: bool = False,
    ) -> None:
        super().__init__(port=port, env=env, workdir=workdir, startup_timeout=startup_timeout)
        self.auth = auth
        self.storage_url = storage_url
        self.config = Path(config) if config is not None else None
        self.extra_args = list(extra_args)

    @property
    def storage_path(self) -> Path | None:
        """The storage directory for ``file://`` storage, else None."""
        parsed = urllib.parse.urlparse(self.storage_url)
        if parsed.scheme != "file":
            return None
        return Path(urllib.parse.unquote(parsed.netloc + parsed.path))

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "registry_server",
            "serve",
            "--listen",
            self.host,
            "--storage",
            self.storage_url,
        ]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + self.extra_args

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
        # Import the working tree even if the editable install is missing or stale.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        if not self.auth:
            env["CARGOHOLD_AUTH_ENABLED"] = "false"
        # One process unless a test asks for more (--workers, or unsetting this): tests
        # count per-process things (metrics, single-flight fetches, caches).
        env["CARGOHOLD_SERVER_WORKERS"] = "1"
        return env


class DistributionServer(ManagedServer):
    """CNCF Distribution (``/usr/bin/docker-registry serve config.yml``), filesystem storage.

    Deletes enabled, no auth, log level ``warn`` (``log_level`` to change). ``env`` sets
    ``REGISTRY_*`` overrides (Distribution's env configuration, e.g.
    ``REGISTRY_PROXY_REMOTEURL``); inherited ``REGISTRY_*`` variables are dropped because
    Distribution would read them as configuration. Ready when ``GET /v2/`` answers 200.
    """

    ready_path = "/v2/"
    name = "distribution"

    def __init__(
        self,
        storage_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        env: Mapping[str, str | None] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "warn",
        binary: str = DISTRIBUTION_BINARY,
    ) -> None:
        super().__init__(port=port, env=env, workdir=workdir, startup_timeout=startup_timeout)
        self.storage_dir = Path(storage_dir).resolve()
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.storage_path = self.storage_dir
        self.log_level = log_level
        self.binary = binary
        self.config_path = self.workdir / "config.yml"

    def config_yaml(self) -> str:
        return (
            "version: 0.1\n"
            "log:\n"
            f"  level: {self.log_level}\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  filesystem:\n"
            f'    rootdirectory: "{self.storage_dir}"\n'
            "  delete:\n"
            "    enabled: true\n"
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            f"  addr: {self.host}\n"
            "  secret: cargohold-tests-not-a-secret\n"
        )

    def command(self) -> list[str]:
        self.config_path.write_text(self.config_yaml())
        return [self.binary, "serve", str(self.config_path)]

    def base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
