"""Matching an inventory against the vulnerability database, per ecosystem.

Each package is looked up in the OSV ecosystems its kind and the image's
operating system select (dpkg packages of Debian 12 in ``Debian:12`` only, by
their *source* name and version, which is what Debian advisories name; apk
packages by origin in ``Alpine:vX.Y``; Python in ``PyPI`` by normalised name;
npm in ``npm``), then each advisory's versions and ranges are evaluated with
that ecosystem's ordering. Pure computation over what the database hands back;
it never reads layers, so re-matching from stored SBOMs is cheap.

A :class:`Matcher` serves one database version: it asks the database once per
(ecosystem, package), evaluates each installed version once, and remembers the
findings of every package it has seen, so a re-matching pass over many SBOMs
that share base layers does the version arithmetic once per distinct package.
Lookups the database has not cached are fetched concurrently (bounded) before
the synchronous part runs, so an object store's latency is paid once per batch,
not once per package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import msgspec

from .inventory import Inventory, Package
from .osv import Advisory, is_affected, package_key, severity_rank
from .sbom import SbomPackages
from .versions import comparator
from .vulndb import DatabaseState, VulnDatabase


class Finding(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    aliases: list[str] = []
    package: str
    installed_version: str
    fixed_version: str | None = None
    severity: str = "unknown"
    score: float | None = None
    summary: str = ""
    kind: str = ""
    ecosystem: str = ""
    source_package: str | None = None
    source_version: str | None = None


def ecosystems_for(package: Package, os_ecosystems: Sequence[str]) -> Sequence[str]:
    if package.kind in ("deb", "apk"):
        return os_ecosystems
    if package.kind == "python":
        return ("PyPI",)
    if package.kind == "npm":
        return ("npm",)
    return ()


def _fixed(advisory: Advisory, version: str) -> str | None:
    compare = comparator(advisory.ecosystem)
    candidates = advisory.fixed_versions()
    if compare is not None:
        # The lowest fix above the installed version is the one to upgrade to.
        candidates = [f for f in candidates if compare(f, version) > 0]
        if not candidates:
            return None
        best = candidates[0]
        for other in candidates[1:]:
            if compare(other, best) < 0:
                best = other
        return best
    return candidates[0] if candidates else None


_Keyed = tuple[tuple[str, str, str], Finding]
"""A finding with its identity in one image: (advisory id, package name, architecture)."""

_T = TypeVar("_T")
_FETCH_CONCURRENCY = 32
MAX_ENTRIES = 20_000
"""Packages (and version lookups) one matcher remembers; the scanner starts a fresh one past it."""


class Matcher:
    """Findings for inventories and stored SBOMs against one database version."""

    def __init__(self, database: VulnDatabase, state: DatabaseState) -> None:
        self.database = database
        self.state = state
        self.version = state.version
        self._advisories: dict[tuple[str, str], list[Advisory]] = {}
        self._versions: dict[tuple[str, str, str], list[tuple[Advisory, str | None]]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[list[Advisory]]] = {}
        self._gate = asyncio.Semaphore(_FETCH_CONCURRENCY)
        self._findings: dict[tuple[str, ...], dict[Hashable, tuple[_Keyed, ...]]] = {}
        """Per operating system's ecosystems: package (or SBOM component) -> its findings."""
        self._size = 0

    @property
    def full(self) -> bool:
        """True once it remembers more than :data:`MAX_ENTRIES` packages or versions."""
        return self._size > MAX_ENTRIES or len(self._versions) > MAX_ENTRIES

    async def match(self, inventory: Inventory) -> list[Finding]:
        """Every (advisory, package) pair that affects *inventory*, worst first."""
        os_ecosystems = tuple(inventory.os.ecosystems()) if inventory.os is not None else ()
        keyed = [(package, package) for package in inventory.packages]
        return await self._match(keyed, os_ecosystems, lambda package: package)

    async def match_sbom(self, sbom: SbomPackages) -> list[Finding]:
        """The findings of a stored SBOM (see :func:`~.sbom.read_sbom`); same as :meth:`match`."""
        os_ecosystems = tuple(sbom.os.ecosystems()) if sbom.os is not None else ()
        keyed = [((c.name, c.version, bytes(c.properties)), c) for c in sbom.components]
        return await self._match(keyed, os_ecosystems, lambda component: component.package())

    async def _match(
        self,
        keyed: list[tuple[Hashable, _T]],
        os_ecosystems: tuple[str, ...],
        package_of: Callable[[_T], Package],
    ) -> list[Finding]:
        known = self._findings.setdefault(os_ecosystems, {})
        found: list[tuple[_Keyed, ...] | None] = [known.get(key) for key, _item in keyed]
        misses = [index for index, hit in enumerate(found) if hit is None]
        if misses:
            packages = {index: package_of(keyed[index][1]) for index in misses}
            await self._fetch(
                (ecosystem, package_key(ecosystem, package.match_name))
                for package in packages.values()
                for ecosystem in ecosystems_for(package, os_ecosystems)
            )
            for index, package in packages.items():
                key = keyed[index][0]
                if key not in known:  # (a concurrent match may have just added it)
                    self._size += 1
                found[index] = known[key] = self._package_findings(package, os_ecosystems)
        findings: dict[tuple[str, str, str], Finding] = {}
        for hits in found:
            if hits:
                for ident, finding in hits:
                    if ident not in findings:
                        findings[ident] = finding
        return sorted(
            findings.values(),
            key=lambda f: (severity_rank(f.severity), -(f.score or 0.0), f.id, f.package),
        )

    async def _fetch(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Load the advisories of every (ecosystem, package key) not loaded yet, concurrently.

        Concurrent calls share a load in flight (and one bound on reads), so a pass that
        starts many SBOMs at once asks for each package once.
        """

        async def load(ecosystem: str, key: str) -> list[Advisory]:
            async with self._gate:
                found = await self.database.advisories(self.state, ecosystem, key)
            self._advisories[(ecosystem, key)] = found
            return found

        waits = []
        for wanted_key in dict.fromkeys(wanted):
            if wanted_key in self._advisories:
                continue
            pending = self._loading.get(wanted_key)
            if pending is None:
                pending = asyncio.ensure_future(load(*wanted_key))
                self._loading[wanted_key] = pending
                pending.add_done_callback(
                    lambda _f, k=wanted_key: self._loading.pop(k, None)  # type: ignore[misc]
                )
            waits.append(pending)
        if waits:
            await asyncio.gather(*waits)

    def _affecting(
        self, ecosystem: str, key: str, version: str
    ) -> list[tuple[Advisory, str | None]]:
        """Advisories affecting one version, with the fix to take (evaluated once each)."""
        lookup = (ecosystem, key, version)
        found = self._versions.get(lookup)
        if found is None:
            found = [
                (advisory, _fixed(advisory, version))
                for advisory in self._advisories[(ecosystem, key)]
                if is_affected(advisory, version)
            ]
            self._versions[lookup] = found
        return found

    def _package_findings(
        self, package: Package, os_ecosystems: tuple[str, ...]
    ) -> tuple[_Keyed, ...]:
        found: list[_Keyed] = []
        for ecosystem in ecosystems_for(package, os_ecosystems):
            key = package_key(ecosystem, package.match_name)
            for advisory, fixed in self._affecting(ecosystem, key, package.match_version):
                finding = Finding(
                    id=advisory.id,
                    aliases=list(advisory.aliases),
                    package=package.name,
                    installed_version=package.version,
                    fixed_version=fixed,
                    severity=advisory.severity,
                    score=advisory.score,
                    summary=advisory.summary,
                    kind=package.kind,
                    ecosystem=ecosystem,
                    source_package=package.source_name or None,
                    source_version=package.source_version or None,
                )
                found.append(((advisory.id, package.name, package.arch), finding))
        return tuple(found)


async def match(
    inventory: Inventory, database: VulnDatabase, state: DatabaseState
) -> list[Finding]:
    """Every (advisory, package) pair that affects the inventory, worst first (one-off)."""
    return await Matcher(database, state).match(inventory)
