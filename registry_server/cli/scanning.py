"""``cargohold vulndb import|status`` and ``cargohold scan``: security scanning from the command line.

Every command works directly on the configured storage (``--config``/``--storage``,
like the other admin commands) and is safe while servers run: an import switches
the database atomically under its lease, a scan claims its digest so no server
scans it at the same time, and servers re-match their stored results when they
see the new database. ``scan NAME:TAG`` scans in this process (again, when a
result exists) and attaches the SBOM; ``scan show`` prints the stored result and
``scan sbom`` the stored CycloneDX SBOM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import msgspec

from registry_core import RegistryError
from registry_core.config import Config
from registry_core.digest import Digest
from registry_core.registry import Registry
from registry_core.scanning import ScanBusy, ScanFailed, Scanner, ScanService, VulnDatabase
from registry_core.scanning.osv import SEVERITIES
from registry_core.scanning.service import import_paths_or_urls

from ..http.scanning_api import Vulnerabilities, describe
from .lifecycle import _common, _run


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def import_command(args: argparse.Namespace) -> int:
    async def body(config: Config, registry: Registry) -> int:
        try:
            reports = await import_paths_or_urls(registry, args.sources)
        except FileNotFoundError as exc:
            print(f"cargohold: no such file or folder: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a URL that did not answer
            print(f"cargohold: could not fetch: {exc}", file=sys.stderr)
            return 1
        for report in reports:
            print(
                f"{report.label}: {report.records} records, {report.advisories} advisories "
                f"for {report.packages} packages, {report.skipped} skipped (unparseable), "
                f"{report.withdrawn} withdrawn"
            )
        return 0

    return _run(args, body)


def status_command(args: argparse.Namespace) -> int:
    async def body(config: Config, registry: Registry) -> int:
        state = await VulnDatabase(registry.driver).state(fresh=True)
        if args.json:
            print(msgspec.json.encode(state).decode())
            return 0
        if not state.sources:
            print("no vulnerability data imported (cargohold vulndb import PATH_OR_URL)")
            return 0
        now = time.time()
        print(f"database version {state.version}")
        for info in sorted(state.sources.values(), key=lambda s: s.label):
            ecosystems = ", ".join(f"{e} ({n})" for e, n in sorted(info.ecosystems.items()))
            print(
                f"{info.label}\n  imported {_age(now - info.imported)} ago; {info.records} records, "
                f"{info.advisories} advisories, {info.skipped} skipped, {info.withdrawn} withdrawn"
                f"\n  packages per ecosystem: {ecosystems or '-'}"
            )
        return 0

    return _run(args, body)


async def _target(registry: Registry, reference: str) -> tuple[str, Digest]:
    if "@" in reference:
        name, _, ref = reference.partition("@")
    else:
        head, sep, tag = reference.rpartition(":")
        name, ref = (head, tag) if sep and "/" not in tag else (reference, "latest")
    digest = await registry.repository(name).manifests.resolve(ref)
    return name, digest


def _table(result: Vulnerabilities, name: str) -> str:
    lines = [f"{name}@{result.digest}: scan {result.status}"]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if result.status == "done":
        counts = ", ".join(f"{result.counts.get(s, 0)} {s}" for s in SEVERITIES)
        lines.append(f"  findings: {counts}")
    header = ("SEVERITY", "ID", "PACKAGE", "INSTALLED", "FIXED", "SCORE", "ALIASES")
    for platform in result.platforms:
        lines.append(
            f"\n{platform.platform or 'image'} ({platform.os or 'unknown OS'}, "
            f"{platform.packages} packages)"
        )
        rows = [header] + [
            (
                f.severity,
                f.id,
                f.package,
                f.installed_version,
                f.fixed_version or "-",
                f"{f.score:.1f}" if f.score is not None else "-",
                ",".join(f.aliases) or "-",
            )
            for f in platform.findings
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(lines)


def scan_command(args: argparse.Namespace) -> int:
    words: list[str] = args.target
    if words[0] == "show" and len(words) == 2:
        return _show(args, words[1])
    if words[0] == "sbom" and len(words) == 2:
        return _sbom(args, words[1])
    if len(words) != 1:
        print(
            "cargohold: scan NAME:TAG|NAME@DIGEST, scan show NAME:TAG or scan sbom NAME:TAG",
            file=sys.stderr,
        )
        return 2

    async def body(config: Config, registry: Registry) -> int:
        try:
            name, digest = await _target(registry, words[0])
        except (RegistryError, ValueError) as exc:
            print(f"cargohold: {words[0]}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        scanner = Scanner(registry)
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                report = await scanner.scan(digest, force=True)
                break
            except ScanBusy:
                if not args.wait or time.monotonic() > deadline:
                    print(f"{name}@{digest}: being scanned by another process", file=sys.stderr)
                    return 0 if not args.wait else 1
                await asyncio.sleep(1.0)
            except ScanFailed as exc:
                print(f"cargohold: scan of {name}@{digest} failed: {exc}", file=sys.stderr)
                return 1
        await scanner.attach(name, digest)
        counts = ", ".join(f"{report.counts().get(s, 0)} {s}" for s in SEVERITIES)
        print(f"{name}@{digest}: scanned; {counts}")
        return 0

    return _run(args, body)


def _show(args: argparse.Namespace, reference: str) -> int:
    async def body(config: Config, registry: Registry) -> int:
        try:
            name, digest = await _target(registry, reference)
        except (RegistryError, ValueError) as exc:
            print(f"cargohold: {reference}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        result = await describe(ScanService(registry), digest, args.severity)
        if args.format == "json":
            print(msgspec.json.encode(result).decode())
        else:
            print(_table(result, name))
        return 0

    return _run(args, body)


def _sbom(args: argparse.Namespace, reference: str) -> int:
    """The stored CycloneDX SBOM, to stdout or ``--output`` (of an index: ``--platform``)."""

    async def body(config: Config, registry: Registry) -> int:
        try:
            name, digest = await _target(registry, reference)
        except (RegistryError, ValueError) as exc:
            print(f"cargohold: {reference}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        document = await Scanner(registry).sbom(digest, args.platform)
        if document is None:
            where = f" for {args.platform}" if args.platform else ""
            print(f"cargohold: {name}@{digest}: no SBOM{where} (not scanned yet?)", file=sys.stderr)
            return 1
        if args.output:
            with open(args.output, "wb") as out:
                out.write(document)
        else:
            sys.stdout.buffer.write(document + b"\n")
            sys.stdout.flush()
        return 0

    return _run(args, body)


def add_scanning_commands(commands: Any) -> None:
    vulndb = commands.add_parser("vulndb", help="the offline vulnerability database (OSV)")
    actions = vulndb.add_subparsers(dest="vulndb_command", required=True)
    importer = actions.add_parser(
        "import", help="import OSV records: all.zip exports, .json files, folders, URLs"
    )
    _common(importer)
    importer.add_argument("sources", nargs="+", metavar="PATH_OR_URL")
    importer.set_defaults(func=import_command)
    status = actions.add_parser("status", help="sources, record counts and ages")
    _common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=status_command)
    scan = commands.add_parser(
        "scan",
        help="scan an image now (scan NAME:TAG|NAME@DIGEST), show its result (scan show NAME:TAG)"
        " or print its SBOM (scan sbom NAME:TAG)",
    )
    _common(scan)
    scan.add_argument("target", nargs="+", metavar="NAME:TAG|NAME@DIGEST")
    scan.add_argument("--wait", action="store_true", help="wait while another process scans it")
    scan.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most")
    scan.add_argument("--format", choices=["table", "json"], default="table")
    scan.add_argument("--severity", choices=list(SEVERITIES), help="only findings at or above")
    scan.add_argument("--platform", help="scan sbom: the platform of an index (os/arch[/variant])")
    scan.add_argument("--output", "-o", help="scan sbom: write it to this file")
    scan.set_defaults(func=scan_command)
