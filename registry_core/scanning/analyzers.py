"""One small analyzer per package format, registered by kind, fed file by file.

The layer walker asks every registered analyzer whether it wants a path
(:meth:`Analyzer.wants`), keeps the final version of each wanted file (after
whiteouts) and hands them over; :meth:`Analyzer.analyze` turns file contents into
packages. Adding a format (rpm, Go binaries, Java archives) means adding one class
here and registering it: the walker never changes. Analyzers parse bytes only,
never read storage, and skip what they cannot parse rather than fail a scan.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from typing import ClassVar, Protocol

from .inventory import OperatingSystem, Package

MAX_FILE = 16 * 1024 * 1024
"""Files bigger than this are not read (no real package database comes close)."""


class Analyzer(Protocol):
    kind: ClassVar[str]

    def wants(self, path: str) -> bool:
        """True for a path (relative, no leading slash) this analyzer reads."""
        ...

    def analyze(self, files: dict[str, bytes]) -> list[Package]:
        """The packages the wanted files describe (files maps path to content)."""
        ...


ANALYZERS: dict[str, Analyzer] = {}


def register(analyzer: Analyzer) -> Analyzer:
    ANALYZERS[analyzer.kind] = analyzer
    return analyzer


def _paragraphs(text: str) -> Iterable[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status, apk's one-letter keys), continuation lines joined."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                fields[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            last = key.strip()
            fields[last] = value.strip()
    if fields:
        yield fields


def parse_os_release(data: bytes) -> OperatingSystem | None:
    values: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    if not values.get("ID"):
        return None
    return OperatingSystem(
        id=values["ID"].lower(),
        version_id=values.get("VERSION_ID", ""),
        pretty_name=values.get("PRETTY_NAME", ""),
    )


OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")


class Dpkg:
    """``var/lib/dpkg/status`` and distroless ``var/lib/dpkg/status.d/*``."""

    kind: ClassVar[str] = "deb"
    _SOURCE = re.compile(r"^(?P<name>\S+)(?:\s*\((?P<version>[^)]+)\))?$")

    def wants(self, path: str) -> bool:
        if path == "var/lib/dpkg/status":
            return True
        return path.startswith("var/lib/dpkg/status.d/") and not path.endswith(".md5sums")

    def analyze(self, files: dict[str, bytes]) -> list[Package]:
        found: dict[tuple[str, str], Package] = {}
        for path in sorted(files):
            text = files[path].decode("utf-8", "replace")
            for fields in _paragraphs(text):
                package = self._package(fields, path)
                if package is not None:
                    found[(package.name, package.arch)] = package
        return list(found.values())

    def _package(self, fields: dict[str, str], path: str) -> Package | None:
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version:
            return None
        # status lists removed-but-configured packages too; status.d stanzas have no Status.
        status = fields.get("Status", "install ok installed").split()
        if status[-1:] != ["installed"]:
            return None
        source_name = source_version = ""
        match = self._SOURCE.match(fields.get("Source", ""))
        if match is not None:
            source_name = match["name"] if match["name"] != name else ""
            source_version = match["version"] or ""
            if source_version == version:
                source_version = ""
        return Package(
            kind=self.kind,
            name=name,
            version=version,
            path=path,
            arch=fields.get("Architecture", ""),
            source_name=source_name,
            source_version=source_version,
        )


class Apk:
    """Alpine's ``lib/apk/db/installed`` (P: name, V: version, A: arch, o: origin)."""

    kind: ClassVar[str] = "apk"

    def wants(self, path: str) -> bool:
        return path == "lib/apk/db/installed"

    def analyze(self, files: dict[str, bytes]) -> list[Package]:
        packages = []
        for path, data in files.items():
            for fields in _paragraphs(data.decode("utf-8", "replace")):
                name, version = fields.get("P"), fields.get("V")
                if not name or not version:
                    continue
                origin = fields.get("o", "")
                packages.append(
                    Package(
                        kind=self.kind,
                        name=name,
                        version=version,
                        path=path,
                        arch=fields.get("A", ""),
                        source_name=origin if origin != name else "",
                    )
                )
        return packages


class Python:
    """``*.dist-info/METADATA`` and ``*.egg-info/PKG-INFO`` (or an ``.egg-info`` file)."""

    kind: ClassVar[str] = "python"

    def wants(self, path: str) -> bool:
        return (
            path.endswith(".dist-info/METADATA")
            or path.endswith(".egg-info/PKG-INFO")
            or (path.endswith(".egg-info") and "site-packages/" in path)
        )

    def analyze(self, files: dict[str, bytes]) -> list[Package]:
        packages = []
        for path, data in sorted(files.items()):
            headers: dict[str, str] = {}
            for line in data.decode("utf-8", "replace").splitlines():
                if not line.strip():
                    break  # the body (description) follows the first blank line
                key, sep, value = line.partition(":")
                if sep and key in ("Name", "Version") and key not in headers:
                    headers[key] = value.strip()
            if headers.get("Name") and headers.get("Version"):
                packages.append(
                    Package(
                        kind=self.kind,
                        name=headers["Name"],
                        version=headers["Version"],
                        path=path,
                    )
                )
        return packages


class Npm:
    """``node_modules/NAME/package.json`` and ``node_modules/@SCOPE/NAME/package.json``."""

    kind: ClassVar[str] = "npm"

    def wants(self, path: str) -> bool:
        if not path.endswith("/package.json") or "node_modules/" not in path:
            return False
        parent = posixpath.dirname(path)
        head, name = posixpath.split(parent)
        if posixpath.basename(head).startswith("@"):
            head = posixpath.dirname(head)
        return posixpath.basename(head) == "node_modules" and bool(name)

    def analyze(self, files: dict[str, bytes]) -> list[Package]:
        packages = []
        for path, data in sorted(files.items()):
            try:
                doc = json.loads(data)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            name, version = doc.get("name"), doc.get("version")
            if isinstance(name, str) and isinstance(version, str) and name and version:
                packages.append(Package(kind=self.kind, name=name, version=version, path=path))
        return packages


for _analyzer in (Dpkg(), Apk(), Python(), Npm()):
    register(_analyzer)
