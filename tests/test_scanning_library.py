"""Scanning through the library: fixture images in real formats against OSV data in the real schema.

Every expected finding and every expected non-finding of each fixture family is
asserted; the SBOM validates against the CycloneDX 1.6 schema; two scanners on
one storage scan a manifest once; results survive a new process; a database
change re-matches from stored SBOMs without reading layers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.scanning import Scanner, VulnDatabase
from registry_core.scanning.vulndb import import_sources
from registry_core.storage import layout
from tests import scanning_support as fx
from tests.helpers import Image, build_index

REPO = "acme/prod/app"


async def push(registry: Registry, image: Image, tag: str = "1.0", repo: str = REPO) -> Digest:
    repository = registry.repository(repo)
    for blob in image.blobs():
        async with repository.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    await repository.manifests.put(image.manifest, image.media_type, tag=tag)
    return Digest.parse(image.digest)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalDriver(str(tmp_path / "store")))


@pytest.fixture
async def loaded(registry: Registry, tmp_path: Path) -> Registry:
    archive = fx.write_all_zip(tmp_path / "all.zip", fx.ALL_RECORDS, fx.BAD_RECORDS)
    await import_sources(registry.driver, [(str(archive), [str(archive)])])
    return registry


def found(report: Any) -> set[tuple[str, str]]:
    return {(f.id, f.package) for p in report.platforms for f in p.findings}


def ids(report: Any) -> set[str]:
    return {f.id for p in report.platforms for f in p.findings}


async def scan(registry: Registry, image: Image) -> Any:
    digest = await push(registry, image)
    return await Scanner(registry).scan(digest)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
async def test_debian_findings_follow_source_packages_releases_ranges_and_later_layers(
    loaded: Registry, compression: str
) -> None:
    report = await scan(loaded, fx.debian_image(compression))
    assert found(report) == fx.DEBIAN_EXPECTED
    assert not ids(report) & fx.DEBIAN_NOT_EXPECTED
    [platform] = report.platforms
    assert platform.platform == "linux/amd64"
    assert platform.os == "Debian GNU/Linux 12 (bookworm)"


async def test_debian_finding_details_show_binary_version_source_fix_severity_and_aliases(
    loaded: Registry,
) -> None:
    report = await scan(loaded, fx.debian_image())
    by_id = {f.id: f for f in report.platforms[0].findings}
    glibc = by_id["DEBIAN-CVE-2024-2961"]
    assert (glibc.installed_version, glibc.fixed_version) == ("2.36-9+deb12u3", "2.36-9+deb12u7")
    assert (glibc.severity, glibc.score, glibc.aliases) == ("critical", 9.8, ["CVE-2024-2961"])
    assert glibc.source_package == "glibc"
    util = by_id["DEBIAN-CVE-2024-28085"]
    assert (util.installed_version, util.source_version) == ("1:2.38.1-5+b1", "2.38.1-5")
    assert util.severity == "low"  # ecosystem_specific urgency "unimportant"
    assert (by_id["DEBIAN-CVE-2024-0727"].severity, by_id["DEBIAN-CVE-2024-0727"].score) == (
        "high",
        8.7,
    )
    assert by_id["DEBIAN-CVE-2023-47038"].severity == "medium"
    assert by_id["DEBIAN-CVE-2022-1272"].severity == "unknown"
    assert by_id["DEBIAN-CVE-2022-1272"].fixed_version is None


async def test_distroless_status_d_is_read_and_md5sums_ignored(loaded: Registry) -> None:
    report = await scan(loaded, fx.distroless_image())
    assert found(report) == fx.DISTROLESS_EXPECTED
    sbom = json.loads(await Scanner(loaded).sbom(Digest.parse(report.digest)))
    names = sorted(c["name"] for c in sbom["components"] if c["type"] == "library")
    assert names == ["base-files", "libssl3"]


async def test_alpine_matches_origin_packages_of_its_own_release(loaded: Registry) -> None:
    report = await scan(loaded, fx.alpine_image())
    assert found(report) == fx.ALPINE_EXPECTED
    assert not ids(report) & fx.ALPINE_NOT_EXPECTED


async def test_python_whiteouts_and_opaque_directories_hide_lower_packages(
    loaded: Registry,
) -> None:
    report = await scan(loaded, fx.python_image())
    assert found(report) == fx.PYTHON_EXPECTED
    assert not ids(report) & fx.PYTHON_NOT_EXPECTED
    jinja = next(f for f in report.platforms[0].findings if f.package == "Jinja2")
    assert (jinja.severity, jinja.aliases) == ("medium", ["CVE-2024-22195"])


async def test_npm_packages_under_node_modules_match_semver_ranges(loaded: Registry) -> None:
    report = await scan(loaded, fx.npm_image())
    assert found(report) == fx.NPM_EXPECTED
    assert not ids(report) & fx.NPM_NOT_EXPECTED


async def test_index_is_scanned_per_platform(loaded: Registry) -> None:
    alpine = fx.alpine_image()
    npm_arm = fx.build_image(
        [{"app/node_modules/lodash/package.json": '{"name":"lodash","version":"4.17.20"}'}],
        architecture="arm64",
    )
    index = build_index([alpine, npm_arm])
    for image in (alpine, npm_arm):
        await push(loaded, image, tag=image.architecture)
    await loaded.repository(REPO).manifests.put(index.manifest, index.media_type, tag="multi")
    report = await Scanner(loaded).scan(Digest.parse(index.digest))
    by_platform = {p.platform: {f.id for f in p.findings} for p in report.platforms}
    assert by_platform == {
        "linux/amd64": {"ALPINE-CVE-2024-5535", "ALPINE-CVE-2025-26519"},
        "linux/arm64/v8": {"GHSA-35jh-r3h4-6jhm"},
    }


async def test_sbom_validates_against_cyclonedx_1_6_schema(loaded: Registry) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    report = await scan(loaded, fx.debian_image())
    sbom = await Scanner(loaded).sbom(Digest.parse(report.digest))
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode())
    assert error is None, error
    doc = json.loads(sbom)
    purls = {c["purl"] for c in doc["components"] if "purl" in c}
    assert (
        "pkg:deb/debian/bsdutils@1%3A2.38.1-5%2Bb1?arch=amd64&distro=debian-12&upstream=util-linux%402.38.1-5"
        in purls
    )


async def test_sbom_is_attached_as_a_referrer_of_the_scanned_manifest(loaded: Registry) -> None:
    digest = await push(loaded, fx.alpine_image())
    scanner = Scanner(loaded)
    await scanner.scan(digest)
    assert await scanner.attach(REPO, digest) == 1
    assert await scanner.attach(REPO, digest) == 0  # idempotent
    [referrer] = await loaded.repository(REPO).manifests.referrers(digest)
    assert referrer["artifactType"] == "application/vnd.cyclonedx+json"


async def test_two_scanners_on_one_storage_scan_a_manifest_once(
    loaded: Registry, tmp_path: Path
) -> None:
    digest = await push(loaded, fx.debian_image())
    replicas = [Scanner(Registry(LocalDriver(str(tmp_path / "store")))) for _ in range(2)]
    from registry_core.scanning import ScanBusy

    results = await asyncio.gather(*(s.scan(digest) for s in replicas), return_exceptions=True)
    assert sum(s.scans_run for s in replicas) == 1
    assert all(not isinstance(r, Exception) or isinstance(r, ScanBusy) for r in results)
    for scanner in replicas:  # and once it is done, neither scans it again
        await scanner.scan(digest)
    assert sum(s.scans_run for s in replicas) == 1


async def test_results_survive_a_new_process(loaded: Registry, tmp_path: Path) -> None:
    digest = await push(loaded, fx.alpine_image())
    await Scanner(loaded).scan(digest)
    fresh = Scanner(Registry(LocalDriver(str(tmp_path / "store"))))
    status = await fresh.status(digest)
    report = await fresh.report(digest)
    assert status is not None and status.status == "done"
    assert report is not None and found(report) == fx.ALPINE_EXPECTED


async def test_database_change_rematches_from_sboms_without_reading_layers(
    loaded: Registry, tmp_path: Path
) -> None:
    image = fx.alpine_image()
    digest = await push(loaded, image)
    scanner = Scanner(loaded)
    await scanner.scan(digest)
    for layer in image.layers:  # layers gone: only the SBOM can answer now
        await loaded.driver.delete(layout.blob_data(Digest.parse(layer.digest)))
    extra = tmp_path / "extra.json"
    extra.write_text(
        json.dumps(fx.osv("ALPINE-CVE-2099-1", "Alpine:v3.20", "busybox", [{"introduced": "0"}]))
    )
    await import_sources(loaded.driver, [("extra", [str(extra)])])
    assert await scanner.rematch_all() == 1
    report = await scanner.report(digest)
    assert found(report) == fx.ALPINE_EXPECTED | {("ALPINE-CVE-2099-1", "busybox")}
    assert await scanner.rematch_all() == 0


async def test_failed_scan_is_recorded_with_its_reason(loaded: Registry) -> None:
    image = fx.alpine_image()
    digest = await push(loaded, image)
    await loaded.driver.delete(layout.blob_data(Digest.parse(image.layers[0].digest)))
    from registry_core.scanning import ScanFailed

    with pytest.raises(ScanFailed):
        await Scanner(loaded).scan(digest)
    status = await Scanner(loaded).status(digest)
    assert status is not None and status.status == "failed"
    assert status.reason is not None and "not in storage" in status.reason


async def test_import_counts_records_bad_records_and_withdrawn(
    registry: Registry, tmp_path: Path
) -> None:
    archive = fx.write_all_zip(tmp_path / "all.zip", fx.ALL_RECORDS, fx.BAD_RECORDS)
    [report] = await import_sources(registry.driver, [(str(archive), [str(archive)])])
    assert report.records == len(fx.ALL_RECORDS) + len(fx.BAD_RECORDS)
    assert report.skipped == len(fx.BAD_RECORDS)
    assert report.withdrawn == 2
    state = await VulnDatabase(registry.driver).state()
    [source] = state.sources.values()
    assert source.skipped == 2 and source.ecosystems["Debian:12"] >= 8


async def test_import_reads_single_files_and_folders(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "osv"
    (folder / "nested").mkdir(parents=True)
    for record in fx.NPM_RECORDS:
        (folder / "nested" / f"{record['id']}.json").write_text(json.dumps(record))
    single = tmp_path / "one.json"
    single.write_text(json.dumps(fx.ALPINE_RECORDS[0]))
    reports = await import_sources(
        registry.driver, [(str(folder), [str(folder)]), (str(single), [str(single)])]
    )
    assert [r.records for r in reports] == [len(fx.NPM_RECORDS), 1]
    report = await scan(registry, fx.npm_image())
    assert found(report) == fx.NPM_EXPECTED


async def test_reimport_replaces_a_source_atomically_and_drops_old_generations(
    registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(fx.ALPINE_RECORDS[0]))
    database = VulnDatabase(registry.driver)
    for _ in range(3):
        await import_sources(registry.driver, [("src", [str(path)])], database=database)
    state = await database.state(fresh=True)
    [(source, info)] = state.sources.items()
    generations = await registry.driver.list(layout.vulndb_source_dir(source))
    assert info.generation in generations and len(generations) == 2


async def test_this_machines_bookworm_dpkg_database_scans_every_installed_package(
    loaded: Registry,
) -> None:
    import subprocess

    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Status}\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    installed = {tuple(line.split("\t")[:2]) for line in listed if line.endswith(" installed")}
    image = fx.build_image(
        [
            {
                "etc/os-release": Path("/etc/os-release").read_text(),
                "var/lib/dpkg/status": Path("/var/lib/dpkg/status").read_bytes(),
            }
        ]
    )
    report = await scan(loaded, image)
    sbom = json.loads(await Scanner(loaded).sbom(Digest.parse(report.digest)))
    found_packages = {
        (c["name"], next(p["value"] for p in c["properties"] if p["name"] == "cargohold:arch"))
        for c in sbom["components"]
        if c["type"] == "library"
    }
    assert report.platforms[0].os.startswith("Debian GNU/Linux 12")
    assert found_packages == installed


async def test_scheduled_refresh_imports_the_configured_urls_once_per_interval(
    registry: Registry, tmp_path: Path
) -> None:
    import functools
    import http.server
    import threading

    from registry_core.jobs import Leases, Scheduler
    from registry_core.scanning import ScanService

    served = tmp_path / "served"
    served.mkdir()
    fx.write_all_zip(served / "all.zip", fx.ALPINE_RECORDS)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/all.zip"
    try:
        scheduler = Scheduler(Leases(registry.driver))
        ScanService(registry, refresh_urls=[url], refresh_interval=3600).install(scheduler)
        assert await scheduler.run_once("vulndb-refresh")
        first = await VulnDatabase(registry.driver).state(fresh=True)
        assert await scheduler.run_once("vulndb-refresh")  # within the interval: no import
        second = await VulnDatabase(registry.driver).state(fresh=True)
    finally:
        server.shutdown()
        server.server_close()
    [source] = first.sources.values()
    assert (source.label, source.records) == (url, len(fx.ALPINE_RECORDS))
    assert second.version == first.version
