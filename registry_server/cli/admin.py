"""``cargohold users|owners|registries|members|api-keys|tokens``: tenancy from the shell.

These commands work directly on the configured storage (no server needed),
for bootstrap and scripts. They take ``--config``/``--storage`` like
``serve``. Secrets are read from standard input (``--password-stdin``) and
printed once on creation, never again; errors are one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from drivers import open_driver
from registry_core import ConfigError, Registry, RegistryError
from registry_core.signing import Signer
from registry_core.tenancy import ROLES, TenancyStore, parse_duration

from .common import config_from_args

Command = Callable[[TenancyStore, argparse.Namespace], Awaitable[int]]


def _split_tenant(text: str, *, registry_required: bool) -> tuple[str, str | None]:
    owner, sep, registry = text.partition("/")
    if registry_required and not (sep and registry):
        raise ValueError(f"expected OWNER/REGISTRY, not {text!r}")
    if "/" in registry:
        raise ValueError(f"expected OWNER or OWNER/REGISTRY, not {text!r}")
    return owner, (registry or None)


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(moment))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)
            ).rstrip()
        )


def _read_secret(args: argparse.Namespace) -> str:
    if not getattr(args, "password_stdin", False):
        raise ValueError("pass the password on standard input with --password-stdin")
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise ValueError("no password on standard input")
    return secret


# -- commands --------------------------------------------------------------------------


async def users_create(store: TenancyStore, args: argparse.Namespace) -> int:
    user = await store.create_user(args.name, _read_secret(args), superuser=args.superuser)
    print(f"created user {user.name}" + (" (superuser)" if user.superuser else ""))
    return 0


async def users_list(store: TenancyStore, args: argparse.Namespace) -> int:
    users = await store.list_users()
    _table(
        [[u.name, "yes" if u.superuser else "", _when(u.created)] for u in users],
        ["NAME", "SUPERUSER", "CREATED"],
    )
    return 0


async def users_password(store: TenancyStore, args: argparse.Namespace) -> int:
    await store.update_user(args.name, password=_read_secret(args))
    print(f"changed the password of {args.name}")
    return 0


async def users_update(store: TenancyStore, args: argparse.Namespace) -> int:
    # The library refuses to demote the last superuser, as it does for the API.
    user = await store.update_user(args.name, superuser=args.superuser)
    print(f"{user.name} is {'now' if user.superuser else 'no longer'} a superuser")
    return 0


async def users_delete(store: TenancyStore, args: argparse.Namespace) -> int:
    # The library refuses to delete the last superuser, as it does for the API.
    await store.delete_user(args.name)
    print(f"deleted user {args.name} and revoked its API keys")
    return 0


async def owners_create(store: TenancyStore, args: argparse.Namespace) -> int:
    owner = await store.create_owner(args.owner, "user" if args.user else "org")
    print(f"created owner {owner.name}")
    return 0


async def owners_list(store: TenancyStore, args: argparse.Namespace) -> int:
    owners = await store.list_owners()
    _table([[o.name, o.kind, _when(o.created)] for o in owners], ["OWNER", "KIND", "CREATED"])
    return 0


async def owners_delete(store: TenancyStore, args: argparse.Namespace) -> int:
    await store.delete_owner(args.owner)
    print(f"deleted owner {args.owner}")
    return 0


async def registries_create(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.registry, registry_required=True)
    assert registry is not None
    signer = await _signer(store, args)  # checked before anything is created
    record = await store.create_registry(owner, registry, "public" if args.public else "private")
    print(f"created registry {owner}/{registry} ({record.visibility})")
    if signer is not None:
        for key in await signer.make_keys(record.tenant):
            print(f"signing key {key.id} ({key.algorithm}, {key.fingerprint})")
    return 0


async def _signer(store: TenancyStore, args: argparse.Namespace) -> Signer | None:
    """The signer that makes a new registry's keys, or None when new registries do not sign.

    Raises ConfigError (a ValueError) when this process's secrets key is not the one the
    storage knows, before the registry is created, so a refused key leaves nothing behind.
    """
    from ..app import state_dir
    from ..http.signatures import build_signer
    from ..proxying import check_key, secret_box

    config = config_from_args(args)
    if not config.signing.is_enabled(config.auth.enabled):
        return None
    box = secret_box(config, state_dir(config))
    await check_key(store.driver, box)
    return build_signer(config, Registry(store.driver, settings_ttl=0.0), box)


async def registries_list(store: TenancyStore, args: argparse.Namespace) -> int:
    records = await store.list_registries(args.owner)
    _table(
        [[f"{r.owner}/{r.name}", r.visibility, _when(r.created)] for r in records],
        ["REGISTRY", "VISIBILITY", "CREATED"],
    )
    return 0


async def registries_update(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.registry, registry_required=True)
    assert registry is not None
    record = await store.update_registry(owner, registry, visibility=args.visibility)
    print(f"registry {owner}/{registry} is {record.visibility}")
    return 0


async def registries_delete(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.registry, registry_required=True)
    assert registry is not None
    await store.delete_registry(owner, registry)
    print(f"deleted registry {owner}/{registry} (its images stay until garbage collection)")
    return 0


async def members_add(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.target, registry_required=False)
    await store.add_member(owner, registry, args.user, args.role)
    print(f"{args.user} is {args.role} on {args.target}")
    return 0


async def members_list(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.target, registry_required=False)
    members = await store.list_members(owner, registry)
    _table([[m.user, m.role] for m in members], ["USER", "ROLE"])
    return 0


async def members_remove(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.target, registry_required=False)
    await store.remove_member(owner, registry, args.user)
    print(f"removed {args.user} from {args.target}")
    return 0


async def api_keys_create(store: TenancyStore, args: argparse.Namespace) -> int:
    expires = parse_duration(args.expires) if args.expires else None
    record, secret = await store.create_api_key(args.user, name=args.name or "", expires_in=expires)
    print(secret)
    print(
        f"API key {record.id} for {record.user}, expires {_when(record.expires)}; shown once",
        file=sys.stderr,
    )
    return 0


async def api_keys_list(store: TenancyStore, args: argparse.Namespace) -> int:
    keys = await store.list_api_keys(args.user)
    now = time.time()
    rows = [
        [
            k.id,
            k.user,
            k.name,
            _when(k.expires),
            "revoked" if k.revoked else ("active" if k.active(now) else "expired"),
        ]
        for k in keys
    ]
    _table(rows, ["ID", "USER", "NAME", "EXPIRES", "STATE"])
    return 0


async def api_keys_revoke(store: TenancyStore, args: argparse.Namespace) -> int:
    await store.revoke_api_key(args.id)
    print(f"revoked API key {args.id}")
    return 0


async def tokens_create(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.registry, registry_required=True)
    assert registry is not None
    expires = parse_duration(args.expires) if args.expires else None
    record, secret = await store.create_token(
        owner,
        registry,
        name=args.name or "",
        expires_in=expires,
        max_pulls=args.max_pulls,
        images=args.images,
    )
    print(secret)
    print(
        f"entitlement token {record.id} for {owner}/{registry} (pull only), expires "
        f"{_when(record.expires)}; shown once",
        file=sys.stderr,
    )
    return 0


async def tokens_list(store: TenancyStore, args: argparse.Namespace) -> int:
    owner, registry = _split_tenant(args.registry, registry_required=True)
    assert registry is not None
    tokens = await store.list_tokens(owner, registry)
    now = time.time()
    rows = []
    for t in tokens:
        pulls = await store.pull_count(t.id)
        state = "revoked" if t.revoked else ("active" if t.active(now) else "expired")
        limit = f"{pulls}/{t.max_pulls}" if t.max_pulls is not None else str(pulls)
        rows.append([t.id, t.name, _when(t.expires), limit, t.images or "*", state])
    _table(rows, ["ID", "NAME", "EXPIRES", "PULLS", "IMAGES", "STATE"])
    return 0


async def tokens_revoke(store: TenancyStore, args: argparse.Namespace) -> int:
    await store.revoke_token(args.id)
    print(f"revoked token {args.id}")
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
            try:
                return await command(TenancyStore(driver), args)
            finally:
                await driver.close()

        try:
            return asyncio.run(go())
        except (RegistryError, ValueError) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 1

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file (as for serve)")
    parser.add_argument("--storage", help="storage URL (as for serve)")


def _group(commands: Any, name: str, help_text: str) -> Any:
    group = commands.add_parser(name, help=help_text)
    return group.add_subparsers(dest="action", required=True)


def _leaf(actions: Any, name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text)
    _common(parser)
    parser.set_defaults(func=_run(command))
    return parser


def add_admin_commands(commands: Any) -> None:
    """Add the tenancy command groups to the ``cargohold`` parser."""
    users = _group(commands, "users", "manage users")
    p = _leaf(users, "create", "create a user", users_create)
    p.add_argument("name")
    p.add_argument("--superuser", action="store_true", help="platform operator: every right")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _leaf(users, "list", "list users", users_list)
    p = _leaf(users, "set-password", "change a user's password", users_password)
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p = _leaf(users, "update", "make a user a superuser or no longer one", users_update)
    p.add_argument("name")
    p.add_argument(
        "--superuser",
        action=argparse.BooleanOptionalAction,
        required=True,
        help="--no-superuser demotes (refused for the last superuser)",
    )
    p = _leaf(
        users,
        "delete",
        "delete a user (revokes its API keys; never the last superuser)",
        users_delete,
    )
    p.add_argument("name")

    owners = _group(commands, "owners", "manage owners (organisations and user accounts)")
    p = _leaf(owners, "create", "create an owner", owners_create)
    p.add_argument("owner")
    p.add_argument(
        "--user", action="store_true", help="a personal account rather than an organisation"
    )
    _leaf(owners, "list", "list owners", owners_list)
    p = _leaf(owners, "delete", "delete an owner with no registries", owners_delete)
    p.add_argument("owner")

    registries = _group(commands, "registries", "manage registries (OWNER/REGISTRY)")
    p = _leaf(registries, "create", "create a registry", registries_create)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("--public", action="store_true", help="anonymous pull allowed")
    p = _leaf(registries, "list", "list registries", registries_list)
    p.add_argument("owner", nargs="?")
    p = _leaf(registries, "update", "change a registry's visibility", registries_update)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("--visibility", choices=["private", "public"], required=True)
    p = _leaf(
        registries, "delete", "delete a registry record, its members and tokens", registries_delete
    )
    p.add_argument("registry", metavar="OWNER/REGISTRY")

    members = _group(commands, "members", "manage who may pull, push and administer")
    p = _leaf(members, "add", "give a user a role on an owner or one registry", members_add)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p.add_argument("user")
    p.add_argument("--role", choices=ROLES, required=True)
    p = _leaf(members, "list", "list members", members_list)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p = _leaf(members, "remove", "remove a member", members_remove)
    p.add_argument("target", metavar="OWNER[/REGISTRY]")
    p.add_argument("user")

    keys = _group(commands, "api-keys", "manage users' API keys")
    p = _leaf(keys, "create", "create an API key (printed once)", api_keys_create)
    p.add_argument("user")
    p.add_argument("--expires", help="lifetime, e.g. 30d, 12h")
    p.add_argument("--name", help="a label")
    p = _leaf(keys, "list", "list API keys", api_keys_list)
    p.add_argument("user", nargs="?")
    p = _leaf(keys, "revoke", "revoke an API key", api_keys_revoke)
    p.add_argument("id")

    tokens = _group(commands, "tokens", "manage read-only entitlement tokens of a registry")
    p = _leaf(tokens, "create", "create an entitlement token (printed once)", tokens_create)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p.add_argument("--expires", help="lifetime, e.g. 30d, 12h")
    p.add_argument("--max-pulls", type=int, help="manifest GETs allowed in all")
    p.add_argument("--images", help="glob over image names, e.g. 'app' or 'tools/*'")
    p.add_argument("--name", help="a label")
    p = _leaf(tokens, "list", "list a registry's tokens", tokens_list)
    p.add_argument("registry", metavar="OWNER/REGISTRY")
    p = _leaf(tokens, "revoke", "revoke a token", tokens_revoke)
    p.add_argument("id")
