"""The ``cargohold`` command line.

``cargohold serve`` runs the reference server. Configuration comes from a
TOML file, ``CARGOHOLD_SECTION_KEY`` environment variables and the flags, in
that order of precedence (flags win); a bad key stops start-up with a message
naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from registry_core import ConfigError, StorageError, load_config
from registry_core.config import LimitsConfig, TlsConfig

from .. import memory_dump
from ..observability import AccessLogger


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"server.listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _workers_flag(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number or 'auto'") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _install_event_loop(choice: str, local_storage: bool) -> None:
    """uvloop answers small requests faster; with the local driver's thread hops,
    asyncio's own loop measured faster (``ServerConfig.event_loop`` has the figures).

    ``auto`` therefore takes asyncio's loop when blobs are local files and uvloop
    otherwise.
    """
    if choice == "asyncio" or (choice == "auto" and local_storage):
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("server.event_loop = 'uvloop' but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tls_context(config: TlsConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``[tls]`` (None: plain HTTP)."""
    if not config.cert and not config.key:
        return None
    if not (config.cert and config.key):
        raise ConfigError("tls.cert and tls.key must be given together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.cert, config.key)
        if config.client_ca:
            context.load_verify_locations(config.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate or key: {exc}") from None
    return context


async def _serve_until_signalled(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float,
    reuse_port: bool,
    ssl_context: ssl.SSLContext | None = None,
    limits: LimitsConfig | None = None,
) -> None:
    """Serve *app* until SIGTERM/SIGINT, then stop gracefully.

    aiohttp's own graceful stop closes every connection before it waits, and a
    closed connection drops the rest of a request body still arriving: an
    upload in flight would stall until the timeout and be lost. So: stop
    listening first, wait (up to *shutdown_timeout*) for the requests being
    handled, bodies included, and only then let aiohttp close connections.
    """
    from ..app import IN_FLIGHT_KEY
    from ..connections import LimitedAppRunner

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    memory_dump.install(loop)  # only with CARGOHOLD_MEMORY_DUMP_DIR (debugging)
    runner = LimitedAppRunner(
        app,
        limits or LimitsConfig(),
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("cargohold.access"),
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port, ssl_context=ssl_context)
        await site.start()
        # What exists now (modules, the app, its start-up state) lives as long as the
        # process: frozen out of the cyclic collector's sight, a full collection scans only
        # what requests and background work made since. A worker's gen-2 pass went from
        # ~40 ms of CPU to ~2 ms (the signing benchmark: a pass landing inside a push burst
        # stalled that process's requests for its whole length).
        gc.freeze()
        await stopping.wait()
        await site.stop()  # no new connections from here on
        if not await app[IN_FLIGHT_KEY].wait_idle(shutdown_timeout):
            logging.getLogger("cargohold.server").warning(
                "requests still running after %ss; closing their connections", shutdown_timeout
            )
    finally:
        await runner.cleanup()


def _lighter_log_records() -> None:
    """Skip the caller, thread and process lookups of every log record.

    The server logs ``%(message)s`` only (every access-log line is built by
    ``AccessLogger``), so these fields are never shown; gathering them (a stack walk
    for the caller) was about 4% of a small push's CPU in a profile. The switches are the
    ones Python's logging HOWTO lists under "Optimization".
    """
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def serve(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {}
    if args.listen:
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.workers:
        overrides.setdefault("server", {})["workers"] = args.workers
    if args.log_format:
        overrides.setdefault("server", {})["log_format"] = args.log_format
    if args.storage:
        overrides.setdefault("storage", {})["url"] = args.storage
    if args.state_dir:
        overrides.setdefault("server", {})["state_dir"] = args.state_dir
    try:
        config = load_config(args.config, overrides=overrides)
        host, port = _split_listen(config.server.listen)
        workers = config.server.worker_count(config.storage.url)
        if workers > 1 and config.storage.url.startswith("memory://"):
            raise ConfigError("server.workers > 1 needs shared storage, not memory://")
        context = tls_context(config.tls)
    except ConfigError as exc:
        print(f"cargohold: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _lighter_log_records()
    from ..memory import limit_arenas

    limit_arenas()  # before any thread (and before --workers fork: the children inherit it)
    from ..app import build_app
    from ..proxying import check_proxy_settings

    try:
        # Before --workers fork: one generated key for all of them, checked against storage.
        check_proxy_settings(config)
    except ConfigError as exc:
        print(f"cargohold: {exc}", file=sys.stderr)
        return 2

    try:
        # Opened once here so a bad storage URL stops start-up with a clear message.
        app = build_app(config)
    except (ValueError, OSError) as exc:
        print(f"cargohold: cannot open storage {config.storage.url!r}: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(host) and context is None and not config.server.trusted_proxies:
        logging.getLogger("cargohold.server").warning(
            "listening on %s without TLS or a trusted TLS-terminating proxy: credentials "
            "would cross the network in clear text (set [tls] cert/key or "
            "server.trusted_proxies)",
            host,
        )
    from ..app import first_start

    try:
        if workers > 1:  # one process makes it itself, before it answers anything
            asyncio.run(first_start(config))
    except (ValueError, OSError, StorageError) as exc:
        print(f"cargohold: cannot prepare storage {config.storage.url!r}: {exc}", file=sys.stderr)
        return 2
    print(
        f"cargohold: serving {config.storage.url} on "
        f"{'https' if context else 'http'}://{host}:{port}"
        + (f" with {workers} workers" if workers > 1 else ""),
        file=sys.stderr,
        flush=True,
    )

    from ..app import REGISTRY_KEY

    local_storage = app[REGISTRY_KEY].driver.local_path("probe") is not None

    def run_worker() -> None:
        _install_event_loop(config.server.event_loop, local_storage)
        asyncio.run(
            _serve_until_signalled(
                build_app(config),
                host,
                port,
                shutdown_timeout=config.server.shutdown_timeout,
                reuse_port=workers > 1,
                ssl_context=tls_context(config.tls),
                limits=config.limits,
            )
        )

    if workers <= 1:
        run_worker()
        return 0
    from ..workers import run_workers

    return run_workers(workers, run_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cargohold", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the registry server")
    run.add_argument("--config", help="TOML configuration file")
    run.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    run.add_argument(
        "--storage",
        help="storage URL: a folder, file:///abs/path or memory:// (default ./var/registry)",
    )
    run.add_argument(
        "--workers",
        type=_workers_flag,
        help="server processes sharing the port (default: auto, one per CPU; 1 for memory://)",
    )
    run.add_argument("--log-format", choices=["text", "json"], help="access log format")
    run.add_argument("--state-dir", help="folder for local state (the bootstrap admin password)")
    run.set_defaults(func=serve)
    from .admin import add_admin_commands
    from .archives import add_archive_commands
    from .upstreams import add_upstream_commands

    add_admin_commands(commands)
    add_archive_commands(commands)
    from .lifecycle import add_lifecycle_commands

    add_lifecycle_commands(commands)
    from .policies import add_policy_commands

    add_policy_commands(commands)
    add_upstream_commands(commands)
    from .signing import add_signing_commands

    add_signing_commands(commands)
    from .scanning import add_scanning_commands

    add_scanning_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
