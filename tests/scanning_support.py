"""Fixture images and OSV data sets for the scanning tests, built from real file formats.

Each image family (Debian with status and binary/source differences, distroless
``status.d``, Alpine, Python, npm) comes with OSV records in the real schema that
must match some packages and must not match others; ``EXPECTED`` and
``NOT_EXPECTED`` name them so every test asserts both sides.
"""

from __future__ import annotations

import asyncio
import json
import time
import zipfile
from pathlib import Path
from typing import Any

from registry_core.digest import Digest
from registry_server.app import REGISTRY_KEY
from tests.api_support import ApiClient, Login
from tests.helpers import Image, build_image, make_layer, make_layer_tar, sha256_digest

CRITICAL_V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
MEDIUM_V3 = "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:N"  # 4.2
HIGH_V4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N"  # 8.7


def osv(
    ident: str,
    ecosystem: str,
    name: str,
    events: list[dict[str, str]] | None = None,
    *,
    range_type: str = "ECOSYSTEM",
    versions: list[str] | None = None,
    extra_ranges: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One OSV record (schema 1.6) affecting one package."""
    ranges = [{"type": range_type, "events": events}] if events is not None else []
    affected: dict[str, Any] = {
        "package": {"ecosystem": ecosystem, "name": name},
        "ranges": ranges + (extra_ranges or []),
    }
    if versions:
        affected["versions"] = versions
    for key in ("ecosystem_specific", "database_specific_affected"):
        if key in fields:
            affected[key.replace("_affected", "")] = fields.pop(key)
    record = {
        "schema_version": "1.6.0",
        "id": ident,
        "modified": "2024-06-01T00:00:00Z",
        "published": "2024-05-01T00:00:00Z",
        "summary": f"{ident} in {name}",
        "affected": [affected],
    }
    record.update(fields)
    return record


def cvss(vector: str) -> list[dict[str, str]]:
    kind = "CVSS_V4" if vector.startswith("CVSS:4") else "CVSS_V3"
    return [{"type": kind, "score": vector}]


# -- Debian ----------------------------------------------------------------------------------

DEBIAN_OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'


def _stanza(
    package: str,
    version: str,
    source: str | None = None,
    status: str = "install ok installed",
    arch: str = "amd64",
) -> str:
    lines = [
        f"Package: {package}",
        f"Status: {status}",
        "Priority: optional",
        f"Architecture: {arch}",
    ]
    if source:
        lines.append(f"Source: {source}")
    lines += [f"Version: {version}", "Description: test package", " with a continuation line"]
    return "\n".join(lines) + "\n"


_DEBIAN_PACKAGES = [
    _stanza("libc6", "2.36-9+deb12u3", "glibc"),
    # binNMU with an epoch: the binary's version is not its source's.
    _stanza("bsdutils", "1:2.38.1-5+b1", "util-linux (2.38.1-5)"),
    _stanza("openssl", "3.0.11-1~deb12u2"),
    _stanza("zlib1g", "1:1.2.13.dfsg-1", "zlib"),
    _stanza("tzdata", "2024a-0+deb12u1", status="deinstall ok config-files", arch="all"),
    _stanza("perl-base", "5.36.0-7", "perl"),
    _stanza("libsqlite3-0", "3.40.1-2", "sqlite3"),
    _stanza("gzip", "1.12-1"),
]
_CURL = _stanza("curl", "7.88.1-10")


def debian_image(compression: str = "gzip") -> Image:
    """Two layers: the second rewrites the dpkg status without curl (removed in a later layer)."""
    first = {
        "usr/lib/os-release": DEBIAN_OS,
        "var/lib/dpkg/status": "\n".join([*_DEBIAN_PACKAGES, _CURL]),
        "usr/bin/curl": "binary",
    }
    second = {
        "var/lib/dpkg/status": "\n".join(_DEBIAN_PACKAGES),
        "usr/bin/.wh.curl": "",
    }
    return build_image([_compressed(first, compression), _compressed(second, compression)])


def _compressed(files: dict[str, str], compression: str) -> tuple[bytes, str]:
    if compression == "gzip":
        return make_layer(files)
    tar = make_layer_tar(files)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(tar), sha256_digest(tar)
    return tar, sha256_digest(tar)


DEBIAN_RECORDS = [
    osv(
        "DEBIAN-CVE-2024-2961",
        "Debian:12",
        "glibc",
        [{"introduced": "0"}, {"fixed": "2.36-9+deb12u7"}],
        upstream=["CVE-2024-2961"],
        severity=cvss(CRITICAL_V3),
    ),
    osv(
        "DEBIAN-CVE-2024-28085",
        "Debian:12",
        "util-linux",
        [{"introduced": "0"}, {"fixed": "2.38.1-5+deb12u1"}],
        upstream=["CVE-2024-28085"],
        ecosystem_specific={"urgency": "unimportant"},
    ),
    osv(
        "DEBIAN-CVE-2023-5363",
        "Debian:12",
        "openssl",
        [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u1"}],
    ),
    osv(
        "DEBIAN-CVE-2024-0727",
        "Debian:12",
        "openssl",
        [{"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"}],
        severity=cvss(HIGH_V4),
    ),
    osv("DEBIAN-CVE-2022-37434", "Debian:11", "zlib", [{"introduced": "0"}]),
    osv("DEBIAN-CVE-2024-0001", "Debian:12", "tzdata", [{"introduced": "0"}]),
    osv(
        "DEBIAN-CVE-2023-47038",
        "Debian:12",
        "perl",
        [{"introduced": "0"}, {"last_affected": "5.36.0-7"}],
        severity=cvss(MEDIUM_V3),
    ),
    osv(
        "DEBIAN-CVE-2023-31484",
        "Debian:12",
        "perl",
        [{"introduced": "0"}, {"last_affected": "5.36.0-6"}],
    ),
    osv(
        "DEBIAN-CVE-2023-7104",
        "Debian:12",
        "sqlite3",
        [{"introduced": "0"}, {"fixed": "3.40.1-2+deb12u1"}],
        extra_ranges=[
            {
                "type": "GIT",
                "repo": "https://github.com/sqlite/sqlite",
                "events": [
                    {"introduced": "0"},
                    {"fixed": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"},
                ],
            }
        ],
    ),
    osv(
        "DEBIAN-CVE-2022-0002",
        "Debian:12",
        "sqlite3",
        None,
        extra_ranges=[
            {
                "type": "GIT",
                "repo": "https://github.com/sqlite/sqlite",
                "events": [{"introduced": "0"}],
            }
        ],
    ),
    osv("DEBIAN-CVE-2022-1271", "Debian:12", "gzip", [{"introduced": "0"}, {"limit": "1.12-1"}]),
    osv("DEBIAN-CVE-2022-1272", "Debian:12", "gzip", [{"introduced": "0"}, {"limit": "1.13-1"}]),
    osv(
        "DEBIAN-CVE-2023-38545",
        "Debian:12",
        "curl",
        [{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u4"}],
    ),
    osv(
        "DEBIAN-CVE-2023-9999",
        "Debian:12",
        "glibc",
        [{"introduced": "0"}],
        withdrawn="2024-01-01T00:00:00Z",
    ),
]
DEBIAN_EXPECTED = {
    ("DEBIAN-CVE-2024-2961", "libc6"),
    ("DEBIAN-CVE-2024-28085", "bsdutils"),
    ("DEBIAN-CVE-2024-0727", "openssl"),
    ("DEBIAN-CVE-2023-47038", "perl-base"),
    ("DEBIAN-CVE-2023-7104", "libsqlite3-0"),
    ("DEBIAN-CVE-2022-1272", "gzip"),
}
DEBIAN_NOT_EXPECTED = {
    "DEBIAN-CVE-2023-5363",  # fixed before the installed version
    "DEBIAN-CVE-2022-37434",  # Debian:11 record, Debian 12 image
    "DEBIAN-CVE-2024-0001",  # tzdata is deinstalled (config-files only)
    "DEBIAN-CVE-2023-31484",  # last_affected below the installed version
    "DEBIAN-CVE-2022-0002",  # GIT range only
    "DEBIAN-CVE-2022-1271",  # at the limit
    "DEBIAN-CVE-2023-38545",  # curl removed in a later layer
    "DEBIAN-CVE-2023-9999",  # withdrawn
}

# -- distroless (status.d) -----------------------------------------------------------------


def distroless_image() -> Image:
    return build_image(
        [
            {
                "etc/os-release": DEBIAN_OS,
                "var/lib/dpkg/status.d/libssl3": _stanza("libssl3", "3.0.11-1~deb12u2", "openssl"),
                "var/lib/dpkg/status.d/libssl3.md5sums": "d41d8cd98f00b204e9800998ecf8427e  usr/lib/libssl.so.3\n",
                "var/lib/dpkg/status.d/base-files": _stanza("base-files", "12.4+deb12u5"),
            }
        ]
    )


DISTROLESS_EXPECTED = {("DEBIAN-CVE-2024-0727", "libssl3")}

# -- Alpine ---------------------------------------------------------------------------------

ALPINE_OS = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"\n'
APK_INSTALLED = """C:Q1abc=
P:libcrypto3
V:3.3.1-r0
A:x86_64
S:1000
o:openssl
m:Test <test@example.org>

C:Q1def=
P:busybox
V:1.36.1-r29
A:x86_64
o:busybox

C:Q1ghi=
P:musl
V:1.2.5-r0
A:x86_64
o:musl
"""


def alpine_image() -> Image:
    return build_image([{"etc/os-release": ALPINE_OS, "lib/apk/db/installed": APK_INSTALLED}])


ALPINE_RECORDS = [
    osv(
        "ALPINE-CVE-2024-5535",
        "Alpine:v3.20",
        "openssl",
        [{"introduced": "0"}, {"fixed": "3.3.2-r0"}],
        severity=cvss(CRITICAL_V3),
    ),
    osv(
        "ALPINE-CVE-2023-42363",
        "Alpine:v3.19",
        "busybox",
        [{"introduced": "0"}, {"fixed": "1.36.1-r30"}],
    ),
    osv(
        "ALPINE-CVE-2023-42364",
        "Alpine:v3.20",
        "busybox",
        [{"introduced": "0"}, {"fixed": "1.36.1-r29"}],
    ),
    osv(
        "ALPINE-CVE-2025-26519",
        "Alpine:v3.20",
        "musl",
        [{"introduced": "0"}, {"fixed": "1.2.5-r1"}],
    ),
]
ALPINE_EXPECTED = {("ALPINE-CVE-2024-5535", "libcrypto3"), ("ALPINE-CVE-2025-26519", "musl")}
ALPINE_NOT_EXPECTED = {"ALPINE-CVE-2023-42363", "ALPINE-CVE-2023-42364"}

# -- Python ---------------------------------------------------------------------------------

_SITE = "usr/local/lib/python3.11/site-packages"


def _metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: test\n\nName: not-this\n"


def python_image() -> Image:
    """requests is whited out and urllib3 1.26 hidden by an opaque directory in layer 2."""
    first = {
        f"{_SITE}/Jinja2-3.1.2.dist-info/METADATA": _metadata("Jinja2", "3.1.2"),
        f"{_SITE}/requests-2.25.0.dist-info/METADATA": _metadata("requests", "2.25.0"),
        f"{_SITE}/urllib3-1.26.0.dist-info/METADATA": _metadata("urllib3", "1.26.0"),
        "usr/lib/python3/dist-packages/PyYAML-5.3.egg-info/PKG-INFO": _metadata("PyYAML", "5.3"),
    }
    second = {
        f"{_SITE}/.wh.requests-2.25.0.dist-info": "",
        f"{_SITE}/urllib3/.wh..wh..opq": "",
        f"{_SITE}/urllib3-1.26.0.dist-info/.wh..wh..opq": "",
        f"{_SITE}/urllib3-1.26.0.dist-info/OTHER": "x",
    }
    third = {f"{_SITE}/urllib3-2.2.2.dist-info/METADATA": _metadata("urllib3", "2.2.2")}
    return build_image([first, second, third])


PYTHON_RECORDS = [
    osv(
        "GHSA-h5c8-rqwp-cp95",
        "PyPI",
        "jinja2",
        [{"introduced": "0"}, {"fixed": "3.1.3"}],
        aliases=["CVE-2024-22195"],
        database_specific={"severity": "MODERATE"},
    ),
    osv("GHSA-j8r2-6x86-q33q", "PyPI", "requests", [{"introduced": "0"}, {"fixed": "2.31.0"}]),
    osv("GHSA-v845-jxx5-vc9f", "PyPI", "urllib3", [{"introduced": "0"}, {"fixed": "1.26.18"}]),
    osv("GHSA-34jh-p97f-mpxf", "PyPI", "urllib3", [{"introduced": "2.0.0"}, {"fixed": "2.2.2"}]),
    osv("PYSEC-2021-142", "PyPI", "pyyaml", [{"introduced": "0"}, {"fixed": "5.4"}]),
    osv(
        "GHSA-withdrawn-0001",
        "PyPI",
        "jinja2",
        [{"introduced": "0"}],
        withdrawn="2024-02-01T00:00:00Z",
    ),
]
PYTHON_EXPECTED = {("GHSA-h5c8-rqwp-cp95", "Jinja2"), ("PYSEC-2021-142", "PyYAML")}
PYTHON_NOT_EXPECTED = {
    "GHSA-j8r2-6x86-q33q",  # requests whited out
    "GHSA-v845-jxx5-vc9f",  # urllib3 1.26 hidden by an opaque directory
    "GHSA-34jh-p97f-mpxf",  # fixed exactly at 2.2.2
    "GHSA-withdrawn-0001",
}

# -- npm ------------------------------------------------------------------------------------


def npm_image() -> Image:
    def pkg(name: str, version: str) -> str:
        return json.dumps({"name": name, "version": version, "license": "MIT"})

    return build_image(
        [
            {
                "app/node_modules/lodash/package.json": pkg("lodash", "4.17.20"),
                "app/node_modules/lodash/fp/package.json": pkg("lodash-fp-internal", "0.0.1"),
                "app/node_modules/@babel/traverse/package.json": pkg("@babel/traverse", "7.23.0"),
                "app/node_modules/express/package.json": pkg("express", "4.19.2"),
                "app/package.json": pkg("my-app", "1.0.0"),
            }
        ]
    )


NPM_RECORDS = [
    osv(
        "GHSA-35jh-r3h4-6jhm",
        "npm",
        "lodash",
        [{"introduced": "0"}, {"fixed": "4.17.21"}],
        range_type="SEMVER",
        severity=cvss(HIGH_V4),
    ),
    osv(
        "GHSA-67hx-6x53-jw92",
        "npm",
        "@babel/traverse",
        [{"introduced": "0"}, {"fixed": "7.23.2"}],
        range_type="SEMVER",
        severity=cvss(CRITICAL_V3),
    ),
    osv(
        "GHSA-qw6h-vgh9-j6wx",
        "npm",
        "express",
        [{"introduced": "0"}, {"fixed": "4.19.2"}],
        range_type="SEMVER",
    ),
    osv(
        "GHSA-prerelease",
        "npm",
        "express",
        [{"introduced": "5.0.0-alpha.1"}, {"fixed": "5.0.0"}],
        range_type="SEMVER",
    ),
    osv("GHSA-internal", "npm", "lodash-fp-internal", [{"introduced": "0"}], range_type="SEMVER"),
]
NPM_EXPECTED = {("GHSA-35jh-r3h4-6jhm", "lodash"), ("GHSA-67hx-6x53-jw92", "@babel/traverse")}
NPM_NOT_EXPECTED = {"GHSA-qw6h-vgh9-j6wx", "GHSA-prerelease", "GHSA-internal"}

ALL_RECORDS = DEBIAN_RECORDS + ALPINE_RECORDS + PYTHON_RECORDS + NPM_RECORDS
BAD_RECORDS = [b'{"id": 42, "affected": "nope"}', b"not json at all"]


def write_all_zip(path: Path, records: list[dict[str, Any]], bad: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    """An osv.dev-style ``all.zip``: one ``ID.json`` per record."""
    with zipfile.ZipFile(path, "w") as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record))
        for index, raw in enumerate(bad):
            archive.writestr(f"BAD-{index}.json", raw)
    return path


# -- pushing through an in-process server and waiting for its scan -------------------------

PROD_API = "/api/v1/registries/acme/prod"


async def push(api: ApiClient, image: Image, name: str = "acme/prod/app", tag: str = "1.0") -> str:
    repo = api.app[REGISTRY_KEY].repository(name)
    for blob in image.blobs():
        async with repo.blobs.upload() as upload:
            await upload.write(blob.data)
            await upload.commit(Digest.parse(blob.digest))
    await repo.manifests.put(image.manifest, image.media_type, tag=tag)
    return image.digest


async def scanned(api: ApiClient, login: Login, digest: str, image: str = "app") -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        reply = await api.get(
            f"{PROD_API}/repositories/{image}/manifests/{digest}/vulnerabilities", login
        )
        assert reply.status == 200, reply.body
        body = reply.json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)
