"""Pull-through with real peers and real clients: upstreams are CNCF Distribution 2.8.2 with
htpasswd Basic auth and a second Cargohold with its Bearer token flow and a private registry;
skopeo, podman and containerd's ``ctr`` pull through the Cargohold under test.

Every server binds 127.0.0.1. The Cargohold under test is an open registry (auth off)
unless a test is about credentials; its upstreams are set with ``cargohold upstreams add``
(see :mod:`tests.helpers.upstreams`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Blob, client_env, run, sample_image, skopeo
from tests.helpers.containerd import ContainerdDaemon
from tests.helpers.fault_proxy import FaultProxy
from tests.helpers.images import OCI_MANIFEST, canonical_json
from tests.helpers.registry_api import (
    MANIFEST_ACCEPT,
    get_manifest,
    new_session,
    push_blob,
    push_image,
)
from tests.helpers.tenants import Seeder, cargohold_cli, error_codes, push_referrer, store_url
from tests.helpers.upstreams import (
    PRIVATE,
    CargoholdUpstream,
    HtpasswdDistribution,
    PullThrough,
    Upstream,
    blob_files,
    seed,
    start_cargohold_upstream,
    start_pull_through,
)

pytestmark = pytest.mark.clients


SBOM = "application/vnd.cyclonedx+json"


@pytest.fixture
def distribution_upstream(tmp_path: Path) -> Iterator[HtpasswdDistribution]:
    server = HtpasswdDistribution(tmp_path / "distribution-store", workdir=tmp_path / "dist")
    with server:
        yield server


@pytest.fixture
def cargohold_upstream(registry_factory: Any, tmp_path: Path) -> CargoholdUpstream:
    return start_cargohold_upstream(registry_factory, tmp_path)


def from_distribution(dist: HtpasswdDistribution, **extra: Any) -> Upstream:
    return Upstream("dist", dist.url, username=dist.username, password=dist.password, **extra)


def from_cargohold(peer: CargoholdUpstream, **extra: Any) -> Upstream:
    return Upstream(
        "peer",
        peer.url,
        username=peer.reader.username,
        password=peer.reader.secret,
        prefix=PRIVATE,
        **extra,
    )


def manifest_digest(pt: PullThrough, image: str, ref: str) -> str:
    resp = get_manifest(pt.url, pt.repo(image), ref)
    assert resp.status_code == 200, (resp.status_code, resp.text[:500])
    return resp.headers["Docker-Content-Digest"]


def inspect_digest(ref: str) -> str:
    out = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}", text=False).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


# -- upstream kinds ---------------------------------------------------------------------------


def test_pulls_through_distribution_with_htpasswd_basic_auth(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(registry_factory, tmp_path, from_distribution(distribution_upstream))

    resp = get_manifest(pt.url, pt.repo("app"), "1.0")

    assert resp.status_code == 200, resp.text
    assert resp.content == seeded.single.manifest
    assert resp.headers["Docker-Content-Digest"] == seeded.single.digest
    for blob in seeded.single.blobs():
        got = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/blobs/{blob.digest}")
        assert got.status_code == 200
        assert got.content == blob.data


def test_pulls_through_a_private_cargohold_registry_with_its_token_flow(
    registry_factory: Any, tmp_path: Path, cargohold_upstream: CargoholdUpstream
) -> None:
    seeded = seed(cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth)
    with FaultProxy(cargohold_upstream.url) as counting:
        upstream = from_cargohold(cargohold_upstream)
        pt = start_pull_through(
            registry_factory, tmp_path, dataclasses.replace(upstream, url=counting.url)
        )

        assert manifest_digest(pt, "app", "1.0") == seeded.single.digest
        layer = seeded.single.layers[0]
        got = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/blobs/{layer.digest}")

        assert got.content == layer.data
        # The peer answered 401 with a Bearer challenge; the token came from its realm.
        assert counting.forwarded_count(r"^/v2/token$", "GET") >= 1


def test_one_upstream_token_serves_a_whole_image_pull(
    registry_factory: Any, tmp_path: Path, cargohold_upstream: CargoholdUpstream
) -> None:
    seeded = seed(cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth)
    with FaultProxy(cargohold_upstream.url) as counting:
        upstream = dataclasses.replace(from_cargohold(cargohold_upstream), url=counting.url)
        pt = start_pull_through(registry_factory, tmp_path, upstream)

        assert manifest_digest(pt, "app", "1.0") == seeded.single.digest
        for blob in seeded.single.blobs():
            got = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/blobs/{blob.digest}")
            assert got.content == blob.data

        assert counting.forwarded_count(r"/blobs/", "GET") == len(seeded.single.blobs())
        assert counting.forwarded_count(r"^/v2/token$") == 1


def test_upstream_passwords_and_tokens_never_reach_the_log(
    registry_factory: Any, tmp_path: Path, cargohold_upstream: CargoholdUpstream
) -> None:
    seed(cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth)
    with FaultProxy(cargohold_upstream.url) as recording:
        upstream = dataclasses.replace(from_cargohold(cargohold_upstream), url=recording.url)
        pt = start_pull_through(registry_factory, tmp_path, upstream)
        assert get_manifest(pt.url, pt.repo("app"), "1.0").status_code == 200
        assert get_manifest(pt.url, pt.repo("missing"), "1.0").status_code == 404
        with recording.refusing():
            assert get_manifest(pt.url, pt.repo("gone"), "1.0").status_code >= 500

    sent = {value.split(" ", 1)[1] for value in recording.authorizations}
    assert any(value.startswith("Bearer ") for value in recording.authorizations)
    log = pt.server.log_text()
    for secret in (cargohold_upstream.reader.secret, *sent):
        assert secret not in log


def test_same_image_in_both_upstreams_comes_from_the_first_by_priority(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    cargohold_upstream: CargoholdUpstream,
) -> None:
    in_dist = seed(distribution_upstream.url, auth=distribution_upstream.auth, label="dist")
    in_peer = seed(
        cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth, label="peer"
    )
    assert in_dist.shared.digest != in_peer.shared.digest
    dist_first = start_pull_through(
        registry_factory,
        tmp_path,
        from_distribution(distribution_upstream, priority=10),
        from_cargohold(cargohold_upstream, priority=20),
        tenant="acme/dist-first",
        name="dist-first",
    )
    peer_first = start_pull_through(
        registry_factory,
        tmp_path,
        from_distribution(distribution_upstream, priority=20),
        from_cargohold(cargohold_upstream, priority=10),
        tenant="acme/peer-first",
        name="peer-first",
    )

    assert manifest_digest(dist_first, "shared", "1.0") == in_dist.shared.digest
    assert manifest_digest(peer_first, "shared", "1.0") == in_peer.shared.digest


def test_image_only_in_the_lower_priority_upstream_is_found_there(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    cargohold_upstream: CargoholdUpstream,
) -> None:
    only_in_peer = sample_image("only-peer")
    push_image(
        cargohold_upstream.url,
        f"{PRIVATE}/only",
        only_in_peer,
        "1.0",
        auth=cargohold_upstream.writer.auth,
    )
    pt = start_pull_through(
        registry_factory,
        tmp_path,
        from_distribution(distribution_upstream, priority=10),
        from_cargohold(cargohold_upstream, priority=20),
    )

    assert manifest_digest(pt, "only", "1.0") == only_in_peer.digest


# -- skopeo and podman ------------------------------------------------------------------------


@pytest.fixture
def dist_pull_through(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> tuple[PullThrough, Any]:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(registry_factory, tmp_path, from_distribution(distribution_upstream))
    return pt, seeded


def test_skopeo_copies_a_single_image_by_tag_with_the_upstream_digests(
    dist_pull_through: tuple[PullThrough, Any], tmp_path: Path
) -> None:
    pt, seeded = dist_pull_through

    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{pt.server.host}/{pt.repo('app')}:1.0",
        f"oci:{tmp_path / 'out'}:1.0",
    )

    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [seeded.single.digest]
    for blob in seeded.single.blobs():
        path = tmp_path / "out" / "blobs" / "sha256" / blob.hex
        assert path.read_bytes() == blob.data


def test_skopeo_copies_a_multiarch_index_with_all(
    dist_pull_through: tuple[PullThrough, Any], tmp_path: Path
) -> None:
    pt, seeded = dist_pull_through

    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        f"docker://{pt.server.host}/{pt.repo('multi')}:1.0",
        f"oci:{tmp_path / 'out'}:1.0",
    )

    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [seeded.multiarch.digest]
    blobs = tmp_path / "out" / "blobs" / "sha256"
    for child in seeded.multiarch.images:
        assert (blobs / child.digest.split(":")[1]).read_bytes() == child.manifest
        for blob in child.blobs():
            assert (blobs / blob.hex).read_bytes() == blob.data


def test_skopeo_copies_by_digest(
    dist_pull_through: tuple[PullThrough, Any], tmp_path: Path
) -> None:
    pt, seeded = dist_pull_through
    ref = f"{pt.server.host}/{pt.repo('app')}@{seeded.single.digest}"

    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'out'}:x")

    assert inspect_digest(ref) == seeded.single.digest
    layer = seeded.single.layers[-1]
    assert (tmp_path / "out" / "blobs" / "sha256" / layer.hex).read_bytes() == layer.data


Podman = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman with private storage (vfs), state and an empty registries.conf."""
    base = tmp_path / "podman"
    for sub in ("root", "tmp", "vartmp"):
        (base / sub).mkdir(parents=True)
    runroot = tempfile.mkdtemp(prefix="cargohold-podman-", dir="/tmp")
    (base / "registries.conf").write_text("")
    env = client_env(
        {
            "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
            "TMPDIR": str(base / "vartmp"),
        }
    )
    global_args = [
        "--root",
        str(base / "root"),
        "--runroot",
        runroot,
        "--tmpdir",
        str(base / "tmp"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]

    def podman(*args: str) -> subprocess.CompletedProcess:
        return run(["podman", *global_args, *args], env=env, timeout=300)

    try:
        yield podman
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_podman_pulls_through_the_cache(
    dist_pull_through: tuple[PullThrough, Any], podman: Podman
) -> None:
    pt, seeded = dist_pull_through
    ref = f"{pt.server.host}/{pt.repo('app')}:1.0"

    podman("pull", "--tls-verify=false", ref)

    [info] = json.loads(podman("image", "inspect", ref).stdout)
    assert info["Digest"] == seeded.single.digest
    assert f"sha256:{info['Id']}" == seeded.single.config_digest
    assert info["RootFS"]["Layers"] == list(seeded.single.diff_ids)


# -- containerd's registry-mirror mode --------------------------------------------------------


def test_ctr_pulls_through_a_hosts_toml_mirror_choosing_the_upstream_by_ns(
    registry_factory: Any,
    tmp_path: Path,
    distribution_upstream: HtpasswdDistribution,
    cargohold_upstream: CargoholdUpstream,
) -> None:
    in_dist = seed(distribution_upstream.url, auth=distribution_upstream.auth, label="dist")
    seed(cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth)
    # Distribution is last by priority: only the ns host can make the registry pick it.
    pt = start_pull_through(
        registry_factory,
        tmp_path,
        from_cargohold(cargohold_upstream, priority=10),
        from_distribution(distribution_upstream, priority=50),
    )
    ns_host = distribution_upstream.host
    hosts = tmp_path / "hosts.d" / ns_host
    hosts.mkdir(parents=True)
    # containerd falls back to `server` if the mirror fails: it needs credentials that
    # ctr has not, so a pull that succeeds went through the mirror.
    (hosts / "hosts.toml").write_text(
        f'server = "http://{ns_host}"\n'
        f'[host."http://{pt.server.host}/v2/{pt.tenant}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )

    with ContainerdDaemon(tmp_path / "containerd") as ctd:
        ctd.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(tmp_path / "hosts.d"),
            "--snapshotter",
            ctd.snapshotter,
            f"{ns_host}/shared:1.0",
        )
        rows = ctd.ctr("images", "ls").stdout.splitlines()[1:]

    targets = {row.split()[0]: row.split()[2] for row in rows if row.strip()}
    assert targets == {f"{ns_host}/shared:1.0": in_dist.shared.digest}


def test_ctr_pulls_through_a_private_mirror_with_the_token_flow(
    registry_factory: Any,
    tmp_path: Path,
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded
    upstream = who["upstream"]
    assert add_by_api(pt, who["admin"], upstream, upstream.password).status_code == 201
    expected = get_manifest(pt.url, pt.repo("app"), "1.0", auth=who["reader"].auth)
    assert expected.status_code == 200
    hosts = tmp_path / "hosts.d" / upstream.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{upstream.host}"\n'
        f'[host."http://{pt.server.host}/v2/{pt.tenant}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  override_path = true\n"
    )

    with ContainerdDaemon(tmp_path / "containerd") as ctd:
        ctd.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(tmp_path / "hosts.d"),
            "--user",
            who["reader"].creds,
            "--snapshotter",
            ctd.snapshotter,
            f"{upstream.host}/app:1.0",
        )
        rows = ctd.ctr("images", "ls").stdout.splitlines()[1:]

    targets = {row.split()[0]: row.split()[2] for row in rows if row.strip()}
    assert targets == {f"{upstream.host}/app:1.0": expected.headers["Docker-Content-Digest"]}
    assert "/v2/token" in pt.server.log_text()


# -- cache behaviour --------------------------------------------------------------------------


def test_second_pull_succeeds_from_cache_with_the_upstream_stopped(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(registry_factory, tmp_path, from_distribution(distribution_upstream))
    ref = f"docker://{pt.server.host}/{pt.repo('app')}:1.0"
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'first'}:1.0")

    distribution_upstream.stop()
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'second'}:1.0")

    index = json.loads((tmp_path / "second" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [seeded.single.digest]


def test_with_caching_off_nothing_is_stored_and_a_pull_fails_clearly_once_upstream_stops(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(
        registry_factory, tmp_path, from_distribution(distribution_upstream, cache=False)
    )
    ref = f"docker://{pt.server.host}/{pt.repo('app')}:1.0"
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'first'}:1.0")
    assert not set(blob_files(pt.store)) & {b.digest for b in seeded.single.blobs()}

    distribution_upstream.stop()
    resp = get_manifest(pt.url, pt.repo("app"), "1.0")

    assert resp.status_code in (502, 503, 504), resp.text
    assert error_codes(resp) == ["UNAVAILABLE"]
    assert "dist" in resp.json()["errors"][0]["message"]


def test_a_tag_moved_upstream_is_seen_after_its_ttl_and_not_before(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    ttl = 3.0
    pt = start_pull_through(
        registry_factory, tmp_path, from_distribution(distribution_upstream, tag_ttl=f"{ttl:g}s")
    )
    assert manifest_digest(pt, "app", "1.0") == seeded.single.digest
    first_seen = time.monotonic()
    moved = sample_image("moved")
    push_image(distribution_upstream.url, "app", moved, "1.0", auth=distribution_upstream.auth)

    before = manifest_digest(pt, "app", "1.0")
    assert time.monotonic() - first_seen < ttl - 1.0, "too slow to check the fresh tag"
    time.sleep(max(0.0, ttl + 0.5 - (time.monotonic() - first_seen)))
    after = manifest_digest(pt, "app", "1.0")

    assert before == seeded.single.digest
    assert after == moved.digest


# -- credentials ------------------------------------------------------------------------------


@pytest.fixture
def guarded(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> tuple[PullThrough, dict[str, Any]]:
    """A pull-through with auth on, an admin and a reader of it, no upstream yet."""
    seed(distribution_upstream.url, auth=distribution_upstream.auth)
    pt = start_pull_through(registry_factory, tmp_path, auth=True)
    seeder = Seeder(store_url(pt.store))
    admin = seeder.user("mirror-admin")
    seeder.member(pt.tenant, admin.username, "admin")
    reader = seeder.user("mirror-reader")
    seeder.member(pt.tenant, reader.username, "read")
    return pt, {"admin": admin, "reader": reader, "upstream": distribution_upstream}


def upstreams_url(pt: PullThrough) -> str:
    return f"{pt.url}/api/v1/registries/{pt.tenant}/upstreams"


def add_by_api(pt: PullThrough, admin: Any, upstream: HtpasswdDistribution, password: str) -> Any:
    return new_session(admin.auth).post(
        upstreams_url(pt),
        json={
            "name": "dist",
            "url": upstream.url,
            "username": upstream.username,
            "password": password,
        },
    )


def test_api_answers_never_contain_the_upstream_password(
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded
    upstream = who["upstream"]
    admin = new_session(who["admin"].auth)

    created = add_by_api(pt, who["admin"], upstream, upstream.password)
    listed = admin.get(upstreams_url(pt))
    one = admin.get(f"{upstreams_url(pt)}/dist")
    cli = cargohold_cli("upstreams", "list", pt.tenant, "--json", config=pt.config)

    assert created.status_code == 201, created.text
    assert created.json()["has_credentials"] is True
    assert created.json()["username"] == upstream.username
    assert "password" not in created.json()
    assert [u["name"] for u in listed.json()["upstreams"]] == ["dist"]
    for text in (created.text, listed.text, one.text, cli.stdout, cli.stderr):
        assert upstream.password not in text


def test_only_a_registry_admin_may_add_an_upstream(
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded

    resp = add_by_api(pt, who["reader"], who["upstream"], who["upstream"].password)

    assert resp.status_code == 403, resp.text
    assert new_session(who["admin"].auth).get(upstreams_url(pt)).json() == {"upstreams": []}


def test_upstream_credentials_never_reach_the_logs_or_storage_in_clear(
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded
    upstream = who["upstream"]
    assert add_by_api(pt, who["admin"], upstream, upstream.password).status_code == 201
    reader = new_session(who["reader"].auth)
    time.sleep(1.2)  # auth.cache_ttl: the new upstream reaches the server's settings cache
    pulled = reader.get(
        f"{pt.url}/v2/{pt.repo('app')}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}
    )
    # A wrong password too: a refused login is where a careless client logs its headers.
    admin = new_session(who["admin"].auth)
    assert admin.delete(f"{upstreams_url(pt)}/dist").status_code == 204
    wrong = "wrong-" + upstream.password
    assert add_by_api(pt, who["admin"], upstream, wrong).status_code == 201
    time.sleep(1.2)
    refused = reader.get(
        f"{pt.url}/v2/{pt.repo('other')}/manifests/1.0", headers={"Accept": MANIFEST_ACCEPT}
    )

    assert pulled.status_code == 200, pulled.text
    assert refused.status_code >= 400
    log = pt.server.log_text()
    for secret in (upstream.password, wrong):
        basic = base64.b64encode(f"{upstream.username}:{secret}".encode()).decode()
        assert secret not in log
        assert basic not in log
        for path in pt.store.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_a_warm_skopeo_pull_asks_the_upstream_nothing(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seed(distribution_upstream.url, auth=distribution_upstream.auth)
    with FaultProxy(distribution_upstream.url) as counting:
        upstream = dataclasses.replace(from_distribution(distribution_upstream), url=counting.url)
        pt = start_pull_through(registry_factory, tmp_path, upstream)
        ref = f"docker://{pt.server.host}/{pt.repo('multi')}:1.0"
        skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'cold'}:1")
        assert counting.forwarded_count() > 0

        counting.reset_counts()
        skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'warm'}:1")

        assert counting.received_count() == 0


def test_pulling_through_a_private_registry_needs_the_read_role(
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded
    upstream = who["upstream"]
    assert add_by_api(pt, who["admin"], upstream, upstream.password).status_code == 201
    time.sleep(1.2)  # auth.cache_ttl

    anonymous = get_manifest(pt.url, pt.repo("app"), "1.0")
    reader = get_manifest(pt.url, pt.repo("app"), "1.0", auth=who["reader"].auth)

    assert anonymous.status_code == 401
    assert reader.status_code == 200, reader.text


def test_an_entitlement_token_pulls_through(
    guarded: tuple[PullThrough, dict[str, Any]],
) -> None:
    pt, who = guarded
    upstream = who["upstream"]
    assert add_by_api(pt, who["admin"], upstream, upstream.password).status_code == 201
    token = Seeder(store_url(pt.store)).token(pt.tenant)
    time.sleep(1.2)  # auth.cache_ttl

    resp = get_manifest(pt.url, pt.repo("app"), "1.0", auth=token.auth)

    assert resp.status_code == 200, resp.text


# -- tag listing and referrers ----------------------------------------------------------------


def test_tag_listing_merges_local_and_upstream_tags(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    push_image(
        distribution_upstream.url,
        "app",
        seeded.single,
        "upstream-only",
        auth=distribution_upstream.auth,
    )
    pt = start_pull_through(registry_factory, tmp_path, from_distribution(distribution_upstream))
    push_image(pt.url, pt.repo("app"), sample_image("pushed"), "local-only")

    resp = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/tags/list")

    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == pt.repo("app")
    assert set(resp.json()["tags"]) == {"1.0", "upstream-only", "local-only"}


def test_referrers_of_a_proxied_image_include_the_upstreams(
    registry_factory: Any, tmp_path: Path, cargohold_upstream: CargoholdUpstream
) -> None:
    seeded = seed(cargohold_upstream.url, prefix=PRIVATE, auth=cargohold_upstream.writer.auth)
    writer = new_session(cargohold_upstream.writer.auth)
    at_upstream = push_referrer(cargohold_upstream.url, f"{PRIVATE}/app", seeded.single, writer)
    pt = start_pull_through(registry_factory, tmp_path, from_cargohold(cargohold_upstream))
    assert manifest_digest(pt, "app", "1.0") == seeded.single.digest
    here = push_referrer(pt.url, pt.repo("app"), seeded.single, new_session())

    resp = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/referrers/{seeded.single.digest}")

    assert resp.status_code == 200, resp.text
    listed = resp.json()["manifests"]
    # Beside them: the registry's own attachments (the scanner's SBOM of the cached image).
    assert {m["digest"] for m in listed if m.get("artifactType") != SBOM} == {at_upstream, here}


def test_a_cosign_signature_tag_at_the_upstream_is_served_with_the_image(
    registry_factory: Any, tmp_path: Path, distribution_upstream: HtpasswdDistribution
) -> None:
    seeded = seed(distribution_upstream.url, auth=distribution_upstream.auth)
    payload = Blob(
        "application/vnd.dev.cosign.simplesigning.v1+json",
        canonical_json({"critical": {"image": {"docker-manifest-digest": seeded.single.digest}}}),
    )
    config = Blob("application/vnd.oci.image.config.v1+json", b"{}")
    signature = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [
                payload.descriptor(annotations={"dev.cosignproject.cosign/signature": "c2ln"})
            ],
        }
    )
    upstream = new_session(distribution_upstream.auth)
    for blob in (payload, config):
        push_blob(distribution_upstream.url, "app", blob.data, session=upstream)
    sig_tag = seeded.single.digest.replace(":", "-") + ".sig"
    put = upstream.put(
        f"{distribution_upstream.url}/v2/app/manifests/{sig_tag}",
        data=signature,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    pt = start_pull_through(registry_factory, tmp_path, from_distribution(distribution_upstream))
    assert manifest_digest(pt, "app", "1.0") == seeded.single.digest

    resp = get_manifest(pt.url, pt.repo("app"), sig_tag)
    layer = new_session().get(f"{pt.url}/v2/{pt.repo('app')}/blobs/{payload.digest}")

    assert resp.status_code == 200, resp.text
    assert resp.content == signature
    assert layer.content == payload.data
