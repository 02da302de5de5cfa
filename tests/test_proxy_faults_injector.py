"""The fault-injecting proxy itself, in front of a Distribution with htpasswd auth: each
fault does what the pull-through tests rely on, and the counts are those of the peer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.fault_proxy import Fault, FaultProxy
from tests.helpers.registry_api import new_session
from tests.helpers.upstreams import HtpasswdDistribution, Seeded, seed


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[HtpasswdDistribution, Seeded]]:
    server = HtpasswdDistribution(tmp_path / "store", workdir=tmp_path / "dist")
    with server:
        yield server, seed(server.url, auth=server.auth)


@pytest.fixture
def fp(peer: tuple[HtpasswdDistribution, Seeded]) -> Iterator[FaultProxy]:
    with FaultProxy(peer[0].url) as proxy:
        yield proxy


def blob_url(fp: FaultProxy, seeded: Seeded) -> str:
    return f"{fp.url}/v2/app/blobs/{seeded.single.layers[0].digest}"


def test_forwards_bytes_unchanged_and_counts_by_path(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, seeded = peer
    session = new_session(server.auth)

    first = session.get(blob_url(fp, seeded))
    session.get(blob_url(fp, seeded))

    assert first.content == seeded.single.layers[0].data
    assert fp.forwarded_count(r"/blobs/", "GET") == 2
    assert fp.forwarded_count(r"/manifests/") == 0


def test_the_peers_challenge_is_passed_on(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    resp = new_session().get(f"{fp.url}/v2/")

    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")


def test_corrupt_flips_one_byte_and_keeps_the_length(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, seeded = peer
    fp.add(Fault(r"/blobs/", "corrupt", times=1))
    data = seeded.single.layers[0].data

    got = new_session(server.auth).get(blob_url(fp, seeded)).content

    assert len(got) == len(data)
    assert sum(a != b for a, b in zip(got, data, strict=True)) == 1


def test_truncate_cuts_the_body_and_the_connection(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, seeded = peer
    fp.add(Fault(r"/blobs/", "truncate", keep=50, times=1))

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        new_session(server.auth).get(blob_url(fp, seeded))


def test_status_answers_without_asking_the_peer(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, seeded = peer
    fp.add(Fault(r"/blobs/", "status", status=429, retry_after=9))

    resp = new_session(server.auth).get(blob_url(fp, seeded))

    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "9"
    assert resp.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert fp.forwarded_count() == 0
    assert fp.received_count(r"/blobs/") == 1


def test_stall_delays_the_answer(peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy) -> None:
    server, seeded = peer
    fp.add(Fault(r"/blobs/", "stall", delay=1.0, times=1))

    started = time.monotonic()
    resp = new_session(server.auth).get(blob_url(fp, seeded))

    assert time.monotonic() - started >= 1.0
    assert hashlib.sha256(resp.content).hexdigest() == seeded.single.layers[0].hex


def test_refusing_refuses_connections_until_it_ends(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, _ = peer
    session = new_session(server.auth)

    with fp.refusing(), pytest.raises(requests.exceptions.ConnectionError):
        new_session().get(f"{fp.url}/v2/", timeout=5)

    assert session.get(f"{fp.url}/v2/").status_code == 200


def test_refusing_also_closes_idle_keep_alive_connections(
    peer: tuple[HtpasswdDistribution, Seeded], fp: FaultProxy
) -> None:
    server, _ = peer
    session = new_session(server.auth)
    assert session.get(f"{fp.url}/v2/").status_code == 200

    with fp.refusing(), pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{fp.url}/v2/", timeout=5)

    assert fp.received_count(r"^/v2/$") == 1


def test_only_forwards_to_loopback() -> None:
    with pytest.raises(ValueError):
        FaultProxy("http://10.0.0.1:5000")
