"""The server helpers: CNCF Distribution as a reference, and the Cargohold process wrapper."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import (
    DistributionServer,
    RegistryServer,
    free_port,
    http_status,
    peak_rss_kib,
    sample_image,
    sample_multiarch,
    sha256_digest,
    skopeo,
    wait_for_port,
    write_docker_archive,
    write_oci_layout,
)
from tests.helpers.registry_api import get_manifest, new_session, push_image

pytestmark = pytest.mark.clients


def remote_raw(server_host: str, repo: str, ref: str) -> bytes:
    sep = "@" if ref.startswith("sha256:") else ":"
    return skopeo(
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{server_host}/{repo}{sep}{ref}",
        text=False,
    ).stdout


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)


def test_distribution_roundtrip_with_skopeo(
    distribution_server: DistributionServer, tmp_path: Path, unique_repo: str
) -> None:
    srv = distribution_server
    assert http_status(srv.url + "/v2/") == 200

    image = sample_image("single")
    write_oci_layout(tmp_path / "oci", image, "v1")
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'oci'}:v1",
        f"docker://{srv.host}/{unique_repo}:v1",
    )
    assert remote_raw(srv.host, unique_repo, "v1") == image.manifest
    assert remote_raw(srv.host, unique_repo, image.digest) == image.manifest

    index = sample_multiarch("multi")
    write_oci_layout(tmp_path / "multi", index, "latest")
    skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'multi'}:latest",
        f"docker://{srv.host}/{unique_repo}:multi",
    )
    assert remote_raw(srv.host, unique_repo, "multi") == index.manifest
    for child in index.images:
        assert remote_raw(srv.host, unique_repo, child.digest) == child.manifest

    archive = write_docker_archive(tmp_path / "a.tar", "x/y/z:1", [{"a": b"1"}, {"b": b"2"}])
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"docker-archive:{archive.path}",
        f"docker://{srv.host}/{unique_repo}:archive",
    )
    manifest = json.loads(remote_raw(srv.host, unique_repo, "archive"))
    assert manifest["config"]["digest"] == archive.config_digest
    assert len(manifest["layers"]) == len(archive.diff_ids)
    config = skopeo(
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        f"docker://{srv.host}/{unique_repo}:archive",
        text=False,
    ).stdout
    assert config == archive.config


def test_distribution_restart_kill_and_http_push(tmp_path: Path, unique_repo: str) -> None:
    store = tmp_path / "store"
    with DistributionServer(store, workdir=tmp_path / "work") as srv:
        assert peak_rss_kib(srv.pid) > 0
        image = sample_image("http", fmt="docker")
        assert push_image(srv.url, unique_repo, image, "t") == image.digest
        index = sample_multiarch("httpidx")
        push_image(srv.url, unique_repo, index, "idx")

        old_pid = srv.pid
        srv.restart()
        assert srv.pid != old_pid
        resp = get_manifest(srv.url, unique_repo, "t")
        assert resp.status_code == 200
        assert resp.content == image.manifest
        assert resp.headers["Docker-Content-Digest"] == image.digest
        assert get_manifest(srv.url, unique_repo, "idx").content == index.manifest
        blob = image.layers[0]
        got = new_session().get(f"{srv.url}/v2/{unique_repo}/blobs/{blob.digest}")
        assert sha256_digest(got.content) == blob.digest

        assert srv.kill9() == -signal.SIGKILL
        assert http_status(srv.url + "/v2/") is None
        srv.start()
        assert get_manifest(srv.url, unique_repo, "t").status_code == 200
    assert not srv.running
    assert (store / "docker" / "registry" / "v2" / "repositories" / unique_repo).is_dir()
    assert srv.log_text().startswith("=== /usr/bin/docker-registry serve")


def test_registry_server_lifecycle(file_registry_server: RegistryServer, tmp_path: Path) -> None:
    srv = file_registry_server
    assert srv.url == f"http://127.0.0.1:{srv.port}"
    assert srv.host == f"127.0.0.1:{srv.port}"
    assert srv.storage_path == tmp_path / "store"
    assert http_status(srv.url + "/healthz") == 200
    assert peak_rss_kib(srv.pid) > 0

    old_pid = srv.pid
    srv.restart()
    assert srv.pid != old_pid
    assert http_status(srv.url + "/healthz") == 200

    assert srv.kill9() == -signal.SIGKILL
    assert http_status(srv.url + "/healthz") is None
    srv.start()
    assert srv.stop() == 0  # SIGTERM: graceful exit
    assert srv.log_text()


def test_registry_server_memory(registry_server: RegistryServer) -> None:
    assert registry_server.storage_path is None
    assert registry_server.storage_url == "memory://"
    assert http_status(registry_server.url + "/healthz") == 200


def test_registry_server_start_failure_shows_log(tmp_path: Path) -> None:
    server = RegistryServer(
        "memory://", extra_args=["--no-such-option"], workdir=tmp_path, startup_timeout=30
    )
    with pytest.raises(RuntimeError, match="during start-up") as info:
        server.start()
    assert "--no-such-option" in str(info.value)
    assert not server.running


def test_factories_share_storage_between_servers(
    registry_factory, distribution_factory, tmp_path: Path, unique_repo: str
) -> None:
    store = tmp_path / "shared"
    first = registry_factory(f"file://{store}")
    second = registry_factory(storage_url=f"file://{store}", env={"CARGOHOLD_UNUSED": "1"})
    assert first.port != second.port
    image = sample_image("shared")
    push_image(first.url, unique_repo, image, "v1")
    assert get_manifest(second.url, unique_repo, "v1").content == image.manifest

    fresh = registry_factory()
    assert fresh.storage_path is not None and fresh.storage_path != store
    assert get_manifest(fresh.url, unique_repo, "v1").status_code == 404

    dist = distribution_factory()
    assert http_status(dist.url + "/v2/") == 200
