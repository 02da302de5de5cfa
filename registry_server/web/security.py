"""The website's security page of a registry: its scanning pull policy, signing settings and keys.

Whoever can pull reads the policy, the signing settings and the published keys (as the
API's ``scan-policy`` and ``signing-keys`` answer them); a registry's admins change them
and rotate a key, behind ``Management._registry_admin`` — the check the API's handlers
make — and through the same calls (``scanning_api.store_policy``,
``Signer.set_settings``, ``KeyStore.rotate``, the one ``cargohold signing-keys rotate``
makes). The page shows public keys only; no private key ever reaches it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDictProxy

from registry_core.errors import NotFound
from registry_core.scanning import POLICY_KIND, ScanPolicy
from registry_core.scanning.policy import AllowedVulnerability
from registry_core.signing import Signer, SigningSettings
from registry_core.tenancy import InvalidRequest, RegistryRecord

from ..http.scanning_api import PolicyBody, store_policy
from .forms import PREFIX, field
from .pages import utc
from .policies import as_body, back_to
from .sessions import Visitor

if TYPE_CHECKING:
    from .routes import PageHandler, Website

SIGNING_FIELDS = ("enabled", "cosign", "simple", "referrers")
SEVERITY_CHOICES = ("critical", "high", "medium", "low")


def allowlist_text(entries: list[AllowedVulnerability]) -> str:
    """One line per entry: ``ID [until YYYY-MM-DD] [reason]`` (what :func:`allowlist_of` reads)."""
    lines = []
    for entry in entries:
        parts = [entry.id]
        if entry.expires is not None:
            parts.append("until " + datetime.fromtimestamp(entry.expires, UTC).strftime("%Y-%m-%d"))
        if entry.reason:
            parts.append(entry.reason)
        lines.append(" ".join(parts))
    return "\n".join(lines)


def allowlist_of(text: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        entry: dict[str, Any] = {"id": words[0]}
        rest = words[1:]
        if len(rest) >= 2 and rest[0] == "until":
            try:
                day = datetime.strptime(rest[1], "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise InvalidRequest(f"allowlist line {number}: until needs YYYY-MM-DD") from None
            entry["expires"] = day.timestamp() + 86399  # through the end of that day (UTC)
            rest = rest[2:]
        if rest:
            entry["reason"] = " ".join(rest)
        entries.append(entry)
    return entries


def choice_of(form: MultiDictProxy[Any], name: str) -> bool | None:
    """A three-way select: ``on``, ``off``, or empty for the server's default."""
    value = field(form, name, limit=8)
    if value in ("on", "off"):
        return value == "on"
    if value == "":
        return None
    raise InvalidRequest(f"{name} must be on, off or the server's default")


class SecurityPages:
    """The security page of a registry and its forms."""

    def __init__(self, site: Website) -> None:
        self.site = site

    def routes(self) -> list[tuple[str, str, PageHandler]]:
        page = f"{PREFIX}/r/{{owner}}/{{registry}}/security"
        return [
            ("GET", page, self.security_page),
            ("POST", f"{page}/scan-policy", self.save_policy),
            ("POST", f"{page}/signing", self.save_signing),
            ("POST", f"{page}/rotate", self.rotate_key),
        ]

    def _signer(self) -> Signer:
        if self.site.signer is None:
            raise NotFound("signing is not served by this server")
        return self.site.signer

    def _back(self, record: RegistryRecord, done: str, anchor: str) -> web.HTTPSeeOther:
        return back_to(f"{PREFIX}/r/{record.owner}/{record.name}/security", done, anchor)

    async def security_page(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        site = self.site
        record = await site._registry(request, visitor)
        tenant = record.tenant
        is_admin = await site._role(visitor.identity, tenant) == "admin"
        policy = (
            await site.registry.settings.get(tenant.owner, tenant.registry, POLICY_KIND, ScanPolicy)
            or ScanPolicy()
        )
        signing: dict[str, Any] | None = None
        if site.signer is not None:
            own = await site.signer.settings(tenant)
            effective = await site.signer.effective(tenant)
            keys = await site.signer.keys.list(tenant)
            signing = {
                "own": {name: getattr(own, name) for name in SIGNING_FIELDS},
                "effective": {name: getattr(effective, name) for name in SIGNING_FIELDS},
                "defaults": {name: getattr(site.signer.defaults, name) for name in SIGNING_FIELDS},
                "published": [
                    {"record": key, "created": utc(key.created), "retired": utc(key.retired)}
                    for key in reversed(keys)  # newest first
                ],
            }
        now = time.time()
        return site._render(
            request,
            visitor,
            "security.html",
            {
                "record": record,
                "is_admin": is_admin,
                "scanning_on": site.scanning is not None,
                "policy": policy,
                "allowlist": allowlist_text(policy.allowlist),
                "expired": [e.id for e in policy.allowlist if e.expires and e.expires < now],
                "severities": SEVERITY_CHOICES,
                "signing": signing,
            },
        )

    async def save_policy(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        form = await request.post()
        value: dict[str, Any] = {
            "block_unscanned": "block_unscanned" in form,
            "allowlist": allowlist_of(field(form, "allowlist", limit=65536)),
        }
        severity = field(form, "block_severity", limit=16)
        if severity:
            value["block_severity"] = severity
        await store_policy(self.site.registry, record.tenant, as_body(value, PolicyBody))
        raise self._back(record, "scan-policy", "policy-title")

    async def save_signing(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        signer = self._signer()
        form = await request.post()
        choices = {name: choice_of(form, name) for name in SIGNING_FIELDS}
        kept = (await signer.settings(record.tenant)).rsa_bits  # not on this form: kept
        await signer.set_settings(record.tenant, SigningSettings(**choices, rsa_bits=kept))
        raise self._back(record, "signing", "signing-title")

    async def rotate_key(self, request: web.Request, visitor: Visitor) -> web.StreamResponse:
        record = await self.site._admin_registry(request, visitor)
        signer = self._signer()
        kind = field(await request.post(), "kind", limit=8)
        if kind != "cosign" and kind != "gpg":
            raise InvalidRequest("kind must be cosign or gpg")
        await signer.rotate(record.tenant, kind)  # an RSA key of the registry's rsa_bits
        raise self._back(record, "rotated", "keys-title")
