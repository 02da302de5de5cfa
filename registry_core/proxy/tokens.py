"""The Docker token flow towards upstreams: answer a challenge, keep the token until it expires.

An upstream that answers 401 names what it wants in ``WWW-Authenticate``:
``Bearer realm=...,service=...,scope=...`` (ask the realm for a token, with
Basic credentials when we have them, anonymously otherwise) or ``Basic``. A
token is kept per (upstream, credentials, scope) until shortly before it
expires, in this process only (tokens are cheap to ask again; no storage
round trip). Never logs a token, a password or an Authorization header.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from urllib.parse import urlencode

import attrs
import msgspec

from .client import UpstreamClient, UpstreamFailure

_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
MAX_TOKEN_RESPONSE = 1 << 20
DEFAULT_TOKEN_LIFETIME = 60.0
CHALLENGE_LIFETIME = 3600.0
_MAX_CACHED = 4096


@attrs.frozen(repr=False)
class Credentials:
    username: str
    password: str

    def identity(self) -> str:
        """Who these credentials are, for cache keys: the user and a hash of the password."""
        digest = hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()
        return f"{self.username}:{digest[:32]}"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, <hidden>)"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``('bearer', {'realm': ..., 'service': ..., 'scope': ...})`` from a WWW-Authenticate value."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        found[1].lower(): (found[2] if found[2] is not None else found[3]).replace('\\"', '"')
        for found in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class _TokenAnswer(msgspec.Struct):
    token: str | None = None
    access_token: str | None = None
    expires_in: float | None = None


class TokenFlow:
    """Authorization headers for upstream requests, per process."""

    def __init__(self, client: UpstreamClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self._cache: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._challenges: dict[str, tuple[str, float]] = {}
        self.tokens_fetched = 0

    def known_challenge(self, base: str) -> str | None:
        """What *base* last asked for (``""``: nothing), or None when not known (or old).

        Learnt from real answers (:meth:`learn`), never from a ``/v2/`` ping: a ping
        costs a round trip before the first request, while the request itself answers
        the same question (a 401 carries the challenge, anything else says none is
        needed), so the first bytes of a cold blob never wait for a ping.
        """
        known = self._challenges.get(base)
        if known is not None and known[1] > self.clock():
            return known[0]
        return None

    def learn(self, base: str, challenge: str) -> None:
        """Remember *base*'s challenge (``""``: it answered without credentials)."""
        if len(self._challenges) >= _MAX_CACHED:
            self._challenges.clear()
        self._challenges[base] = (challenge, self.clock() + CHALLENGE_LIFETIME)

    @staticmethod
    def _key(base: str, credentials: Credentials | None, scope: str) -> tuple[str, str, str]:
        # The password counts too: two registries naming the same upstream login with
        # different passwords must never share a token (a tenant would borrow another's).
        return base, credentials.identity() if credentials else "", scope

    def cached(self, base: str, credentials: Credentials | None, scope: str) -> str | None:
        """A header still valid for this scope (a token, or Basic once the upstream asked)."""
        hit = self._cache.get(self._key(base, credentials, scope))
        if hit is None:
            return None
        header, expires = hit
        if expires <= self.clock():
            self._cache.pop(self._key(base, credentials, scope), None)
            return None
        return header

    def _remember(self, key: tuple[str, str, str], header: str, lifetime: float) -> None:
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (header, self.clock() + lifetime)

    def forget(self, base: str, credentials: Credentials | None, scope: str) -> None:
        self._cache.pop(self._key(base, credentials, scope), None)

    async def answer(
        self,
        base: str,
        challenge: str,
        scope: str,
        credentials: Credentials | None,
        upstream_name: str,
        *,
        scope_from_challenge: bool = True,
    ) -> str | None:
        """The Authorization header that answers *challenge* (None: nothing we can send)."""
        scheme, params = parse_challenge(challenge)
        key = self._key(base, credentials, scope)
        if scheme == "basic":
            if credentials is None:
                return None
            header = credentials.basic()
            self._remember(key, header, 3600.0)
            return header
        if scheme != "bearer" or not params.get("realm"):
            return None
        query = {"service": params["service"]} if params.get("service") else {}
        # A 401 names the scope it wants; the /v2/ ping's challenge is not about our request.
        wanted = (params.get("scope") if scope_from_challenge else None) or scope
        url = params["realm"] + ("&" if "?" in params["realm"] else "?")
        url += urlencode({**query, "scope": wanted}) if wanted else urlencode(query)
        headers = {"Authorization": credentials.basic()} if credentials else {}
        response = await self.client.request("GET", url, headers)
        try:
            if response.status in (401, 403):
                raise UpstreamFailure(
                    "other",
                    f"upstream {upstream_name}: its token service refused the "
                    + ("credentials" if credentials else "anonymous request")
                    + f" ({response.status})",
                )
            if response.status == 429:
                raise UpstreamFailure(
                    "rate_limited", f"upstream {upstream_name}: its token service rate-limits us"
                )
            if response.status != 200:
                raise UpstreamFailure(
                    "status_5xx" if response.status >= 500 else "other",
                    f"upstream {upstream_name}: its token service answered {response.status}",
                )
            body = await response.read(MAX_TOKEN_RESPONSE)
        finally:
            await response.release()
        try:
            parsed = msgspec.json.decode(body, type=_TokenAnswer)
        except msgspec.MsgspecError:
            raise UpstreamFailure(
                "other", f"upstream {upstream_name}: its token service sent no usable token"
            ) from None
        token = parsed.token or parsed.access_token
        if not token:
            raise UpstreamFailure(
                "other", f"upstream {upstream_name}: its token service sent no token"
            )
        self.tokens_fetched += 1
        lifetime = parsed.expires_in if parsed.expires_in and parsed.expires_in > 0 else None
        lifetime = lifetime or DEFAULT_TOKEN_LIFETIME
        header = f"Bearer {token}"
        # Renew a little early, so a token never expires between our check and its use.
        self._remember(key, header, max(lifetime * 0.9 - 5, 1.0))
        return header
