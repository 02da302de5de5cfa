"""Helpers for the ``/api/v1/`` management API tests.

``serve_api()`` starts the application in-process on ``memory://`` storage with
auth on and yields an :class:`ApiClient`. Every reply the client reads is
checked against the server's own OpenAPI document: the route and status must be
documented for that operation, and a JSON body must match the documented
schema. ``seed_world()`` writes a small world of tenants and identities through
``TenancyStore`` on the app's storage (fast: no server restart, no CLI).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonschema
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from multidict import CIMultiDictProxy

from registry_core import Digest, load_config
from registry_core import tenancy as tenancy_module
from registry_core.tenancy import TenancyStore
from registry_server.app import REGISTRY_KEY, TENANCY_KEY, build_app
from registry_server.http.openapi import document

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# A throttle too lax to trip, no bootstrap admin; long cache so that "at once"
# really means the revocation cleared this process's cache.
QUIET_AUTH: dict[str, Any] = {
    "enabled": True,
    "bootstrap_admin": False,
    "max_failures": 1000,
    "slowdown_after": 1000,
    "cache_ttl": 300.0,
}


@dataclass(frozen=True)
class Login:
    """Request headers that authenticate one caller."""

    headers: dict[str, str]
    label: str = ""

    @classmethod
    def basic(cls, username: str, secret: str) -> Login:
        value = base64.b64encode(f"{username}:{secret}".encode()).decode()
        return cls({"Authorization": f"Basic {value}"}, f"basic:{username}")

    @classmethod
    def api_key(cls, key: str) -> Login:
        return cls({"X-Api-Key": key}, "api-key")

    @classmethod
    def bearer(cls, token: str) -> Login:
        return cls({"Authorization": f"Bearer {token}"}, "bearer")


ANONYMOUS = Login({}, "anonymous")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    template: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip()

    @property
    def error(self) -> dict[str, Any]:
        """The first error of an error body."""
        errors = self.json()["errors"]
        assert errors, self.body
        return dict(errors[0])


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.content_type == "application/json", reply.headers.get("Content-Type")
    body = reply.json()
    assert set(body) == {"errors"}, body
    assert body["errors"][0]["code"] == code, body
    assert body["errors"][0]["message"], body
    return dict(body["errors"][0])


# -- the OpenAPI document as a checker ------------------------------------------------------


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node and node["$ref"].startswith("#/components/responses/"):
        node = doc["components"]["responses"][node["$ref"].rsplit("/", 1)[1]]
    return node


def validate_json(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate *instance* against *schema*, whose ``$ref``s point into *doc*'s components."""
    root = {**schema, "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(instance)


def check_reply(doc: dict[str, Any], method: str, template: str, reply: Reply) -> None:
    """The reply's status is documented for the operation, and its body matches."""
    operation = doc["paths"].get(template, {}).get(method.lower())
    assert operation is not None, f"{method} {template} is not in the OpenAPI document"
    entry = operation["responses"].get(str(reply.status))
    assert entry is not None, (
        f"{method} {template} answered {reply.status}, which the document does not list "
        f"({sorted(operation['responses'])}): {reply.body[:300]!r}"
    )
    entry = _resolve(doc, entry)
    content = entry.get("content")
    if content is None:
        assert reply.body == b"", (method, template, reply.body[:200])
        return
    assert reply.content_type in content, (method, template, reply.content_type)
    if reply.content_type == "application/json":
        validate_json(doc, content[reply.content_type]["schema"], reply.json())
    for header, spec in entry.get("headers", {}).items():
        if spec.get("required", True):  # a header documented as optional may be absent
            assert header in reply.headers, f"{method} {template} {reply.status} lacks {header}"


async def route_template(app: web.Application, method: str, path: str) -> str | None:
    """The router's canonical path for *path* (None: no route takes it)."""
    request = make_mocked_request(method, path, app=app)
    match = await app.router.resolve(request)
    if match.http_exception is not None:
        return None
    return match.route.resource.canonical if match.route.resource is not None else None


# -- the client ---------------------------------------------------------------------------------


class ApiClient:
    """Talks to one in-process server over loopback HTTP; checks replies against the document."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.checked: list[tuple[str, str, int]] = []
        """(method, route template, status) of every reply checked against the document."""

    @property
    def app(self) -> web.Application:
        return self.server.app  # type: ignore[return-value]

    @property
    def tenancy(self) -> TenancyStore:
        return self.app[TENANCY_KEY]

    @property
    def base_url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    async def request(
        self,
        method: str,
        path: str,
        login: Login = ANONYMOUS,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> Reply:
        sent = {**login.headers, **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        url = yarl.URL(f"{self.base_url}{path}", encoded=True)
        async with self.session.request(
            method, url, data=data, headers=sent, params=params
        ) as response:
            reply = Reply(response.status, response.headers, await response.read())
        if path.startswith("/api/v1/"):
            template = await route_template(self.app, method, path)
            if template is not None:
                check_reply(document(), method, template, reply)
                self.checked.append((method, template, reply.status))
                reply = Reply(reply.status, reply.headers, reply.body, template)
        return reply

    async def get(self, path: str, login: Login = ANONYMOUS, **kwargs: Any) -> Reply:
        return await self.request("GET", path, login, **kwargs)

    async def post(self, path: str, login: Login = ANONYMOUS, **kwargs: Any) -> Reply:
        return await self.request("POST", path, login, **kwargs)

    async def put(self, path: str, login: Login = ANONYMOUS, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, login, **kwargs)

    async def patch(self, path: str, login: Login = ANONYMOUS, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, login, **kwargs)

    async def delete(self, path: str, login: Login = ANONYMOUS, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, login, **kwargs)

    async def bearer_token(self, username: str, secret: str, *scopes: str) -> str:
        """A JWT from ``/v2/token`` for Basic credentials."""
        params = [("scope", scope) for scope in scopes]
        reply = await self.request("GET", "/v2/token", Login.basic(username, secret), params=params)
        assert reply.status == 200, (reply.status, reply.body)
        token = reply.json()["token"]
        assert isinstance(token, str)
        return token

    # -- pushing content through the library ------------------------------------------------

    async def push_image(self, name: str, tag: str | None, *, seed: str) -> dict[str, Any]:
        """A config, one layer and an OCI manifest naming them; sizes and digests."""
        registry = self.app[REGISTRY_KEY]
        repo = registry.repository(name)
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
        layer = f"layer of {seed}".encode() * 100
        for blob in (config, layer):
            async with repo.blobs.upload() as upload:
                await upload.write(blob)
                await upload.commit(Digest.of(blob))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": str(Digest.of(config)),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": str(Digest.of(layer)), "size": len(layer)}
                ],
            }
        ).encode()
        await repo.manifests.put(manifest, OCI_MANIFEST, tag=tag)
        return {
            "digest": str(Digest.of(manifest)),
            "manifest_size": len(manifest),
            "config_size": len(config),
            "layer_size": len(layer),
            "total": len(manifest) + len(config) + len(layer),
        }


@asynccontextmanager
async def serve_api(**auth: Any) -> AsyncIterator[ApiClient]:
    """The app with auth on (``auth`` overrides the quiet defaults), on memory storage."""
    config = load_config(
        overrides={"storage": {"url": "memory://"}, "auth": {**QUIET_AUTH, **auth}},
        environ={},
    )
    server = TestServer(build_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield ApiClient(server, session)
    finally:
        await server.close()


# -- a seeded world ------------------------------------------------------------------------------


@dataclass
class World:
    """Who is who: ``logins[name]`` authenticates as that user with its API key."""

    passwords: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)

    def key(self, user: str) -> Login:
        return Login.api_key(self.keys[user])

    def password(self, user: str) -> Login:
        return Login.basic(user, self.passwords[user])


remembered_hash = functools.cache(tenancy_module.hash_password)
"""``hash_password`` memoized: the same test password hashes once per session, not per
test (scrypt is slow on purpose). Tests install it with ``monkeypatch``."""


ROLES_IN_WORLD = {
    # user: (owner, registry or None, role)
    "reader": ("acme", "prod", "read"),
    "writer": ("acme", "prod", "write"),
    "prod-admin": ("acme", "prod", "admin"),
    "acme-admin": ("acme", None, "admin"),
    "outsider": ("other", None, "admin"),
}


async def seed_world(tenancy: TenancyStore) -> World:
    """Owners ``acme`` (registries ``prod`` private, ``pub`` public) and ``other``
    (``secret`` private); the superuser ``root``; one user per role in ``ROLES_IN_WORLD``;
    ``nobody`` with no role anywhere. Each user has a password and an API key."""
    world = World()
    await tenancy.create_owner("acme")
    await tenancy.create_owner("other")
    await tenancy.create_registry("acme", "prod")
    await tenancy.create_registry("acme", "pub", "public")
    await tenancy.create_registry("other", "secret")
    for name in ["root", *ROLES_IN_WORLD, "nobody"]:
        password = f"pw-{name}-0123456789"
        await tenancy.create_user(name, password, superuser=name == "root")
        record, key = await tenancy.create_api_key(name)
        world.passwords[name], world.keys[name], world.key_ids[name] = password, key, record.id
    for user, (owner, registry, role) in ROLES_IN_WORLD.items():
        await tenancy.add_member(owner, registry, user, role)  # type: ignore[arg-type]
    return world
