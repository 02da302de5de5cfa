"""The manifest page's signature and scan sections, and the SBOM download behind the scan's link.

Both plug into ``Website.manifest_sections``. The signature section checks every signature
of the manifest with the registry's published keys (active and retired) through the
library's own check (``registry_core.signing.verify_image``, which runs the ECDSA work in
a worker thread) and says, per kind (cosign, simple signing), which keys signed it and for
which names, or why none did ("not signed yet", "signing off"). The scan section shows the
scan's state, counts by severity and the findings per platform, as the API's
``vulnerabilities`` answer has them (``scanning_api.describe``), and links the SBOM, served
here to whoever may see the page (the API would want an API key). Attachments (manifests
with a subject) are neither signed nor scanned, so they get neither section. Nothing here
decides a permission; every value reaches the page through an escaping template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from aiohttp import web

from registry_core.digest import Digest
from registry_core.errors import ManifestUnknown
from registry_core.registry import Repository
from registry_core.scanning import ScanService
from registry_core.scanning.osv import SEVERITIES, severity_rank
from registry_core.scanning.sbom import SBOM_MEDIA_TYPE
from registry_core.signing import PublicKey, Signer, verify_image

from ..http.scanning_api import describe
from .assets import SECURITY_HEADERS
from .forms import PREFIX
from .pages import ManifestView
from .sessions import Visitor
from .severity import SeverityCounts

if TYPE_CHECKING:
    from .routes import PageHandler, Website

MAX_FINDINGS_SHOWN: Final = 500
"""Per platform; the rest are in the API's answer and the SBOM."""

KIND_TITLES: Final = {"cosign": "Cosign (sigstore)", "simple": "Simple signing (GPG)"}
_KEY_KIND: Final = {"cosign": "cosign", "simple": "gpg"}


def plug_into_website(
    website: Website, signer: Signer | None, scanning: ScanService | None
) -> None:
    """Give the website the server's signer and scanner, and their manifest-page sections."""
    website.signer = signer
    website.scanning = scanning
    if signer is not None:
        website.manifest_sections.append(SignatureSection(signer))
    website.manifest_sections.append(ScanSection(website))
    if scanning is not None:
        website.severity_counts = SeverityCounts(scanning)


class SignatureSection:
    """Which published keys signed a manifest, per signature kind."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    async def __call__(
        self, repo: Repository, view: ManifestView
    ) -> tuple[str, dict[str, Any]] | None:
        if view.subject is not None:
            return None  # an attachment: never signed itself
        tenant = repo.name.tenant
        settings = await self.signer.effective(tenant)
        published = await self.signer.keys.list(tenant)  # retired keys too: they signed older
        records = {r.id: r for r in published}
        keys = [PublicKey(r.kind, r.fingerprint, r.public, r.id) for r in published]
        report = await verify_image(self.signer.registry, repo.name.value, view.digest, keys)
        kinds = []
        for kind in ("cosign", "simple"):
            checked = [c for c in report.checked if c.kind == kind]
            by_key: dict[str, dict[str, Any]] = {}
            for check in checked:
                if not check.valid or check.key is None:
                    continue
                record = records.get(check.key)
                entry = by_key.setdefault(
                    check.key,
                    {
                        "id": check.key,
                        "fingerprint": record.fingerprint if record else check.key,
                        "status": record.status if record else "unknown",
                        "identities": [],
                    },
                )
                if check.identity and check.identity not in entry["identities"]:
                    entry["identities"].append(check.identity)
            invalid = [c for c in checked if not c.valid]
            kind_on = settings.cosign if kind == "cosign" else settings.simple
            if by_key:
                state, message = "verified", "Signed; verified with the registry's published keys."
            elif not settings.enabled:
                state, message = "off", "Signing is off for this registry."
            elif not kind_on:
                state, message = "off", "This kind of signing is off for this registry."
            elif not view.tags and not view.is_index and not checked:
                state, message = (
                    "unsigned",
                    "Not signed: only tagged manifests (and the platforms of a tagged index) "
                    "are signed.",
                )
            else:
                state, message = (
                    "unsigned",
                    "Not signed yet: tagged manifests are signed moments after they are pushed.",
                )
            kinds.append(
                {
                    "kind": kind,
                    "title": KIND_TITLES[kind],
                    "state": state,
                    "message": message,
                    "signers": sorted(by_key.values(), key=lambda k: k["id"]),
                    "invalid": [
                        {"identity": c.identity or "-", "reason": c.reason} for c in invalid
                    ],
                    "key_kind": _KEY_KIND[kind],
                }
            )
        return "section_signatures.html", {"kinds": kinds}


class ScanSection:
    """A manifest's scan: state, counts by severity, findings per platform, SBOM links."""

    def __init__(self, website: Website) -> None:
        self.website = website

    async def __call__(
        self, repo: Repository, view: ManifestView
    ) -> tuple[str, dict[str, Any]] | None:
        if view.subject is not None:
            return None  # an attachment (a signature, an SBOM): never scanned itself
        service = self.website.scanning
        if service is None:
            return "section_scan.html", {"enabled": False}
        found = await describe(service, Digest.parse(view.digest), None)
        tenant = repo.name.tenant
        image = repo.name.value[len(str(tenant)) + 1 :]
        sbom_base = f"{PREFIX}/r/{tenant.owner}/{tenant.registry}/sbom/{view.digest}/{quote(image)}"
        platforms = []
        for result in found.platforms:
            findings = sorted(
                result.findings,
                key=lambda f: (severity_rank(f.severity), -(f.score or 0.0), f.id, f.package),
            )
            platforms.append(
                {
                    "platform": result.platform or "-",
                    "os": result.os,
                    "packages": result.packages,
                    "sbom": (
                        f"{sbom_base}?{urlencode({'platform': result.platform})}"
                        if result.sbom
                        else None
                    ),
                    "findings": findings[:MAX_FINDINGS_SHOWN],
                    "more": max(0, len(findings) - MAX_FINDINGS_SHOWN),
                }
            )
        return "section_scan.html", {
            "enabled": True,
            "status": found.status,
            "reason": found.reason,
            "scanned_at": found.scanned_at,
            "database": found.database,
            "counts": [(severity, found.counts.get(severity, 0)) for severity in SEVERITIES],
            "platforms": platforms,
        }


class ManifestExtras:
    """The SBOM download the scan section links to."""

    def __init__(self, site: Website) -> None:
        self.site = site

    def routes(self) -> list[tuple[str, str, PageHandler]]:
        registry = f"{PREFIX}/r/{{owner}}/{{registry}}"
        return [("GET", f"{registry}/sbom/{{digest}}/{{image:.+}}", self.sbom)]

    async def sbom(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        site = self.site
        record = await site._registry(request, visitor)
        repo = await site._repository(request, record)
        digest = site._digest(request)
        await repo.manifests.resolve(str(digest))  # only a manifest of this repository
        if site.scanning is None:
            raise ManifestUnknown("security scanning is not enabled on this server")
        body = await site.scanning.scanner.sbom(digest, request.query.get("platform") or None)
        if body is None:
            raise ManifestUnknown("no SBOM for this manifest yet (not scanned, or not an image)")
        name = f"sbom-{digest.hex[:12]}.cdx.json"
        headers = {
            **SECURITY_HEADERS,
            "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        return web.Response(body=body, content_type=SBOM_MEDIA_TYPE, headers=headers)
