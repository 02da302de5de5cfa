"""``cargohold serve``: configuration errors, storage URLs, listen address, defaults, workers."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry_core import load_config
from tests.helpers import RegistryServer, free_port, run, sample_image, wait_for_port
from tests.helpers.registry_api import get_manifest, new_session, push_blob, push_image
from tests.helpers.server import REPO_ROOT

CONFIG_ERROR_DEADLINE = 15.0  # seconds: a bad configuration must stop start-up quickly


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str | None]:
    """Overrides for :func:`run`: this checkout importable, no inherited CARGOHOLD_*."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CARGOHOLD_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["CARGOHOLD_AUTH_ENABLED"] = "false"
    env.update(extra or {})
    return env


def cargohold(*args: str, cwd: Path | None = None, timeout: float = 60.0):
    return run(
        [sys.executable, "-m", "registry_server", *args],
        env=cli_env(),
        check=False,
        timeout=timeout,
        cwd=cwd,
    )


def serve_with_config(tmp_path: Path, toml: str):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    started = time.monotonic()
    proc = cargohold(
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--storage",
        "memory://",
        timeout=CONFIG_ERROR_DEADLINE + 30,
    )
    return proc, time.monotonic() - started


# --- configuration errors ----------------------------------------------------------------


def test_unknown_config_key_stops_startup_naming_the_key_and_section(tmp_path: Path) -> None:
    proc, took = serve_with_config(tmp_path, '[server]\nlisen = "127.0.0.1:5000"\n')
    assert proc.returncode != 0
    assert took < CONFIG_ERROR_DEADLINE
    assert "lisen" in proc.stderr
    assert "server" in proc.stderr


def test_unknown_config_section_is_named(tmp_path: Path) -> None:
    proc, _ = serve_with_config(tmp_path, '[srever]\nlisten = "127.0.0.1:5000"\n')
    assert proc.returncode != 0
    assert "srever" in proc.stderr


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[server]\nworkers = "many"\n', "workers"),
        ('[server]\nshutdown_timeout = "soon"\n', "shutdown_timeout"),
        ("[manifests]\nmax_size = [1, 2]\n", "max_size"),
        ('[uploads]\npurge_after = "soon"\n', "purge_after"),
        ('[manifests]\nstrict_index = "maybe"\n', "strict_index"),
        ('[server]\nlog_format = "xml"\n', "log_format"),
    ],
)
def test_wrong_type_stops_startup_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    proc, took = serve_with_config(tmp_path, toml)
    assert proc.returncode != 0
    assert took < CONFIG_ERROR_DEADLINE
    assert key in proc.stderr


def test_missing_config_file_gives_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cargohold.toml"
    proc = cargohold("serve", "--config", str(missing), "--storage", "memory://")
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "does not exist" in proc.stderr


def test_invalid_toml_is_reported_as_such(tmp_path: Path) -> None:
    proc, _ = serve_with_config(tmp_path, "[server\nlisten = \n")
    assert proc.returncode != 0
    assert "TOML" in proc.stderr


def test_configuration_errors_print_no_traceback(tmp_path: Path) -> None:
    proc, _ = serve_with_config(tmp_path, '[server]\nlisen = "x"\n')
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("cargohold:")


def test_bad_environment_variable_is_named(tmp_path: Path) -> None:
    proc = run(
        [sys.executable, "-m", "registry_server", "serve", "--storage", "memory://"],
        env=cli_env({"CARGOHOLD_SERVER_WORKERS": "lots"}),
        check=False,
        timeout=CONFIG_ERROR_DEADLINE + 30,
    )
    assert proc.returncode != 0
    assert "workers" in proc.stderr


def test_malformed_listen_address_is_refused(tmp_path: Path) -> None:
    proc = cargohold("serve", "--listen", "localhost", "--storage", "memory://")
    assert proc.returncode != 0
    assert "listen" in proc.stderr


def test_memory_storage_with_several_workers_is_refused() -> None:
    proc = cargohold("serve", "--workers", "2", "--storage", "memory://", "--listen", "127.0.0.1:1")
    assert proc.returncode != 0
    assert "memory://" in proc.stderr


# --- storage URLs ------------------------------------------------------------------------


def _push_and_pull(server: RegistryServer, repo: str) -> None:
    data = os.urandom(20_000)
    digest = push_blob(server.url, repo, data)
    resp = new_session().get(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.content == data
    image = sample_image("cli")
    push_image(server.url, repo, image, "v1")
    assert get_manifest(server.url, repo, "v1").content == image.manifest


def test_memory_storage_serves_push_and_pull(registry_factory, unique_repo: str) -> None:
    server = registry_factory("memory://")
    _push_and_pull(server, unique_repo)


def test_file_url_storage_serves_push_and_pull_from_the_folder(
    registry_factory, tmp_path: Path, unique_repo: str
) -> None:
    store = tmp_path / "abs-store"
    server = registry_factory(f"file://{store}")
    _push_and_pull(server, unique_repo)
    assert (store / "docker/registry/v2/repositories" / unique_repo / "_manifests").is_dir()
    assert any((store / "docker/registry/v2/blobs/sha256").iterdir())


def test_plain_folder_path_storage_serves_push_and_pull(
    registry_factory, tmp_path: Path, unique_repo: str
) -> None:
    store = tmp_path / "plain-store"
    server = registry_factory(str(store))
    _push_and_pull(server, unique_repo)
    assert (store / "docker/registry/v2/repositories" / unique_repo).is_dir()


def test_file_storage_survives_a_restart(registry_factory, unique_repo: str) -> None:
    server = registry_factory()
    digest = push_blob(server.url, unique_repo, b"kept across restarts")
    server.restart()
    resp = new_session().get(f"{server.url}/v2/{unique_repo}/blobs/{digest}")
    assert resp.content == b"kept across restarts"


# --- listen address ----------------------------------------------------------------------


class ServerWithoutListenFlag(RegistryServer):
    """Cargohold started without ``--listen``: the address comes from config or env."""

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--listen")
        return cmd[:at] + cmd[at + 2 :]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_listen_flag_is_honoured(registry_factory) -> None:
    port = free_port()
    server = registry_factory("memory://", port=port)
    assert new_session().get(f"http://127.0.0.1:{port}/v2/").status_code == 200
    assert f"on http://127.0.0.1:{port}" in server.log_text()


def test_listen_from_the_environment_is_used_without_the_flag(tmp_path: Path) -> None:
    port = free_port()
    server = ServerWithoutListenFlag(
        "memory://",
        port=port,
        env={"CARGOHOLD_SERVER_LISTEN": f"127.0.0.1:{port}"},
        workdir=tmp_path / "w",
    )
    with server:
        assert new_session().get(f"{server.url}/v2/").status_code == 200


def test_listen_from_the_config_file_is_used_without_the_flag(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "listen.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n')
    server = ServerWithoutListenFlag("memory://", port=port, config=config, workdir=tmp_path / "w")
    with server:
        assert new_session().get(f"{server.url}/v2/").status_code == 200


def test_listen_flag_wins_over_environment_and_config(tmp_path: Path, registry_factory) -> None:
    env_port, config_port = free_port(), free_port()
    config = tmp_path / "listen.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{config_port}"\n')
    server = registry_factory(
        "memory://", config=config, env={"CARGOHOLD_SERVER_LISTEN": f"127.0.0.1:{env_port}"}
    )
    assert new_session().get(f"{server.url}/v2/").status_code == 200
    assert server.port not in (env_port, config_port)
    assert _refused(env_port)
    assert _refused(config_port)


def test_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    env_port, config_port = free_port(), free_port()
    config = tmp_path / "listen.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:{config_port}"\n')
    server = ServerWithoutListenFlag(
        "memory://",
        port=env_port,
        config=config,
        env={"CARGOHOLD_SERVER_LISTEN": f"127.0.0.1:{env_port}"},
        workdir=tmp_path / "w",
    )
    with server:
        assert new_session().get(f"{server.url}/v2/").status_code == 200
        assert _refused(config_port)


# --- defaults ----------------------------------------------------------------------------


def test_serve_help_documents_the_defaults() -> None:
    proc = cargohold("serve", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "default 127.0.0.1:5000" in text
    assert "default ./var/registry" in text
    for flag in ("--config", "--listen", "--storage", "--workers", "--log-format"):
        assert flag in text


def test_console_script_runs() -> None:
    script = Path(sys.executable).parent / "cargohold"
    assert script.exists()
    proc = run([script, "serve", "--help"], env=cli_env(), check=False)
    assert proc.returncode == 0
    assert "--storage" in proc.stdout


def test_configuration_defaults_are_loopback_5000_and_var_registry() -> None:
    config = load_config(environ={})
    assert config.server.listen == "127.0.0.1:5000"
    assert config.storage.url == "./var/registry"
    assert config.server.workers == "auto"
    assert config.server.log_format == "text"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DefaultServer(RegistryServer):
    """``cargohold serve`` with no flags at all, in its work directory."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "registry_server", "serve"]


def test_serve_without_flags_uses_127_0_0_1_5000_and_var_registry(tmp_path: Path) -> None:
    if not _port_is_free(5000):
        # Something else holds the default port on this machine: check what serve
        # would use instead of starting it (never disturb the other process).
        config = load_config(environ={})
        assert (config.server.listen, config.storage.url) == ("127.0.0.1:5000", "./var/registry")
        return
    workdir = tmp_path / "cwd"
    server = DefaultServer(port=5000, workdir=workdir)
    with server:
        assert new_session().get("http://127.0.0.1:5000/v2/").status_code == 200
        push_blob(server.url, "test/reg/defaults", b"default storage")
        assert (workdir / "var/registry/docker/registry/v2/repositories/test/reg/defaults").is_dir()
    assert not server.running


# --- workers -----------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def listening_socket_inodes(port: int) -> set[str]:
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holds_socket(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(fd.path) in wanted:
                return True
        except OSError:
            continue
    return False


def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def two_workers(registry_factory) -> RegistryServer:
    server = registry_factory(extra_args=["--workers", "2"])
    wait_until(lambda: len(children_of(server.pid)) == 2)
    for child in children_of(server.pid):
        wait_for_port("127.0.0.1", server.port)
        wait_until(lambda c=child: holds_socket(c, listening_socket_inodes(server.port)))
    return server


def test_two_workers_are_two_child_processes(two_workers: RegistryServer) -> None:
    children = children_of(two_workers.pid)
    assert len(children) == 2
    assert two_workers.pid not in children


def test_each_worker_listens_on_the_port(two_workers: RegistryServer) -> None:
    inodes = listening_socket_inodes(two_workers.port)
    assert len(inodes) == 2  # one SO_REUSEPORT socket per worker
    for child in children_of(two_workers.pid):
        assert holds_socket(child, inodes)


def _metrics_requests_seen(server: RegistryServer) -> float:
    """This worker's count of earlier GET /metrics (each worker has its own counters)."""
    with new_session() as http:  # a fresh connection: the kernel picks a worker
        text = http.get(f"{server.url}/metrics", headers={"Connection": "close"}).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cargohold_http_requests_total" and sample.labels == {
                "route": "metrics",
                "method": "GET",
                "status": "200",
            }:
                return sample.value
    return 0.0


def test_two_workers_both_serve_requests(two_workers: RegistryServer) -> None:
    # One process would report 0, 1, 2, ... (every request sees all the earlier ones);
    # two processes, each counting its own, must repeat a value somewhere.
    seen = [_metrics_requests_seen(two_workers) for _ in range(40)]
    assert len(set(seen)) < len(seen), seen


def test_two_workers_share_storage(two_workers: RegistryServer, unique_repo: str) -> None:
    data = os.urandom(5000)
    digest = push_blob(two_workers.url, unique_repo, data)
    for _ in range(20):
        with new_session() as http:
            resp = http.get(
                f"{two_workers.url}/v2/{unique_repo}/blobs/{digest}",
                headers={"Connection": "close"},
            )
        assert resp.content == data


def test_sigterm_stops_every_worker_and_the_parent_exits_0(two_workers: RegistryServer) -> None:
    children = children_of(two_workers.pid)
    assert two_workers.proc is not None
    os.kill(two_workers.pid, signal.SIGTERM)
    assert two_workers.proc.wait(timeout=20) == 0
    for child in children:
        assert not Path(f"/proc/{child}").exists()
    assert _refused(two_workers.port)


def test_a_worker_that_dies_is_replaced(two_workers: RegistryServer) -> None:
    victim = min(children_of(two_workers.pid))
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            victim not in children_of(two_workers.pid) and len(children_of(two_workers.pid)) == 2
        )
    )
    inodes = listening_socket_inodes(two_workers.port)
    for child in children_of(two_workers.pid):
        wait_until(lambda c=child: holds_socket(c, listening_socket_inodes(two_workers.port)))
    assert inodes
    for _ in range(10):
        with new_session() as http:
            assert http.get(f"{two_workers.url}/v2/", headers={"Connection": "close"}).ok
