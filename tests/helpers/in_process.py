"""The reference server's app in the test's own process, on a real loopback port.

For tests that patch the library (a slowed hash, a counting driver) and still want real
HTTP: ``build_app`` with auth off over a local folder, served by aiohttp's runner.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from registry_core import load_config
from registry_server.app import build_app


async def serve_in_process(store: Path) -> tuple[web.AppRunner, str]:
    """An open registry on *store*: its runner (``cleanup()`` stops it) and base URL."""
    config = load_config(
        overrides={"auth": {"enabled": False}, "storage": {"url": f"file://{store}"}},
        environ={},
    )
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
