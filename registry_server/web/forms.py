"""Reading the website's forms and answering them: fields, choices, durations, redirects.

Every value a form sends is text of a bounded length, checked here before the library
sees it (the library checks it again); a redirect after a change names its message by key,
never by text taken from the request. Nothing here checks permissions or touches storage.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from registry_core.tenancy import InvalidRequest, Role, Visibility, parse_duration

from .sessions import WEB_PREFIX

PREFIX: Final = WEB_PREFIX
DONE_MESSAGES: Final = {
    "visibility": "Visibility changed.",
    "member": "Member saved.",
    "member-removed": "Member removed.",
    "token-revoked": "Token revoked.",
    "key-revoked": "API key revoked.",
    "password": "Password changed. Other sessions have been logged out.",
    "user": "User created.",
    "user-deleted": "User deleted.",
    "owner": "Owner created.",
    "owner-deleted": "Owner deleted.",
    "registry": "Registry created.",
    "deleted": "Manifest deleted.",
    "retention": "Retention rules saved.",
    "immutable": "Immutable tag patterns saved.",
    "quota": "Quota saved; usage recounted.",
    "upstream": "Upstream added.",
    "upstream-removed": "Upstream removed.",
    "scan-policy": "Pull policy saved.",
    "signing": "Signing settings saved.",
    "rotated": "A new key signs from now on; the old one stays published, retired.",
}
"""Messages a redirect may ask for by key (never text taken from the request)."""


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def field(form: MultiDictProxy[Any], name: str, *, limit: int = 256) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text")
    if len(value) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} characters")
    return value.strip()


def role_of(form: MultiDictProxy[Any]) -> Role:
    role = field(form, "role")
    if role == "read" or role == "write" or role == "admin":
        return role
    raise InvalidRequest("role must be read, write or admin")


def visibility_of(form: MultiDictProxy[Any]) -> Visibility:
    visibility = field(form, "visibility")
    if visibility == "public" or visibility == "private":
        return visibility
    raise InvalidRequest("visibility must be public or private")


def redirect(location: str, done: str | None = None) -> web.HTTPSeeOther:
    if done is not None:
        location += ("&" if "?" in location else "?") + urlencode({"done": done})
    return web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


def seconds(text: str) -> float | None:
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidRequest(f"expires in: {exc}") from None
    if seconds <= 0:
        raise InvalidRequest("expires in must be positive")
    return seconds


def safe_next(target: str) -> str:
    """Only a path of this website: never another site (no open redirect)."""
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return ""
