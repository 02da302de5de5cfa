"""``server.workers``: ``auto`` by default, first-start state made before forking, and
workers that never outlive their parent."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from registry_core import load_config
from tests.helpers import RegistryServer, sample_image
from tests.helpers.registry_api import new_session, push_blob
from tests.test_ops_cli import children_of, holds_socket, listening_socket_inodes, wait_until

AUTO = {"CARGOHOLD_SERVER_WORKERS": None}


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _serving_workers(server: RegistryServer, count: int) -> set[int]:
    wait_until(lambda: len(children_of(server.pid)) == count)
    children = children_of(server.pid)
    for child in children:
        wait_until(lambda c=child: holds_socket(c, listening_socket_inodes(server.port)))
    return children


def test_workers_default_to_auto() -> None:
    assert load_config(environ={}).server.workers == "auto"


def test_auto_is_one_worker_per_cpu_on_shared_storage() -> None:
    config = load_config(environ={"CARGOHOLD_SERVER_WORKERS": "auto"})
    assert config.server.worker_count("file:///var/registry") == _cpus()


def test_auto_is_one_process_on_memory_storage() -> None:
    assert load_config(environ={}).server.worker_count("memory://") == 1


def test_a_number_of_workers_from_the_environment_is_taken_as_is() -> None:
    assert load_config(environ={"CARGOHOLD_SERVER_WORKERS": "3"}).server.worker_count("x") == 3


@pytest.mark.parametrize("value", ["0", "-1", "several"])
def test_unusable_worker_counts_are_refused(value: str) -> None:
    from registry_core import ConfigError

    with pytest.raises(ConfigError, match="workers"):
        load_config(environ={"CARGOHOLD_SERVER_WORKERS": value})


def test_serve_by_default_forks_one_worker_per_cpu(registry_factory, tmp_path) -> None:
    server = registry_factory(f"file://{tmp_path}/store", env=AUTO)
    assert len(_serving_workers(server, _cpus())) == _cpus()


def test_serve_on_memory_storage_by_default_is_one_process(registry_factory) -> None:
    server = registry_factory("memory://", env=AUTO)
    time.sleep(0.5)  # a fork would have happened before the server answered
    assert children_of(server.pid) == set()


def test_the_bootstrap_admin_is_created_once_before_any_worker_starts(
    registry_factory, tmp_path
) -> None:
    server = registry_factory(
        f"file://{tmp_path}/store", env=AUTO, extra_args=["--workers", "2"], auth=True
    )
    _serving_workers(server, 2)
    log = server.log_text()
    assert log.count("created the superuser 'admin'") == 1
    assert log.index("created the superuser 'admin'") < log.index("cargohold: serving")
    password = (tmp_path / "store-state" / "admin-password").read_text().strip()
    with new_session() as http:
        assert http.get(f"{server.url}/v2/", auth=("admin", password)).status_code == 200


def _slow_upload(url: str, repo: str, stop: threading.Event) -> None:
    """PATCH a body that trickles until *stop* (the server dies under it)."""

    def body() -> Iterator[bytes]:
        while not stop.is_set():
            yield os.urandom(4096)
            time.sleep(0.02)

    try:
        with new_session() as http:
            start = http.post(f"{url}/v2/{repo}/blobs/uploads/")
            location = start.headers["Location"]
            if location.startswith("/"):
                location = url + location
            http.patch(location, data=body(), timeout=30)
    except requests.RequestException:
        pass  # the connection dies with the server: that is the point


def test_workers_exit_when_the_parent_is_killed_and_a_restart_takes_the_port(
    registry_factory, tmp_path
) -> None:
    server = registry_factory(
        f"file://{tmp_path}/store",
        env={**AUTO, "CARGOHOLD_SERVER_SHUTDOWN_TIMEOUT": "1"},
        extra_args=["--workers", "2"],
    )
    workers = _serving_workers(server, 2)
    stop = threading.Event()
    uploads = [
        threading.Thread(target=_slow_upload, args=(server.url, f"crash/reg/up{i}", stop))
        for i in range(4)
    ]
    for upload in uploads:
        upload.start()
    try:
        time.sleep(0.5)  # the uploads are streaming into the workers
        assert server.proc is not None
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=20)
    finally:
        stop.set()
        for upload in uploads:
            upload.join(timeout=30)
    assert listening_socket_inodes(server.port) == set()

    server.start()
    _serving_workers(server, 2)
    data = os.urandom(10_000)
    digest = push_blob(server.url, "crash/reg/after", data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    with new_session() as http:
        assert http.get(f"{server.url}/v2/crash/reg/after/blobs/{digest}").content == data


def test_two_workers_write_one_manifest_under_many_tags_at_once(registry_factory, tmp_path) -> None:
    """One manifest pushed under 240 tags by 16 clients at once, both workers storing its
    bytes side by side: every PUT is a 201 and every tag names it. (The workers had
    inherited one temporary-file prefix from their parent: two writes of one object
    named one temporary file, and a 503 came out of the race now and then.) The request
    ids of the answers are unique across the workers too."""
    server = registry_factory(f"file://{tmp_path}/store", env=AUTO, extra_args=["--workers", "2"])
    _serving_workers(server, 2)
    repo = "race/reg/tags"
    image = sample_image(seed="one manifest, many tags")
    for blob in image.blobs():
        push_blob(server.url, repo, blob.data)
    tags = [f"t{i:04d}" for i in range(240)]
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def put(chunk: list[str]) -> None:
        with new_session() as http:
            for tag in chunk:
                resp = http.put(
                    f"{server.url}/v2/{repo}/manifests/{tag}",
                    data=image.manifest,
                    headers={"Content-Type": image.media_type},
                )
                with lock:
                    answers.append((resp.status_code, resp.headers.get("X-Request-Id", "")))

    threads = [threading.Thread(target=put, args=(tags[i::16],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted({status for status, _ in answers}) == [201], answers
    assert len(answers) == len(tags)
    ids = [request_id for _, request_id in answers]
    assert all(ids) and len(set(ids)) == len(ids)
    with new_session() as http:
        listed = http.get(f"{server.url}/v2/{repo}/tags/list", params={"n": 1000}).json()
        assert sorted(listed["tags"]) == tags
        for tag in tags[::40]:
            got = http.get(
                f"{server.url}/v2/{repo}/manifests/{tag}",
                headers={"Accept": image.media_type},
            )
            assert got.status_code == 200 and got.content == image.manifest
