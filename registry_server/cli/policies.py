"""``cargohold retention|immutable|quotas``: per-registry lifecycle rules from the shell.

Like the tenancy commands, these work directly on the configured storage
(``--config``/``--storage``; no server needed); a running server sees a change
within ``auth.cache_ttl`` seconds. Setting a quota recomputes the usage of the
registries it covers, so their ledgers are exact from then on. Errors are one
clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from drivers import open_driver
from registry_core import ConfigError, Registry, RegistryError
from registry_core.config import Config
from registry_core.jobs import LeaseBusy
from registry_core.lifecycle.immutable import get_immutable, set_immutable
from registry_core.lifecycle.quotas import Quota, format_size, get_quota, parse_size, set_quota
from registry_core.lifecycle.retention import (
    RetentionRules,
    get_retention,
    run_retention,
    set_retention,
)
from registry_core.lifecycle.usage import Usage, recompute_usage
from registry_core.names import Tenant
from registry_core.tenancy import parse_duration

from .common import config_from_args

Command = Callable[[Registry, Config, argparse.Namespace], Awaitable[int]]


def _tenant(text: str) -> Tenant:
    owner, sep, registry = text.partition("/")
    if not (owner and sep and registry) or "/" in registry:
        raise ValueError(f"expected OWNER/REGISTRY, not {text!r}")
    return Tenant(owner, registry)


def _scope(text: str) -> tuple[str, str | None]:
    owner, _, registry = text.partition("/")
    if not owner or "/" in registry:
        raise ValueError(f"expected OWNER or OWNER/REGISTRY, not {text!r}")
    return owner, registry or None


def _days(seconds: float | None) -> str:
    if seconds is None:
        return "off"
    days = seconds / 86400
    return f"{days:g}d" if days >= 1 else f"{seconds:g}s"


def _configured_rules(config: Config) -> dict[str, RetentionRules]:
    return config.retention.configured()


# -- retention ------------------------------------------------------------------------


async def retention_set(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    duration = parse_duration
    rules = RetentionRules(
        keep_last=args.keep_last,
        delete_older_than=duration(args.older_than) if args.older_than else None,
        delete_unpulled_after=duration(args.unpulled) if args.unpulled else None,
        delete_untagged_after=duration(args.untagged) if args.untagged else None,
        protected=list(args.protect or []),
    )
    await set_retention(registry.settings, tenant, rules)
    print(
        f"retention rules of {tenant} removed"
        if rules.empty
        else f"retention rules of {tenant} set"
    )
    return 0


async def retention_show(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    rules = await get_retention(registry.settings, tenant, _configured_rules(config))
    if rules is None:
        print(f"{tenant}: no retention rules")
        return 0
    print(f"{tenant}:")
    print(
        f"  keep last tags per image: {rules.keep_last if rules.keep_last is not None else 'all'}"
    )
    print(f"  delete tags older than:   {_days(rules.delete_older_than)}")
    print(f"  delete tags not pulled:   {_days(rules.delete_unpulled_after)}")
    print(f"  delete untagged after:    {_days(rules.delete_untagged_after)}")
    print(f"  protected tags:           {', '.join(rules.protected) or 'none'}")
    return 0


async def retention_run(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    rules = await get_retention(registry.settings, tenant, _configured_rules(config))
    if rules is None:
        raise ValueError(f"{tenant} has no retention rules")
    grace = parse_duration(args.grace) if args.grace else (config.gc.seconds("grace") or 0.0)
    report = await run_retention(registry, tenant, rules, dry_run=args.dry_run, grace=grace)
    verb = "would delete" if args.dry_run else "deleted"
    for tag in report.tags:
        print(f"{verb} tag {tag}")
    for manifest in report.manifests:
        print(f"{verb} manifest {manifest}")
    for error in report.errors:
        print(f"kept {error}", file=sys.stderr)
    print(
        f"{tenant}: {verb} {len(report.tags)} tag(s) and {len(report.manifests)} manifest(s)"
        + ("; GC frees their bytes" if not args.dry_run and report.manifests else ""),
        file=sys.stderr,
    )
    return 0


# -- immutable tags ----------------------------------------------------------------------


async def immutable_set(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    await set_immutable(registry.settings, tenant, list(args.patterns))
    print(f"immutable tags of {tenant}: {', '.join(args.patterns)}")
    return 0


async def immutable_clear(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    await set_immutable(registry.settings, tenant, [])
    print(f"{tenant}: no tag is immutable")
    return 0


async def immutable_show(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    rules = await get_immutable(registry.settings, tenant)
    print(f"{tenant}: " + (", ".join(rules.patterns) if rules else "no immutable tags"))
    return 0


# -- quotas -------------------------------------------------------------------------------


async def _covered(registry: Registry, owner: str, name: str | None) -> list[Tenant]:
    if name is not None:
        return [Tenant(owner, name)]
    registry.usage.forget()
    return [Tenant(owner, r) for r in await registry.usage.registries_of(owner)]


async def quotas_set(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    owner, name = _scope(args.target)
    quota = Quota(max_bytes=parse_size(args.bytes) if args.bytes else None, max_images=args.images)
    await set_quota(registry.settings, owner, name, quota)
    await recompute_usage(registry, await _covered(registry, owner, name))
    print(f"quota of {args.target}: {_limits(quota)}")
    return 0


async def quotas_clear(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    owner, name = _scope(args.target)
    await set_quota(registry.settings, owner, name, Quota())
    print(f"{args.target}: no quota")
    return 0


def _limits(quota: Quota | None) -> str:
    if quota is None:
        return "none"
    parts = []
    if quota.max_bytes is not None:
        parts.append(f"{format_size(quota.max_bytes)} ({quota.max_bytes} bytes)")
    if quota.max_images is not None:
        parts.append(f"{quota.max_images} images")
    return ", ".join(parts)


def _used(usage: Usage) -> str:
    return f"{format_size(usage.bytes)} ({usage.bytes} bytes), {usage.images} images"


async def quotas_show(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    owner, name = _scope(args.target)
    quota = await get_quota(registry.settings, owner, name)
    if name is None:
        usage = await registry.usage.owner_total(owner)
    else:
        usage = (await registry.usage.measure(Tenant(owner, name)))[0]
    print(f"{args.target}:")
    print(f"  limit: {_limits(quota)}")
    print(f"  used:  {_used(usage)}")
    return 0


async def quotas_recompute(registry: Registry, config: Config, args: argparse.Namespace) -> int:
    tenants = None
    if args.target:
        owner, name = _scope(args.target)
        tenants = await _covered(registry, owner, name)
    results = await recompute_usage(registry, tenants)
    for tenant, usage in sorted(results.items(), key=lambda item: str(item[0])):
        print(f"{tenant}: {_used(usage)}")
    return 0


# -- wiring ----------------------------------------------------------------------------------


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            config = config_from_args(args)
            driver = open_driver(config.storage.url, **config.storage.options)
        except (ConfigError, ValueError, OSError) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 2

        async def go() -> int:
            registry = Registry(driver, settings_ttl=0.0)
            try:
                return await command(registry, config, args)
            finally:
                await registry.close()

        try:
            return asyncio.run(go())
        except (RegistryError, ValueError, msgspec.ValidationError, LeaseBusy) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 1

    return run


def _leaf(actions: Any, name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text)
    parser.add_argument("--config", help="TOML configuration file (as for serve)")
    parser.add_argument("--storage", help="storage URL (as for serve)")
    parser.set_defaults(func=_run(command))
    return parser


def _group(commands: Any, name: str, help_text: str) -> Any:
    return commands.add_parser(name, help=help_text).add_subparsers(dest="action", required=True)


def add_policy_commands(commands: Any) -> None:
    """Add the retention, immutable and quotas command groups to the ``cargohold`` parser."""
    retention = _group(commands, "retention", "retention rules of a registry")
    p = _leaf(retention, "set", "replace a registry's retention rules", retention_set)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("--keep-last", type=int, help="keep the N most recent tags per image")
    p.add_argument("--older-than", help="delete tags older than this (e.g. 90d)")
    p.add_argument("--unpulled", help="delete tags not pulled for this long (e.g. 30d)")
    p.add_argument("--untagged", help="delete untagged manifests older than this (e.g. 7d)")
    p.add_argument(
        "--protect", action="append", metavar="PATTERN", help="tags no rule deletes (repeatable)"
    )
    p = _leaf(retention, "show", "show a registry's retention rules", retention_show)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p = _leaf(retention, "run", "apply a registry's retention rules now", retention_run)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.add_argument(
        "--grace", help="keep untagged manifests younger than this (default [gc] grace, 1h)"
    )

    immutable = _group(commands, "immutable", "tags that cannot be moved or deleted once set")
    p = _leaf(immutable, "set", "make tags matching the patterns immutable", immutable_set)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("patterns", nargs="+", metavar="PATTERN", help="e.g. 'v*', or '*' for all")
    p = _leaf(immutable, "show", "show a registry's immutable patterns", immutable_show)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p = _leaf(immutable, "clear", "make every tag movable again", immutable_clear)
    p.add_argument("registry", metavar="OWNER/REGISTRY")

    quotas = _group(commands, "quotas", "storage quotas of owners and registries")
    p = _leaf(quotas, "set", "set the quota of an owner or a registry", quotas_set)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p.add_argument("--bytes", help="stored bytes, e.g. 10GiB, 500MB")
    p.add_argument("--images", type=int, help="number of images (tags; attachments not counted)")
    p = _leaf(quotas, "show", "show the quota and usage of an owner or a registry", quotas_show)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p = _leaf(quotas, "clear", "remove the quota of an owner or a registry", quotas_clear)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p = _leaf(
        quotas, "recompute", "measure usage exactly (every registry by default)", quotas_recompute
    )
    p.add_argument("target", nargs="?", metavar="OWNER[/REGISTRY]")
