"""A 200 MiB, five-layer Debian bookworm image scans without error and in bounded memory.

The image is built here, one layer at a time (each stored as soon as it is made):
this machine's own bookworm ``/etc/os-release`` and dpkg database, and ~40 MiB of
incompressible filler per layer, in gzip, zstd and plain tar layers. A later layer
rewrites the dpkg status without one package and whites out a file. The scan must
report every installed package but the removed one, and its peak of Python
allocations (tracemalloc, threads included) must stay far below the image's size:
layers are streamed, never held whole.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core import mediatypes as mt
from registry_core.digest import Digest
from registry_core.scanning import Scanner
from registry_core.scanning.sbom import inventory_from_sbom
from registry_core.scanning.vulndb import import_sources
from tests import scanning_support as fx
from tests.helpers import make_layer_tar

MiB = 1024 * 1024
FILLER_PER_LAYER = 40 * MiB
FILLER_FILE = 8 * MiB
PEAK_LIMIT = 32 * MiB
"""Less than one layer: a streaming scan holds a few chunks and the files it keeps (~9 MiB
seen); a scan that held a whole layer (40 MiB) would pass it."""

pytestmark = pytest.mark.skipif(
    not Path("/var/lib/dpkg/status").exists(), reason="needs a Debian machine's dpkg database"
)


def installed_packages() -> set[str]:
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Status}\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {line.split("\t")[0] for line in listed if line.endswith(" installed")}


def without_package(status: str, package: str) -> str:
    """The dpkg status with *package*'s stanza removed (as ``apt-get remove`` leaves it)."""
    stanzas = status.strip("\n").split("\n\n")
    kept = [s for s in stanzas if f"Package: {package}\n" not in s + "\n"]
    assert len(kept) == len(stanzas) - 1
    return "\n\n".join(kept) + "\n"


def filler(layer: int) -> dict[str, bytes]:
    return {
        f"srv/data{layer}/{n}.bin": os.urandom(FILLER_FILE)
        for n in range(FILLER_PER_LAYER // FILLER_FILE)
    }


async def store_layer(
    registry: Registry, repo: str, files: dict[str, bytes | str], compression: str
) -> tuple[dict[str, object], str]:
    """Build, compress and upload one layer; returns its descriptor and diff_id."""
    tar = make_layer_tar(files)
    diff_id = str(Digest.of(tar))
    if compression == "gzip":
        blob, media_type = (
            gzip.compress(tar, compresslevel=1, mtime=0),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor(level=1).compress(tar)
        media_type = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        blob, media_type = tar, "application/vnd.oci.image.layer.v1.tar"
    del tar
    digest = Digest.of(blob)
    async with registry.repository(repo).blobs.upload() as upload:
        for start in range(0, len(blob), 4 * MiB):
            await upload.write(blob[start : start + 4 * MiB])
        await upload.commit(digest)
    return {"mediaType": media_type, "digest": str(digest), "size": len(blob)}, diff_id


async def test_a_200_mib_five_layer_bookworm_image_scans_in_bounded_memory(
    tmp_path: Path,
) -> None:
    registry = Registry(LocalDriver(str(tmp_path / "store")))
    archive = fx.write_all_zip(tmp_path / "all.zip", fx.DEBIAN_RECORDS)
    await import_sources(registry.driver, [("debian", [str(archive)])])
    repo = "acme/prod/bookworm"
    status = Path("/var/lib/dpkg/status").read_text()
    installed = installed_packages()
    removed = sorted(installed)[0]
    layers = [
        ({"etc/os-release": Path("/etc/os-release").read_text(), "var/lib/dpkg/status": status,
          "usr/bin/tool": "binary"}, "gzip"),
        ({}, "zstd"),
        ({}, "none"),
        ({"usr/bin/.wh.tool": ""}, "gzip"),
        ({"var/lib/dpkg/status": without_package(status, removed)}, "gzip"),
    ]  # fmt: skip
    descriptors, diff_ids = [], []
    for index, (files, compression) in enumerate(layers):
        descriptor, diff_id = await store_layer(
            registry, repo, {**filler(index), **files}, compression
        )
        descriptors.append(descriptor)
        diff_ids.append(diff_id)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    async with registry.repository(repo).blobs.upload() as upload:
        await upload.write(config)
        await upload.commit(Digest.of(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    await registry.repository(repo).manifests.put(manifest, mt.OCI_MANIFEST, tag="12")
    assert sum(int(d["size"]) for d in descriptors) >= 200 * MiB  # type: ignore[call-overload]

    scanner = Scanner(registry)
    tracemalloc.start()
    try:
        report = await scanner.scan(Digest.of(manifest))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    status_after = await scanner.status(Digest.of(manifest))
    assert status_after is not None and status_after.status == "done"
    [platform] = report.platforms
    assert platform.platform == "linux/amd64"
    assert platform.os.startswith("Debian GNU/Linux 12")
    sbom = await scanner.sbom(Digest.of(manifest))
    assert sbom is not None
    inventory = inventory_from_sbom(sbom)
    found = {p.name for p in inventory.packages}
    assert found == installed - {removed}  # every installed package; the removed one is gone
    assert platform.packages == len(inventory.packages)
    assert peak < PEAK_LIMIT, f"scan peak {peak / MiB:.1f} MiB of Python allocations"
