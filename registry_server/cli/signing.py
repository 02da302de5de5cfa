"""``cargohold signing-keys list|show|rotate|import|settings|sign-missing`` and ``cargohold verify``.

Work directly on the configured storage (``--config``/``--storage``, like the
other admin commands) and are safe while servers run. Commands that make or
use a private key need the servers' secrets key (``[secrets] key``,
``CARGOHOLD_SECRETS_KEY`` or the key file in ``state_dir``) and refuse
another one; nothing printed ever carries a private key. ``verify`` needs no
secret: it checks with the published public keys, or with ``--key`` files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from drivers import open_driver
from registry_core import ConfigError, Registry, RegistryError
from registry_core.config import Config
from registry_core.errors import ManifestUnknown
from registry_core.jobs import LeaseBusy, Leases
from registry_core.names import RepositoryName, Tenant
from registry_core.secrets import SecretBox
from registry_core.signing import (
    JOB,
    Signer,
    parse_public_key,
    published_keys,
    verify_image,
)
from registry_core.signing.openpgp import OpenPgpError
from registry_core.tenancy import NotFoundRecord, TenancyStore

from ..app import state_dir
from ..http.signatures import build_signer
from ..proxying import check_key, secret_box
from .common import config_from_args

Command = Callable[[Signer, argparse.Namespace], Awaitable[int]]


def _tenant(text: str) -> Tenant:
    owner, sep, registry = text.partition("/")
    if not sep or not owner or not registry or "/" in registry:
        raise ValueError(f"expected OWNER/REGISTRY, not {text!r}")
    return Tenant(owner, registry)


def _load(args: argparse.Namespace) -> tuple[Config, Registry]:
    config = config_from_args(args)
    driver = open_driver(
        config.storage.url, settings=config.storage.driver_settings(), **config.storage.options
    )
    return config, Registry(driver, settings_ttl=0.0)


def _run(command: Command, *, needs_secret: bool = True) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            config, registry = _load(args)
            box: SecretBox | None = secret_box(config, state_dir(config)) if needs_secret else None
        except (ConfigError, ValueError, OSError) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 2

        async def go() -> int:
            try:
                if box is not None:
                    await check_key(registry.driver, box)
                tenant_text = getattr(args, "registry", None)
                if tenant_text:
                    tenant = _tenant(tenant_text)
                    tenancy = TenancyStore(registry.driver)
                    if await tenancy.get_registry(tenant.owner, tenant.registry) is None:
                        raise NotFoundRecord(f"registry {tenant} does not exist")
                return await command(build_signer(config, registry, box), args)
            finally:
                await registry.close()

        try:
            return asyncio.run(go())
        except ConfigError as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 2
        except (RegistryError, ValueError, OpenPgpError, LeaseBusy) as exc:
            print(f"cargohold: {exc}", file=sys.stderr)
            return 1

    return run


async def list_keys(signer: Signer, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    records = await signer.keys.list(tenant)
    if args.json:
        shown = [
            {k: v for k, v in msgspec.structs.asdict(r).items() if k != "sealed"} for r in records
        ]
        print(msgspec.json.encode({"keys": shown}).decode())
        return 0
    header = ["ID", "KIND", "ALGORITHM", "STATUS", "FINGERPRINT"]
    rows = [[r.id, r.kind, r.algorithm, r.status, r.fingerprint] for r in records]
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return 0


async def show_key(signer: Signer, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    if args.id:
        record = await signer.keys.get(tenant, args.id)
        if record is None:
            raise ValueError(f"{tenant} has no key {args.id}")
    else:
        settings = await signer.effective(tenant)
        if settings.enabled:
            await signer.keys.signing_key(tenant, args.kind, rsa_bits=settings.rsa_bits)
        record = await signer.keys.current(tenant, args.kind)
        if record is None:
            raise ValueError(f"{tenant} has no active {args.kind} key (signing is off)")
    print(record.public.rstrip())
    return 0


async def rotate_keys(signer: Signer, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    kinds = ("cosign", "gpg") if args.kind == "all" else (args.kind,)
    for kind in kinds:
        record = await signer.rotate(tenant, kind)  # type: ignore[arg-type]
        print(f"{tenant}: new {kind} key {record.id} ({record.fingerprint}); older ones retired")
    return 0


async def import_key(signer: Signer, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    record = await signer.keys.import_key(tenant, text)
    print(f"{tenant}: imported {record.kind} key {record.id} ({record.fingerprint})")
    return 0


async def sign_missing(signer: Signer, args: argparse.Namespace) -> int:
    added = [0, 0]
    if args.registry:
        tenant = _tenant(args.registry)
        for name in await signer.registry.repositories(tenant):
            repo = signer.registry.repository(name)
            for digest in await repo.manifests.revisions():
                report = await signer.sign_manifest(name, digest)
                added[0] += report.cosign_added
                added[1] += report.simple_added
    else:
        async with Leases(signer.registry.driver).hold(JOB, 120.0) as guard:
            report = await signer.catch_up(guard, full=True)
        print(
            f"sign-missing done: {report.handled} manifest(s) in {report.repositories} "
            f"repositories checked" + (f", {report.failed} failed" if report.failed else "")
        )
        return 1 if report.failed else 0
    print(f"sign-missing done: {added[0]} cosign and {added[1]} simple signature(s) added")
    return 0


async def settings(signer: Signer, args: argparse.Namespace) -> int:
    tenant = _tenant(args.registry)
    current = await signer.settings(tenant)
    changes: dict[str, bool | int | None] = {}
    if args.enabled is not None:
        changes["enabled"] = {"on": True, "off": False, "default": None}[args.enabled]
    for kind in ("cosign", "simple", "referrers"):
        value = getattr(args, kind)
        if value is not None:
            changes[kind] = {"on": True, "off": False, "default": None}[value]
    if args.rsa_bits is not None:
        changes["rsa_bits"] = None if args.rsa_bits == "default" else int(args.rsa_bits)
    if changes:
        current = msgspec.structs.replace(current, **changes)
        await signer.set_settings(tenant, current)
    effective = await signer.effective(tenant)
    print(
        f"{tenant}: signing {'on' if effective.enabled else 'off'}, "
        f"cosign {'on' if effective.cosign else 'off'}, "
        f"simple {'on' if effective.simple else 'off'}, "
        f"referrers {'on' if effective.referrers else 'off'}, "
        f"rsa_bits {effective.rsa_bits}"
    )
    return 0


async def verify(signer: Signer, args: argparse.Namespace) -> int:
    name, reference = _split_reference(args.image)
    if args.key:
        keys = [parse_public_key(Path(f).read_text(), Path(f).name) for f in args.key]
    else:
        keys = await published_keys(signer.keys, RepositoryName.parse(name))
    try:
        report = await verify_image(signer.registry, name, reference, keys)
    except ManifestUnknown:
        print(f"cargohold: {args.image}: no such image", file=sys.stderr)
        return 1
    print(f"{name}@{report.digest}")
    for checked in report.checked:
        verdict = "valid" if checked.valid else f"INVALID ({checked.reason})"
        print(f"  {checked.kind:6}  {verdict}  key={checked.key or '-'}  {checked.identity or ''}")
    if not report.ok:
        print("no valid signature" if report.checked else "not signed", file=sys.stderr)
        return 1
    signers = sorted({c.key or "" for c in report.valid})
    print(f"verified: signed by {', '.join(signers)}")
    return 0


def _split_reference(text: str) -> tuple[str, str]:
    if "@" in text:
        name, _, digest = text.partition("@")
        return name, digest
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        return text, "latest"
    return name, tag


def add_signing_commands(commands: Any) -> None:
    group = commands.add_parser("signing-keys", help="a registry's signing keys")
    actions = group.add_subparsers(dest="action", required=True)

    def leaf(
        name: str, help_text: str, command: Command, *, registry: str = "required"
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        if registry == "required":
            parser.add_argument("registry", metavar="OWNER/REGISTRY")
        else:
            parser.add_argument("registry", metavar="OWNER/REGISTRY", nargs="?")
        parser.add_argument("--config", help="TOML configuration file (as for serve)")
        parser.add_argument("--storage", help="storage URL (as for serve)")
        parser.set_defaults(func=_run(command, needs_secret=name not in ("list", "settings")))
        return parser

    p = leaf("list", "list the keys (active and retired) with their fingerprints", list_keys)
    p.add_argument("--json", action="store_true", help="JSON (never a private key)")
    p = leaf("show", "print a public key (the active one of --kind, or --id)", show_key)
    p.add_argument("--kind", choices=["cosign", "gpg"], default="cosign")
    p.add_argument("--id", help="a key id from `list` (retired keys too)")
    p = leaf("rotate", "make a new key; the old one stays published, retired", rotate_keys)
    p.add_argument("--kind", choices=["cosign", "gpg", "all"], default="all")
    p = leaf("import", "import a PEM ECDSA P-256 or armored OpenPGP private key", import_key)
    p.add_argument("file", metavar="FILE", help="the key file, or - for standard input")
    p = leaf("settings", "show or change whether (and how) a registry signs", settings)
    choices = ["on", "off", "default"]
    p.add_argument("--enabled", choices=choices, help="sign this registry's images")
    p.add_argument("--cosign", choices=choices, help="cosign signatures")
    p.add_argument("--simple", choices=choices, help="simple (OpenPGP) signatures")
    p.add_argument("--referrers", choices=choices, help="cosign also in OCI 1.1 referrers form")
    p.add_argument(
        "--rsa-bits",
        choices=["3072", "4096", "default"],
        help="size of the next RSA (simple signing) key: at a rotation, or first use",
    )
    leaf(
        "sign-missing",
        "sign every tagged manifest that lacks a signature (one registry, or all)",
        sign_missing,
        registry="optional",
    )
    check = commands.add_parser("verify", help="check an image's signatures")
    check.add_argument("image", metavar="NAME:TAG", help="or NAME@DIGEST")
    check.add_argument(
        "--key", action="append", help="a public key file (PEM or armored OpenPGP); repeatable"
    )
    check.add_argument("--config", help="TOML configuration file (as for serve)")
    check.add_argument("--storage", help="storage URL (as for serve)")
    check.set_defaults(func=_run(verify, needs_secret=False))
