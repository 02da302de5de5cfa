"""Seed tenancy (users, owners, registries, members, API keys, entitlement tokens) for tests.

Two ways, both on a ``file://`` store a server has not started on yet (or shares):

- :func:`cargohold_cli` runs the real command line (``python -m registry_server users
  create ...``) and returns the completed process; the ``cli_*`` helpers wrap the common
  commands and return the secrets they print.
- :class:`Seeder` writes the same records in-process through ``TenancyStore`` (fast:
  no interpreter start per record), for tests that need many identities.

Plus what auth tests share: :func:`write_config` (a TOML file for a test server),
:func:`fetch_token` (the token endpoint), :func:`jwt_claims` (decode a JWT payload
without verifying it) and :func:`parse_challenge` (a ``WWW-Authenticate`` header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .procs import run
from .server import REPO_ROOT

__all__ = [
    "Credential",
    "Seeder",
    "auth_server",
    "cargohold_cli",
    "cli_api_key",
    "cli_token",
    "cli_user",
    "error_codes",
    "fetch_token",
    "http",
    "jwt_claims",
    "new_store",
    "parse_challenge",
    "store_url",
    "write_config",
]

# Generous defaults so ordinary tests never trip the login throttle; tests of the
# throttle set their own thresholds.
QUIET_AUTH: dict[str, Any] = {
    "bootstrap_admin": False,
    "max_failures": 1000,
    "slowdown_after": 1000,
}


@dataclass(frozen=True)
class Credential:
    """A login: ``username`` (a user or ``OWNER/REGISTRY``), its ``secret``, and a record id."""

    username: str
    secret: str
    id: str = ""

    @property
    def auth(self) -> tuple[str, str]:
        """For ``requests`` (``auth=cred.auth``)."""
        return (self.username, self.secret)

    @property
    def creds(self) -> str:
        """For skopeo (``--creds USER:SECRET``)."""
        return f"{self.username}:{self.secret}"


def store_url(path: str | os.PathLike[str]) -> str:
    return f"file://{Path(path).resolve()}"


# -- the command line -------------------------------------------------------------------


def _cli_env() -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("CARGOHOLD_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def cargohold_cli(
    *args: str,
    storage: str | None = None,
    config: str | os.PathLike[str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess:
    """``python -m registry_server ARGS... [--storage URL] [--config FILE]``.

    Raises ``CommandError`` on a non-zero exit when ``check`` is true.
    """
    cmd = [sys.executable, "-m", "registry_server", *args]
    if storage is not None:
        cmd += ["--storage", storage]
    if config is not None:
        cmd += ["--config", os.fspath(config)]
    return run(cmd, env=_cli_env(), input=input, check=check, timeout=timeout, cwd=str(REPO_ROOT))


def cli_user(storage: str, name: str, *, superuser: bool = False) -> Credential:
    """Create a user with a random password through the CLI; returns the credential."""
    password = "pw-" + secrets.token_urlsafe(12)
    extra = ["--superuser"] if superuser else []
    cargohold_cli(
        "users", "create", name, *extra, "--password-stdin", storage=storage, input=password + "\n"
    )
    return Credential(name, password)


_SECRET_ID = re.compile(r"^ch[kt]_([a-z0-9]+)_")


def _secret_from(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    lines = proc.stdout.split()
    assert len(lines) == 1, f"expected only the secret on stdout, got {proc.stdout!r}"
    secret = lines[0]
    found = _SECRET_ID.match(secret)
    assert found, f"unexpected secret format {secret[:8]}..."
    return secret, found[1]


def cli_api_key(storage: str, user: str, *, expires: str | None = None) -> Credential:
    """``cargohold api-keys create USER [--expires D]``: the key as a credential of *user*."""
    extra = ["--expires", expires] if expires else []
    secret, key_id = _secret_from(
        cargohold_cli("api-keys", "create", user, *extra, storage=storage)
    )
    return Credential(user, secret, key_id)


def cli_token(
    storage: str,
    tenant: str,
    *,
    expires: str | None = None,
    max_pulls: int | None = None,
    images: str | None = None,
) -> Credential:
    """``cargohold tokens create OWNER/REGISTRY ...``: the token as a credential of the tenant."""
    extra: list[str] = []
    if expires:
        extra += ["--expires", expires]
    if max_pulls is not None:
        extra += ["--max-pulls", str(max_pulls)]
    if images:
        extra += ["--images", images]
    secret, token_id = _secret_from(
        cargohold_cli("tokens", "create", tenant, *extra, storage=storage)
    )
    return Credential(tenant, secret, token_id)


# -- in-process seeding -----------------------------------------------------------------


@dataclass
class Seeder:
    """Writes tenancy records straight into a storage through ``TenancyStore``.

    Every method returns what a client needs (credentials with their secrets). Use it
    before the server starts, or on a running server's storage (the server sees new
    records at once; changed ones within ``auth.cache_ttl``).
    """

    storage: str
    credentials: dict[str, Credential] = field(default_factory=dict)

    def _run(self, work: Any) -> Any:
        from drivers import open_driver
        from registry_core.tenancy import TenancyStore

        async def go() -> Any:
            driver = open_driver(self.storage)
            try:
                return await work(TenancyStore(driver))
            finally:
                await driver.close()

        return asyncio.run(go())

    def user(
        self, name: str, *, superuser: bool = False, password: str | None = None
    ) -> Credential:
        password = password or "pw-" + secrets.token_urlsafe(12)

        async def work(store: Any) -> None:
            await store.create_user(name, password, superuser=superuser)

        self._run(work)
        cred = Credential(name, password)
        self.credentials[name] = cred
        return cred

    def owner(self, name: str) -> None:
        self._run(lambda store: store.create_owner(name))

    def registry(self, tenant: str, *, public: bool = False) -> None:
        owner, registry = tenant.split("/")

        async def work(store: Any) -> None:
            if await store.get_owner(owner) is None:
                await store.create_owner(owner)
            await store.create_registry(owner, registry, "public" if public else "private")

        self._run(work)

    def member(self, target: str, user: str, role: str) -> None:
        owner, _, registry = target.partition("/")
        self._run(lambda store: store.add_member(owner, registry or None, user, role))

    def api_key(self, user: str, *, expires_in: float | None = None) -> Credential:
        record, secret = self._run(lambda store: store.create_api_key(user, expires_in=expires_in))
        return Credential(user, secret, record.id)

    def token(
        self,
        tenant: str,
        *,
        expires_in: float | None = None,
        max_pulls: int | None = None,
        images: str | None = None,
    ) -> Credential:
        owner, registry = tenant.split("/")
        record, secret = self._run(
            lambda store: store.create_token(
                owner, registry, expires_in=expires_in, max_pulls=max_pulls, images=images
            )
        )
        return Credential(tenant, secret, record.id)

    def revoke_token(self, token_id: str) -> None:
        self._run(lambda store: store.revoke_token(token_id))

    def revoke_api_key(self, key_id: str) -> None:
        self._run(lambda store: store.revoke_api_key(key_id))

    def tenant_with_roles(self, tenant: str, *, public: bool = False) -> dict[str, Credential]:
        """A registry with one user per role (``reader``/``writer``/``admin`` of it) and a token.

        User names are ``<owner>-<registry>-<role>``; the token's key is ``token``.
        """
        self.registry(tenant, public=public)
        found: dict[str, Credential] = {}
        prefix = tenant.replace("/", "-")
        for role in ("read", "write", "admin"):
            cred = self.user(f"{prefix}-{role}")
            self.member(tenant, cred.username, role)
            found[role] = cred
        found["token"] = self.token(tenant)
        return found


# -- configuration and the token flow ---------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: str | os.PathLike[str], **sections: Mapping[str, Any]) -> Path:
    """A TOML config: ``write_config(p, auth={"cache_ttl": 1}, domains={"a.test": "acme"})``.

    The ``auth`` section starts from :data:`QUIET_AUTH` (no bootstrap admin, a throttle
    too lax to trip) unless the test overrides those keys.
    """
    sections = dict(sections)
    sections["auth"] = {**QUIET_AUTH, **sections.get("auth", {})}
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
        lines.append("")
    target = Path(path)
    target.write_text("\n".join(lines))
    return target


def auth_server(
    registry_factory: Any,
    tmp_path: Path,
    seed: Seeder | None = None,
    *,
    name: str = "server",
    **sections: Mapping[str, Any],
) -> Any:
    """Start a server with auth on, on *seed*'s storage, configured by *sections*."""
    storage = seed.storage if seed is not None else store_url(tmp_path / f"{name}-store")
    config = write_config(tmp_path / f"{name}.toml", **sections)
    return registry_factory(storage_url=storage, auth=True, config=config)


def new_store(tmp_path: Path, name: str = "store") -> Seeder:
    """A fresh storage folder under *tmp_path* and a seeder for it."""
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    return Seeder(store_url(path))


def fetch_token(
    base_url: str,
    *scopes: str,
    auth: tuple[str, str] | None = None,
    service: str | None = None,
    headers: Mapping[str, str] | None = None,
    expect: int = 200,
) -> str:
    """GET the token endpoint (Basic *auth* if given) for *scopes*; returns the JWT."""
    params: list[tuple[str, str]] = [("scope", s) for s in scopes]
    if service is not None:
        params.append(("service", service))
    session = requests.Session()
    session.trust_env = False
    resp = session.get(f"{base_url}/v2/token", params=params, auth=auth, headers=headers)
    assert resp.status_code == expect, (resp.status_code, resp.text[:500])
    if expect != 200:
        return ""
    return str(resp.json()["token"])


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without checking the signature."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ``("Bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme, params


def http(auth: tuple[str, str] | None = None, token: str | None = None) -> requests.Session:
    """A requests session that ignores proxies from the environment, with Basic or Bearer."""
    session = requests.Session()
    session.trust_env = False
    if auth is not None:
        session.auth = auth
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def error_codes(resp: requests.Response) -> list[str]:
    """The ``code`` of each error in a distribution-spec error body ([] if none)."""
    try:
        return [e.get("code") for e in resp.json().get("errors", [])]
    except ValueError:
        return []


ARTIFACT_TYPE = "application/vnd.cargohold.test.attestation.v1"


def push_referrer(base_url: str, repo: str, subject: Any, session: requests.Session) -> str:
    """Push an OCI artifact whose ``subject`` is *subject* (an Image); returns its digest."""
    from .images import OCI_MANIFEST, canonical_json, sha256_digest
    from .registry_api import push_blob

    empty = b"{}"
    push_blob(base_url, repo, empty, session=session)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256_digest(empty),
                "size": 2,
            },
            "layers": [],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": subject.size,
            },
        }
    )
    digest = sha256_digest(manifest)
    resp = session.put(
        f"{base_url}/v2/{repo}/manifests/{digest}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status_code == 201, (resp.status_code, resp.text[:500])
    return digest
