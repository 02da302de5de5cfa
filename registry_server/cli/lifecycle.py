"""``cargohold gc``, ``cargohold scrub`` and ``cargohold worker``: storage maintenance.

``gc`` and ``scrub`` work directly on storage (``--storage``/``--config``, no
server needed) and are safe while servers run: they take the same job leases
the servers' schedules take. ``worker`` runs only the scheduled jobs, for
deployments that keep them off the serving processes. Output is a short
human summary, or one JSON object with ``--json``; errors are one line on
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from drivers import open_driver
from registry_core import ConfigError, Registry
from registry_core.config import Config
from registry_core.jobs import LeaseBusy, Leases, Scheduler
from registry_core.lifecycle.gc_pacing import gc_pacer
from registry_core.lifecycle.maintenance import (
    add_maintenance_jobs,
    last_gc_report,
    store_gc_report,
)
from registry_core.lifecycle.periodic import add_policy_jobs
from registry_core.lifecycle.scrub import Scrubber
from registry_core.tenancy import parse_duration

from .common import config_from_args


def _config(args: argparse.Namespace) -> Config:
    return config_from_args(args)


def _registry(config: Config) -> Registry:
    driver = open_driver(
        config.storage.url, settings=config.storage.driver_settings(), **config.storage.options
    )
    registry = Registry(driver)
    registry.policy.untagged_grace = config.gc.seconds("grace") or 0.0
    return registry


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _lower_priority(args: argparse.Namespace, config: Config) -> None:
    """Lower this process's CPU priority before any thread starts (threads inherit it).

    GC and the other jobs are batch work on the same machines as the servers; at the
    default ``[gc] nice`` (10) the kernel gives serving processes the CPU first, which is
    what keeps pushes and pulls at full speed while a run walks a large store.
    """
    nice = getattr(args, "nice", None)
    wanted = config.gc.nice if nice is None else nice
    if wanted > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(wanted)


def _run(args: argparse.Namespace, body: Any) -> int:
    try:
        config = _config(args)
        _lower_priority(args, config)
        registry = _registry(config)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"cargohold: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        try:
            return int(await body(config, registry))
        finally:
            await registry.close()

    try:
        return asyncio.run(go())
    except LeaseBusy as exc:
        print(f"cargohold: {exc}; try again later", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"cargohold: {exc}", file=sys.stderr)
        return 1


def gc_command(args: argparse.Namespace) -> int:
    async def body(config: Config, registry: Registry) -> int:
        if args.last:
            last = await last_gc_report(registry)
            if last is None:
                print("cargohold: no GC run has completed on this storage", file=sys.stderr)
                return 1
            print(json.dumps(last, indent=2))
            return 0
        grace = parse_duration(args.grace) if args.grace else config.gc.seconds("grace")
        settle = parse_duration(args.settle) if args.settle else config.gc.seconds("settle")
        pacer = gc_pacer(
            registry.driver,
            (config.gc.rate if args.rate is None else args.rate) or None,
            (config.gc.concurrency if args.concurrency is None else args.concurrency) or None,
            adaptive=config.gc.adaptive if args.adaptive is None else args.adaptive,
        )
        report = await registry.collect_garbage(
            grace=grace or 0.0,
            settle=settle or 0.0,
            dry_run=args.dry_run,
            lease_ttl=config.gc.seconds("lease_ttl") or 60.0,
            wait=parse_duration(args.wait),
            pacer=pacer,
        )
        if not args.dry_run:
            await store_gc_report(registry, report)
        if args.json:
            summary = report.summary()
            summary["deleted"] = [{"digest": d, "size": s} for d, s in report.deleted]
            summary["pacing"] = pacer.summary()
            print(json.dumps(summary, indent=2))
            return 0
        verb = "would delete" if args.dry_run else "deleted"
        if args.dry_run:
            for digest, size in report.deleted:
                print(f"{digest}  {size}")
        print(
            f"gc{' (dry run)' if args.dry_run else ''}: {verb} {report.blobs_deleted} of "
            f"{report.blobs_total} blob(s), {_size(report.bytes_deleted)} ({report.bytes_deleted}"
            f" bytes); links: {report.layer_links_removed} layer, {report.revisions_removed} "
            f"manifest, {report.tags_removed} tag, {report.referrers_removed} referrer; "
            f"{report.blobs_rescued} rescued; {report.storage_requests} storage requests; "
            f"{report.duration:.2f}s (mark {report.mark_seconds:.2f}s, "
            f"sweep {report.sweep_seconds:.2f}s)"
        )
        return 0

    return _run(args, body)


def scrub_command(args: argparse.Namespace) -> int:
    async def body(config: Config, registry: Registry) -> int:
        rate = args.rate if args.rate is not None else config.scrub.bytes_per_second
        leases = Leases(registry.driver)
        async with leases.hold("scrub", 120.0) as guard:
            scrubber = Scrubber(
                registry.driver,
                repair=args.repair,
                bytes_per_second=rate,
                min_age=(
                    parse_duration(args.min_age)
                    if args.min_age
                    else config.scrub.seconds("min_age")
                )
                or 0.0,
                fence=guard.check,
            )
            if args.max_blobs:
                report = await scrubber.step(max_blobs=args.max_blobs)
            else:
                report = await scrubber.full_pass(max_blobs=config.scrub.batch)
        for problem in report.problems:
            state = " (repaired)" if problem.repaired else ""
            print(f"{problem.kind}: {problem.detail}{state}")
        print(
            f"scrub: {report.blobs_checked} blob(s) ({_size(report.bytes_read)}) and "
            f"{report.repositories_checked} repositor{'y' if report.repositories_checked == 1 else 'ies'}"
            f" checked, {len(report.problems)} problem(s)"
            f"{', pass complete' if report.pass_completed else ', resumes next run'}; "
            f"{report.duration:.2f}s"
        )
        unrepaired = [p for p in report.problems if not p.repaired]
        return 3 if unrepaired else 0

    return _run(args, body)


def _add_policy_jobs(scheduler: Scheduler, registry: Registry, config: Config) -> None:
    """Retention and usage compaction, configured as the server configures them."""
    add_policy_jobs(
        scheduler,
        registry,
        retention_interval=config.retention.interval_seconds(),
        usage_interval=config.quotas.usage_interval,
        configured_retention=config.retention.configured(),
    )


def _add_signing_job(scheduler: Scheduler, registry: Registry, config: Config) -> None:
    """The signing catch-up pass, as the servers run it, where this mode signs at all."""
    from ..app import state_dir
    from ..http.signatures import add_signing_job, build_signer
    from ..proxying import secret_box

    signer = build_signer(config, registry, secret_box(config, state_dir(config)))
    if signer.defaults.enabled:
        add_signing_job(scheduler, signer, config.signing.interval)


def _add_scanning_job(scheduler: Scheduler, registry: Registry, config: Config) -> None:
    """The scan job (catch-up walk, re-matching, database refresh), as the servers run it."""
    if not config.scanning.is_enabled(config.auth.enabled):
        return
    from registry_core.scanning import ScanService

    service = ScanService(
        registry,
        refresh_urls=config.scanning.urls(),
        refresh_interval=config.scanning.seconds("refresh_interval"),
        concurrency=config.scanning.concurrency,
    )
    service.install(scheduler, interval=config.scanning.seconds("interval"))


def worker_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    async def body(config: Config, registry: Registry) -> int:
        scheduler = Scheduler(Leases(registry.driver))
        add_maintenance_jobs(scheduler, registry, config)
        _add_policy_jobs(scheduler, registry, config)
        _add_signing_job(scheduler, registry, config)
        _add_scanning_job(scheduler, registry, config)
        if not scheduler.jobs:
            print("cargohold: no job is scheduled (set [gc] interval, ...)", file=sys.stderr)
            return 2
        registry.repo_index.add_job(scheduler)  # the website's listings, beside the others
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        print(f"cargohold: worker running {', '.join(scheduler.jobs)}", file=sys.stderr, flush=True)
        scheduler.start()
        await stopping.wait()
        await scheduler.stop()
        return 0

    return _run(args, body)


def _non_negative(text: str) -> float:
    """An argparse type: a number >= 0 (else a clean usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    value = _non_negative(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (as for serve)")
    parser.add_argument("--storage", help="storage URL (as for serve)")


def add_lifecycle_commands(commands: Any) -> None:
    gc = commands.add_parser("gc", help="collect garbage online (safe while servers run)")
    _common(gc)
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted")
    gc.add_argument("--grace", help="keep anything younger than this (default [gc] grace, 1h)")
    gc.add_argument("--settle", help="wait between set-aside and re-check (default [gc] settle)")
    gc.add_argument("--wait", default="0s", help="wait this long for a run elsewhere to end")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument(
        "--nice", type=int, help="lower this process's CPU priority by N (default [gc] nice, 10)"
    )
    gc.add_argument(
        "--rate",
        type=_non_negative,
        help="storage requests per second the run may start (default [gc] rate; 0: unlimited)",
    )
    gc.add_argument(
        "--concurrency",
        type=_count,
        help="storage requests in flight (default [gc] concurrency; 0: auto by driver)",
    )
    gc.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on an object store, slow down while it answers slower than when idle "
        "(default [gc] adaptive, on)",
    )
    gc.add_argument("--last", action="store_true", help="show the last completed run's report")
    gc.set_defaults(func=gc_command)
    scrub = commands.add_parser("scrub", help="re-read blobs and links, report (and repair)")
    _common(scrub)
    scrub.add_argument("--repair", action="store_true", help="remove what is broken")
    scrub.add_argument("--max-blobs", type=int, help="one step of this many blobs, then stop")
    scrub.add_argument("--rate", type=int, help="bytes per second to read (0: unlimited)")
    scrub.add_argument(
        "--min-age", help="judge only links older than this (default [scrub] min_age, 1h)"
    )
    scrub.set_defaults(func=scrub_command)
    worker = commands.add_parser("worker", help="run only the scheduled background jobs")
    _common(worker)
    worker.add_argument(
        "--nice", type=int, help="lower this process's CPU priority by N (default [gc] nice, 10)"
    )
    worker.set_defaults(func=worker_command)
