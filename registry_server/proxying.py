"""Server-side assembly of the pull-through cache: the secrets key, the client, the counters.

Resolves the key-encryption key (``[secrets] key``, else the file in
``state_dir``, created before ``--workers`` fork; kept in the process for
``memory://`` storage), checks it against the storage's canary, builds the aiohttp upstream client with the network policy,
applies the upstreams of registries made by configuration, and counts what
the cache does in Prometheus. Labels carry the upstream's name only, never a
repository. Never logs the key or a password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from drivers import open_driver
from registry_core import Config, ConfigError, Registry, RegistryError
from registry_core.names import Tenant
from registry_core.proxy import NetworkPolicy, PullThrough, UpstreamSpec, UpstreamStore
from registry_core.proxy.settings import build_upstream
from registry_core.secrets import (
    KeyMismatch,
    SecretBox,
    SecretsError,
    check_canary,
    generate_key,
    key_from_state_dir,
)
from registry_core.settings import SettingsStore
from registry_core.storage.driver import StorageDriver
from registry_core.tenancy import TenancyStore

from .upstream_client import AiohttpUpstreamClient

LOGGER = logging.getLogger("cargohold.proxy")


def resolve_secrets_key(config: Config, directory: Path) -> str:
    """The key-encryption key: configured, else generated once into ``state_dir`` (0600).

    The serve command calls this before forking workers and puts the answer
    into the configuration, so every worker uses the same key.
    """
    if config.secrets.key:
        return config.secrets.key
    if config.storage.url.startswith("memory://"):
        # Nothing outlives the process, so neither need the key: no file is written.
        config.secrets.key = generate_key()
        return config.secrets.key
    try:
        key = key_from_state_dir(directory)
    except OSError as exc:
        raise ConfigError(f"cannot create the secrets key in {directory}: {exc}") from None
    config.secrets.key = key
    return key


def secret_box(config: Config, directory: Path) -> SecretBox:
    try:
        return SecretBox(resolve_secrets_key(config, directory))
    except SecretsError as exc:
        raise ConfigError(f"secrets.key: {exc}") from None


def network_policy(config: Config) -> NetworkPolicy:
    try:
        return NetworkPolicy(config.upstreams.networks())
    except ValueError as exc:
        raise ConfigError(f"upstreams.allow_networks: {exc}") from None


class ProxyMetrics:
    """The pull-through cache's counters, per upstream name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "cargohold_upstream_hits",
            "Proxied pulls served from the cache without fetching (fresh tags, known blobs).",
            ["upstream"],
            registry=registry,
        )
        self.misses = Counter(
            "cargohold_upstream_misses",
            "Proxied pulls fetched from the upstream.",
            ["upstream"],
            registry=registry,
        )
        self.fetched_bytes = Counter(
            "cargohold_upstream_fetched_bytes",
            "Bytes fetched from the upstream (manifests and blobs).",
            ["upstream"],
            registry=registry,
        )
        self.errors = Counter(
            "cargohold_upstream_errors",
            "Upstream failures by kind (refused, timeout, status_5xx, rate_limited, corrupt, "
            "truncated, tls, other).",
            ["upstream", "kind"],
            registry=registry,
        )
        self.stale_serves = Counter(
            "cargohold_upstream_stale_serves",
            "Cached content served past its TTL because the upstream failed.",
            ["upstream"],
            registry=registry,
        )

    def hit(self, upstream: str) -> None:
        self.hits.labels(upstream).inc()

    def miss(self, upstream: str) -> None:
        self.misses.labels(upstream).inc()

    def fetched(self, upstream: str, size: int) -> None:
        self.fetched_bytes.labels(upstream).inc(size)

    def error(self, upstream: str, kind: str) -> None:
        self.errors.labels(upstream, kind).inc()

    def stale(self, upstream: str) -> None:
        self.stale_serves.labels(upstream).inc()


def build_pull_through(
    config: Config, registry: Registry, box: SecretBox | None, metrics: CollectorRegistry
) -> PullThrough:
    upstreams = UpstreamStore(SettingsStore(registry.driver, config.auth.cache_ttl), box)
    try:
        client = AiohttpUpstreamClient.from_settings(
            network_policy(config), config.upstreams.timeout, config.upstreams.ca_file
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"upstreams: {exc}") from None
    return PullThrough(
        registry,
        upstreams,
        client,
        negative_ttl=config.upstreams.negative_ttl,
        observer=ProxyMetrics(metrics),
    )


def configured_specs(config: Config) -> dict[Tenant, list[UpstreamSpec]]:
    """``[[upstreams.registries]]`` grouped by registry; ConfigError names a bad entry."""
    grouped: dict[Tenant, list[UpstreamSpec]] = {}
    for entry in config.upstreams.registries:
        owner, sep, name = entry.registry.partition("/")
        if not sep or not owner or not name or "/" in name:
            raise ConfigError(
                f"upstreams.registries: registry must be OWNER/REGISTRY, not {entry.registry!r}"
            )
        password = entry.password
        if entry.password_env:
            password = os.environ.get(entry.password_env)
            if not password:
                raise ConfigError(
                    f"upstreams.registries: the environment variable {entry.password_env} "
                    f"(password of upstream {entry.name!r} of {entry.registry}) is not set"
                )
        grouped.setdefault(Tenant(owner, name), []).append(
            UpstreamSpec(
                name=entry.name,
                url=entry.url,
                priority=entry.priority,
                username=entry.username,
                password=password,
                cache=entry.cache,
                tag_ttl=entry.tag_ttl,
                images=entry.images,
                prefix=entry.prefix,
                sign=entry.sign,
            )
        )
    return grouped


async def apply_configured_upstreams(
    config: Config, store: UpstreamStore, tenancy: TenancyStore | None
) -> None:
    """Make the configured registries' upstreams what the file says (idempotent)."""
    for tenant, specs in configured_specs(config).items():
        if (
            tenancy is not None
            and await tenancy.get_registry(tenant.owner, tenant.registry) is None
        ):
            LOGGER.warning(
                "upstreams configured for %s, which does not exist; create it with "
                "`cargohold registries create %s`",
                tenant,
                tenant,
            )
        await store.replace(tenant, specs)


async def check_key(driver: StorageDriver, box: SecretBox) -> None:
    """Refuse to go on with a key that cannot open this storage's secrets (ConfigError)."""
    try:
        await check_canary(driver, box, create=False)
    except KeyMismatch as exc:
        raise ConfigError(str(exc)) from None


def check_proxy_settings(config: Config) -> None:
    """Check ``[upstreams]``, resolve the secrets key into *config* (generating it if need
    be) and check it against storage.

    ConfigError names the bad key, or says what to do when the secrets key is not the
    one the storage knows.
    """
    from .app import state_dir  # here: the app module imports this one

    network_policy(config)
    box = secret_box(config, state_dir(config))
    for tenant, specs in configured_specs(config).items():
        for spec in specs:
            try:
                build_upstream(tenant, spec, box)
            except RegistryError as exc:
                raise ConfigError(
                    f"upstreams.registries ({tenant}, {spec.name!r}): {exc.message}"
                ) from None
    try:
        driver = open_driver(config.storage.url, **config.storage.options)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot open storage {config.storage.url!r}: {exc}") from None

    async def check() -> None:
        try:
            await check_key(driver, box)
        finally:
            await driver.close()

    asyncio.run(check())
