"""The website's static files and the security headers of every website response.

Static files ship inside the package and are served under names carrying a hash of
their content (``site.3f2a9c01.css``), so they can be cached for a year: a changed file
gets a new name. Files are read once at start-up (they are a few kilobytes). Every
website response carries a strict Content-Security-Policy (scripts and styles from our
own origin only, nothing inline), ``nosniff``, a referrer policy and frame blocking.
This module never serves a file that is not in the package's ``static/`` folder.
"""

from __future__ import annotations

import hashlib
import mimetypes
from importlib import resources
from typing import Final

import attrs
from aiohttp import web

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC_PREFIX: Final = "/ui/static/"


@attrs.frozen
class Asset:
    body: bytes
    content_type: str


class Assets:
    """The packaged static files by their hashed names."""

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self._files: dict[str, Asset] = {}
        folder = resources.files(__package__).joinpath("static")
        for entry in folder.iterdir():
            if not entry.is_file() or entry.name.startswith("."):
                continue
            body = entry.read_bytes()
            stem, dot, suffix = entry.name.rpartition(".")
            hashed = f"{stem}.{hashlib.sha256(body).hexdigest()[:12]}{dot}{suffix}"
            kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            self._files[hashed] = Asset(body, kind)
            self.urls[entry.name] = STATIC_PREFIX + hashed

    def url(self, name: str) -> str:
        return self.urls[name]

    async def handler(self, request: web.Request) -> web.Response:
        asset = self._files.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        charset = (
            "utf-8" if asset.content_type.startswith(("text/", "application/javascript")) else None
        )
        return web.Response(
            body=asset.body,
            content_type=asset.content_type,
            charset=charset,
            headers={"Cache-Control": "public, max-age=31536000, immutable", **SECURITY_HEADERS},
        )
