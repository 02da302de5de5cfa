"""Health, readiness, Prometheus metrics, request ids and access logs of a running server."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import RegistryServer, sha256_digest
from tests.helpers.registry_api import new_session, push_blob

ROUTE_KINDS = {
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "uploads",
    "upload",
    "referrers",
    "unknown",
    "other",
    "healthz",
    "readyz",
    "metrics",
    # Routes beside the distribution API (the shared server sees other tests' requests).
    "token",
    "management",
    "api_archives",
    "signatures",
    "web",
    "malformed",
}


# --- helpers -----------------------------------------------------------------------------


def samples(server: RegistryServer) -> list[tuple[str, dict[str, str], float]]:
    resp = new_session().get(f"{server.url}/metrics")
    assert resp.status_code == 200
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    ]


def metric(server: RegistryServer, name: str, **labels: str) -> float:
    """Sum of the samples of *name* whose labels include *labels* (0 when absent)."""
    return sum(
        value
        for sample, sample_labels, value in samples(server)
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def log_lines_with(server: RegistryServer, request_id: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if request_id in line]


def wait_log_line(server: RegistryServer, request_id: str) -> str:
    """The single access-log line of *request_id* (waits: it is written after the reply)."""
    lines = wait_for(lambda: log_lines_with(server, request_id))
    assert isinstance(lines, list)
    time.sleep(0.2)  # a duplicate would have been written by now
    lines = log_lines_with(server, request_id)
    assert len(lines) == 1, lines
    return lines[0]


def parse_text_line(line: str) -> dict[str, str]:
    fields = {}
    for part in line.split(" "):
        key, sep, value = part.partition("=")
        assert sep, f"not key=value: {part!r} in {line!r}"
        fields[key] = value
    return fields


def fresh_id() -> str:
    return f"ops-{uuid.uuid4().hex}"


# --- health and readiness ----------------------------------------------------------------


def test_healthz_is_200(shared_server: RegistryServer) -> None:
    resp = new_session().get(f"{shared_server.url}/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_readyz_is_200_when_storage_is_reachable(shared_server: RegistryServer) -> None:
    resp = new_session().get(f"{shared_server.url}/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_readyz_is_200_on_memory_storage(registry_server: RegistryServer) -> None:
    assert new_session().get(f"{registry_server.url}/readyz").status_code == 200


@pytest.fixture
def breakable_store(tmp_path: Path, registry_factory):
    """A server whose storage folder the test can make unreachable, and restore."""
    store = tmp_path / "store"
    store.mkdir()
    server = registry_factory(f"file://{store}")
    push_blob(server.url, "ops/ready/img", b"ready")
    aside = tmp_path / "store.aside"

    def break_it() -> None:
        # A symlink to itself: every access fails with ELOOP (running as root,
        # permissions would not stop anything).
        store.rename(aside)
        os.symlink(store, store)

    def restore() -> None:
        store.unlink()
        aside.rename(store)

    yield server, break_it, restore
    if store.is_symlink():
        restore()


def test_readyz_is_503_when_storage_is_unreachable(breakable_store) -> None:
    server, break_it, _ = breakable_store
    break_it()
    resp = new_session().get(f"{server.url}/readyz")
    assert resp.status_code == 503
    assert resp.json() == {"status": "unavailable"}


def test_readyz_is_503_when_the_storage_folder_became_a_file(
    tmp_path: Path, registry_factory
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    server = registry_factory(f"file://{store}")
    assert new_session().get(f"{server.url}/readyz").status_code == 200
    store.rename(tmp_path / "store.aside")
    store.write_bytes(b"not a folder")
    assert new_session().get(f"{server.url}/readyz").status_code == 503


def test_healthz_stays_200_when_storage_is_unreachable(breakable_store) -> None:
    server, break_it, _ = breakable_store
    break_it()
    assert new_session().get(f"{server.url}/healthz").status_code == 200


def test_readyz_recovers_when_storage_comes_back(breakable_store) -> None:
    server, break_it, restore = breakable_store
    break_it()
    assert new_session().get(f"{server.url}/readyz").status_code == 503
    restore()
    assert new_session().get(f"{server.url}/readyz").status_code == 200


def test_unreachable_storage_answers_json_503_on_the_api(breakable_store) -> None:
    server, break_it, _ = breakable_store
    break_it()
    resp = new_session().get(f"{server.url}/v2/ops/ready/img/blobs/{sha256_digest(b'ready')}")
    assert resp.status_code == 503
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["errors"][0]["code"] == "UNAVAILABLE"


# --- metrics -----------------------------------------------------------------------------


def test_metrics_are_prometheus_text(shared_server: RegistryServer) -> None:
    resp = new_session().get(f"{shared_server.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    assert any(
        family.name == "cargohold_http_requests"
        for family in text_string_to_metric_families(resp.text)
    )


def test_requests_total_counts_by_route_method_and_status(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    labels = {"route": "blob", "method": "GET", "status": "404"}
    before = metric(shared_server, "cargohold_http_requests_total", **labels)
    http = new_session()
    for i in range(3):
        digest = sha256_digest(f"missing {i}".encode())
        assert http.get(f"{shared_server.url}/v2/{unique_repo}/blobs/{digest}").status_code == 404
    after = wait_for(
        lambda: (
            (v := metric(shared_server, "cargohold_http_requests_total", **labels)) >= before + 3
            and v
        )
    )
    assert after == before + 3


def test_requests_total_labels_are_route_kinds(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    http = new_session()
    http.get(f"{shared_server.url}/v2/{unique_repo}/tags/list")
    http.get(f"{shared_server.url}/no/such/path")
    http.delete(f"{shared_server.url}/v2/")
    seen = [
        labels
        for name, labels, _ in samples(shared_server)
        if name == "cargohold_http_requests_total"
    ]
    assert seen
    for labels in seen:
        assert set(labels) == {"route", "method", "status"}
        assert labels["route"] in ROUTE_KINDS
        assert re.fullmatch(r"[1-5]\d\d", labels["status"])
    assert {"route": "tags", "method": "GET", "status": "404"} in seen
    assert {"route": "base", "method": "DELETE", "status": "405"} in seen


def test_latency_histogram_has_cumulative_buckets(shared_server: RegistryServer) -> None:
    new_session().get(f"{shared_server.url}/v2/")
    buckets = [
        (labels["le"], value)
        for name, labels, value in samples(shared_server)
        if name == "cargohold_http_request_duration_seconds_bucket"
        and labels.get("route") == "base"
        and labels.get("method") == "GET"
    ]
    assert len(buckets) >= 10
    assert buckets[-1][0] == "+Inf"
    values = [value for _, value in buckets]
    assert values == sorted(values)
    count = metric(
        shared_server, "cargohold_http_request_duration_seconds_count", route="base", method="GET"
    )
    assert values[-1] == count >= 1


def test_request_bytes_counter_grows_by_the_uploaded_size(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    before = metric(shared_server, "cargohold_http_request_bytes_total", route="upload")
    size = 123_457
    push_blob(shared_server.url, unique_repo, os.urandom(size))  # POST, then PUT with the body
    wait_for(
        lambda: (
            metric(shared_server, "cargohold_http_request_bytes_total", route="upload")
            >= before + size
        )
    )
    assert metric(shared_server, "cargohold_http_request_bytes_total", route="upload") == (
        before + size
    )


def test_response_bytes_counter_grows_by_the_downloaded_size(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    data = os.urandom(98_765)
    digest = push_blob(shared_server.url, unique_repo, data)
    before = metric(shared_server, "cargohold_http_response_bytes_total", route="blob")
    resp = new_session().get(f"{shared_server.url}/v2/{unique_repo}/blobs/{digest}")
    assert resp.content == data
    wait_for(
        lambda: (
            metric(shared_server, "cargohold_http_response_bytes_total", route="blob")
            >= before + len(data)
        )
    )
    assert metric(shared_server, "cargohold_http_response_bytes_total", route="blob") == (
        before + len(data)
    )


def test_head_of_a_blob_adds_no_response_bytes(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    digest = push_blob(shared_server.url, unique_repo, os.urandom(50_000))
    before = metric(shared_server, "cargohold_http_response_bytes_total", route="blob")
    request_id = fresh_id()
    resp = new_session().head(
        f"{shared_server.url}/v2/{unique_repo}/blobs/{digest}",
        headers={"X-Request-Id": request_id},
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == "50000"
    wait_log_line(shared_server, request_id)
    assert metric(shared_server, "cargohold_http_response_bytes_total", route="blob") == before


def test_uploads_in_flight_counts_a_streaming_upload(registry_factory, unique_repo: str) -> None:
    server = registry_factory()
    assert metric(server, "cargohold_uploads_in_flight") == 0
    resp = new_session().post(f"{server.url}/v2/{unique_repo}/blobs/uploads/")
    location = resp.headers["Location"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000\r\n"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            ).encode()
            + b"x" * 1000
        )
        wait_for(lambda: metric(server, "cargohold_uploads_in_flight") == 1)
        sock.sendall(b"y" * 1000)
        assert sock.recv(100).startswith(b"HTTP/1.1 202")
    wait_for(lambda: metric(server, "cargohold_uploads_in_flight") == 0)


def test_metrics_never_name_a_repository(shared_server: RegistryServer) -> None:
    secret = f"tenant{uuid.uuid4().hex[:8]}"
    repo = f"{secret}/private/{secret}-app"
    http = new_session()
    digest = push_blob(shared_server.url, repo, b"confidential layer")
    http.get(f"{shared_server.url}/v2/{repo}/blobs/{digest}")
    http.get(f"{shared_server.url}/v2/{repo}/manifests/{secret}-tag")
    http.get(f"{shared_server.url}/v2/{repo}/tags/list")
    http.get(f"{shared_server.url}/v2/{repo}/nonsense/{secret}")
    text = http.get(f"{shared_server.url}/metrics").text
    assert "cargohold_http_requests_total" in text
    assert secret not in text
    assert "private" not in text


# --- request ids -------------------------------------------------------------------------


def _raw_exchange(server: RegistryServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/v2/", 200),
        ("HEAD", "/v2/", 200),
        ("GET", "/v2/_catalog", 200),
        ("GET", "/v2/{repo}/blobs/{digest}", 200),
        ("HEAD", "/v2/{repo}/blobs/{digest}", 200),
        ("GET", "/v2/{repo}/blobs/{missing}", 404),
        ("HEAD", "/v2/{repo}/manifests/nope", 404),
        ("GET", "/v2/{repo}/whatever", 404),
        ("PATCH", "/v2/{repo}/tags/list", 405),
        ("GET", "/favicon.ico", 404),
        ("POST", "/v2/{repo}/blobs/uploads/", 202),
    ],
)
def test_every_response_carries_a_request_id(
    shared_server: RegistryServer, unique_repo: str, method: str, path: str, status: int
) -> None:
    digest = push_blob(shared_server.url, unique_repo, b"request id blob")
    url = shared_server.url + path.format(
        repo=unique_repo, digest=digest, missing=sha256_digest(b"missing")
    )
    resp = new_session().request(method, url)
    assert resp.status_code == status
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", resp.headers.get("X-Request-Id", ""))


def test_streamed_blob_from_memory_storage_carries_a_request_id(
    registry_server: RegistryServer, unique_repo: str
) -> None:
    digest = push_blob(registry_server.url, unique_repo, b"from memory")
    resp = new_session().get(f"{registry_server.url}/v2/{unique_repo}/blobs/{digest}")
    assert resp.status_code == 200
    assert resp.headers.get("X-Request-Id")


def test_garbage_request_answer_carries_a_request_id(shared_server: RegistryServer) -> None:
    reply = _raw_exchange(shared_server, b"\x00\x01garbage\r\n\r\n")
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.")
    headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", headers["X-Request-Id"])


def test_request_ids_differ_between_requests(shared_server: RegistryServer) -> None:
    http = new_session()
    ids = {http.get(f"{shared_server.url}/v2/").headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("incoming", ["abc-123", "trace.ID_42", "A" * 64, str(uuid.uuid4())])
def test_sane_incoming_request_id_is_echoed(shared_server: RegistryServer, incoming: str) -> None:
    for path in ("/v2/", "/v2/no/such/repo/manifests/x", "/healthz"):
        resp = new_session().get(shared_server.url + path, headers={"X-Request-Id": incoming})
        assert resp.headers["X-Request-Id"] == incoming


@pytest.mark.parametrize(
    "incoming", ["A" * 65, "has space", "new\\nline", 'quote"d', "semi;colon", "<script>"]
)
def test_insane_incoming_request_id_is_replaced(
    shared_server: RegistryServer, incoming: str
) -> None:
    resp = new_session().get(f"{shared_server.url}/v2/", headers={"X-Request-Id": incoming})
    echoed = resp.headers["X-Request-Id"]
    assert echoed != incoming
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", echoed)


# --- access log --------------------------------------------------------------------------


def test_access_log_has_one_line_per_request(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    http = new_session()
    ids = [fresh_id() for _ in range(6)]
    for i, request_id in enumerate(ids):
        http.get(
            f"{shared_server.url}/v2/{unique_repo}/manifests/t{i}",
            headers={"X-Request-Id": request_id},
        )
    for request_id in ids:
        wait_log_line(shared_server, request_id)


def test_access_log_line_has_method_route_repository_status_bytes_duration(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    data = os.urandom(4321)
    resp = new_session().post(
        f"{shared_server.url}/v2/{unique_repo}/blobs/uploads/?digest={sha256_digest(data)}",
        data=data,
        headers={"X-Request-Id": (request_id := fresh_id())},
    )
    assert resp.status_code == 201
    fields = parse_text_line(wait_log_line(shared_server, request_id))
    assert fields["request_id"] == request_id
    assert fields["method"] == "POST"
    assert fields["route"] == "uploads"
    assert fields["repository"] == unique_repo
    assert fields["status"] == "201"
    assert fields["bytes_in"] == "4321"
    assert fields["bytes_out"] == "0"
    assert float(fields["duration_ms"]) >= 0


def test_access_log_records_bytes_out_of_a_download(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    data = os.urandom(7777)
    digest = push_blob(shared_server.url, unique_repo, data)
    request_id = fresh_id()
    resp = new_session().get(
        f"{shared_server.url}/v2/{unique_repo}/blobs/{digest}",
        headers={"X-Request-Id": request_id},
    )
    assert resp.content == data
    fields = parse_text_line(wait_log_line(shared_server, request_id))
    assert fields["status"] == "200"
    assert fields["route"] == "blob"
    assert fields["bytes_out"] == "7777"


def test_access_log_records_no_bytes_out_for_a_head(
    shared_server: RegistryServer, unique_repo: str
) -> None:
    digest = push_blob(shared_server.url, unique_repo, os.urandom(3333))
    request_id = fresh_id()
    resp = new_session().head(
        f"{shared_server.url}/v2/{unique_repo}/blobs/{digest}",
        headers={"X-Request-Id": request_id},
    )
    assert resp.headers["Content-Length"] == "3333"
    fields = parse_text_line(wait_log_line(shared_server, request_id))
    assert fields["method"] == "HEAD"
    assert fields["bytes_out"] == "0"


def test_access_log_records_an_error_status(shared_server: RegistryServer) -> None:
    request_id = fresh_id()
    new_session().delete(f"{shared_server.url}/v2/_catalog", headers={"X-Request-Id": request_id})
    fields = parse_text_line(wait_log_line(shared_server, request_id))
    assert fields["status"] == "405"
    assert fields["method"] == "DELETE"
    assert fields["route"] == "catalog"


@pytest.fixture
def json_log_server(registry_factory) -> RegistryServer:
    return registry_factory(extra_args=["--log-format", "json"])


def _json_records(server: RegistryServer) -> list[dict]:
    records = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_json_access_log_lines_parse_with_every_field(
    json_log_server: RegistryServer, unique_repo: str
) -> None:
    data = b"json log blob"
    digest = push_blob(json_log_server.url, unique_repo, data)
    request_id = fresh_id()
    new_session().get(
        f"{json_log_server.url}/v2/{unique_repo}/blobs/{digest}",
        headers={"X-Request-Id": request_id},
    )

    def found() -> list[dict]:
        return [r for r in _json_records(json_log_server) if r.get("request_id") == request_id]

    records = wait_for(found)
    assert isinstance(records, list) and len(records) == 1
    record = records[0]
    assert record["method"] == "GET"
    assert record["route"] == "blob"
    assert record["repository"] == unique_repo
    assert record["status"] == 200
    assert record["bytes_out"] == len(data)
    assert isinstance(record["duration_ms"], int | float)
    assert record["duration_ms"] >= 0
    assert "ts" in record


def test_json_access_log_has_one_record_per_request(
    json_log_server: RegistryServer, unique_repo: str
) -> None:
    ids = [fresh_id() for _ in range(5)]
    for request_id in ids:
        new_session().get(f"{json_log_server.url}/v2/", headers={"X-Request-Id": request_id})
    wait_for(lambda: {r.get("request_id") for r in _json_records(json_log_server)} >= set(ids))
    time.sleep(0.2)
    records = [r for r in _json_records(json_log_server) if r.get("request_id") in ids]
    assert sorted(r["request_id"] for r in records) == sorted(ids)


def test_json_access_log_every_access_line_is_json(
    json_log_server: RegistryServer, unique_repo: str
) -> None:
    http = new_session()
    http.get(f"{json_log_server.url}/v2/{unique_repo}/tags/list")
    http.get(f"{json_log_server.url}/healthz")
    request_id = fresh_id()
    http.get(f"{json_log_server.url}/metrics", headers={"X-Request-Id": request_id})
    wait_for(lambda: any(r.get("request_id") == request_id for r in _json_records(json_log_server)))
    access_like = [
        line
        for line in json_log_server.log_text().splitlines()
        if "request_id" in line and "method" in line
    ]
    assert access_like
    for line in access_like:
        assert isinstance(json.loads(line), dict)


def test_request_with_bad_request_id_is_logged_under_the_replacement(
    shared_server: RegistryServer,
) -> None:
    resp = requests.Session()
    resp.trust_env = False
    reply = resp.get(f"{shared_server.url}/v2/", headers={"X-Request-Id": "not sane!"})
    replacement = reply.headers["X-Request-Id"]
    line = wait_log_line(shared_server, replacement)
    assert "not sane" not in line
