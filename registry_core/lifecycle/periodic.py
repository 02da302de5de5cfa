"""The periodic jobs of retention and usage, registered on a ``jobs.Scheduler``.

``retention`` applies every registry's rules (stored or from the TOML file);
``usage`` folds the usage ledgers' deltas into their snapshots and stores the
totals per owner that every process's /metrics reports. Both run under
their lease in whichever process takes it; this module only wires them and
never keeps state of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..jobs import LeaseGuard, Scheduler
from . import retention, usage
from .quotas import get_quota

if TYPE_CHECKING:
    from ..registry import Registry

log = logging.getLogger(__name__)


def add_policy_jobs(
    scheduler: Scheduler,
    registry: Registry,
    *,
    retention_interval: float,
    usage_interval: float,
    configured_retention: Mapping[str, retention.RetentionRules] | None = None,
) -> None:
    """Register ``retention`` and ``usage`` (an interval of 0 leaves a job out).

    *configured_retention*: the TOML file's rules (``config.retention.configured()``),
    for registries with none stored; None keeps what the registry's policy holds.
    """
    if configured_retention is not None:
        registry.policy.configured_retention = dict(configured_retention)

    async def run_retention(guard: LeaseGuard) -> None:
        configured = registry.policy.configured_retention
        for tenant in await retention.tenants_with_rules(registry, configured):
            rules = await retention.get_retention(registry.settings, tenant, configured)
            if rules is None:
                continue
            report = await retention.run_retention(registry, tenant, rules, guard=guard)
            if report.tags or report.manifests:
                log.info(
                    "retention %s: deleted %d tag(s), %d manifest(s)",
                    tenant,
                    len(report.tags),
                    len(report.manifests),
                )

    async def compact_usage(guard: LeaseGuard) -> None:
        totals = await registry.usage.compact_all(guard)
        for owner in totals.owners:
            quota = await get_quota(registry.settings, owner, None)
            if quota is not None and quota.max_bytes is not None:
                totals.owner_limits[owner] = quota.max_bytes
        await registry.usage.write_totals(totals)

    if retention_interval > 0:
        scheduler.add(retention.JOB, retention_interval, run_retention, ttl=300.0)
    if usage_interval > 0:
        scheduler.add(usage.JOB, usage_interval, compact_usage, ttl=usage.LEASE_TTL)
