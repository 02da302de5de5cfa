"""Website login sessions, kept in storage so every server process shares them.

A session is one small record stored under the SHA-256 of its cookie value, so a copy of
the bucket never yields a working cookie. The record names the user, its expiry (checked
here, server-side, whatever the browser keeps), a fingerprint of the user's password hash
at login (a password change makes every older session fail the check) and, for a session
opened with an API key, that key's id (revoking the key ends the session). Logging out
deletes the record. The CSRF token of a session is derived from its cookie, never stored.
This module decides nothing about what a user may do, and never logs a cookie.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec

from .storage import layout
from .storage.driver import PathNotFound, StorageDriver

COOKIE_BYTES = 32
PURGE_JOB = "web-sessions"
"""The periodic job (on a storage lease) that deletes expired session records."""
PURGE_INTERVAL = 3600.0


class SessionRecord(msgspec.Struct, kw_only=True):
    user: str
    created: float
    expires: float
    fingerprint: str
    """Of the user's password hash at login: a changed password invalidates the session."""
    api_key: str | None = None
    """The id of the API key the session was opened with, if any."""


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(b"cargohold-session\0" + password_hash.encode()).hexdigest()[:32]


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def csrf_token(cookie: str) -> str:
    """The CSRF token that goes with a session cookie (forms and the upload's header)."""
    return hmac.new(cookie.encode(), b"cargohold-csrf", hashlib.sha256).hexdigest()


def csrf_matches(cookie: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(cookie), presented)


class SessionStore:
    """Create, read and end website sessions."""

    def __init__(self, driver: StorageDriver, lifetime: float) -> None:
        self.driver = driver
        self.lifetime = lifetime

    async def create(
        self, user: str, password_hash: str, *, api_key: str | None = None
    ) -> tuple[str, SessionRecord]:
        """A new session: (cookie value, record). The cookie is returned once, never stored."""
        cookie = secrets.token_urlsafe(COOKIE_BYTES)
        now = time.time()
        record = SessionRecord(
            user=user,
            created=now,
            expires=now + self.lifetime,
            fingerprint=password_fingerprint(password_hash),
            api_key=api_key,
        )
        await self.driver.write(layout.session_record(_key(cookie)), msgspec.json.encode(record))
        return cookie, record

    async def get(self, cookie: str) -> SessionRecord | None:
        """The live session for *cookie*; None when unknown, malformed or expired."""
        if not cookie or len(cookie) > 128:
            return None
        path = layout.session_record(_key(cookie))
        try:
            raw = await self.driver.read(path)
            record = msgspec.json.decode(raw, type=SessionRecord)
        except PathNotFound:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if record.expires <= time.time():
            with contextlib.suppress(PathNotFound):
                await self.driver.delete(path)
            return None
        return record

    async def end(self, cookie: str) -> None:
        """Log out: the record goes, so the cookie stops working in every process."""
        if not cookie or len(cookie) > 128:
            return
        with contextlib.suppress(PathNotFound):
            await self.driver.delete(layout.session_record(_key(cookie)))

    async def purge_expired(self, check: Callable[[], Awaitable[None]] | None = None) -> int:
        """Delete the records of expired sessions nobody presented again; how many went.

        *check* runs before each batch of deletions (a job's lease fencing).
        """
        try:
            keys = await self.driver.list(layout.SESSIONS)
        except PathNotFound:
            return 0
        now, purged = time.time(), 0
        for start in range(0, len(keys), 100):
            if check is not None:
                await check()
            for key in keys[start : start + 100]:
                path = layout.session_record(key)
                try:
                    record = msgspec.json.decode(await self.driver.read(path), type=SessionRecord)
                except PathNotFound:
                    continue
                except (msgspec.DecodeError, msgspec.ValidationError):
                    record = None
                if record is None or record.expires <= now:
                    with contextlib.suppress(PathNotFound):
                        await self.driver.delete(path)
                    purged += 1
        return purged
