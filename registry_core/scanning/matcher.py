"""Matching an inventory against the vulnerability database, per ecosystem.

Each package is looked up in the OSV ecosystems its kind and the image's
operating system select (dpkg packages of Debian 12 in ``Debian:12`` only, by
their *source* name and version, which is what Debian advisories name; apk
packages by origin in ``Alpine:vX.Y``; Python in ``PyPI`` by normalised name;
npm in ``npm``), then each advisory's versions and ranges are evaluated with
that ecosystem's ordering. Pure computation over what the database hands back;
it never reads layers, so re-matching from stored SBOMs is cheap.
"""

from __future__ import annotations

import msgspec

from .inventory import Inventory, Package
from .osv import Advisory, is_affected, package_key, severity_rank
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


def ecosystems_for(package: Package, inventory: Inventory) -> list[str]:
    if package.kind in ("deb", "apk"):
        return inventory.os.ecosystems() if inventory.os is not None else []
    if package.kind == "python":
        return ["PyPI"]
    if package.kind == "npm":
        return ["npm"]
    return []


def _fixed(advisory: Advisory, version: str) -> str | None:
    from .versions import comparator

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


_MEMO_ENTRIES = 100_000
_memo: dict[tuple[str, str, str, str], list[tuple[Advisory, str | None]]] = {}


async def _affecting(
    database: VulnDatabase,
    state: DatabaseState,
    db_version: str,
    ecosystem: str,
    key: str,
    version: str,
) -> list[tuple[Advisory, str | None]]:
    """Advisories affecting one package version, with the fix to take; memoised per process.

    Images share base layers, so re-matching many SBOMs asks the same questions again;
    the database version is part of the key, so an import never serves stale answers.
    """
    memo_key = (db_version, ecosystem, key, version)
    found = _memo.get(memo_key)
    if found is None:
        found = [
            (advisory, _fixed(advisory, version))
            for advisory in await database.advisories(state, ecosystem, key)
            if is_affected(advisory, version)
        ]
        if len(_memo) >= _MEMO_ENTRIES:
            _memo.clear()
        _memo[memo_key] = found
    return found


async def match(
    inventory: Inventory, database: VulnDatabase, state: DatabaseState
) -> list[Finding]:
    """Every (advisory, package) pair that affects the inventory, worst first."""
    findings: dict[tuple[str, str, str], Finding] = {}
    db_version = state.version
    for package in inventory.packages:
        for ecosystem in ecosystems_for(package, inventory):
            key = package_key(ecosystem, package.match_name)
            version = package.match_version
            for advisory, fixed in await _affecting(
                database, state, db_version, ecosystem, key, version
            ):
                ident = (advisory.id, package.name, package.arch)
                if ident in findings:
                    continue
                findings[ident] = Finding(
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
    return sorted(
        findings.values(),
        key=lambda f: (severity_rank(f.severity), -(f.score or 0.0), f.id, f.package),
    )
