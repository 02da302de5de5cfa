"""What the website tests share: a logged-in HTTP client and the forms' hidden tokens.

:class:`WebClient` is a plain ``requests`` session that logs in through the login form as
a browser would (it echoes the form's login token and keeps the cookies) and can post
forms with the page's CSRF token. The browser tests use Selenium instead; these helpers
are for the fast HTTP-level tests.
"""

from __future__ import annotations

import re
from html import unescape

import requests

from tests.helpers import Image, build_image, make_layer
from tests.helpers.registry_api import new_session

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
"""HTML and script that must show as text wherever an image carries it."""
DOMAIN = "registry.acme.example"
"""The custom domain the website tests map to ``acme/prod``."""

_HIDDEN = re.compile(r'<input type="hidden" name="(?P<name>[a-z_]+)" value="(?P<value>[^"]*)">')


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of a page (the last of each name wins)."""
    return {m["name"]: unescape(m["value"]) for m in _HIDDEN.finditer(html)}


class WebClient:
    """A visitor of the website at *base_url* (cookies kept, redirects followed)."""

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.session: requests.Session = new_session()
        if headers:
            self.session.headers.update(headers)
        self.csrf = ""

    def get(self, path: str, **kwargs: object) -> requests.Response:
        response = self.session.get(self.base_url + path, **kwargs)  # type: ignore[arg-type]
        fields = hidden_fields(response.text)
        if fields.get("csrf"):
            self.csrf = fields["csrf"]
        return response

    def login(self, username: str, password: str) -> requests.Response:
        page = self.get("/ui/")
        token = hidden_fields(page.text)["login_token"]
        response = self.session.post(
            self.base_url + "/ui/login",
            data={"login_token": token, "username": username, "password": password},
        )
        fields = hidden_fields(response.text)
        if fields.get("csrf"):
            self.csrf = fields["csrf"]
        return response

    def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> requests.Response:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        response = self.session.post(self.base_url + path, data=form)
        fields = hidden_fields(response.text)
        if fields.get("csrf"):
            self.csrf = fields["csrf"]
        return response

    @property
    def session_cookie(self) -> str | None:
        return self.session.cookies.get("cargohold_session")


def payload_image() -> Image:
    return build_image(
        [make_layer({"etc/app": "app\n"})],
        config_extra={
            "config": {
                "Labels": {"org.example.title": PAYLOAD, PAYLOAD: "key"},
                "Env": [f"PAYLOAD={PAYLOAD}"],
                "Cmd": ["sh", "-c", PAYLOAD],
            },
            "history": [{"created_by": PAYLOAD, "comment": PAYLOAD}],
        },
        annotations={"org.opencontainers.image.description": PAYLOAD},
    )
