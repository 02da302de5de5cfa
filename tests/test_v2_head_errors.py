"""A HEAD that fails carries the headers its GET would: the error body's length and type.

Without a Content-Length, aiohttp's client (and any client that cannot tell where a
bodiless answer ends) drops the connection after the HEAD miss that starts every blob
push, so each push paid a new TCP connection. Distribution answers the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from tests.helpers.in_process import serve_in_process

MISSING = "sha256:" + "0" * 64


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    runner, base = await serve_in_process(tmp_path / "store")
    try:
        yield base
    finally:
        await runner.cleanup()


async def test_a_head_miss_announces_the_error_body_a_get_would_send(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v2/a/b/c/blobs/{MISSING}") as got:
            body = await got.read()
        async with http.head(f"{url}/v2/a/b/c/blobs/{MISSING}") as head:
            assert head.status == got.status == 404
            assert head.headers["Content-Length"] == str(len(body))
            assert head.headers["Content-Type"] == "application/json"
            assert await head.read() == b""


async def test_the_connection_is_reused_after_a_head_miss(url: str) -> None:
    opened: list[object] = []

    async def on_connection(session: object, context: object, params: object) -> None:
        opened.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        for _ in range(3):
            async with http.head(f"{url}/v2/a/b/c/blobs/{MISSING}") as head:
                assert head.status == 404
            async with http.get(f"{url}/v2/") as base:
                assert base.status == 200
    assert len(opened) == 1, SimpleNamespace(connections=len(opened))
