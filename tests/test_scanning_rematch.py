"""Re-matching stored SBOMs after a database update: same answers as a scan, fewer writes.

A pass reads every stored SBOM (never a layer), rewrites only the reports whose
findings changed, and records itself, so an unchanged report still tells which
database version it stands for.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.scanning import Scanner, ScanService
from registry_core.scanning import matcher as matcher_module
from registry_core.scanning.matcher import Matcher
from registry_core.scanning.sbom import read_sbom
from registry_core.scanning.vulndb import import_sources
from registry_core.storage import layout
from tests import scanning_support as fx
from tests.helpers import Image

FAMILIES = {
    "debian": fx.debian_image,
    "distroless": fx.distroless_image,
    "alpine": fx.alpine_image,
    "python": fx.python_image,
    "npm": fx.npm_image,
}

# One new record per family, each affecting a package the family's image holds.
NEW_RECORDS = [
    fx.osv("DEBIAN-CVE-2099-1", "Debian:12", "glibc", [{"introduced": "0"}]),
    fx.osv("ALPINE-CVE-2099-1", "Alpine:v3.20", "busybox", [{"introduced": "0"}]),
    fx.osv("PYSEC-2099-1", "PyPI", "jinja2", [{"introduced": "0"}]),  # PEP 503 name
    fx.osv("GHSA-2099-0001", "npm", "lodash", [{"introduced": "0"}]),
]


async def push(registry: Registry, image: Image, repo: str) -> Digest:
    repository = registry.repository(repo)
    for blob in image.blobs():
        async with repository.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    await repository.manifests.put(image.manifest, image.media_type, tag="1.0")
    return Digest.parse(image.digest)


@pytest.fixture
async def scanned(tmp_path: Path) -> tuple[Scanner, dict[str, Digest]]:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    archive = fx.write_all_zip(tmp_path / "all.zip", fx.ALL_RECORDS)
    await import_sources(registry.driver, [("osv", [str(archive)])])
    scanner = Scanner(registry)
    digests = {}
    for family, build in FAMILIES.items():
        digests[family] = await push(registry, build(), f"acme/prod/{family}")
        await scanner.scan(digests[family])
    return scanner, digests


async def import_new(scanner: Scanner, tmp_path: Path, records: list[dict[str, object]]) -> None:
    path = tmp_path / "new.json"
    path.write_text(json.dumps(records))
    await import_sources(scanner.driver, [("new", [str(path)])])


async def test_rematched_findings_equal_a_fresh_scan_of_the_layers(
    scanned: tuple[Scanner, dict[str, Digest]], tmp_path: Path
) -> None:
    scanner, digests = scanned
    await import_new(scanner, tmp_path, NEW_RECORDS)
    await scanner.rematch_all()
    rematched = {family: await scanner.report(d) for family, d in digests.items()}
    fresh = Scanner(Registry(LocalDriver(str(tmp_path / "store"))))  # nothing cached
    for family, digest in digests.items():
        report = await fresh.scan(digest, force=True)
        before = rematched[family]
        assert before is not None
        assert [p.findings for p in before.platforms] == [p.findings for p in report.platforms]
    new_ids = {r["id"] for r in NEW_RECORDS}
    found = {f.id for r in rematched.values() if r for p in r.platforms for f in p.findings}
    assert new_ids <= found  # every new record matched its family's package


async def test_a_pass_rewrites_only_the_reports_whose_findings_changed(
    scanned: tuple[Scanner, dict[str, Digest]], tmp_path: Path
) -> None:
    scanner, digests = scanned
    paths = {family: layout.scan_report(d) for family, d in digests.items()}
    before = {family: await scanner.driver.read(p) for family, p in paths.items()}
    await import_new(scanner, tmp_path, [NEW_RECORDS[1]])  # only Alpine's busybox
    assert await scanner.rematch_all() == 1
    after = {family: await scanner.driver.read(p) for family, p in paths.items()}
    assert [f for f in FAMILIES if after[f] != before[f]] == ["alpine"]
    state = await scanner.database.state(fresh=True)
    last = await scanner.last_rematch()
    assert last is not None and last.version == state.version
    for digest in digests.values():  # every result, rewritten or not, stands for the new data
        report = await scanner.report(digest)
        assert report is not None
        assert scanner.matched_against(report, last)[0] == state.version


async def test_a_recorded_pass_is_not_repeated_for_the_same_database(
    scanned: tuple[Scanner, dict[str, Digest]], tmp_path: Path
) -> None:
    scanner, _digests = scanned
    service = ScanService(scanner.registry, scanner)
    await import_new(scanner, tmp_path, [NEW_RECORDS[0]])
    assert await service.rematch_if_changed() == 1  # only the Debian image holds glibc
    first = await scanner.last_rematch()
    assert await service.rematch_if_changed() == 0
    assert await scanner.last_rematch() == first  # no second pass was run


async def test_an_unreadable_sbom_is_skipped_and_the_others_rematched(
    scanned: tuple[Scanner, dict[str, Digest]], tmp_path: Path
) -> None:
    scanner, digests = scanned
    report = await scanner.report(digests["debian"])
    assert report is not None and report.platforms[0].sbom
    sbom = Digest.parse(report.platforms[0].sbom)
    await scanner.driver.write(layout.blob_data(sbom), b"not json")
    await import_new(scanner, tmp_path, NEW_RECORDS)
    assert await scanner.rematch_all() == 3  # Alpine, Python, npm; not the broken Debian one
    kept = await scanner.report(digests["debian"])
    assert kept is not None and kept.platforms[0].findings == report.platforms[0].findings


async def test_concurrent_matches_of_one_sbom_count_its_packages_once(
    scanned: tuple[Scanner, dict[str, Digest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pass matches many SBOMs at once; a matcher that counted each concurrent miss
    # would think itself full and be replaced again and again, losing what it learned.
    scanner, digests = scanned
    body = await scanner.sbom(digests["debian"])
    assert body is not None
    sbom = read_sbom(body)
    monkeypatch.setattr(matcher_module, "MAX_ENTRIES", len(sbom.components))
    matcher = Matcher(scanner.database, await scanner.database.state(fresh=True))
    results = await asyncio.gather(*(matcher.match_sbom(sbom) for _ in range(16)))
    assert all(r == results[0] for r in results) and results[0]
    assert not matcher.full
