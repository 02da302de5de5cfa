"""Processes the benchmark starts and measures: Cargohold, Distribution, nginx.

Every server runs on 127.0.0.1 on a free port, in its own process group, with
its log in the run's work directory. :class:`ProcTree` reads CPU seconds and
peak RSS from ``/proc`` for a server and every process below it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Debian packages the runner needs: executable -> package.
APT_PACKAGES = {
    "docker-registry": "docker-registry",
    "wrk": "wrk",
    "nginx": "nginx-light",
    "skopeo": "skopeo",
}

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_executable(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/bin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )


def ensure_packages() -> None:
    """Install the Debian packages whose executables are missing (apt-get, as root)."""
    missing = [pkg for exe, pkg in APT_PACKAGES.items() if find_executable(exe) is None]
    if not missing:
        return
    log(f"installing missing Debian packages: {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def client_env() -> dict[str, str]:
    """Environment for client subprocesses (wrk, skopeo): never proxy loopback."""
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


# -- /proc accounting -----------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _proc_kib(pid: int, file: str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/<file>`` (None: the process is gone or hides it)."""
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_kib(pid: int, key: str) -> int | None:
    return _proc_kib(pid, "status", key)


def _smaps_kib(pid: int, key: str) -> int | None:
    return _proc_kib(pid, "smaps_rollup", key)


class ProcTree:
    """A process and its live descendants (worker processes, if a server forks any)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # At the last reset, per process: (PSS, RSS) in KiB (see :meth:`peak_memory_mib`).
        self._baseline: dict[int, tuple[int, int]] = {}

    def pids(self) -> list[int]:
        children = _children_map()
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def cpu_seconds(self) -> float:
        """utime+stime+cutime+cstime of the whole tree (reaped children included)."""
        ticks = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            # fields[0] is field 3 (state); utime..cstime are fields 14..17.
            ticks += sum(int(x) for x in fields[11:15])
        return ticks / CLK_TCK

    def reset_peak_rss(self) -> None:
        """``echo 5 > clear_refs``: VmHWM restarts from the current RSS; each process's
        PSS and RSS at this point are the baseline of :meth:`peak_memory_mib`."""
        self._baseline = {}
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
            pss, rss = _smaps_kib(pid, "Pss"), _status_kib(pid, "VmRSS")
            if pss is not None and rss is not None:
                self._baseline[pid] = (pss, rss)

    def _summed_status_kib(self, key: str) -> int:
        return sum(_status_kib(pid, key) or 0 for pid in self.pids())

    def peak_rss_mib(self) -> float:
        """Sum of VmHWM over the tree (an upper bound when several processes peak apart;
        pages a forked worker shares with its parent count once per process)."""
        return self._summed_status_kib("VmHWM") / 1024

    def peak_memory_mib(self) -> float:
        """The tree's peak memory with shared pages counted once: each process's PSS at
        the reset plus what its RSS grew to at its peak (VmHWM - RSS at the reset).

        Summed VmHWM counts what forked workers share with their parent (the imported
        code and data, copy-on-write) once per process: an idle ``--workers 2`` server
        has 168 MiB of summed RSS and 78 MiB of summed PSS. Growth during a run is
        memory a process touched (its own pages), so it is added whole: still an upper
        bound when the processes peak apart, but one that counts each page once.
        A process started after the reset counts with its VmHWM.
        """
        total = 0
        for pid in self.pids():
            hwm = _status_kib(pid, "VmHWM")
            if hwm is None:
                continue
            pss, rss = self._baseline.get(pid, (0, 0))
            total += pss + max(0, hwm - rss)
        return total / 1024

    def rss_mib(self) -> float:
        return self._summed_status_kib("VmRSS") / 1024


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# -- servers --------------------------------------------------------------------------


class ServerError(RuntimeError):
    pass


class Server:
    """One server process on 127.0.0.1:PORT with a fresh storage folder."""

    kind = "server"
    label = "Server"
    health_path = "/"

    def __init__(self, workdir: Path, *, options: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage = workdir / "storage"
        self.storage.mkdir(exist_ok=True)
        self.port = free_port()
        self.options = dict(options or {})
        self.log_path = workdir / f"{self.kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: ProcTree | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return client_env()

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
        )
        logf.close()
        self.tree = ProcTree(self.proc.pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.label} exited with {self.proc.returncode} at start-up: {self.log_tail()}"
                )
            if http_status(self.url + self.health_path, timeout=1.0) == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.label} not healthy after {timeout}s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"{self.label} died (exit code {self.proc.returncode}): {self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # Workers left behind by the group leader, if any.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def cargohold_supports_workers() -> bool:
    out = subprocess.run(
        [*cargohold_command(), "serve", "--help"], capture_output=True, text=True, check=False
    )
    return "--workers" in out.stdout


def cargohold_command() -> list[str]:
    script = Path(sys.executable).parent / "cargohold"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "registry_server"]


class Cargohold(Server):
    """``cargohold serve`` on a fresh local folder. Options: ``config`` (TOML text),
    ``env``, ``workers``, ``storage_url`` (replaces the local folder, e.g. ``s3://...``)."""

    kind = "cargohold"
    label = "Cargohold"
    health_path = "/healthz"

    def command(self) -> list[str]:
        cmd = [
            *cargohold_command(),
            "serve",
            "--listen",
            self.host,
            "--storage",
            self.options.get("storage_url") or self.storage.as_uri(),
        ]
        if self.options.get("config"):
            config = self.workdir / "cargohold.toml"
            config.write_text(self.options["config"])
            cmd += ["--config", str(config)]
        if self.options.get("workers"):
            cmd += ["--workers", str(self.options["workers"])]
        return cmd

    def env(self) -> dict[str, str]:
        env = client_env()
        # Like the Distribution it is compared with: no auth (an open registry).
        # Auth workloads override this through their server options.
        env["CARGOHOLD_AUTH_ENABLED"] = "false"
        env.update(self.options.get("env", {}))
        return env


class CargoholdOneWorker(Cargohold):
    """Cargohold forced to one process (``--workers 1``), reported beside the default."""

    kind = "cargohold-1"
    label = "Cargohold (1 worker)"

    def command(self) -> list[str]:
        cmd = super().command()
        if "--workers" in cmd:
            cmd[cmd.index("--workers") + 1] = "1"
            return cmd
        return [*cmd, "--workers", "1"]


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
{storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: {host}
{extra}"""

DISTRIBUTION_FILESYSTEM = """\
  filesystem:
    rootdirectory: {root}"""


class Distribution(Server):
    """CNCF Distribution 2.8 (Debian's ``docker-registry``), the packaged default config
    less auth: filesystem storage, delete enabled, in-memory blob descriptor cache.

    Options: ``storage_yaml`` replaces the ``filesystem:`` driver block (indented by two
    spaces, e.g. an ``s3:`` block and ``redirect:``), ``config_extra`` is appended."""

    kind = "distribution"
    label = "Distribution"
    health_path = "/v2/"

    def command(self) -> list[str]:
        config = self.workdir / "config.yml"
        config.write_text(
            DISTRIBUTION_CONFIG.format(
                storage=self.options.get("storage_yaml")
                or DISTRIBUTION_FILESYSTEM.format(root=self.storage),
                host=self.host,
                extra=self.options.get("config_extra", ""),
            )
        )
        return [find_executable("docker-registry") or "docker-registry", "serve", str(config)]

    def env(self) -> dict[str, str]:
        env = client_env()
        env.pop("AWS_CA_BUNDLE", None)
        env.update(self.options.get("env", {}))
        return env


NGINX_CONFIG = """\
worker_processes auto;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {workdir}/tmp;
    proxy_temp_path {workdir}/tmp;
    fastcgi_temp_path {workdir}/tmp;
    uwsgi_temp_path {workdir}/tmp;
    scgi_temp_path {workdir}/tmp;
    server {{
        listen {host};
        root {root};
        location = /healthz {{ return 200 "ok"; }}
    }}
}}
"""


class Nginx(Server):
    """nginx serving ``storage/`` as static files: the machine's sendfile and req/s limit."""

    kind = "nginx"
    label = "nginx"
    health_path = "/healthz"

    def command(self) -> list[str]:
        (self.workdir / "tmp").mkdir(exist_ok=True)
        config = self.workdir / "nginx.conf"
        config.write_text(
            NGINX_CONFIG.format(workdir=self.workdir, host=self.host, root=self.storage)
        )
        return [find_executable("nginx") or "nginx", "-c", str(config), "-e", "stderr"]


class Moto(Server):
    """moto's S3 emulator (``moto_server``, PyPI ``moto[server]``), objects in memory.

    S3 workloads start one for all their cases, give each server of a case its own
    bucket, and :meth:`reset` it between cases (which frees what the case stored)."""

    kind = "moto"
    label = "moto"
    health_path = "/"
    key = secret = "test"
    region = "us-east-1"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "moto_server"
        return [
            str(exe) if exe.exists() else "moto_server",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    def env(self) -> dict[str, str]:
        env = client_env()
        env.pop("PYTHONPATH", None)
        return env

    def _call(self, method: str, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, method=method)
        try:
            with _OPENER.open(request, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_bucket(self, name: str) -> str:
        status, body = self._call("PUT", f"/{name}")
        if status not in (200, 409):
            raise ServerError(f"moto: create bucket {name}: {status} {body[:300]!r}")
        return name

    def requests_logged(self) -> int:
        """Requests moto has answered so far: request lines of its (werkzeug) access log,
        ``[date] "GET /... HTTP/1.1" 200 -`` (colored with ANSI codes for 206, 404, ...)."""
        try:
            with open(self.log_path, "rb") as f:
                return sum(1 for line in f if b'] "' in line and b" HTTP/1." in line)
        except OSError:
            return 0

    def reset(self) -> None:
        """Forget every bucket and object (moto's ``/moto-api/reset``)."""
        status, body = self._call("POST", "/moto-api/reset")
        if status != 200:
            raise ServerError(f"moto: reset answered {status} {body[:300]!r}")


def moto_available() -> bool:
    return (Path(sys.executable).parent / "moto_server").exists() or bool(
        shutil.which("moto_server")
    )


def tool_versions() -> dict[str, str]:
    """Versions of the servers and load generators, as their own commands report them."""

    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        return (
            (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
        )

    return {
        "docker-registry": first_line(["docker-registry", "--version"]),
        "wrk": first_line(["wrk", "--version"]).split(" Copyright")[0],
        "nginx": first_line([find_executable("nginx") or "nginx", "-v"]),
        "skopeo": first_line(["skopeo", "--version"]),
    }
