"""The stored inventory: a CycloneDX 1.6 JSON SBOM with package URLs, and back.

The SBOM is the scan's durable result: it is attached to the image as an OCI
referrer (``artifactType`` :data:`SBOM_ARTIFACT_TYPE`) and re-matching after a
vulnerability-database update reads packages back from it, so everything the
matcher needs (source package name and version, the OSV ecosystem) is kept in
``properties`` beside the purl. The document is deterministic (no timestamp,
serial number derived from the manifest digest), so replicas that scan the
same manifest write the same bytes. This module reads and writes bytes only.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import attrs
import msgspec

from .inventory import Inventory, OperatingSystem, Package
from .versions import normalize_pypi_name

SBOM_ARTIFACT_TYPE = "application/vnd.cyclonedx+json"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
_PREFIX = "cargohold:"


def _q(text: str) -> str:
    return quote(text, safe="")


def purl_of(package: Package, os_info: OperatingSystem | None) -> str:
    """The package URL (https://github.com/package-url/purl-spec) of one package."""
    if package.kind == "deb":
        vendor = os_info.id if os_info else "debian"
        qualifiers = []
        if package.arch:
            qualifiers.append(f"arch={_q(package.arch)}")
        if os_info and os_info.version_id:
            qualifiers.append(f"distro={_q(f'{vendor}-{os_info.version_id}')}")
        if package.source_name or package.source_version:
            source = package.match_name + "@" + package.match_version
            qualifiers.append(f"upstream={_q(source)}")
        tail = ("?" + "&".join(qualifiers)) if qualifiers else ""
        return f"pkg:deb/{_q(vendor)}/{_q(package.name)}@{_q(package.version)}{tail}"
    if package.kind == "apk":
        qualifiers = [f"arch={_q(package.arch)}"] if package.arch else []
        if os_info and os_info.version_id:
            qualifiers.append(f"distro={_q(os_info.version_id)}")
        tail = ("?" + "&".join(qualifiers)) if qualifiers else ""
        return f"pkg:apk/alpine/{_q(package.name)}@{_q(package.version)}{tail}"
    if package.kind == "python":
        return f"pkg:pypi/{_q(normalize_pypi_name(package.name))}@{_q(package.version)}"
    if package.kind == "npm":
        if package.name.startswith("@") and "/" in package.name:
            scope, name = package.name.split("/", 1)
            return f"pkg:npm/{_q(scope)}/{_q(name)}@{_q(package.version)}"
        return f"pkg:npm/{_q(package.name)}@{_q(package.version)}"
    return f"pkg:generic/{_q(package.name)}@{_q(package.version)}"


def build_sbom(inventory: Inventory, subject: str, name: str = "") -> bytes:
    """The CycloneDX 1.6 JSON document of one platform's inventory of manifest *subject*."""
    os_info = inventory.os
    components: list[dict[str, Any]] = []
    if os_info is not None:
        components.append(
            {
                "type": "operating-system",
                "bom-ref": "os",
                "name": os_info.id,
                "version": os_info.version_id,
                "description": os_info.pretty_name,
            }
        )
    for index, package in enumerate(inventory.packages):
        properties = [
            {"name": f"{_PREFIX}kind", "value": package.kind},
            {"name": f"{_PREFIX}path", "value": package.path},
        ]
        if package.source_name:
            properties.append({"name": f"{_PREFIX}source-name", "value": package.source_name})
        if package.source_version:
            properties.append({"name": f"{_PREFIX}source-version", "value": package.source_version})
        if package.arch:
            properties.append({"name": f"{_PREFIX}arch", "value": package.arch})
        components.append(
            {
                "type": "library",
                "bom-ref": f"pkg-{index}",
                "name": package.name,
                "version": package.version,
                "purl": purl_of(package, os_info),
                "properties": properties,
            }
        )
    metadata: dict[str, Any] = {
        "tools": {"components": [{"type": "application", "name": "cargohold"}]},
        "component": {
            "type": "container",
            "bom-ref": subject,
            "name": name or subject,
            "version": subject,
        },
    }
    if inventory.platform:
        metadata["properties"] = [{"name": f"{_PREFIX}platform", "value": inventory.platform}]
    document = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'cargohold:' + subject)}",
        "version": 1,
        "metadata": metadata,
        "components": components,
    }
    return msgspec.json.encode(document)


class SbomUnreadable(ValueError):
    """Stored bytes that are not an SBOM this module wrote."""


class _Property(msgspec.Struct):
    name: str = ""
    value: str = ""


class SbomComponent(msgspec.Struct):
    """One component as stored; ``properties`` stays raw JSON until a package needs it.

    Re-matching reads every component of every SBOM, and most of them are packages it
    has seen in other SBOMs already: their raw properties are the cache key
    (:meth:`identity`), so only new packages pay for decoding them.
    """

    type: str = ""
    name: str = ""
    version: str = ""
    description: str = ""
    properties: msgspec.Raw = msgspec.Raw(b"[]")

    def identity(self) -> tuple[str, str, bytes]:
        """What makes two components the same package (name, version, raw properties)."""
        return (self.name, self.version, bytes(self.properties))

    def package(self) -> Package:
        """The :class:`Package` this component records."""
        try:
            decoded = msgspec.json.decode(self.properties, type=list[_Property])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SbomUnreadable(str(exc)) from None
        props = {p.name: p.value for p in decoded}
        return Package(
            kind=props.get(f"{_PREFIX}kind", "unknown"),
            name=self.name,
            version=self.version,
            path=props.get(f"{_PREFIX}path", ""),
            arch=props.get(f"{_PREFIX}arch", ""),
            source_name=props.get(_SOURCE_NAME, ""),
            source_version=props.get(_SOURCE_VERSION, ""),
        )


class _Metadata(msgspec.Struct):
    properties: list[_Property] = []


class _Bom(msgspec.Struct):
    bomFormat: str = ""
    components: list[SbomComponent] = []
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)


_SOURCE_NAME, _SOURCE_VERSION = f"{_PREFIX}source-name", f"{_PREFIX}source-version"


@attrs.frozen
class SbomPackages:
    """An SBOM read for matching: its operating system and package components, undecoded."""

    os: OperatingSystem | None
    components: list[SbomComponent]
    platform: str


def read_sbom(body: bytes) -> SbomPackages:
    """The operating system and package components of an SBOM written by :func:`build_sbom`."""
    try:
        doc = msgspec.json.decode(body, type=_Bom)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SbomUnreadable(str(exc)) from None
    if doc.bomFormat != "CycloneDX":
        raise SbomUnreadable("not a CycloneDX document")
    os_info = None
    packages = []
    for component in doc.components:
        if component.type == "operating-system":
            os_info = OperatingSystem(
                id=component.name, version_id=component.version, pretty_name=component.description
            )
        else:
            packages.append(component)
    platform = next(
        (p.value for p in doc.metadata.properties if p.name == f"{_PREFIX}platform"), ""
    )
    return SbomPackages(os=os_info, components=packages, platform=platform)


def inventory_from_sbom(body: bytes) -> Inventory:
    """The inventory an SBOM written by :func:`build_sbom` describes."""
    read = read_sbom(body)
    packages = tuple(component.package() for component in read.components)
    return Inventory(os=read.os, packages=packages, platform=read.platform)
