"""``cargohold scan sbom``: the stored SBOM from the command line, per platform of an index."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core.digest import Digest
from registry_core.scanning.vulndb import import_sources
from tests import scanning_support as fx
from tests.helpers import build_image, build_index
from tests.helpers.tenants import cargohold_cli

REPO = "acme/prod/multi"


async def seed(store: Path) -> None:
    registry = Registry(LocalDriver(str(store)))
    archive = fx.write_all_zip(store.parent / "all.zip", fx.ALL_RECORDS)
    await import_sources(registry.driver, [("osv", [str(archive)])])
    npm_arm = build_image(
        [{"app/node_modules/lodash/package.json": '{"name":"lodash","version":"4.17.20"}'}],
        architecture="arm64",
    )
    index = build_index([fx.alpine_image(), npm_arm])
    repository = registry.repository(REPO)
    for blob in index.blobs():
        async with repository.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    for image in index.images:
        await repository.manifests.put(image.manifest, image.media_type)
    await repository.manifests.put(index.manifest, index.media_type, tag="1.0")
    await registry.close()


def test_scan_sbom_prints_or_writes_the_sbom_of_each_platform(tmp_path: Path) -> None:
    store = tmp_path / "store"
    asyncio.run(seed(store))
    missing = cargohold_cli("scan", "sbom", f"{REPO}:1.0", storage=str(store), check=False)
    assert missing.returncode == 1 and "no SBOM" in missing.stderr  # not scanned yet
    cargohold_cli("scan", f"{REPO}:1.0", "--wait", storage=str(store))

    printed = json.loads(cargohold_cli("scan", "sbom", f"{REPO}:1.0", storage=str(store)).stdout)
    assert printed["bomFormat"] == "CycloneDX" and printed["specVersion"] == "1.6"

    names = {}
    for platform in ("linux/amd64", "linux/arm64/v8"):
        target = tmp_path / f"{platform.replace('/', '-')}.cdx.json"
        cargohold_cli(
            "scan", "sbom", f"{REPO}:1.0", "--platform", platform, "-o", str(target),
            storage=str(store),
        )  # fmt: skip
        document = json.loads(target.read_text())
        names[platform] = {c["name"] for c in document["components"] if c["type"] == "library"}
    assert "busybox" in names["linux/amd64"] and "lodash" not in names["linux/amd64"]
    assert names["linux/arm64/v8"] == {"lodash"}
    other = cargohold_cli(
        "scan", "sbom", f"{REPO}:1.0", "--platform", "linux/s390x", storage=str(store), check=False
    )
    assert other.returncode == 1 and "no SBOM for linux/s390x" in other.stderr
