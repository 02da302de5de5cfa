"""Quota usage on /metrics: totals always, per-owner series only when asked for.

The ``usage`` job (one process, under its lease) stores the usage per owner
after each compaction; every server process reads that one small object each
``quotas.usage_interval`` seconds and sets its gauges, so any process a scrape
reaches reports the same numbers, at the cost of one storage read per interval.
Owner names become label values only with ``quotas.metrics_by_owner = true``
(tenants can be many). Nothing here writes to storage or blocks a request.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Gauge

from registry_core import Registry, StorageError

log = logging.getLogger("cargohold.server")


class UsageMetrics:
    """The usage gauges of one server process."""

    def __init__(self, registry: CollectorRegistry, *, by_owner: bool) -> None:
        self.by_owner = by_owner
        self.bytes = Gauge(
            "cargohold_usage_bytes",
            "Stored bytes counted against quotas, all registries (as of the last usage job).",
            registry=registry,
        )
        self.images = Gauge(
            "cargohold_usage_images",
            "Images (tags, attachments not counted), all registries (as of the last usage job).",
            registry=registry,
        )
        self.measured = Gauge(
            "cargohold_usage_measured_timestamp_seconds",
            "When the usage job last summed the usage ledgers.",
            registry=registry,
        )
        self.owner_bytes: Gauge | None = None
        self.owner_images: Gauge | None = None
        self.owner_limit: Gauge | None = None
        if by_owner:
            self.owner_bytes = Gauge(
                "cargohold_owner_usage_bytes",
                "Stored bytes of all an owner's registries.",
                ["owner"],
                registry=registry,
            )
            self.owner_images = Gauge(
                "cargohold_owner_usage_images",
                "Images of all an owner's registries.",
                ["owner"],
                registry=registry,
            )
            self.owner_limit = Gauge(
                "cargohold_owner_quota_bytes",
                "An owner's byte quota (owners with one only).",
                ["owner"],
                registry=registry,
            )

    async def refresh(self, registry: Registry) -> bool:
        """Read the stored totals and set the gauges; False when there are none yet."""
        totals = await registry.usage.read_totals()
        if totals is None:
            return False
        self.bytes.set(sum(u.bytes for u in totals.owners.values()))
        self.images.set(sum(u.images for u in totals.owners.values()))
        self.measured.set(totals.measured_at)
        if self.owner_bytes is not None and self.owner_images is not None:
            self.owner_bytes.clear()
            self.owner_images.clear()
            for owner, usage in totals.owners.items():
                self.owner_bytes.labels(owner).set(usage.bytes)
                self.owner_images.labels(owner).set(usage.images)
        if self.owner_limit is not None:
            self.owner_limit.clear()
            for owner, limit in totals.owner_limits.items():
                self.owner_limit.labels(owner).set(limit)
        return True

    async def run(self, registry: Registry, interval: float) -> None:
        """Refresh every *interval* seconds until cancelled."""
        while True:
            try:
                await self.refresh(registry)
            except StorageError as exc:
                log.warning("usage metrics not refreshed: %s", exc)
            await asyncio.sleep(interval)
