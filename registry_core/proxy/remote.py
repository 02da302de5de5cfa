"""One image at one upstream: the distribution API calls the pull-through cache makes.

Builds the upstream's URLs (prefix, Docker Hub's ``library/``), asks with
every manifest type in ``Accept``, follows the token flow on 401, honours
``Retry-After`` (an upstream that said "wait" is not asked again in this
process before then), and turns answers into values or
:class:`~.client.UpstreamFailure`. A 404 is ``None``, not a failure. Knows
nothing about local storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import attrs
import msgspec

from ..digest import Digest
from ..errors import DigestInvalid, RegistryError, TooManyRequests
from ..mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
)
from .client import UpstreamClient, UpstreamFailure, UpstreamResponse
from .settings import Upstream
from .tokens import Credentials, TokenFlow

MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
"""Every type we serve: Distribution 2.8 answers 404 to an OCI manifest when Accept lacks it."""
MAX_TAG_PAGES = 20
MAX_LIST_BYTES = 8 << 20


class UpstreamUnavailable(RegistryError):
    """Nothing cached and the upstream failed: 502 UNAVAILABLE naming the upstream's problem."""

    code, status, default_message = "UNAVAILABLE", 502, "upstream unavailable"


class UpstreamTimedOut(UpstreamUnavailable):
    status = 504


_DESCRIBE = {
    "refused": "connection refused",
    "timeout": "timed out",
    "forbidden_network": "its address is not in [upstreams] allow_networks",
    "tls": "TLS handshake failed",
    "truncated": "the body was cut short",
    "corrupt": "sent content that does not match its digest",
}


def client_error(upstream: Upstream, failure: UpstreamFailure) -> RegistryError:
    """The error a client gets when *upstream* failed and nothing is cached."""
    message = failure.message
    if not message.startswith("upstream "):
        message = f"upstream {upstream.name}: {_DESCRIBE.get(failure.kind, message)}"
    if failure.kind == "rate_limited":
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(failure.retry_after)))
        return TooManyRequests(message, headers=headers)
    if failure.kind == "timeout":
        return UpstreamTimedOut(message)
    return UpstreamUnavailable(message)


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@attrs.frozen
class RemoteManifest:
    body: bytes
    media_type: str
    digest: Digest


class Backoff:
    """Upstreams that asked us to wait (429 with Retry-After), per process, until when."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}

    def check(self, base: str, name: str) -> None:
        until = self._until.get(base)
        if until is None:
            return
        left = until - self.clock()
        if left <= 0:
            self._until.pop(base, None)
            return
        raise UpstreamFailure(
            "rate_limited",
            f"upstream {name}: rate limited, retry after {max(1, round(left))}s",
            retry_after=left,
        )

    def wait(self, base: str, seconds: float) -> None:
        self._until[base] = self.clock() + min(seconds, 3600.0)


class RemoteRepository:
    """One repository at one upstream, with its credentials."""

    def __init__(
        self,
        upstream: Upstream,
        image: str,
        credentials: Credentials | None,
        client: UpstreamClient,
        tokens: TokenFlow,
        backoff: Backoff,
    ) -> None:
        self.upstream = upstream
        self.name = upstream.remote_name(image)
        self.credentials = credentials
        self.client = client
        self.tokens = tokens
        self.backoff = backoff
        self.base = upstream.api_base
        self.scope = f"repository:{self.name}:pull"

    def _url(self, tail: str) -> str:
        return f"{self.base}/v2/{self.name}/{tail}"

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        stream: bool = False,
    ) -> UpstreamResponse:
        """One request with the token flow; answers 200-399 and 404 are returned, others raise."""
        self.backoff.check(self.base, self.upstream.name)
        sent = dict(headers or {})
        auth = self.tokens.cached(self.base, self.credentials, self.scope)
        if auth is None:
            challenge = self.tokens.known_challenge(self.base)
            if challenge:
                auth = await self.tokens.answer(
                    self.base,
                    challenge,
                    self.scope,
                    self.credentials,
                    self.upstream.name,
                    scope_from_challenge=False,
                )
        if auth:
            sent["Authorization"] = auth
        response = await self.client.request(method, url, sent, stream=stream)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            await response.release()
            self.tokens.learn(self.base, challenge)
            self.tokens.forget(self.base, self.credentials, self.scope)
            auth = await self.tokens.answer(
                self.base, challenge, self.scope, self.credentials, self.upstream.name
            )
            if auth is None:
                raise UpstreamFailure(
                    "other",
                    f"upstream {self.upstream.name}: it asks for credentials"
                    + (" we cannot answer" if self.credentials else " and none are configured"),
                )
            sent["Authorization"] = auth
            response = await self.client.request(method, url, sent, stream=stream)
        status = response.status
        if status < 400 or status == 404:
            if not auth:
                self.tokens.learn(self.base, "")  # it asks for nothing (for this scope)
            return response
        retry = _retry_after(response.headers.get("Retry-After"), time.time())
        await response.release()
        name = self.upstream.name
        if status == 429:
            self.backoff.wait(self.base, retry if retry is not None else 1.0)
            raise UpstreamFailure(
                "rate_limited", f"upstream {name}: rate limited (429)", retry_after=retry
            )
        if status >= 500:
            if status == 503 and retry is not None:
                self.backoff.wait(self.base, retry)
            raise UpstreamFailure("status_5xx", f"upstream {name}: answered {status}")
        if status in (401, 403):
            raise UpstreamFailure("other", f"upstream {name}: access denied ({status})")
        raise UpstreamFailure("other", f"upstream {name}: answered {status}")

    # -- manifests ------------------------------------------------------------------

    async def manifest(self, reference: str) -> RemoteManifest | None:
        """The manifest *reference* names, verified against a digest reference; None on 404."""
        response = await self.send(
            "GET", self._url(f"manifests/{reference}"), {"Accept": MANIFEST_ACCEPT}
        )
        try:
            if response.status == 404:
                return None
            body = await response.read(MAX_MANIFEST_SIZE)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            announced = response.headers.get("Docker-Content-Digest")
        finally:
            await response.release()
        expected: Digest | None = None
        try:
            if ":" in reference:
                expected = Digest.parse(reference)
            elif announced:
                expected = Digest.parse(announced.strip())
        except DigestInvalid:
            expected = None
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamFailure(
                "corrupt",
                f"upstream {self.upstream.name}: manifest does not match its digest",
            )
        return RemoteManifest(body, media_type, digest)

    async def manifest_digest(self, reference: str) -> Digest | None:
        """What a tag points at now, by HEAD (cheap; Docker Hub does not count HEADs)."""
        response = await self.send(
            "HEAD", self._url(f"manifests/{reference}"), {"Accept": MANIFEST_ACCEPT}
        )
        try:
            if response.status == 404:
                return None
            announced = response.headers.get("Docker-Content-Digest")
        finally:
            await response.release()
        try:
            return Digest.parse(announced.strip()) if announced else None
        except DigestInvalid:
            return None

    # -- blobs ------------------------------------------------------------------------

    async def blob(self, digest: Digest, method: str = "GET") -> UpstreamResponse | None:
        """The blob's response (the caller streams and releases it); None on 404."""
        response = await self.send(method, self._url(f"blobs/{digest}"), stream=True)
        if response.status == 404:
            await response.release()
            return None
        return response

    # -- listings ---------------------------------------------------------------------

    async def tags(self) -> list[str] | None:
        """Every tag at the upstream (following Link pages, within a bound); None on 404."""
        found: list[str] = []
        url = self._url("tags/list")
        for _ in range(MAX_TAG_PAGES):
            response = await self.send("GET", url)
            try:
                if response.status == 404:
                    return found or None
                body = await response.read(MAX_LIST_BYTES)
                link = response.headers.get("Link", "")
            finally:
                await response.release()
            found.extend(_decode(body, _TagList, self.upstream.name).tags or [])
            next_url = _next_link(link)
            if next_url is None:
                break
            url = next_url if "://" in next_url else f"{self.base}{next_url}"
        return found

    async def referrers(self, subject: Digest) -> list[dict[str, Any]] | None:
        """The upstream's referrers of *subject*; None when it has no referrers API or 404."""
        response = await self.send("GET", self._url(f"referrers/{subject}"))
        try:
            if response.status != 200:
                return None
            body = await response.read(MAX_LIST_BYTES)
        finally:
            await response.release()
        return _decode(body, _Index, self.upstream.name).manifests or []


class _TagList(msgspec.Struct):
    tags: list[str] | None = None


class _Index(msgspec.Struct):
    manifests: list[dict[str, Any]] | None = None


def _decode(body: bytes, kind: type[Any], name: str) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.MsgspecError:
        raise UpstreamFailure("other", f"upstream {name}: sent an unreadable listing") from None


def _next_link(header: str) -> str | None:
    if 'rel="next"' not in header:
        return None
    start, end = header.find("<"), header.find(">")
    return header[start + 1 : end] if 0 <= start < end else None
