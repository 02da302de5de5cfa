"""An in-process server for the website's fast tests, and a visitor that logs in and posts forms.

``serve_site`` builds the real application (auth on, ``file://`` storage and a state folder
under the test's temporary folder, so the secrets key and signing keys are the test's own),
serves it on 127.0.0.1 and seeds ``acme/prod`` with one user per role (``reader``,
``writer``, ``admin``), the superuser ``root`` and ``other/secret`` for isolation checks.
:class:`LiveVisitor` talks to it over real HTTP: it logs in through the login form, keeps
the cookies, reads each page's CSRF token, and posts forms with it (or, when asked, without).
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from registry_core import Registry, load_config
from registry_core.tenancy import TenancyStore
from registry_server.app import REGISTRY_KEY, TENANCY_KEY, build_app
from tests.api_support import QUIET_AUTH

USERS = {"reader": "read", "writer": "write", "admin": "admin"}
PASSWORD = "pw-{}-0123456789"
_HIDDEN = re.compile(r'<input type="hidden" name="(?P<name>[a-z_]+)" value="(?P<value>[^"]*)">')


@dataclass
class Live:
    app: web.Application
    base: str

    @property
    def registry(self) -> Registry:
        return self.app[REGISTRY_KEY]

    @property
    def tenancy(self) -> TenancyStore:
        return self.app[TENANCY_KEY]

    def api_auth(self, user: str) -> dict[str, str]:
        """Basic-auth headers of *user* for the management API."""
        pair = f"{user}:{PASSWORD.format(user)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


@asynccontextmanager
async def serve_site(tmp_path: Path, **sections: Any) -> AsyncIterator[Live]:
    overrides: dict[str, Any] = {
        "auth": dict(QUIET_AUTH),
        "storage": {"url": f"file://{tmp_path / 'store'}"},
        "server": {"state_dir": str(tmp_path / "state")},
        **sections,
    }
    app = build_app(load_config(overrides=overrides, environ={}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    live = Live(app, f"http://127.0.0.1:{port}")
    tenancy = live.tenancy
    await tenancy.create_owner("acme")
    await tenancy.create_registry("acme", "prod")
    await tenancy.create_owner("other")
    await tenancy.create_registry("other", "secret")
    await tenancy.create_user("root", PASSWORD.format("root"), superuser=True)
    for user, role in USERS.items():
        await tenancy.create_user(user, PASSWORD.format(user))
        await tenancy.add_member("acme", "prod", user, role)  # type: ignore[arg-type]
    try:
        yield live
    finally:
        await runner.cleanup()


class LiveVisitor:
    """One browser-like visitor of a :class:`Live` site."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> LiveVisitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def _remember(self, text: str) -> None:
        for match in _HIDDEN.finditer(text):
            if match["name"] == "csrf":
                self.csrf = unescape(match["value"])

    async def login(self, user: str) -> None:
        page = await self.get("/ui/")
        token = dict((m["name"], unescape(m["value"])) for m in _HIDDEN.finditer(page[1]))
        form = {
            "login_token": token["login_token"],
            "username": user,
            "password": PASSWORD.format(user),
        }
        status, text = await self.post("/ui/login", form, csrf=False)
        assert status == 200, text[:300]

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.live.base + path) as answer:
            text = await answer.text()
        self._remember(text)
        return answer.status, text

    async def post(
        self, path: str, form: dict[str, str] | list[tuple[str, str]], *, csrf: bool = True
    ) -> tuple[int, str]:
        fields = list(form.items()) if isinstance(form, dict) else list(form)
        if csrf:
            fields.append(("csrf", self.csrf))
        async with self.session.post(self.live.base + path, data=fields) as answer:
            text = await answer.text()
        self._remember(text)
        return answer.status, text

    async def api(self, path: str, user: str = "root") -> Any:
        headers = self.live.api_auth(user)
        async with (
            aiohttp.ClientSession() as plain,
            plain.get(self.live.base + path, headers=headers) as answer,
        ):
            assert answer.status == 200, (path, answer.status, await answer.text())
            return await answer.json()
