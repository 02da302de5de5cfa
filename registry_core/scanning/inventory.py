"""What a scan finds: the operating system and packages of one image (one platform).

Plain frozen values shared by the analyzers, the SBOM writer/reader and the
matcher; the SBOM is their stored form. This module reads nothing.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class OperatingSystem:
    """From ``/etc/os-release``: ``ID`` and ``VERSION_ID`` (e.g. debian 12, alpine 3.20.3)."""

    id: str
    version_id: str = ""
    pretty_name: str = ""

    def ecosystems(self) -> list[str]:
        """The OSV ecosystems this release's packages are looked up in, most specific first."""
        if self.id == "debian":
            major = self.version_id.split(".", 1)[0]
            return [f"Debian:{major}"] if major else ["Debian"]
        if self.id == "ubuntu":
            return [f"Ubuntu:{self.version_id}", f"Ubuntu:{self.version_id}:LTS"]
        if self.id == "alpine":
            parts = self.version_id.split(".")
            return [f"Alpine:v{'.'.join(parts[:2])}"] if len(parts) >= 2 else ["Alpine"]
        return []


@attrs.frozen
class Package:
    """One installed package. ``kind`` is the analyzer's: deb, apk, python, npm."""

    kind: str
    name: str
    version: str
    path: str
    arch: str = ""
    source_name: str = ""
    """The source package (dpkg ``Source:``, apk origin) advisories name; "" when same as name."""
    source_version: str = ""
    """The source package's version when it differs from the binary's (binNMU, epoch)."""

    @property
    def match_name(self) -> str:
        return self.source_name or self.name

    @property
    def match_version(self) -> str:
        return self.source_version or self.version


@attrs.frozen
class Inventory:
    """Everything found in one platform's filesystem."""

    os: OperatingSystem | None
    packages: tuple[Package, ...]
    platform: str = ""
    """``os/architecture[/variant]`` from the image config, "" when unknown."""
