"""Security scanning: inventories from layers, CycloneDX SBOMs, an offline OSV database, policies.

The layer walker (``walker``) feeds one analyzer per package format
(``analyzers``); the inventory becomes an SBOM (``sbom``) attached to the image;
OSV records imported into storage (``vulndb``, ``osv``) are matched per
ecosystem (``matcher``, ``versions``); ``scanner`` keeps state and results per
manifest digest, ``service`` runs it as background jobs and ``policy`` decides
pulls. Nothing here speaks HTTP or imports a driver.
"""

from __future__ import annotations

from .policy import POLICY_KIND, ScanPolicy, decide
from .scanner import ScanBusy, ScanFailed, Scanner, ScanReport, ScanStatus
from .service import ScanService
from .vulndb import VulnDatabase

__all__ = [
    "POLICY_KIND",
    "ScanBusy",
    "ScanFailed",
    "ScanPolicy",
    "ScanReport",
    "ScanService",
    "ScanStatus",
    "Scanner",
    "VulnDatabase",
    "decide",
]
