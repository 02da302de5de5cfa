"""Configuration: one TOML file plus ``CARGOHOLD_SECTION_KEY`` environment overrides.

Validated with msgspec at start-up; an unknown key or a wrong type stops the
process with a message naming the key. The defaults serve from a local folder
with no other service.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .lifecycle.retention import RetentionRules, RetentionSpec
from .storage.driver import DriverSettings


class ConfigError(ValueError):
    """The configuration is unusable; the message names the bad key."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    listen: str = "127.0.0.1:5000"
    log_format: Literal["text", "json"] = "text"
    workers: int | str = "auto"
    """Processes sharing the port (SO_REUSEPORT; all state is in storage). ``auto``: one
    per CPU, but 1 for ``memory://`` (which no two processes can share)."""
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    """``auto``: asyncio's own loop for local-folder storage, uvloop otherwise (it answers
    small requests faster). On a local folder, with the local driver's thread hops,
    asyncio's loop measured faster: small-blob pushes 3.46x Distribution against 2.73x with
    uvloop, manifest PUTs 2.40x against 1.61x (session 12); blob downloads use sendfile
    on both (``registry_server/http/sendfile.py``)."""
    shutdown_timeout: float = 30.0
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    """Addresses whose X-Forwarded-Proto/Host headers are believed (a TLS-terminating proxy)."""
    public_hosts: list[str] | str = msgspec.field(default_factory=list)
    """Host names (``host[:port]``) clients pull by; signatures name each (a comma list in env)."""
    state_dir: str | None = None
    """Where the bootstrap admin password file goes (default: beside a local store, else ./var)."""
    """Seconds SIGTERM waits for in-flight requests (uploads) before exiting."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, str):
            if self.workers.strip().isdigit():
                self.workers = int(self.workers)
            elif self.workers != "auto":
                raise ValueError(f"server.workers must be a number or 'auto', not {self.workers!r}")
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError("server.workers must be at least 1")

    def worker_count(self, storage_url: str) -> int:
        """The processes to run: ``auto`` is one per CPU this process may use."""
        if isinstance(self.workers, int):
            return self.workers
        if storage_url.startswith("memory://"):
            return 1
        return max(1, len(os.sched_getaffinity(0)))


class StorageConfig(_Section):
    url: str = "./var/registry"
    """A local path, ``file:///abs/path``, ``memory://``, ``s3://bucket/prefix``,
    ``gs://bucket/prefix``, ``az://container/prefix``, or a plug-in driver's URL."""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Handed unchanged to the driver (its fsspec storage options)."""
    redirect: bool | None = None
    """Blob GETs answer 307 to a signed URL; None: the driver's default (on for cloud drivers)."""
    redirect_expires: int = 300
    """Seconds a redirect's signed URL stays valid."""
    part_size: int = 8 * 1024 * 1024
    """Bytes per part of a streamed upload to object storage."""
    timeout: float = 60.0
    """Seconds one storage request may take before it is abandoned and retried."""
    retries: int = 5
    """Retries (with backoff) of a storage request that failed transiently, before 503."""

    def driver_settings(self) -> DriverSettings:
        return DriverSettings(part_size=self.part_size, timeout=self.timeout, retries=self.retries)


class UploadsConfig(_Section):
    purge_after: float = 24 * 3600.0
    """Seconds an upload session may stay idle before it is purged with its data."""
    purge_interval: float = 3600.0


class ManifestsConfig(_Section):
    strict_index: bool = False
    """Refuse indexes whose child manifests are not in the repository (no sparse indexes)."""
    max_size: int = 4 * 1024 * 1024
    cache_bytes: int = 2 * 1024 * 1024
    link_cache_ttl: float = 1.0
    """Seconds a tag or revision lookup, and the catalog, are cached per process (0: off).
    This process's own writes update them at once; other processes' writes are seen within
    this time."""


class AuthConfig(_Section):
    enabled: bool = True
    """False: an open registry (no logins, no tenancy checks) for local experiments."""
    cache_ttl: float = 10.0
    """Seconds a verified login, a registry's visibility or a role is cached per process."""
    token_ttl: int = 300
    """Lifetime of issued bearer tokens, in seconds."""
    realm: str | None = None
    """Token endpoint URL for the challenge (default: this server's /v2/token)."""
    service: str | None = None
    """The ``service`` of the challenge and the token audience (default: the request's host)."""
    max_failures: int = 10
    """Failed logins per username or client address within ``failure_window`` before 429."""
    failure_window: float = 300.0
    slowdown_after: int = 3
    """Failed logins after which answers are delayed (doubling, at most 2 s)."""
    bootstrap_admin: bool = True
    """On first start with no user at all, create a superuser ``admin`` with a random password."""


class ArchivesConfig(_Section):
    """Image archives uploaded whole (``docker save``, OCI layouts) and exported."""

    max_size: int = 16 * 1024**3
    """Bytes an archive may have, as uploaded and once unpacked (413 beyond)."""
    max_layer_size: int = 8 * 1024**3
    """Bytes one layer may have, compressed or not (400 beyond)."""
    temp_dir: str = ""
    """Where uploads are spooled and layers compressed (default: the system's temp folder)."""
    compression: Literal["gzip", "zstd"] = "gzip"
    """How layers that arrive uncompressed are stored (zstd needs ``cargohold[zstd]``)."""


Seconds = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class LimitsConfig(_Section):
    """What one client may hold: each limit is answered with a JSON error and counted in
    ``/metrics`` (``cargohold_limit_refusals_total{limit=...}``)."""

    header_timeout: Seconds = 30.0
    """Seconds a request's headers may take to arrive, from their first byte (then 408)."""
    keepalive_timeout: Seconds = 75.0
    """Seconds an idle keep-alive connection (or one that never sends) stays open."""
    body_timeout: Seconds = 60.0
    """Seconds an upload body may go without sending a byte (then 408; the upload can resume)."""
    max_header_size: Annotated[int, msgspec.Meta(ge=1024)] = 8190
    """Bytes of the request line or of one header (then 414 / 431)."""
    max_headers: Annotated[int, msgspec.Meta(ge=16)] = 128
    """Headers in one request (then 431)."""
    max_connections: Count = 1024
    """Open connections per server process; more are answered 429 and closed (0: no limit)."""
    max_uploads_per_repository: Count = 100
    """Open upload sessions in one repository; more are refused with 429 (0: no limit)."""
    max_uploads_per_tenant: Count = 1000
    """Open upload sessions in one OWNER/REGISTRY; more are refused with 429 (0: no limit)."""


class TlsConfig(_Section):
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    """Require client certificates signed by this CA (mutual TLS)."""


def _duration(value: str, key: str, *, off: bool = False) -> float | None:
    """Seconds of a duration key (``0s``, ``90s``, ``10m``, ``1h``, ``7d``); None for "off"."""
    from .tenancy import parse_duration

    if off and value.strip().lower() in ("off", "", "0"):
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


class GcConfig(_Section):
    """Online garbage collection (``registry_core.lifecycle.gc``)."""

    interval: str = "off"
    """How often the server runs GC (``off``, or a duration such as ``6h``); one process works."""
    grace: str = "1h"
    """Blobs, links and manifests younger than this are kept (``0s`` allowed)."""
    settle: str = "30s"
    """How long a run waits between setting blobs aside and its re-check (lets pulls in
    flight finish; bounds library re-tags, see ``registry_core/lifecycle/gc.py``)."""
    lease_ttl: str = "60s"
    """Time to live of the ``gc`` lease; a killed run's lease is taken over after it."""
    nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10
    """CPU priority decrease of ``cargohold gc`` and ``cargohold worker`` processes (0: none):
    batch work yields the CPU to serving processes on the same machine."""
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Storage requests per second a run may start (0: unlimited); with ``concurrency``, how
    much of a shared bucket GC may take from the clients (``nice`` only covers CPU)."""
    concurrency: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    """Storage requests a run keeps in flight (0: auto, 32 on a local folder, 2 on an
    object store)."""
    adaptive: bool = True
    """On an object store, slow GC down while the store answers slower than when idle (its
    other clients are queueing), within ``rate`` and ``concurrency``
    (``registry_core/lifecycle/pacing.py``); false: the caps alone."""

    def __post_init__(self) -> None:
        _duration(self.interval, "gc.interval", off=True)
        for key in ("grace", "settle", "lease_ttl"):
            _duration(getattr(self, key), f"gc.{key}")

    def seconds(self, key: str) -> float | None:
        return _duration(getattr(self, key), f"gc.{key}", off=key == "interval")


class ScrubConfig(_Section):
    """Background re-reading of stored blobs and links (``registry_core.lifecycle.scrub``)."""

    interval: str = "off"
    """How often the server runs a scrub step (``off`` or a duration)."""
    repair: bool = False
    """Remove broken links found (clients then get a clean 404)."""
    bytes_per_second: int = 32 * 1024 * 1024
    """Read rate limit, so a scrub left on does not starve clients."""
    batch: int = 500
    """Blobs checked per step; the cursor in storage resumes the next step after them."""
    min_age: str = "1h"
    """Links younger than this are not judged (a push or a GC sweep may be midway)."""

    def __post_init__(self) -> None:
        _duration(self.interval, "scrub.interval", off=True)
        _duration(self.min_age, "scrub.min_age")

    def seconds(self, key: str) -> float | None:
        return _duration(getattr(self, key), f"scrub.{key}", off=key == "interval")


class RetentionConfig(_Section):
    """Retention rules run on this schedule; ``rules`` apply to registries with none stored."""

    interval: float | str = "1d"
    """Time between scheduled runs over every registry with rules (``0s``: only on demand)."""
    rules: dict[str, RetentionSpec] = msgspec.field(default_factory=dict)
    """``"OWNER/REGISTRY" = {keep_last = 10, protected = ["latest"], ...}``."""

    def __post_init__(self) -> None:
        self.interval_seconds()
        for name, spec in self.rules.items():
            try:
                spec.rules()
            except ValueError as exc:
                raise ValueError(f"retention.rules.{name}: {exc}") from None

    def configured(self) -> dict[str, RetentionRules]:
        """The rules per ``OWNER/REGISTRY``, in their stored form."""
        return {name: spec.rules() for name, spec in self.rules.items()}

    def interval_seconds(self) -> float:
        from .tenancy import parse_duration

        value = self.interval
        return float(value) if isinstance(value, int | float) else parse_duration(value)


class QuotasConfig(_Section):
    usage_interval: float = 60.0
    """Seconds between compactions of the usage ledgers (their deltas summed)."""
    metrics_by_owner: bool = False
    """Export usage and limits per owner on /metrics (tenant names as labels: opt-in)."""


class UpstreamRegistryConfig(_Section):
    """One upstream of a registry made by configuration (``[[upstreams.registries]]``)."""

    registry: str
    """``OWNER/REGISTRY``: the registry these upstreams belong to (it must exist)."""
    name: str
    url: str
    priority: int = 100
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    """Name of an environment variable holding the password (keeps it out of the file)."""
    cache: bool = True
    tag_ttl: float | str = 600.0
    images: str | None = None
    prefix: str | None = None
    sign: bool = True
    """Sign manifests cached from this upstream with the registry's keys (when it signs)."""


class UpstreamsConfig(_Section):
    allow_networks: list[str] | str = msgspec.field(default_factory=list)
    """CIDRs upstreams may reach besides public addresses (loopback, private, link-local and
    metadata addresses are refused otherwise); the environment takes a comma list."""
    timeout: float = 30.0
    """Seconds to connect to an upstream, and between two reads of its answer."""
    negative_ttl: float = 30.0
    """Seconds an upstream 404 is remembered (per process)."""
    ca_file: str | None = None
    """A PEM bundle of CAs trusted for upstream TLS besides the system's (a company
    registry with its own CA)."""
    registries: list[UpstreamRegistryConfig] = msgspec.field(default_factory=list)

    def networks(self) -> list[str]:
        if isinstance(self.allow_networks, str):
            return [part.strip() for part in self.allow_networks.split(",") if part.strip()]
        return list(self.allow_networks)


class SecretsConfig(_Section):
    key: str | None = None
    """The key-encryption key for secrets at rest (upstream passwords); absent, one is
    generated into ``server.state_dir``. Every server sharing storage needs the same key."""

    def __repr__(self) -> str:
        return "SecretsConfig(key=<hidden>)"


class ScanningConfig(_Section):
    """Security scanning (``registry_core.scanning``): scans on push, OSV data refresh."""

    enabled: bool | None = None
    """Scan pushed images; unset: on when ``auth.enabled`` (tenancy), off in open mode."""
    interval: str = "30s"
    """How often the scan job looks for manifests the in-process nudges missed."""
    concurrency: int = 1
    """Scans one process (server or ``cargohold worker``) runs at once; each digest is
    claimed, so every process takes different digests from the shared queue."""
    refresh_urls: list[str] | str = msgspec.field(default_factory=list)
    """OSV exports (``.../ECOSYSTEM/all.zip``) re-imported on a schedule; a comma list in env."""
    refresh_interval: str = "1d"
    """Time between refreshes from ``refresh_urls``."""

    def __post_init__(self) -> None:
        for key in ("interval", "refresh_interval"):
            _duration(getattr(self, key), f"scanning.{key}")
        if not 1 <= self.concurrency <= 64:
            raise ValueError("scanning.concurrency must be between 1 and 64")

    def seconds(self, key: str) -> float:
        return _duration(getattr(self, key), f"scanning.{key}") or 0.0

    def urls(self) -> list[str]:
        if isinstance(self.refresh_urls, str):
            return [part.strip() for part in self.refresh_urls.split(",") if part.strip()]
        return list(self.refresh_urls)

    def is_enabled(self, auth_enabled: bool) -> bool:
        return auth_enabled if self.enabled is None else self.enabled


class SigningConfig(_Section):
    """Key signing (``registry_core.signing``): cosign and simple signatures of what is stored."""

    enabled: bool | None = None
    """Sign stored images; unset: on when ``auth.enabled`` (tenancy), off in open mode."""
    cosign: bool = True
    """Cosign/sigstore signatures (``sha256-<hex>.sig`` attachments), ECDSA P-256."""
    simple: bool = True
    """Simple signing (OpenPGP, served by the registry extension API), RSA."""
    referrers: bool = False
    """Also store cosign signatures in the OCI 1.1 referrers form (a manifest with a subject)."""
    rsa_bits: Literal[3072, 4096] = 3072
    interval: float = 60.0
    """Seconds between catch-up passes that sign what the in-process nudges missed."""

    def is_enabled(self, auth_enabled: bool) -> bool:
        return auth_enabled if self.enabled is None else self.enabled


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    uploads: UploadsConfig = msgspec.field(default_factory=UploadsConfig)
    manifests: ManifestsConfig = msgspec.field(default_factory=ManifestsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    archives: ArchivesConfig = msgspec.field(default_factory=ArchivesConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    quotas: QuotasConfig = msgspec.field(default_factory=QuotasConfig)
    gc: GcConfig = msgspec.field(default_factory=GcConfig)
    scrub: ScrubConfig = msgspec.field(default_factory=ScrubConfig)
    upstreams: UpstreamsConfig = msgspec.field(default_factory=UpstreamsConfig)
    secrets: SecretsConfig = msgspec.field(default_factory=SecretsConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    scanning: ScanningConfig = msgspec.field(default_factory=ScanningConfig)
    signing: SigningConfig = msgspec.field(default_factory=SigningConfig)
    domains: dict[str, str] = msgspec.field(default_factory=dict)
    """Host name -> ``OWNER`` or ``OWNER/REGISTRY``: clients of that host use shorter names."""


ENV_PREFIX = "CARGOHOLD_"
_SECTIONS = (
    "server",
    "storage",
    "uploads",
    "manifests",
    "auth",
    "tls",
    "archives",
    "gc",
    "scrub",
    "retention",
    "quotas",
    "upstreams",
    "secrets",
    "limits",
    "signing",
    "scanning",
)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                overrides.setdefault(section, {})[rest[len(section) + 1 :]] = value
    return overrides


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read *path* (if any), apply environment then explicit overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    layers: list[Mapping[str, Mapping[str, Any]]] = [
        _env_overrides(os.environ if environ is None else environ)
    ]
    if overrides:
        layers.append(overrides)
    for layer in layers:
        for section, values in layer.items():
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config key {section!r} must be a table")
            target.update(values)
    where = f"config file {path}" if path is not None else "configuration"
    try:
        # strict=False lets environment strings become numbers and booleans.
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
