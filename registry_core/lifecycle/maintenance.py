"""The storage maintenance jobs a scheduler runs: garbage collection and scrub.

Every server process (and ``cargohold worker``) registers them from the
``[gc]`` and ``[scrub]`` configuration; the ``registry_core.jobs`` lease makes
only one process work on each at a time. Reports go to the caller's
callbacks (the server's metrics) and to the log; the last GC report is also
stored as a small job-state object so any process or the CLI can show it.
This module holds no state of its own and never imports the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from ..config import Config
from ..jobs import LeaseGuard, Scheduler
from ..registry import Registry
from ..storage import layout
from ..storage.driver import PathNotFound
from .gc import JOB as GC_JOB
from .gc import GcReport
from .gc_pacing import gc_pacer
from .scrub import JOB as SCRUB_JOB
from .scrub import Scrubber, ScrubReport

log = logging.getLogger(__name__)

GcCallback = Callable[[GcReport], None]
ScrubCallback = Callable[[ScrubReport], None]


async def store_gc_report(registry: Registry, report: GcReport) -> None:
    """Keep the last run's summary in storage (``cargohold gc --last`` and other processes)."""
    await registry.driver.write(
        layout.job_state(GC_JOB, "last-run"), msgspec.json.encode(report.summary())
    )


async def last_gc_report(registry: Registry) -> dict[str, Any] | None:
    """The summary :func:`store_gc_report` kept, or None when no run has completed."""
    try:
        body = await registry.driver.read(layout.job_state(GC_JOB, "last-run"))
    except PathNotFound:
        return None
    try:
        return msgspec.json.decode(body, type=dict[str, Any])
    except msgspec.DecodeError:
        return None


def add_maintenance_jobs(
    scheduler: Scheduler,
    registry: Registry,
    config: Config,
    *,
    on_gc: GcCallback | None = None,
    on_scrub: ScrubCallback | None = None,
    on_gc_rate: Callable[[float | None], None] | None = None,
    clients_busy: Callable[[], bool] | None = None,
) -> None:
    """Register GC and scrub with *scheduler* when their ``interval`` is not ``off``.

    A server passes *clients_busy* (its requests in flight: GC on an object store then
    backs off on a smaller rise of the store's response time) and *on_gc_rate* (the
    adaptive pacer's rate as it changes, None: unlimited, 0 once the run ended; a gauge)."""
    gc = config.gc
    gc_interval = gc.seconds("interval")
    if gc_interval:
        grace = gc.seconds("grace") or 0.0
        settle = gc.seconds("settle") or 0.0
        ttl = gc.seconds("lease_ttl") or 60.0

        async def run_gc(guard: LeaseGuard) -> None:
            pacer = gc_pacer(
                registry.driver,
                gc.rate or None,
                gc.concurrency or None,
                adaptive=gc.adaptive,
                clients_busy=clients_busy,
                on_change=on_gc_rate,
            )
            if on_gc_rate is not None:
                on_gc_rate(pacer.rate)
            try:
                report = await registry.collect_garbage(
                    grace=grace, settle=settle, guard=guard, pacer=pacer
                )
            finally:
                if on_gc_rate is not None:
                    on_gc_rate(0.0)  # no run in progress
            await store_gc_report(registry, report)
            if on_gc is not None:
                on_gc(report)

        scheduler.add(GC_JOB, gc_interval, run_gc, ttl=ttl)
    scrub = config.scrub
    scrub_interval = scrub.seconds("interval")
    if scrub_interval:

        async def run_scrub(guard: LeaseGuard) -> None:
            scrubber = Scrubber(
                registry.driver,
                repair=scrub.repair,
                bytes_per_second=scrub.bytes_per_second,
                min_age=scrub.seconds("min_age") or 0.0,
                fence=guard.check,
            )
            report = await scrubber.step(max_blobs=scrub.batch)
            for problem in report.problems:
                log.warning("scrub: %s %s: %s", problem.kind, problem.where, problem.detail)
            if on_scrub is not None:
                on_scrub(report)

        scheduler.add(SCRUB_JOB, scrub_interval, run_scrub, ttl=120.0)
