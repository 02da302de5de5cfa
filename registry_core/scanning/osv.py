"""OSV records: decoding, the affected-version pseudocode, severity.

Records follow the OSV schema (https://ossf.github.io/osv-schema/). A record is
reduced to one :class:`Advisory` per affected (ecosystem, package) — what the
database stores and the matcher reads. Ranges are evaluated as the schema's
pseudocode says: events sorted by the ecosystem's ordering, ``introduced`` opens,
``fixed`` closes at the version, ``last_affected`` closes after it, ``limit``
caps the range; ``GIT`` ranges (commit hashes) are skipped. Withdrawn records
yield nothing. A record that does not decode raises :class:`BadRecord` for the
importer to count. This module never reads storage.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec

from .versions import comparator, normalize_pypi_name

log = logging.getLogger(__name__)

SEVERITIES = ("critical", "high", "medium", "low", "unknown")
"""Ratings, worst first."""


def severity_rank(severity: str) -> int:
    """0 for critical ... 4 for unknown (smaller is worse)."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        return len(SEVERITIES) - 1


class BadRecord(ValueError):
    """An OSV record that does not follow the schema (skipped and counted)."""


class _Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    introduced: str | None = None
    fixed: str | None = None
    last_affected: str | None = None
    limit: str | None = None


class _Range(msgspec.Struct, kw_only=True):
    type: str
    events: list[_Event]


class _Package(msgspec.Struct, kw_only=True):
    ecosystem: str
    name: str


class _Severity(msgspec.Struct, kw_only=True):
    type: str
    score: str


class _Affected(msgspec.Struct, kw_only=True):
    package: _Package | None = None
    ranges: list[_Range] = []
    versions: list[str] = []
    severity: list[_Severity] = []
    ecosystem_specific: dict[str, Any] | None = None
    database_specific: dict[str, Any] | None = None


class _Record(msgspec.Struct, kw_only=True):
    id: str
    modified: str | None = None
    withdrawn: str | None = None
    aliases: list[str] = []
    upstream: list[str] = []
    summary: str | None = None
    details: str | None = None
    severity: list[_Severity] = []
    affected: list[_Affected] = []
    database_specific: dict[str, Any] | None = None


class Range(msgspec.Struct, kw_only=True, frozen=True, array_like=True):
    type: str
    events: list[tuple[str, str]]
    """``(kind, version)`` pairs in record order; kind is introduced/fixed/last_affected/limit."""


class Advisory(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One record as it concerns one (ecosystem, package): what the database stores."""

    id: str
    ecosystem: str
    package: str
    aliases: list[str] = []
    summary: str = ""
    severity: str = "unknown"
    score: float | None = None
    vector: str | None = None
    ranges: list[Range] = []
    versions: list[str] = []

    def fixed_versions(self) -> list[str]:
        return [version for r in self.ranges for kind, version in r.events if kind == "fixed"]


def package_key(ecosystem: str, name: str) -> str:
    """How a package name is looked up: PyPI names normalised (PEP 503), npm and distros as is."""
    return normalize_pypi_name(name) if ecosystem.split(":", 1)[0] == "PyPI" else name


def advisories_of(raw: bytes | dict[str, Any]) -> list[Advisory]:
    """The advisories one OSV record yields ([] when withdrawn); BadRecord when malformed."""
    try:
        record = (
            msgspec.convert(raw, type=_Record)
            if isinstance(raw, dict)
            else msgspec.json.decode(raw, type=_Record)
        )
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadRecord(str(exc)) from None
    if record.withdrawn:
        return []
    aliases = list(dict.fromkeys([*record.aliases, *record.upstream]))
    summary = record.summary or (record.details or "").strip().split("\n", 1)[0][:200]
    found = []
    for affected in record.affected:
        if affected.package is None or not affected.package.ecosystem or not affected.package.name:
            continue
        severity, score, vector = _severity(record, affected)
        ranges = []
        for r in affected.ranges:
            if r.type not in ("ECOSYSTEM", "SEMVER"):
                continue  # GIT ranges name commits, not versions
            events = []
            for event in r.events:
                for kind in ("introduced", "fixed", "last_affected", "limit"):
                    value = getattr(event, kind)
                    if value is not None:
                        events.append((kind, value))
            ranges.append(Range(type=r.type, events=events))
        if not ranges and not affected.versions:
            continue
        found.append(
            Advisory(
                id=record.id,
                ecosystem=affected.package.ecosystem,
                package=package_key(affected.package.ecosystem, affected.package.name),
                aliases=aliases,
                summary=summary,
                severity=severity,
                score=score,
                vector=vector,
                ranges=ranges,
                versions=list(affected.versions),
            )
        )
    return found


def _severity(record: _Record, affected: _Affected) -> tuple[str, float | None, str | None]:
    """CVSS v4/v3 vector first, then database/ecosystem-specific ratings, else unknown."""
    for entries in (affected.severity, record.severity):
        for kind in ("CVSS_V4", "CVSS_V3"):
            for entry in entries:
                if entry.type == kind:
                    rated = cvss_rating(entry.score)
                    if rated is not None:
                        return rated[0], rated[1], entry.score
    for entries in (affected.severity, record.severity):
        for entry in entries:
            named = _named_severity(entry.score)
            if named is not None:
                return named, None, None
    for specific in (
        affected.ecosystem_specific,
        affected.database_specific,
        record.database_specific,
    ):
        if specific:
            for key in ("severity", "urgency", "cvss_severity"):
                named = _named_severity(specific.get(key))
                if named is not None:
                    return named, None, None
    return "unknown", None, None


_NAMED = {
    "critical": "critical",
    "high": "high",
    "important": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "negligible": "low",
    "unimportant": "low",
}


def _named_severity(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return _NAMED.get(value.strip().lower().split(" ")[0])


@functools.lru_cache(maxsize=4096)
def cvss_rating(vector: str) -> tuple[str, float] | None:
    """``(rating, base score)`` of a CVSS v3.x or v4.0 vector, None when it does not parse."""
    from cvss import CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    try:
        if vector.startswith("CVSS:4"):
            v4 = CVSS4(vector)
            return _rating_of(float(v4.base_score)), float(v4.base_score)
        if vector.startswith("CVSS:3"):
            v3 = CVSS3(vector)
            score = float(v3.scores()[0])
            return _rating_of(score), score
    except (CVSSError, ValueError, KeyError, IndexError):
        return None
    return None


def _rating_of(score: float) -> str:
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    if score > 0.0:
        return "low"
    return "unknown"


def is_affected(advisory: Advisory, version: str) -> bool:
    """True when *version* is listed in ``versions`` or falls in one of the ranges."""
    if version in advisory.versions:
        return True
    compare = comparator(advisory.ecosystem)
    if compare is None:
        return False
    return any(_in_range(r, version, compare) for r in advisory.ranges)


def _in_range(r: Range, version: str, compare: Any) -> bool:
    def key(event: tuple[str, str]) -> Any:
        return functools.cmp_to_key(_event_compare(compare))(event)

    limits = [v for kind, v in r.events if kind == "limit"]
    if limits and not any(v == "*" or compare(version, v) < 0 for v in limits):
        return False
    affected = False
    for kind, value in sorted((e for e in r.events if e[0] != "limit"), key=key):
        if kind == "introduced" and (value == "0" or compare(version, value) >= 0):
            affected = True
        elif kind in ("fixed", "last_affected"):
            # fixed closes at its version, last_affected just after it.
            boundary = compare(version, value)
            if boundary > 0 or (boundary == 0 and kind == "fixed"):
                affected = False
    return affected


def _event_compare(compare: Any) -> Any:
    def by_version(a: tuple[str, str], b: tuple[str, str]) -> int:
        if a[1] == b[1]:
            return 0
        if a[0] == "introduced" and a[1] == "0":
            return -1
        if b[0] == "introduced" and b[1] == "0":
            return 1
        return compare(a[1], b[1])

    return by_version
