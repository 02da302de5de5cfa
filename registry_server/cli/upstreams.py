"""``cargohold upstreams add|list|remove``: a registry's upstreams from the shell.

Works directly on the configured storage (``--config``/``--storage`` as the
other admin commands), with the same checks as the management API. Needs the
same secrets key as the servers (``[secrets] key``, ``CARGOHOLD_SECRETS_KEY``,
or the key file in ``state_dir``) and refuses to run with another one. The
password is read from standard input only and never printed; no output
carries a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from drivers import open_driver
from registry_core import ConfigError, RegistryError
from registry_core.names import Tenant
from registry_core.proxy import UpstreamSpec, UpstreamStore, view
from registry_core.settings import SettingsStore
from registry_core.tenancy import NotFoundRecord, TenancyStore

from ..app import state_dir
from ..proxying import check_key, secret_box
from .common import config_from_args

Command = Callable[[UpstreamStore, Tenant, argparse.Namespace], Awaitable[int]]


def _tenant(text: str) -> Tenant:
    owner, sep, registry = text.partition("/")
    if not sep or not owner or not registry or "/" in registry:
        raise ValueError(f"expected OWNER/REGISTRY, not {text!r}")
    return Tenant(owner, registry)


def _password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise ValueError("no password on standard input")
    return secret


async def add(store: UpstreamStore, tenant: Tenant, args: argparse.Namespace) -> int:
    if args.password_stdin and not args.username:
        raise ValueError("--password-stdin needs --username")
    spec = UpstreamSpec(
        name=args.name,
        url=args.url,
        priority=args.priority,
        username=args.username,
        password=_password(args),
        cache=not args.no_cache,
        sign=not args.no_sign,
        tag_ttl=args.tag_ttl,
        images=args.images,
        prefix=args.prefix,
    )
    upstream = await store.add(tenant, spec)
    print(f"added upstream {upstream.name} ({upstream.url}) to {tenant}")
    return 0


async def list_(store: UpstreamStore, tenant: Tenant, args: argparse.Namespace) -> int:
    views = [view(u) for u in await store.list(tenant)]
    if args.json:
        print(msgspec.json.encode({"upstreams": views}).decode())
        return 0
    rows = [
        [
            v.name,
            v.url,
            str(v.priority),
            "yes" if v.cache else "no",
            f"{v.tag_ttl:g}s",
            v.images or "*",
            v.prefix or "",
            (v.username or "") + (" (password set)" if v.has_credentials else ""),
        ]
        for v in views
    ]
    header = ["NAME", "URL", "PRIORITY", "CACHE", "TAG_TTL", "IMAGES", "PREFIX", "LOGIN"]
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return 0


async def remove(store: UpstreamStore, tenant: Tenant, args: argparse.Namespace) -> int:
    await store.remove(tenant, args.upstream)
    print(f"removed upstream {args.upstream} from {tenant}")
    return 0


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            config = config_from_args(args)
            tenant = _tenant(args.registry)
            box = secret_box(config, state_dir(config))
            driver = open_driver(config.storage.url, **config.storage.options)
        except (ConfigError, ValueError, OSError) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 2

        async def go() -> int:
            try:
                await check_key(driver, box)
                if await TenancyStore(driver).get_registry(tenant.owner, tenant.registry) is None:
                    raise NotFoundRecord(f"registry {tenant} does not exist")
                store = UpstreamStore(SettingsStore(driver, ttl=0.0), box)
                return await command(store, tenant, args)
            finally:
                await driver.close()

        try:
            return asyncio.run(go())
        except ConfigError as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 2
        except (RegistryError, ValueError) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 1

    return run


def add_upstream_commands(commands: Any) -> None:
    group = commands.add_parser("upstreams", help="manage the registries a registry pulls through")
    actions = group.add_subparsers(dest="action", required=True)

    def leaf(name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("registry", metavar="OWNER/REGISTRY")
        parser.add_argument("--config", help="TOML configuration file (as for serve)")
        parser.add_argument("--storage", help="storage URL (as for serve)")
        parser.set_defaults(func=_run(command))
        return parser

    p = leaf("add", "add an upstream (URL: http(s)://host[:port])", add)
    p.add_argument("url")
    p.add_argument("--name", required=True, help="a short name (also the metrics label)")
    p.add_argument("--priority", type=int, default=100, help="lower is asked first (100)")
    p.add_argument("--username", help="login at the upstream")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password or token from stdin"
    )
    p.add_argument("--no-cache", action="store_true", help="stream through, store nothing")
    p.add_argument(
        "--no-sign", action="store_true", help="never sign what is cached from this upstream"
    )
    p.add_argument("--tag-ttl", default="10m", help="how long a cached tag is fresh (10m)")
    p.add_argument("--images", help="only image names matching this glob go to this upstream")
    p.add_argument("--prefix", help="path prepended at the upstream, e.g. library")
    p = leaf("list", "list a registry's upstreams (never a password)", list_)
    p.add_argument("--json", action="store_true", help="JSON as the management API answers")
    p = leaf("remove", "remove an upstream", remove)
    p.add_argument("upstream", metavar="NAME")
