"""The ``/api/v1/`` routes of security scanning, the pull-policy gate, and scan metrics.

Thin handlers over ``registry_core.scanning``, riding on :class:`.management.Management`
for who the caller is (a registry or repository the caller cannot pull from answers
404). Whoever can pull reads a manifest's vulnerabilities and SBOM; a registry's admins
ask for a scan and set its pull policy. :class:`PullGate` is what ``/v2/`` calls on a
manifest GET: it refuses the pull (403 ``DENIED``, with the counts and where to look)
when the registry's policy says so; admins are never refused and pushes never checked.
Scans never run on a request: a request only notes the work for the ``scan`` job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from registry_core import Registry
from registry_core.auth import Identity
from registry_core.digest import Digest
from registry_core.errors import Denied, DigestInvalid, ManifestUnknown, NameInvalid, NotFound
from registry_core.names import RepositoryName, Tenant
from registry_core.scanning import POLICY_KIND, ScanPolicy, ScanService, decide
from registry_core.scanning.matcher import Finding
from registry_core.scanning.osv import SEVERITIES, severity_rank
from registry_core.scanning.policy import AllowedVulnerability
from registry_core.scanning.sbom import SBOM_MEDIA_TYPE
from registry_core.tenancy import InvalidRequest

from ..state import state_of
from .guard import CallerAccess, Guard
from .management import API_PREFIX, Management, _body, _json, _no_content

log = logging.getLogger("cargohold.server")


class PlatformFindings(msgspec.Struct, kw_only=True):
    platform: str
    manifest: str
    os: str
    packages: int
    sbom: str | None
    findings: list[Finding]


class Vulnerabilities(msgspec.Struct, kw_only=True):
    digest: str
    status: str
    """Exactly one of ``queued``, ``running``, ``done``, ``failed``."""
    reason: str | None = None
    """Why the scan failed (``failed`` only)."""
    scanned_at: float | None = None
    matched_at: float | None = None
    database: str | None = None
    """The vulnerability-database version the findings were matched against."""
    counts: dict[str, int]
    platforms: list[PlatformFindings]


class ScanRequested(msgspec.Struct, kw_only=True):
    digest: str
    status: str


class PolicyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A registry's pull policy; ``block_severity`` null: findings never refuse a pull."""

    block_severity: (
        Annotated[
            str, msgspec.Meta(extra_json_schema={"enum": ["critical", "high", "medium", "low"]})
        ]
        | None
    ) = None
    block_unscanned: bool = False
    allowlist: list[AllowedVulnerability] = []


def scanning_disabled() -> NotFound:
    return NotFound("security scanning is not enabled on this server")


class ScanMetrics:
    """Scan counters of one server process (no repository or tenant labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "cargohold_scans_started", "Scans started in this process.", registry=registry
        )
        self.failed = Counter(
            "cargohold_scans_failed", "Scans that failed in this process.", registry=registry
        )
        self.running = Gauge(
            "cargohold_scans_running", "Scans running in this process.", registry=registry
        )
        self.queued = Gauge(
            "cargohold_scans_queued",
            "Manifests noted for scanning in this process and not yet handled.",
            registry=registry,
        )
        self.duration = Histogram(
            "cargohold_scan_duration_seconds",
            "Time a scan took (layers read, inventory, SBOM, matching).",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.findings = Counter(
            "cargohold_scan_findings",
            "Findings of finished scans, by severity.",
            ["severity"],
            registry=registry,
        )

    def scan_started(self) -> None:
        self.started.inc()
        self.running.inc()

    def scan_finished(self, seconds: float, ok: bool, counts: dict[str, int]) -> None:
        self.running.dec()
        self.duration.observe(seconds)
        if not ok:
            self.failed.inc()
        for severity, count in counts.items():
            if count:
                self.findings.labels(severity).inc(count)


class PullGate:
    """The pull policy check ``/v2/`` runs on a manifest GET (see the module docstring)."""

    def __init__(self, registry: Registry, service: ScanService, guard: Guard | None) -> None:
        self.registry = registry
        self.scanner = service.scanner
        self.guard = guard

    async def check(self, request: web.Request, name: RepositoryName, digest: Digest) -> None:
        tenant = name.tenant
        policy = await self.registry.settings.get(
            tenant.owner, tenant.registry, POLICY_KIND, ScanPolicy
        )
        if policy is None or not policy.active:
            return
        access = state_of(request).access
        if (
            self.guard is not None
            and isinstance(access, CallerAccess)
            and await self.guard.authenticator.role(access.identity, tenant) == "admin"
        ):
            return
        status = await self.scanner.status(digest)
        report = await self.scanner.report(digest) if status is not None else None
        where = (
            f"{API_PREFIX}/registries/{tenant.owner}/{tenant.registry}/repositories/"
            f"{name.image}/manifests/{digest}/vulnerabilities or "
            f"`cargohold scan show {name.value}@{digest}`"
        )
        message = decide(policy, status, report, how_to_see=where)
        if message is not None:
            counts = report.counts() if report is not None else {}
            raise Denied(message, detail={"digest": str(digest), "counts": counts})


Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


class ScanningApi:
    """The scanning routes of one server process."""

    def __init__(self, management: Management, service: ScanService | None) -> None:
        self.management = management
        self.registry = management.registry
        self.service = service

    def routes(self) -> list[tuple[str, str, Handler]]:
        registry = f"{API_PREFIX}/registries/{{owner}}/{{registry}}"
        manifest = f"{registry}/repositories/{{image:.+}}/manifests/{{reference}}"
        return [
            ("GET", f"{manifest}/vulnerabilities", self.vulnerabilities),
            ("GET", f"{manifest}/sbom", self.sbom),
            ("POST", f"{manifest}/scan", self.scan),
            ("GET", f"{registry}/scan-policy", self.get_policy),
            ("PUT", f"{registry}/scan-policy", self.put_policy),
            ("DELETE", f"{registry}/scan-policy", self.delete_policy),
        ]

    def add_to(self, app: web.Application) -> None:
        for method, path, handler in self.routes():
            app.router.add_route(method, path, self.management._endpoint(handler))

    def _service(self) -> ScanService:
        if self.service is None:
            raise scanning_disabled()
        return self.service

    async def _manifest(self, request: web.Request, caller: Identity) -> tuple[str, Digest]:
        record = await self.management._visible_registry(request, caller)
        try:
            name = RepositoryName.parse(f"{record.tenant}/{request.match_info['image']}")
        except NameInvalid:
            raise ManifestUnknown(detail={"reference": request.match_info["reference"]}) from None
        reference = request.match_info["reference"]
        try:
            digest = await self.registry.repository(name).manifests.resolve(reference)
        except (DigestInvalid, ValueError):
            raise ManifestUnknown(detail={"reference": reference}) from None
        return name.value, digest

    async def vulnerabilities(self, request: web.Request, caller: Identity) -> web.Response:
        service = self._service()
        _name, digest = await self._manifest(request, caller)
        severity = request.query.get("severity")
        if severity is not None and severity not in SEVERITIES:
            raise InvalidRequest(f"severity must be one of {', '.join(SEVERITIES)}")
        return _json(await describe(service, digest, severity))

    async def sbom(self, request: web.Request, caller: Identity) -> web.Response:
        service = self._service()
        _name, digest = await self._manifest(request, caller)
        body = await service.scanner.sbom(digest, request.query.get("platform"))
        if body is None:
            raise ManifestUnknown(
                "no SBOM for this manifest yet (not scanned, or not an image)",
                detail={"digest": str(digest)},
            )
        return web.Response(
            body=body, content_type=SBOM_MEDIA_TYPE, headers={"Cache-Control": "no-store"}
        )

    async def scan(self, request: web.Request, caller: Identity) -> web.Response:
        service = self._service()
        await self.management._registry_admin(request, caller)
        name, digest = await self._manifest(request, caller)
        service.request(name, digest)
        status = await service.scanner.status(digest)
        return _json(
            ScanRequested(digest=str(digest), status=status.status if status else "queued"),
            status=202,
        )

    async def get_policy(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = (await self.management._visible_registry(request, caller)).tenant
        policy = await _policy(self.registry, tenant) or ScanPolicy()
        return _json(_policy_body(policy))

    async def put_policy(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = (await self.management._registry_admin(request, caller)).tenant
        policy = await store_policy(self.registry, tenant, await _body(request, PolicyBody))
        return _json(_policy_body(policy))

    async def delete_policy(self, request: web.Request, caller: Identity) -> web.Response:
        tenant = (await self.management._registry_admin(request, caller)).tenant
        await self.registry.settings.delete(tenant.owner, tenant.registry, POLICY_KIND)
        return _no_content()


async def store_policy(registry: Registry, tenant: Tenant, body: PolicyBody) -> ScanPolicy:
    """Check and store a registry's pull policy (the caller checked the admin role); the
    API and the website's form both come here."""
    try:
        policy = ScanPolicy(
            block_severity=body.block_severity,
            block_unscanned=body.block_unscanned,
            allowlist=body.allowlist,
        ).validate()
    except ValueError as exc:
        raise InvalidRequest(f"invalid request body: {exc}") from None
    await registry.settings.put(tenant.owner, tenant.registry, POLICY_KIND, policy)
    return policy


async def _policy(registry: Registry, tenant: Tenant) -> ScanPolicy | None:
    return await registry.settings.get(tenant.owner, tenant.registry, POLICY_KIND, ScanPolicy)


def _policy_body(policy: ScanPolicy) -> PolicyBody:
    return PolicyBody(
        block_severity=policy.block_severity,
        block_unscanned=policy.block_unscanned,
        allowlist=list(policy.allowlist),
    )


async def describe(service: ScanService, digest: Digest, severity: str | None) -> Vulnerabilities:
    """A manifest's scan state and findings (at or above *severity*, when given)."""
    scanner = service.scanner
    status = await scanner.status(digest)
    report = await scanner.report(digest) if status is not None else None
    limit = severity_rank(severity) if severity else len(SEVERITIES)
    platforms = []
    if report is not None:
        for result in report.platforms:
            platforms.append(
                PlatformFindings(
                    platform=result.platform,
                    manifest=result.manifest,
                    os=result.os,
                    packages=result.packages,
                    sbom=result.sbom,
                    findings=[f for f in result.findings if severity_rank(f.severity) <= limit],
                )
            )
    state = status.status if status is not None else "queued"
    database, matched_at = (
        scanner.matched_against(report, await scanner.last_rematch())
        if report is not None
        else (None, None)
    )
    if state == "done" and report is None:
        state = "queued"  # a report lost or unreadable: the next walk writes it again
    return Vulnerabilities(
        digest=str(digest),
        status=state,
        reason=status.reason if status is not None and state == "failed" else None,
        scanned_at=report.scanned_at if report else None,
        matched_at=matched_at,
        database=database,
        counts=report.counts() if report else dict.fromkeys(SEVERITIES, 0),
        platforms=platforms,
    )


async def tag_counts(service: ScanService, digest: Digest) -> dict[str, Any] | None:
    """Counts by severity of a tagged manifest for the tag listing (None: not scanned)."""
    report = await service.scanner.report(digest)
    return None if report is None else report.counts()
