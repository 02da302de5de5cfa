"""What every fuzz test shares: the Hypothesis profile, a seeded server, and the property.

The property every surface must keep, for every input the strategies produce:
the answer is a 4xx carrying the spec's JSON error body (the management API uses
the same shape), the server keeps serving, no traceback reaches its log, and a
refused request leaves the storage exactly as it was (no new tag, manifest, blob,
upload or record: the file tree is compared).

Profiles (``FUZZ_PROFILE``): ``ci`` (the default) runs ``FUZZ_EXAMPLES`` examples
per surface (default 60), derandomized so CI is reproducible; ``long`` runs many
more with fresh randomness, for ``make fuzz``, which repeats the suite until its
``FUZZ_SECONDS`` budget is spent.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings

from registry_core.storage import layout
from tests.helpers.images import Image, sample_image
from tests.helpers.registry_api import push_blob, push_image
from tests.helpers.server import RegistryServer
from tests.helpers.tenants import Credential, Seeder, fetch_token, store_url, write_config

_COMMON: dict[str, Any] = {
    "deadline": None,  # loopback HTTP on a loaded machine: no timing in the property
    "database": None,
    "print_blob": True,
    # Each example is one real HTTP exchange with a module-scoped server.
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}
settings.register_profile("ci", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=1000, derandomize=False, **_COMMON)

PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"FUZZ_PROFILE must be ci or long, not {PROFILE!r}")
FUZZ = settings(
    settings.get_profile(PROFILE),
    max_examples=int(os.environ.get("FUZZ_EXAMPLES") or settings.get_profile(PROFILE).max_examples),
)
"""Decorate every fuzz test with this: the profile's settings, ``FUZZ_EXAMPLES`` examples
per surface when set. (Not loaded globally: other tests keep Hypothesis' defaults.)"""

BACKGROUND = (f"{layout.JOBS}/", f"{layout.REPO_INDEX}/")
"""Storage the background jobs write on their own schedule (see :meth:`Target.files`)."""

TENANT = "fuzz/reg"
REPO = f"{TENANT}/app"
TAG = "v1"


@dataclass
class Target:
    """A running server with a seeded tenant, and the checks of the property."""

    server: RegistryServer
    root: Credential
    """A superuser."""
    writer: Credential
    """Pull and push on ``fuzz/reg``."""
    image: Image
    """Pushed to ``fuzz/reg/app:v1``."""
    session: requests.Session = field(default_factory=requests.Session)
    _log_seen: int = 0

    def __post_init__(self) -> None:
        self.session.trust_env = False
        self._log_seen = self.server.log_path.stat().st_size

    @property
    def url(self) -> str:
        return self.server.url

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: Credential | None = None,
        headers: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """*path* is sent as given (already percent-encoded where it needs to be)."""
        sent = dict(headers or {})
        if auth is not None and "Authorization" not in sent:
            sent["Authorization"] = basic(auth.username, auth.secret)
        return self.session.request(
            method, self.url + path, headers=sent, timeout=60, allow_redirects=False, **kwargs
        )

    def files(self, *, ignore: str | None = None) -> frozenset[str]:
        """Every object in the server's storage (the property's "nothing stored"), but
        those whose path contains *ignore* and the background jobs' own bookkeeping:
        their leases and the repository index they maintain change on their own
        schedule (a `make fuzz` round saw the index job take its lease and clear a
        repository's dirty marker while a refused request was in flight)."""
        root = self.server.storage_path
        assert root is not None
        found = (str(path.relative_to(root)) for path in Path(root).rglob("*") if path.is_file())
        return frozenset(
            path
            for path in found
            if (ignore is None or ignore not in path) and not path.startswith(BACKGROUND)
        )

    def new_log(self) -> str:
        """What the server logged since the last call."""
        with open(self.server.log_path, "rb") as log:
            log.seek(self._log_seen)
            fresh = log.read()
        self._log_seen += len(fresh)
        return fresh.decode("utf-8", "replace")

    def assert_serving(self) -> None:
        """The server still answers, and wrote no traceback since the last check."""
        log = self.new_log()
        assert "Traceback" not in log, log[-3000:]
        assert "unhandled error" not in log, log[-3000:]
        assert self.session.get(f"{self.url}/healthz", timeout=30).status_code == 200


def basic(username: str | bytes, secret: str | bytes) -> str:
    raw = (username.encode() if isinstance(username, str) else username) + b":"
    raw += secret.encode() if isinstance(secret, str) else secret
    return "Basic " + base64.b64encode(raw).decode()


def assert_client_error(resp: requests.Response) -> list[dict[str, Any]]:
    """A 4xx with the JSON error body ``{"errors": [{"code", "message", ...}]}``."""
    described = f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}"
    assert 400 <= resp.status_code < 500, described
    if resp.request.method == "HEAD":
        return []
    assert resp.headers.get("Content-Type", "").startswith("application/json"), described
    errors = json.loads(resp.content)["errors"]
    assert isinstance(errors, list) and errors, described
    for error in errors:
        assert isinstance(error["code"], str) and error["code"], described
        assert isinstance(error["message"], str), described
    return errors


def assert_not_a_server_error(resp: requests.Response) -> None:
    assert resp.status_code < 500, (
        f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:500]}"
    )
    if resp.status_code >= 400:
        assert_client_error(resp)


def quote(text: str) -> str:
    """A path segment as a client would send it (``/`` kept: names contain it)."""
    return urllib.parse.quote(text, safe="/")


def start_target(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Target]:
    """A server with auth on, a superuser, and ``fuzz/reg/app:v1`` pushed by a writer."""
    store = tmp_path_factory.mktemp(f"{name}-store")
    seed = Seeder(store_url(store))
    root = seed.user("root", superuser=True)
    seed.registry(TENANT)
    writer = seed.user("writer")
    seed.member(TENANT, "writer", "write")
    workdir = tmp_path_factory.mktemp(name)
    config = write_config(
        workdir / "config.toml",
        auth={
            "enabled": True,
            "bootstrap_admin": False,
            # Fuzzed logins fail by the thousand; the throttle has tests of its own.
            "max_failures": 1_000_000_000,
            "slowdown_after": 1_000_000_000,
        },
        # Fuzzed uploads open sessions by the hundred; the limits have tests of their own.
        limits={"max_uploads_per_repository": 0, "max_uploads_per_tenant": 0},
        # Signing and scanning write in the background after each accepted push; "a refused
        # request stores nothing" compares storage at rest. Both have tests of their own.
        signing={"enabled": False},
        scanning={"enabled": False},
    )
    server = RegistryServer(store_url(store), workdir=workdir, auth=True, config=config)
    with server:
        image = sample_image("app", seed=name)
        push_image(server.url, REPO, image, TAG, auth=writer.auth)
        push_blob(server.url, REPO, b"a loose blob", session=_session(writer))
        fetch_token(server.url, f"repository:{REPO}:pull", auth=writer.auth)  # signing key
        target = Target(server, root, writer, image)
        target.assert_serving()
        yield target


def _session(cred: Credential) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.auth = cred.auth
    return session


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
