"""Per-registry pull policy on scan results: refuse vulnerable (or unscanned) images.

Stored as the ``scan-policy`` settings kind of a registry (so every process sees
a change within ``auth.cache_ttl``). :func:`decide` answers whether a pull of a
manifest is refused, with the message a client shows. Findings whose id or any
alias is on the allowlist (until its expiry) are ignored. The caller exempts the
registry's admins (and the scanner never pulls through HTTP); pushes are never
checked. This module decides only; it never reads layers.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from .osv import SEVERITIES, severity_rank
from .scanner import ScanReport, ScanStatus

POLICY_KIND = "scan-policy"


class AllowedVulnerability(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": r"\S"})]
    """A vulnerability id or alias (``CVE-2024-1234``, ``GHSA-...``); never blank."""
    expires: float | None = None
    """Unix time after which the entry no longer applies (None: never)."""
    reason: str | None = None


class ScanPolicy(msgspec.Struct, kw_only=True, omit_defaults=True):
    block_severity: (
        Annotated[
            str, msgspec.Meta(extra_json_schema={"enum": ["critical", "high", "medium", "low"]})
        ]
        | None
    ) = None
    """Refuse pulls with findings at or above this severity (critical, high, medium, low)."""
    block_unscanned: bool = False
    allowlist: list[AllowedVulnerability] = []

    def validate(self) -> ScanPolicy:
        if self.block_severity is not None and self.block_severity not in SEVERITIES[:-1]:
            raise ValueError(
                f"block_severity must be one of {', '.join(SEVERITIES[:-1])} (or null)"
            )
        for entry in self.allowlist:
            if not entry.id.strip():
                raise ValueError("allowlist entries need an id")
        return self

    @property
    def active(self) -> bool:
        return self.block_severity is not None or self.block_unscanned


def decide(
    policy: ScanPolicy,
    status: ScanStatus | None,
    report: ScanReport | None,
    *,
    how_to_see: str = "",
    now: float | None = None,
) -> str | None:
    """None when the pull may go on, else the refusal message."""
    if not policy.active:
        return None
    if report is None or status is None or status.status != "done":
        if policy.block_unscanned:
            state = status.status if status is not None else "queued"
            return (
                f"image is not scanned yet (scan {state}); this registry refuses unscanned images"
            )
        return None
    if policy.block_severity is None:
        return None
    now = time.time() if now is None else now
    allowed = {
        entry.id for entry in policy.allowlist if entry.expires is None or entry.expires > now
    }
    limit = severity_rank(policy.block_severity)
    counts: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for finding, ids in report.finding_ids():
        if ids & allowed or severity_rank(finding.severity) > limit:
            continue
        if (finding.id, finding.package) in seen:
            continue
        seen.add((finding.id, finding.package))
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
    if not counts:
        return None
    summary = ", ".join(f"{counts[s]} {s}" for s in SEVERITIES if counts.get(s))
    message = (
        f"image has vulnerabilities at or above {policy.block_severity} ({summary}); "
        "this registry's policy refuses the pull"
    )
    return f"{message}; see {how_to_see}" if how_to_see else message
