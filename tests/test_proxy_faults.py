"""Pull-through under upstream faults: a fault-injecting proxy (:mod:`tests.helpers.fault_proxy`)
sits between the Cargohold under test and a Distribution 2.8.2 upstream with htpasswd auth,
and corrupts bytes, truncates bodies, stalls, answers 429 or 503, or refuses connections.

What must hold: nothing corrupt is ever committed (checked in the storage folder); a
client never gets bytes that pass its digest check unless they are right; cached content
is served stale when the upstream fails; with nothing cached the answer is a JSON error
naming the upstream, within the configured timeout (5 s for a refused connection), never
a hang; many clients of one missing blob cause one upstream fetch.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from tests.helpers import sample_image
from tests.helpers.fault_proxy import Fault, FaultProxy
from tests.helpers.registry_api import MANIFEST_ACCEPT, get_manifest, new_session, push_image
from tests.helpers.tenants import error_codes
from tests.helpers.upstreams import (
    HtpasswdDistribution,
    PullThrough,
    Seeded,
    Upstream,
    blob_files,
    corrupt_blobs,
    seed,
    start_pull_through,
)

UPSTREAM_TIMEOUT = 2.0
"""``[upstreams] timeout`` of the Cargohold under test: stalls end in an error after it."""

NO_HANG = UPSTREAM_TIMEOUT + 10.0
"""Bound on an answer when the upstream stalls: the timeout plus ample slack (no hang)."""


@dataclass(frozen=True)
class Rig:
    """The Cargohold under test (``pt``), the fault proxy (``fp``) and the upstream's images."""

    pt: PullThrough
    fp: FaultProxy
    seeded: Seeded
    upstream: HtpasswdDistribution

    def blob_url(self, digest: str, image: str = "app") -> str:
        return f"{self.pt.url}/v2/{self.pt.repo(image)}/blobs/{digest}"


@pytest.fixture
def distribution_upstream(tmp_path: Path) -> Iterator[HtpasswdDistribution]:
    server = HtpasswdDistribution(tmp_path / "distribution-store", workdir=tmp_path / "dist")
    with server:
        yield server


def make_rig(
    registry_factory: Any,
    tmp_path: Path,
    upstream: HtpasswdDistribution,
    fp: FaultProxy,
    *,
    big: bool = False,
    tag_ttl: str | None = None,
    images: str | None = None,
    settings: dict[str, Any] | None = None,
    workers: int = 1,
) -> Rig:
    seeded = seed(upstream.url, auth=upstream.auth, big=big)
    pt = start_pull_through(
        registry_factory,
        tmp_path,
        Upstream(
            "flaky",
            fp.url,
            username=upstream.username,
            password=upstream.password,
            tag_ttl=tag_ttl,
            images=images,
        ),
        settings={"timeout": UPSTREAM_TIMEOUT, **(settings or {})},
        workers=workers,
    )
    return Rig(pt, fp, seeded, upstream)


@pytest.fixture
def fault_proxy(distribution_upstream: HtpasswdDistribution) -> Iterator[FaultProxy]:
    with FaultProxy(distribution_upstream.url) as fp:
        yield fp


@pytest.fixture
def rig(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> Rig:
    return make_rig(registry_factory, tmp_path, distribution_upstream, fault_proxy)


@pytest.fixture
def short_ttl_rig(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> Rig:
    """A rig whose tags stay fresh for 1 s, with ``app:1.0`` already pulled (cached)."""
    rig = make_rig(registry_factory, tmp_path, distribution_upstream, fault_proxy, tag_ttl="1s")
    assert manifest(rig, "1.0").status_code == 200
    time.sleep(1.5)
    return rig


def manifest(rig: Rig, ref: str, image: str = "app") -> requests.Response:
    return get_manifest(rig.pt.url, rig.pt.repo(image), ref)


def download(url: str) -> tuple[int, str | None]:
    """GET ``url``: (status, sha256 of the body) or (status, None) when the stream broke."""
    try:
        resp = new_session().get(url, timeout=60)
        return resp.status_code, "sha256:" + hashlib.sha256(resp.content).hexdigest()
    except requests.RequestException:
        return -1, None


def wait_for_blob(store: Path, digest: str, timeout: float = 10.0) -> bool:
    """Whether ``digest`` is committed in ``store`` (commits may finish after the response)."""
    deadline = time.monotonic() + timeout
    while digest not in blob_files(store):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def assert_upstream_error(resp: requests.Response, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    body = resp.json()
    [error] = body["errors"]
    assert set(error) >= {"code", "message"}
    assert "flaky" in error["message"], error
    return error


def metric_total(rig: Rig, name: str, **labels: str) -> float:
    text = new_session().get(f"{rig.pt.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- corrupted and truncated bytes ------------------------------------------------------------


def test_a_corrupted_blob_never_passes_the_clients_digest_check(rig: Rig) -> None:
    layer = rig.seeded.single.layers[0]
    corrupt = rig.fp.add(Fault(rf"/blobs/{layer.digest}$", "corrupt", methods=("GET",), times=1))

    status, got = download(rig.blob_url(layer.digest))

    assert corrupt.hits == 1
    assert (status, got) != (200, layer.digest)


def test_a_corrupted_blob_is_never_committed(rig: Rig) -> None:
    layer = rig.seeded.single.layers[0]
    corrupt = rig.fp.add(Fault(rf"/blobs/{layer.digest}$", "corrupt", methods=("GET",), times=1))

    download(rig.blob_url(layer.digest))

    assert corrupt.hits == 1
    time.sleep(1.0)
    assert layer.digest not in blob_files(rig.pt.store)
    assert corrupt_blobs(rig.pt.store) == []


def test_a_blob_corrupted_once_is_fetched_right_on_the_next_pull(rig: Rig) -> None:
    layer = rig.seeded.single.layers[0]
    rig.fp.add(Fault(rf"/blobs/{layer.digest}$", "corrupt", methods=("GET",), times=1))
    download(rig.blob_url(layer.digest))

    status, got = download(rig.blob_url(layer.digest))

    assert (status, got) == (200, layer.digest)
    assert wait_for_blob(rig.pt.store, layer.digest)
    assert corrupt_blobs(rig.pt.store) == []


def test_a_corrupted_manifest_asked_by_digest_is_refused_and_not_stored(rig: Rig) -> None:
    image = rig.seeded.single
    rig.fp.add(Fault(r"/manifests/", "corrupt", methods=("GET",), times=1))

    resp = manifest(rig, image.digest)

    assert_upstream_error(resp, 502, 503, 504)
    time.sleep(0.5)
    assert image.digest not in blob_files(rig.pt.store)
    assert corrupt_blobs(rig.pt.store) == []


def test_a_truncated_blob_cuts_the_clients_stream_and_is_not_committed(rig: Rig) -> None:
    layer = rig.seeded.single.layers[0]
    assert layer.size > 200
    truncate = rig.fp.add(
        Fault(rf"/blobs/{layer.digest}$", "truncate", methods=("GET",), keep=100, times=1)
    )

    status, got = download(rig.blob_url(layer.digest))

    assert truncate.hits == 1
    assert (status, got) != (200, layer.digest)
    time.sleep(1.0)
    assert layer.digest not in blob_files(rig.pt.store)
    assert corrupt_blobs(rig.pt.store) == []


def test_a_truncated_manifest_is_refused(rig: Rig) -> None:
    image = rig.seeded.single
    rig.fp.add(Fault(r"/manifests/", "truncate", methods=("GET",), keep=10, times=1))

    resp = manifest(rig, image.digest)

    assert resp.status_code in (502, 503, 504), (resp.status_code, resp.text[:300])
    assert error_codes(resp) == ["UNAVAILABLE"]
    assert corrupt_blobs(rig.pt.store) == []


# -- stalls -----------------------------------------------------------------------------------


def test_a_stalled_upstream_with_nothing_cached_ends_in_a_json_error_not_a_hang(
    rig: Rig,
) -> None:
    rig.fp.add(Fault(r"/manifests/", "stall", delay=60))

    started = time.monotonic()
    resp = manifest(rig, "1.0")
    elapsed = time.monotonic() - started

    assert_upstream_error(resp, 502, 503, 504)
    assert elapsed < NO_HANG


def test_a_blob_stalling_midway_cuts_the_client_and_is_not_committed(rig: Rig) -> None:
    layer = rig.seeded.single.layers[0]
    stall = rig.fp.add(Fault(rf"/blobs/{layer.digest}$", "stall_body", methods=("GET",), keep=100))

    started = time.monotonic()
    status, got = download(rig.blob_url(layer.digest))
    elapsed = time.monotonic() - started

    assert stall.hits >= 1
    assert (status, got) != (200, layer.digest)
    assert elapsed < NO_HANG
    assert layer.digest not in blob_files(rig.pt.store)


def test_a_stalled_upstream_serves_the_cached_tag_past_its_ttl(short_ttl_rig: Rig) -> None:
    rig = short_ttl_rig
    stall = rig.fp.add(Fault(r"/manifests/", "stall", delay=60))

    started = time.monotonic()
    resp = manifest(rig, "1.0")

    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == rig.seeded.single.digest
    assert time.monotonic() - started < NO_HANG
    assert stall.hits >= 1


# -- 429 and 503 ------------------------------------------------------------------------------


def test_a_rate_limited_upstream_with_nothing_cached_passes_on_429_with_retry_after(
    rig: Rig,
) -> None:
    rig.fp.add(Fault(r"/manifests/", "status", status=429, retry_after=7))

    resp = manifest(rig, "1.0")

    assert resp.status_code == 429, resp.text
    assert error_codes(resp) == ["TOOMANYREQUESTS"]
    assert "flaky" in resp.json()["errors"][0]["message"]
    assert int(resp.headers["Retry-After"]) >= 1


def test_a_rate_limited_upstream_is_not_asked_again_before_retry_after(rig: Rig) -> None:
    limit = rig.fp.add(Fault(r"/manifests/", "status", status=429, retry_after=30))
    manifest(rig, "1.0")

    again = manifest(rig, "1.0")

    assert again.status_code in (429, 503), again.text
    assert limit.hits == 1


def test_a_rate_limited_upstream_serves_the_cached_tag_past_its_ttl(short_ttl_rig: Rig) -> None:
    rig = short_ttl_rig
    limit = rig.fp.add(Fault(r"/manifests/", "status", status=429, retry_after=7))

    resp = manifest(rig, "1.0")

    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == rig.seeded.single.digest
    assert limit.hits >= 1


def test_an_upstream_503_with_nothing_cached_is_a_json_error_naming_the_upstream(
    rig: Rig,
) -> None:
    rig.fp.add(Fault(r"/manifests/", "status", status=503))

    error = assert_upstream_error(manifest(rig, "1.0"), 502, 503)

    assert error["code"] == "UNAVAILABLE"


def test_an_upstream_503_serves_the_cached_tag_past_its_ttl(short_ttl_rig: Rig) -> None:
    rig = short_ttl_rig
    unavailable = rig.fp.add(Fault(r"/manifests/", "status", status=503))

    resp = manifest(rig, "1.0")

    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == rig.seeded.single.digest
    assert unavailable.hits >= 1


def test_upstream_failures_and_stale_serves_are_counted_per_upstream(
    short_ttl_rig: Rig,
) -> None:
    rig = short_ttl_rig
    rig.fp.add(Fault(r"/manifests/", "status", status=503))

    assert manifest(rig, "1.0").status_code == 200

    assert metric_total(rig, "cargohold_upstream_errors_total", upstream="flaky") >= 1
    assert metric_total(rig, "cargohold_upstream_stale_serves_total", upstream="flaky") >= 1


# -- refused connections ----------------------------------------------------------------------


def test_a_refused_connection_with_nothing_cached_is_answered_within_5_seconds(
    rig: Rig,
) -> None:
    with rig.fp.refusing():
        started = time.monotonic()
        resp = manifest(rig, "1.0")
        elapsed = time.monotonic() - started

    error = assert_upstream_error(resp, 502, 503, 504)
    assert error["code"] == "UNAVAILABLE"
    assert elapsed < 5.0


def test_a_refused_connection_serves_the_cached_tag_past_its_ttl(short_ttl_rig: Rig) -> None:
    rig = short_ttl_rig
    rig.fp.reset_counts()
    with rig.fp.refusing():
        resp = manifest(rig, "1.0")

    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == rig.seeded.single.digest
    assert rig.fp.received_count() == 0
    refused = metric_total(rig, "cargohold_upstream_errors_total", upstream="flaky")
    assert refused >= 1, "the upstream was not asked: the tag was still fresh"


# -- 404s and fresh tags ----------------------------------------------------------------------


def test_an_upstream_404_is_a_404(rig: Rig) -> None:
    resp = manifest(rig, "no-such-tag")

    assert resp.status_code == 404
    assert error_codes(resp)[0] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_a_storm_of_pulls_of_a_missing_tag_asks_the_upstream_once(rig: Rig) -> None:
    assert manifest(rig, "no-such-tag").status_code == 404
    asked = rig.fp.forwarded_count(r"/manifests/no-such-tag$")

    answers = [manifest(rig, "no-such-tag").status_code for _ in range(20)]

    assert answers == [404] * 20
    assert rig.fp.forwarded_count(r"/manifests/no-such-tag$") == asked


def test_a_remembered_404_is_asked_again_after_the_negative_ttl(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> None:
    rig = make_rig(
        registry_factory,
        tmp_path,
        distribution_upstream,
        fault_proxy,
        settings={"negative_ttl": 2.0},
    )
    assert manifest(rig, "later").status_code == 404
    missed_at = time.monotonic()
    push_image(rig.upstream.url, "app", rig.seeded.single, "later", auth=rig.upstream.auth)

    remembered = manifest(rig, "later")
    assert time.monotonic() - missed_at < 1.5, "too slow to check the remembered 404"
    time.sleep(2.5)
    found = manifest(rig, "later")

    assert remembered.status_code == 404
    assert found.status_code == 200
    assert found.headers["Docker-Content-Digest"] == rig.seeded.single.digest


def test_only_image_names_matching_the_pattern_go_to_the_upstream(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> None:
    rig = make_rig(registry_factory, tmp_path, distribution_upstream, fault_proxy, images="app*")

    matching = manifest(rig, "1.0", image="app")
    other = manifest(rig, "1.0", image="multi")

    assert matching.status_code == 200
    assert other.status_code == 404
    assert rig.fp.received_count(r"/v2/multi/") == 0


def test_a_fresh_cached_tag_asks_the_upstream_nothing(rig: Rig) -> None:
    assert manifest(rig, "1.0").status_code == 200
    asked = rig.fp.forwarded_count(r"/manifests/")

    again = [manifest(rig, "1.0") for _ in range(5)]

    assert [r.headers["Docker-Content-Digest"] for r in again] == [rig.seeded.single.digest] * 5
    assert rig.fp.forwarded_count(r"/manifests/") == asked


def test_a_pushed_tag_is_never_refreshed_from_the_upstream_past_the_ttl(
    short_ttl_rig: Rig,
) -> None:
    rig = short_ttl_rig
    local = sample_image("pushed-here")
    push_image(rig.pt.url, rig.pt.repo("app"), local, "1.0")
    asked = rig.fp.forwarded_count(r"/manifests/")
    time.sleep(1.5)

    resp = manifest(rig, "1.0")

    assert resp.headers["Docker-Content-Digest"] == local.digest
    assert rig.fp.forwarded_count(r"/manifests/") == asked


# -- one upstream fetch for many clients --------------------------------------------------------


async def sha256_of(session: aiohttp.ClientSession, url: str) -> str:
    sha = hashlib.sha256()
    async with session.get(url) as resp:
        assert resp.status == 200, resp.status
        async for chunk in resp.content.iter_chunked(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


async def test_twenty_concurrent_pulls_of_an_uncached_50mib_blob_fetch_it_once(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> None:
    rig = await asyncio.to_thread(
        make_rig, registry_factory, tmp_path, distribution_upstream, fault_proxy, big=True
    )
    assert rig.seeded.big is not None
    [layer] = rig.seeded.big.layers
    session = new_session()
    first = session.get(
        f"{rig.pt.url}/v2/{rig.pt.repo('big')}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert first.status_code == 200
    url = rig.blob_url(layer.digest, image="big")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
        digests = await asyncio.gather(*(sha256_of(client, url) for _ in range(20)))

    assert digests == [layer.digest] * 20
    assert rig.fp.forwarded_count(rf"/blobs/{layer.digest}$", "GET") == 1


# -- where upstreams may point ----------------------------------------------------------------


def test_a_loopback_upstream_is_refused_without_allow_networks(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> None:
    seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(
        registry_factory,
        tmp_path,
        Upstream(
            "flaky",
            fault_proxy.url,
            username=distribution_upstream.username,
            password=distribution_upstream.password,
        ),
        allow_loopback=False,
    )

    resp = get_manifest(pt.url, pt.repo("app"), "1.0")

    assert 400 <= resp.status_code < 600 and resp.status_code != 500, resp.text
    assert "flaky" in resp.json()["errors"][0]["message"]
    assert fault_proxy.received_count() == 0


def test_a_link_local_upstream_is_refused_even_with_loopback_allowed(
    registry_factory: Any, tmp_path: Path
) -> None:
    pt = start_pull_through(registry_factory, tmp_path, Upstream("flaky", "http://169.254.169.254"))

    started = time.monotonic()
    resp = get_manifest(pt.url, pt.repo("app"), "1.0")

    assert 400 <= resp.status_code < 600 and resp.status_code != 500, resp.text
    assert "flaky" in resp.json()["errors"][0]["message"]
    assert time.monotonic() - started < 5.0


def test_hits_misses_and_fetched_bytes_are_counted_without_repository_labels(
    rig: Rig,
) -> None:
    layer = rig.seeded.single.layers[0]
    assert manifest(rig, "1.0").status_code == 200  # a miss
    assert manifest(rig, "1.0").status_code == 200  # a hit: the tag is fresh
    assert download(rig.blob_url(layer.digest)) == (200, layer.digest)

    assert metric_total(rig, "cargohold_upstream_misses_total", upstream="flaky") >= 1
    assert metric_total(rig, "cargohold_upstream_hits_total", upstream="flaky") >= 1
    fetched = metric_total(rig, "cargohold_upstream_fetched_bytes_total", upstream="flaky")
    assert fetched >= layer.size
    text = new_session().get(f"{rig.pt.url}/metrics").text
    upstream_lines = [line for line in text.splitlines() if "cargohold_upstream_" in line]
    assert upstream_lines
    assert not [line for line in upstream_lines if rig.pt.tenant in line or "app" in line]


def test_a_pull_by_digest_of_cached_content_asks_the_upstream_nothing(rig: Rig) -> None:
    image = rig.seeded.single
    assert manifest(rig, image.digest).status_code == 200
    for blob in image.blobs():
        assert download(rig.blob_url(blob.digest)) == (200, blob.digest)
        assert wait_for_blob(rig.pt.store, blob.digest)
    rig.fp.reset_counts()

    again = manifest(rig, image.digest)
    blobs = [download(rig.blob_url(blob.digest)) for blob in image.blobs()]

    assert again.content == image.manifest
    assert blobs == [(200, blob.digest) for blob in image.blobs()]
    assert rig.fp.received_count() == 0


async def test_concurrent_pulls_on_two_processes_fetch_the_blob_at_most_once_each(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    fault_proxy: FaultProxy,
) -> None:
    rig = await asyncio.to_thread(
        make_rig,
        registry_factory,
        tmp_path,
        distribution_upstream,
        fault_proxy,
        big=True,
        workers=2,
    )
    assert rig.seeded.big is not None
    [layer] = rig.seeded.big.layers
    url = rig.blob_url(layer.digest, image="big")

    # A connection each: the kernel spreads them over both processes (SO_REUSEPORT).
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=300)
    ) as client:
        digests = await asyncio.gather(*(sha256_of(client, url) for _ in range(20)))

    assert digests == [layer.digest] * 20
    # Fetches, not attempts: a process's first request may be a 401 that names the login.
    assert 1 <= rig.fp.succeeded_count(rf"/blobs/{layer.digest}$", "GET") <= 2
    assert await asyncio.to_thread(wait_for_blob, rig.pt.store, layer.digest)
    assert corrupt_blobs(rig.pt.store) == []
