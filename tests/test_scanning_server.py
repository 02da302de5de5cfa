"""Scanning with the real server processes, the command line and real clients.

Servers run with auth on (scanning's default) over a ``file://`` store; OSV data is
imported with ``cargohold vulndb import`` (a zip, a folder and a URL served on
127.0.0.1); skopeo pushes and pulls, oras-py finds the SBOM through the referrers API.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oras.client
import pytest
import requests

from tests import scanning_support as fx
from tests.helpers import RegistryServer, skopeo, write_oci_layout
from tests.helpers.registry_api import new_session, push_image
from tests.helpers.tenants import Seeder, cargohold_cli, new_store, write_config

pytestmark = pytest.mark.clients

TENANT = "acme/prod"
API = "/api/v1/registries/acme/prod"


@pytest.fixture
def osv_files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "osv-npm"
    folder.mkdir()
    for record in fx.NPM_RECORDS:
        (folder / f"{record['id']}.json").write_text(json.dumps(record))
    served = tmp_path / "served"
    served.mkdir()
    fx.write_all_zip(served / "all.zip", fx.DEBIAN_RECORDS + fx.ALPINE_RECORDS, fx.BAD_RECORDS)
    return {"folder": folder, "served": served, "python": write_python_zip(tmp_path)}


def write_python_zip(tmp_path: Path) -> Path:
    return fx.write_all_zip(tmp_path / "pypi-all.zip", fx.PYTHON_RECORDS)


@pytest.fixture
def file_server(osv_files: dict[str, Path]) -> Iterator[str]:
    """A local HTTP server for osv.dev-style exports (``/all.zip``), on 127.0.0.1."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(osv_files["served"])
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def import_all(storage: str, osv_files: dict[str, Path], url: str) -> str:
    done = cargohold_cli(
        "vulndb",
        "import",
        str(osv_files["python"]),
        str(osv_files["folder"]),
        f"{url}/all.zip",
        storage=storage,
    )
    return str(done.stdout)


def wait_scanned(base: str, auth: tuple[str, str], image: str, ref: str) -> dict[str, Any]:
    session = new_session(auth)
    deadline = time.monotonic() + 60
    while True:
        reply = session.get(f"{base}{API}/repositories/{image}/manifests/{ref}/vulnerabilities")
        assert reply.status_code == 200, reply.text[:300]
        body = reply.json()
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Seeder, dict[str, Any]]:
    seed = new_store(tmp_path)
    return seed, seed.tenant_with_roles(TENANT)


def serve(
    registry_factory: Any, tmp_path: Path, seed: Seeder, name: str = "server"
) -> RegistryServer:
    config = write_config(
        tmp_path / f"{name}.toml", auth={"cache_ttl": 1.0}, scanning={"interval": "1s"}
    )
    return registry_factory(storage_url=seed.storage, auth=True, config=config)


def test_vulndb_import_reads_zips_folders_and_urls_and_status_counts_bad_records(
    tmp_path: Path, osv_files: dict[str, Path], file_server: str
) -> None:
    storage = new_store(tmp_path).storage
    output = import_all(storage, osv_files, file_server)
    assert (
        f"{file_server}/all.zip: {len(fx.DEBIAN_RECORDS + fx.ALPINE_RECORDS) + 2} records" in output
    )
    assert "2 skipped (unparseable), 1 withdrawn" in output
    status = cargohold_cli("vulndb", "status", "--json", storage=storage).stdout
    sources = {s["label"]: s for s in json.loads(status)["sources"].values()}
    assert sources[f"{file_server}/all.zip"]["skipped"] == 2
    assert sources[str(osv_files["folder"].resolve())]["records"] == len(fx.NPM_RECORDS)
    text = cargohold_cli("vulndb", "status", storage=storage).stdout
    assert "Debian:12" in text and "npm" in text


def test_cli_scans_an_image_and_shows_findings_as_table_and_json(
    registry_factory: Any,
    tmp_path: Path,
    seeded: tuple[Seeder, dict[str, Any]],
    osv_files: dict[str, Path],
    file_server: str,
) -> None:
    seed, users = seeded
    import_all(seed.storage, osv_files, file_server)
    with serve(registry_factory, tmp_path, seed) as server:
        push_image(server.url, f"{TENANT}/py", fx.python_image(), "1.0", auth=users["write"].auth)
    scanned = cargohold_cli("scan", f"{TENANT}/py:1.0", "--wait", storage=seed.storage).stdout
    assert "scanned; 0 critical, 0 high, 1 medium, 0 low, 1 unknown" in scanned
    table = cargohold_cli("scan", "show", f"{TENANT}/py:1.0", storage=seed.storage).stdout
    assert "GHSA-h5c8-rqwp-cp95" in table and "CVE-2024-22195" in table and "3.1.3" in table
    shown = cargohold_cli(
        "scan",
        "show",
        f"{TENANT}/py:1.0",
        "--format",
        "json",
        "--severity",
        "medium",
        storage=seed.storage,
    ).stdout
    body = json.loads(shown)
    assert body["status"] == "done"
    assert [f["id"] for f in body["platforms"][0]["findings"]] == ["GHSA-h5c8-rqwp-cp95"]


def test_a_policy_blocks_a_skopeo_pull_and_an_allowlist_lets_it_through(
    registry_factory: Any,
    tmp_path: Path,
    seeded: tuple[Seeder, dict[str, Any]],
    osv_files: dict[str, Path],
    file_server: str,
) -> None:
    seed, users = seeded
    import_all(seed.storage, osv_files, file_server)
    layout = tmp_path / "layout"
    image = write_oci_layout(layout, fx.debian_image(), "1.0")
    with serve(registry_factory, tmp_path, seed) as server:
        target = f"docker://{server.host}/{TENANT}/debian:1.0"
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            users["write"].creds,
            f"oci:{layout}:1.0",
            target,
        )
        body = wait_scanned(server.url, users["read"].auth, "debian", image.digest)
        assert body["status"] == "done"
        admin = new_session(users["admin"].auth)
        reply = admin.put(f"{server.url}{API}/scan-policy", json={"block_severity": "high"})
        assert reply.status_code == 200, reply.text
        refused = skopeo(
            "copy",
            "--src-tls-verify=false",
            "--remove-signatures",  # oci: layouts take no signatures; the pull is what counts
            "--src-creds",
            users["read"].creds,
            target,
            f"oci:{tmp_path / 'out'}:1.0",
            check=False,
        )
        assert refused.returncode != 0
        assert "denied" in refused.stderr.lower() and "1 critical, 1 high" in refused.stderr
        allow = [{"id": "CVE-2024-2961"}, {"id": "DEBIAN-CVE-2024-0727"}]  # an alias and an id
        reply = admin.put(
            f"{server.url}{API}/scan-policy", json={"block_severity": "high", "allowlist": allow}
        )
        assert reply.status_code == 200, reply.text
        time.sleep(1.2)  # other processes see a changed setting within auth.cache_ttl
        skopeo(
            "copy",
            "--src-tls-verify=false",
            "--remove-signatures",  # oci: layouts take no signatures; the pull is what counts
            "--src-creds",
            users["read"].creds,
            target,
            f"oci:{tmp_path / 'out'}:1.0",
        )


def test_oras_finds_the_sbom_through_the_referrers_api(
    registry_factory: Any, tmp_path: Path, seeded: tuple[Seeder, dict[str, Any]]
) -> None:
    seed, users = seeded
    image = fx.npm_image()
    with serve(registry_factory, tmp_path, seed) as server:
        push_image(server.url, f"{TENANT}/node", image, "1.0", auth=users["write"].auth)
        wait_scanned(server.url, users["read"].auth, "node", image.digest)
        client = oras.client.OrasClient(hostname=server.host, insecure=True)
        client.session.trust_env = False
        client.login(*users["read"].auth, hostname=server.host)
        deadline = time.monotonic() + 30
        while True:
            listed = client.do_request(
                f"http://{server.host}/v2/{TENANT}/node/referrers/{image.digest}",
                headers={"Accept": "application/vnd.oci.image.index.v1+json"},
            )
            assert listed.status_code == 200, listed.text
            sboms = [
                m
                for m in listed.json()["manifests"]
                if m.get("artifactType") == "application/vnd.cyclonedx+json"
            ]
            if sboms or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        [descriptor] = sboms
        files = client.pull(
            target=f"{server.host}/{TENANT}/node@{descriptor['digest']}",
            outdir=str(tmp_path / "sbom"),
        )
    [path] = files
    sbom = json.loads(Path(path).read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    assert {"pkg:npm/lodash@4.17.20", "pkg:npm/%40babel/traverse@7.23.0"} <= {
        c.get("purl") for c in sbom["components"]
    }


def scans_started(server: RegistryServer) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("cargohold_scans_started_total")
    )


def test_two_replicas_scan_each_manifest_once_and_results_survive_a_restart(
    registry_factory: Any, tmp_path: Path, seeded: tuple[Seeder, dict[str, Any]]
) -> None:
    seed, users = seeded
    images = [fx.alpine_image(), fx.npm_image(), fx.python_image(), fx.distroless_image()]
    with (
        serve(registry_factory, tmp_path, seed, "a") as first,
        serve(registry_factory, tmp_path, seed, "b") as second,
    ):
        for index, image in enumerate(images):
            for server in (first, second):  # the same content pushed through both replicas
                push_image(
                    server.url, f"{TENANT}/img{index}", image, "1.0", auth=users["write"].auth
                )
        before = [
            wait_scanned(first.url, users["read"].auth, f"img{i}", im.digest)
            for i, im in enumerate(images)
        ]
        time.sleep(2.5)  # both replicas' catch-up walks have run over everything
        assert scans_started(first) + scans_started(second) == len(images)
    with serve(registry_factory, tmp_path, seed, "c") as restarted:
        after = [
            wait_scanned(restarted.url, users["read"].auth, f"img{i}", im.digest)
            for i, im in enumerate(images)
        ]
        assert scans_started(restarted) == 0
    assert [b["scanned_at"] for b in before] == [a["scanned_at"] for a in after]
    assert all(a["status"] == "done" for a in after)
