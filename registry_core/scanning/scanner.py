"""Scanning one manifest digest: state, inventory, SBOM attachment and findings, in storage.

Everything is keyed by manifest digest (content-addressed): one scan serves every
tenant, repository and tag that shares the digest. A scan *claims* its attempt
with a create-if-absent object (``layout.scan_claim``) holding an expiry that the
scan renews while it runs, so two processes never scan the same digest at once
(any number scan different digests) and a crashed attempt is taken over once its
claim expires; state moves queued -> running -> done | failed (with the
reason and a time to retry, with backoff). The inventory is written as a
CycloneDX SBOM blob and attached to the manifest as an OCI referrer in each
repository that holds it; re-matching after a database update reads the SBOMs
back and never the layers. Heavy work (decompression, tar, parsing) runs in
worker threads; this module never speaks HTTP and never builds a storage path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .. import mediatypes as mt
from ..digest import Digest
from ..errors import RegistryError
from ..jobs import default_holder_id
from ..storage import layout
from ..storage.driver import PathNotFound
from .matcher import Finding, Matcher
from .osv import SEVERITIES
from .sbom import SBOM_ARTIFACT_TYPE, SBOM_MEDIA_TYPE, SbomUnreadable, build_sbom, read_sbom
from .vulndb import DatabaseState, VulnDatabase
from .walker import final_files, inventory_of

if TYPE_CHECKING:
    from ..registry import Registry

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed")
MAX_ATTEMPTS = 5
SBOM_ANNOTATION = "dev.cargohold.sbom"
_IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
_EMPTY_CONFIG = b"{}"
REMATCH_STATE_JOB = "scan"
"""The job whose state folder keeps the last re-matching pass (the scan job's)."""
REMATCH_CONCURRENCY = 16
REMATCH_BATCH = 256


class ScanStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    updated: float
    attempts: int = 0
    reason: str | None = None
    retry_at: float | None = None


class PlatformResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    platform: str
    manifest: str
    os: str = ""
    sbom: str | None = None
    sbom_size: int = 0
    packages: int = 0
    findings: list[Finding] = []


class ScanReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    digest: str
    media_type: str
    scanned_at: float
    matched_at: float
    db_version: str = ""
    note: str | None = None
    platforms: list[PlatformResult] = []

    def counts(self) -> dict[str, int]:
        totals = dict.fromkeys(SEVERITIES, 0)
        seen: set[tuple[str, str, str]] = set()
        for platform in self.platforms:
            for finding in platform.findings:
                key = (platform.platform, finding.id, finding.package)
                if key not in seen:
                    seen.add(key)
                    totals[finding.severity] = totals.get(finding.severity, 0) + 1
        return totals

    def finding_ids(self) -> list[tuple[Finding, set[str]]]:
        return [
            (finding, {finding.id, *finding.aliases})
            for platform in self.platforms
            for finding in platform.findings
        ]


class _StoredPlatformFindings(msgspec.Struct, kw_only=True):
    sbom: str | None = None
    findings: msgspec.Raw = msgspec.Raw(b"[]")


class _StoredFindings(msgspec.Struct, kw_only=True):
    """What re-matching reads of a stored report: findings stay raw until they changed."""

    db_version: str = ""
    platforms: list[_StoredPlatformFindings] = []


class ScanObserver(Protocol):
    """Metrics hooks (the server's Prometheus counters); every method optional in spirit."""

    def scan_started(self) -> None: ...

    def scan_finished(self, seconds: float, ok: bool, counts: dict[str, int]) -> None: ...


class ScanFailed(Exception):
    """A scan that could not finish (the reason is stored and shown)."""


class ScanBusy(Exception):
    """Another process holds an unexpired claim on this digest."""


class RematchPass(msgspec.Struct, kw_only=True):
    """A completed re-matching pass: every stored result was checked against *version*."""

    version: str
    started: float = 0.0
    finished: float = 0.0


class _Claim(msgspec.Struct, kw_only=True):
    holder: str
    expires: float


class _Descriptor(msgspec.Struct, kw_only=True):
    mediaType: str = ""
    digest: str
    size: int = 0
    platform: dict[str, Any] | None = None


class _Manifest(msgspec.Struct, kw_only=True):
    mediaType: str | None = None
    config: _Descriptor | None = None
    layers: list[_Descriptor] = []
    manifests: list[_Descriptor] = []
    subject: _Descriptor | None = None


class _Config(msgspec.Struct, kw_only=True):
    os: str = ""
    architecture: str = ""
    variant: str | None = None


def _has_filesystem(doc: _Manifest) -> bool:
    """An image config and at least one tar layer (cosign .sig manifests have the config)."""
    return (
        doc.config is not None
        and doc.config.mediaType in _IMAGE_CONFIGS
        and any(_is_tar_layer(layer.mediaType) for layer in doc.layers)
    )


def _is_tar_layer(media_type: str) -> bool:
    """OCI and Docker filesystem layers (tar, gzip, zstd); anything else is not a filesystem."""
    return ".tar" in media_type or media_type.endswith(".tar")


def _platform(os_name: str, arch: str, variant: str | None) -> str:
    return "/".join(p for p in (os_name, arch, variant or "") if p)


class Scanner:
    """Scans manifests of one registry and keeps their results in storage."""

    def __init__(
        self,
        registry: Registry,
        database: VulnDatabase | None = None,
        *,
        observer: ScanObserver | None = None,
        claim_ttl: float = 120.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.driver = registry.driver
        self.database = database or VulnDatabase(registry.driver)
        self.observer = observer
        self.claim_ttl = claim_ttl
        self.holder = holder or default_holder_id()
        self.clock = clock
        self.scans_run = 0
        """Scans this process actually ran (tests prove two replicas scan once)."""
        self._matcher: Matcher | None = None

    # -- reading results -----------------------------------------------------------------

    async def status(self, digest: Digest) -> ScanStatus | None:
        try:
            raw = await self.driver.read(layout.scan_status(digest))
        except PathNotFound:
            return None
        try:
            return msgspec.json.decode(raw, type=ScanStatus)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def report(self, digest: Digest) -> ScanReport | None:
        try:
            raw = await self.driver.read(layout.scan_report(digest))
        except PathNotFound:
            return None
        try:
            return msgspec.json.decode(raw, type=ScanReport)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def sbom(self, digest: Digest, platform: str | None = None) -> bytes | None:
        """The SBOM of an image manifest (of an index: of *platform*, else the first)."""
        report = await self.report(digest)
        if report is None:
            return None
        for result in report.platforms:
            if result.sbom and (platform is None or result.platform == platform):
                with contextlib.suppress(RegistryError):
                    return await self.registry.blob_store.read_small(Digest.parse(result.sbom))
        return None

    async def _set_status(self, digest: Digest, status: ScanStatus) -> None:
        await self.driver.write(layout.scan_status(digest), msgspec.json.encode(status))

    async def mark_queued(self, digest: Digest) -> None:
        """Record that a scan is wanted (background work only: never on the request path)."""
        if await self.status(digest) is None:
            await self._set_status(digest, ScanStatus(status="queued", updated=self.clock()))

    # -- claims ------------------------------------------------------------------------

    async def _claim(self, digest: Digest) -> int:
        """Take the next attempt of *digest*'s scan, or raise ScanBusy."""
        attempts = await self._attempts(digest)
        latest = attempts[-1] if attempts else 0
        if latest:
            try:
                raw = await self.driver.read(layout.scan_claim(digest, latest))
                claim = msgspec.json.decode(raw, type=_Claim)
                if claim.expires > self.clock():
                    raise ScanBusy(str(digest))
            except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
                pass
        claim = _Claim(holder=self.holder, expires=self.clock() + self.claim_ttl)
        creating = asyncio.ensure_future(
            self.driver.write_if_absent(
                layout.scan_claim(digest, latest + 1), msgspec.json.encode(claim)
            )
        )
        try:
            if not await asyncio.shield(creating):
                raise ScanBusy(str(digest))
            # A taker that listed just before a release may have re-created a lower
            # attempt next to a newer one: the lower steps back, so one attempt runs at
            # a time.
            if any(attempt > latest + 1 for attempt in await self._attempts(digest)):
                await self._release(digest, latest + 1)
                raise ScanBusy(str(digest))
        except asyncio.CancelledError:
            # Stopped (a server shutting down) while the claim was being written: it
            # lands anyway, and nobody would renew or release it, so every other process
            # would wait out its time to live before scanning this digest.
            with contextlib.suppress(Exception):
                if await creating:
                    await self._release(digest, latest + 1)
            raise
        return latest + 1

    async def _attempts(self, digest: Digest) -> list[int]:
        try:
            names = await self.driver.list(layout.scan_claims_dir(digest))
        except PathNotFound:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    async def _keep_claim(self, digest: Digest, attempt: int) -> None:
        """Renew our claim while the scan runs (only its holder writes an attempt's object)."""
        while True:
            await asyncio.sleep(self.claim_ttl / 3)
            claim = _Claim(holder=self.holder, expires=self.clock() + self.claim_ttl)
            try:
                await self.driver.write(
                    layout.scan_claim(digest, attempt), msgspec.json.encode(claim)
                )
            except Exception:
                log.warning("renewing the scan claim of %s failed", digest, exc_info=True)

    async def _release(self, digest: Digest, attempt: int) -> None:
        """Delete our own attempt only: a newer one (taken after ours expired) stays."""
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.scan_claim(digest, attempt))

    # -- scanning ----------------------------------------------------------------------

    async def scan(self, digest: Digest, *, force: bool = False) -> ScanReport:
        """Scan *digest* unless it is done (or, with *force*, again); ScanBusy if elsewhere.

        Raises ScanFailed when the scan failed (the failure is stored with its reason).
        """
        if not force:
            status = await self.status(digest)
            report = await self.report(digest) if status and status.status == "done" else None
            if report is not None:
                return report
        artifact = await self._artifact_report(digest)
        if artifact is not None:
            return artifact
        attempt = await self._claim(digest)
        keeper = asyncio.create_task(self._keep_claim(digest, attempt))
        try:
            previous = await self.status(digest)
            if not force and previous is not None and previous.status == "done":
                report = await self.report(digest)
                if report is not None:
                    return report
            attempts = (previous.attempts if previous else 0) + 1
            await self._set_status(
                digest, ScanStatus(status="running", updated=self.clock(), attempts=attempts)
            )
            started = time.monotonic()
            if self.observer is not None:
                self.observer.scan_started()
            try:
                report = await self._scan(digest)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ScanFailed) else f"{type(exc).__name__}: {exc}"
                log.warning("scan of %s failed: %s", digest, reason)
                retry = None if attempts >= MAX_ATTEMPTS else self.clock() + 30.0 * 2**attempts
                await self._set_status(
                    digest,
                    ScanStatus(
                        status="failed",
                        updated=self.clock(),
                        attempts=attempts,
                        reason=reason,
                        retry_at=retry,
                    ),
                )
                if self.observer is not None:
                    self.observer.scan_finished(time.monotonic() - started, False, {})
                raise ScanFailed(reason) from None
            await self.driver.write(layout.scan_report(digest), msgspec.json.encode(report))
            await self._set_status(
                digest, ScanStatus(status="done", updated=self.clock(), attempts=attempts)
            )
            self.scans_run += 1
            seconds = time.monotonic() - started
            log.info("scanned %s in %.2f s (%s)", digest, seconds, self.holder)
            if self.observer is not None:
                self.observer.scan_finished(seconds, True, report.counts())
            return report
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._release(digest, attempt)

    async def _artifact_report(self, digest: Digest) -> ScanReport | None:
        """For a manifest with no filesystem (an artifact, a cosign signature): its report.

        Written without a claim (every writer writes the same) and not counted as a scan.
        """
        try:
            doc, media_type, _body = await self._read_manifest(digest)
        except ScanFailed:
            return None  # the claimed attempt records the failure
        if doc.manifests or _has_filesystem(doc):
            return None
        now = self.clock()
        report = ScanReport(
            digest=str(digest),
            media_type=media_type,
            scanned_at=now,
            matched_at=now,
            note="not a container image: nothing to scan",
        )
        await self.driver.write(layout.scan_report(digest), msgspec.json.encode(report))
        await self._set_status(digest, ScanStatus(status="done", updated=now))
        return report

    async def _read_manifest(self, digest: Digest) -> tuple[_Manifest, str, bytes]:
        try:
            body = await self.registry.blob_store.read_small(digest)
        except RegistryError:
            raise ScanFailed(f"manifest {digest} is not in storage") from None
        try:
            doc = msgspec.json.decode(body, type=_Manifest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ScanFailed(f"manifest {digest} does not parse: {exc}") from None
        media_type = doc.mediaType or (mt.OCI_INDEX if doc.manifests else mt.OCI_MANIFEST)
        return doc, media_type, body

    async def _scan(self, digest: Digest) -> ScanReport:
        doc, media_type, _body = await self._read_manifest(digest)
        state = await self.database.state()
        now = self.clock()
        report = ScanReport(
            digest=str(digest),
            media_type=media_type,
            scanned_at=now,
            matched_at=now,
            db_version=state.version,
        )
        if doc.manifests:
            for child in doc.manifests:
                platform = child.platform or {}
                if platform.get("os") == "unknown":
                    continue  # buildkit's attestation manifests are not a platform
                child_digest = Digest.parse(child.digest)
                child_report = await self._child_report(child_digest)
                for result in child_report.platforms:
                    if not result.platform:
                        result.platform = _platform(
                            str(platform.get("os", "")),
                            str(platform.get("architecture", "")),
                            platform.get("variant"),
                        )
                    report.platforms.append(result)
            return report
        if not _has_filesystem(doc):
            report.note = "not a container image: nothing to scan"
            return report
        report.platforms.append(await self._scan_image(digest, doc, state))
        return report

    async def _child_report(self, digest: Digest) -> ScanReport:
        for _ in range(120):
            try:
                return await self.scan(digest)
            except ScanBusy:
                await asyncio.sleep(1.0)
        raise ScanFailed(f"platform manifest {digest} is being scanned elsewhere; retrying later")

    async def _scan_image(self, digest: Digest, doc: _Manifest, state: Any) -> PlatformResult:
        assert doc.config is not None
        try:
            config = msgspec.json.decode(
                await self.registry.blob_store.read_small(Digest.parse(doc.config.digest)),
                type=_Config,
            )
        except (RegistryError, msgspec.DecodeError, msgspec.ValidationError):
            config = _Config()
        platform = _platform(config.os, config.architecture, config.variant)
        layers = []
        for layer in doc.layers:
            if not _is_tar_layer(layer.mediaType):
                continue
            layer_digest = Digest.parse(layer.digest)
            if not await self.registry.blob_store.exists(layer_digest):
                raise ScanFailed(f"layer {layer_digest} is not in storage")
            path = layout.blob_data(layer_digest)
            layers.append(lambda path=path: self.driver.read_stream(path))
        try:
            files = await final_files(layers)
        except Exception as exc:
            raise ScanFailed(f"layers could not be read: {exc}") from None
        inventory = await asyncio.to_thread(inventory_of, files, platform)
        del files
        sbom = build_sbom(inventory, str(digest))
        sbom_digest = Digest.of(sbom)
        await self.registry.blob_store.put_small(sbom, sbom_digest)
        findings = await self.matcher(state).match(inventory)
        return PlatformResult(
            platform=platform,
            manifest=str(digest),
            os=(inventory.os.pretty_name or inventory.os.id) if inventory.os else "",
            sbom=str(sbom_digest),
            sbom_size=len(sbom),
            packages=len(inventory.packages),
            findings=findings,
        )

    # -- attaching the SBOM in a repository --------------------------------------------

    async def attach(self, repository: str, digest: Digest) -> int:
        """Attach the SBOM(s) of *digest* as referrers in *repository*; returns how many new."""
        report = await self.report(digest)
        if report is None:
            return 0
        repo = self.registry.repository(repository)
        attached = 0
        for result in report.platforms:
            if not result.sbom:
                continue
            subject = Digest.parse(result.manifest)
            existing = await repo.manifests.referrers(subject)
            if any(
                r.get("artifactType") == SBOM_ARTIFACT_TYPE
                and (r.get("annotations") or {}).get(SBOM_ANNOTATION)
                for r in existing
            ):
                continue
            try:
                subject_manifest = await repo.manifests.get_by_digest(subject)
            except RegistryError:
                continue  # the platform manifest is not in this repository
            sbom_digest = Digest.parse(result.sbom)
            empty = Digest.of(_EMPTY_CONFIG)
            await self.registry.blob_store.put_small(_EMPTY_CONFIG, empty)
            await repo.blobs.link(empty)
            await repo.blobs.link(sbom_digest)
            manifest = {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": SBOM_ARTIFACT_TYPE,
                "config": {"mediaType": mt.OCI_EMPTY, "digest": str(empty), "size": 2},
                "layers": [
                    {
                        "mediaType": SBOM_MEDIA_TYPE,
                        "digest": result.sbom,
                        "size": result.sbom_size,
                        "annotations": {"org.opencontainers.image.title": "sbom.cdx.json"},
                    }
                ],
                "subject": {
                    "mediaType": subject_manifest.media_type,
                    "digest": str(subject),
                    "size": subject_manifest.size,
                },
                "annotations": {SBOM_ANNOTATION: "cyclonedx-1.6"},
            }
            stored = await repo.manifests.put(msgspec.json.encode(manifest), mt.OCI_MANIFEST)
            if await repo.manifests.keep_attachment(subject, stored.digest):
                attached += 1
        return attached

    # -- re-matching -------------------------------------------------------------------

    def matcher(self, state: DatabaseState) -> Matcher:
        """This process's matcher for *state*'s database version (fresh when it changed)."""
        current = self._matcher
        if current is None or current.version != state.version or current.full:
            current = self._matcher = Matcher(self.database, state)
        return current

    async def rematch(
        self,
        digest: Digest,
        *,
        force: bool = False,
        state: DatabaseState | None = None,
    ) -> bool:
        """Recompute *digest*'s findings from its stored SBOMs when the database changed.

        The report is rewritten only when a finding changed (True); an unchanged one
        keeps its bytes, and :meth:`last_rematch` tells which version it now stands for.
        """
        try:
            raw = await self.driver.read(layout.scan_report(digest))
            stored = msgspec.json.decode(raw, type=_StoredFindings)
        except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
            return False
        state = state or await self.database.state(fresh=True)
        if stored.db_version == state.version and not force:
            return False
        matcher = self.matcher(state)
        changed: dict[int, list[Finding]] = {}
        for index, result in enumerate(stored.platforms):
            if not result.sbom:
                continue
            try:
                body = await self.registry.blob_store.read_small(Digest.parse(result.sbom))
                findings = await matcher.match_sbom(read_sbom(body))
            except (RegistryError, SbomUnreadable) as exc:
                log.warning("re-matching %s: SBOM %s unreadable: %s", digest, result.sbom, exc)
                continue
            # Stored findings were encoded by this encoder: equal bytes mean equal findings.
            if msgspec.json.encode(findings) != bytes(result.findings):
                changed[index] = findings
        if not changed:
            return False
        report = msgspec.json.decode(raw, type=ScanReport)
        for index, findings in changed.items():
            report.platforms[index].findings = findings
        report.db_version = state.version
        report.matched_at = self.clock()
        await self.driver.write(layout.scan_report(digest), msgspec.json.encode(report))
        return True

    async def scanned_digests(self) -> list[Digest]:
        """Every digest with scan state in storage."""
        found = []
        try:
            algorithms = await self.driver.list(layout.SCANS)
        except PathNotFound:
            return []
        for algorithm in algorithms:
            try:
                entries = await self.driver.list(layout.scans_algorithm_dir(algorithm))
            except PathNotFound:
                continue
            for entry in entries:
                with contextlib.suppress(Exception):
                    found.append(Digest.parse(f"{algorithm}:{entry}"))
        return found

    async def last_rematch(self) -> RematchPass | None:
        """The last completed re-matching pass (None: none since results were first stored)."""
        try:
            raw = await self.driver.read(layout.job_state(REMATCH_STATE_JOB, "rematched"))
            return msgspec.json.decode(raw, type=RematchPass)
        except (PathNotFound, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def matched_against(self, report: ScanReport, last: RematchPass | None) -> tuple[str, float]:
        """``(database version, time)`` *report*'s findings stand for.

        A pass leaves unchanged reports as they were: one stored before the last
        completed pass started was checked by it, so it stands for that pass's version.
        """
        if last is not None and report.matched_at < last.started:
            return last.version, last.finished
        return report.db_version, report.matched_at

    async def _rematch_from(self, digests: Iterator[Digest], state: DatabaseState) -> int:
        """One of the pass's concurrent workers: re-match digests from a shared iterator."""
        return sum([await self.rematch(digest, state=state) for digest in digests])

    async def rematch_all(
        self, check: Callable[[], Any] | None = None, *, concurrency: int = REMATCH_CONCURRENCY
    ) -> int:
        """Re-match every stored result made with another database version; how many changed.

        Reads run *concurrency* at a time; *check* (the lease's fencing) runs before every
        :data:`REMATCH_BATCH` results. A completed pass is recorded (:meth:`last_rematch`).
        """
        started = self.clock()
        state = await self.database.state(fresh=True)
        digests = await self.scanned_digests()
        changed = 0
        for start in range(0, len(digests), REMATCH_BATCH):
            if check is not None:
                await check()
            pending = iter(digests[start : start + REMATCH_BATCH])
            workers = (self._rematch_from(pending, state) for _ in range(concurrency))
            changed += sum(await asyncio.gather(*workers))
        done = RematchPass(version=state.version, started=started, finished=self.clock())
        await self.driver.write(
            layout.job_state(REMATCH_STATE_JOB, "rematched"), msgspec.json.encode(done)
        )
        return changed
