"""A private containerd daemon for client tests (``ctr -a SOCK ...``).

:class:`ContainerdDaemon` writes a version-2 config with its own ``root``, ``state``
and sockets, disables the CRI plugin (not needed, and it wants a CNI setup), starts
``containerd --config CFG`` in its own process group, waits until ``ctr version``
answers on the socket, and stops it with SIGTERM (then SIGKILL) at teardown.

Unix socket paths are limited to ~107 bytes, so sockets live in a short ``/tmp``
directory of their own; the (long) work directory holds root, state, config and log.
The ``native`` snapshotter works anywhere (no overlayfs or special filesystem needed).

Usage::

    with ContainerdDaemon(tmp_path / "containerd") as ctd:
        ctd.ctr("images", "pull", "--plain-http", "--snapshotter", ctd.snapshotter, ref)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .procs import CommandError, run

__all__ = ["ContainerdDaemon"]

CONTAINERD_BINARY = "containerd"
CTR_BINARY = "ctr"


class ContainerdDaemon:
    """One ``containerd`` process with private root/state/sockets; ``ctr()`` talks to it."""

    snapshotter = "native"

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        namespace: str = "cargohold-tests",
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.config_path = self.workdir / "config.toml"
        self.log_path = self.workdir / "containerd.log"
        self.namespace = namespace
        self.startup_timeout = startup_timeout
        self._sockdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The gRPC socket path (``ctr -a``)."""
        if self._sockdir is None:
            raise RuntimeError("containerd is not started")
        return str(self._sockdir / "containerd.sock")

    def config_toml(self) -> str:
        assert self._sockdir is not None
        return (
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.address}"\n'
            "[ttrpc]\n"
            f'  address = "{self._sockdir / "containerd.sock.ttrpc"}"\n'
            "[debug]\n"
            f'  address = "{self._sockdir / "debug.sock"}"\n'
            '  level = "info"\n'
            "[metrics]\n"
            '  address = ""\n'
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> ContainerdDaemon:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("containerd already running")
        self._sockdir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
        self.config_path.write_text(self.config_toml())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [CONTAINERD_BINARY, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"containerd exited with status {code} during start-up\n"
                    f"--- log {self.log_path} ---\n{self.log_text()}"
                )
            if os.path.exists(self.address):
                try:
                    self.ctr("version", timeout=5)
                    return
                except CommandError:
                    pass
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"containerd not ready after {self.startup_timeout}s on {self.address}\n"
                    f"--- log {self.log_path} ---\n{self.log_text()}"
                )
            time.sleep(0.05)

    def ctr(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        """Run ``ctr -a SOCK -n NAMESPACE ARGS...`` (raises CommandError on failure)."""
        return run(
            [CTR_BINARY, "-a", self.address, "-n", self.namespace, *args],
            timeout=timeout,
            env={"CONTAINERD_ADDRESS": None, "CONTAINERD_NAMESPACE": None},
        )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL the process group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ContainerdDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
