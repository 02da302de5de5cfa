"""The Docker token flow: the challenge, the token endpoint, signed JWTs, entitlement tokens.

One server (auth on, file storage) holds ``acme/prod`` (private, a reader, a writer, an
admin and an entitlement token), ``acme/pub`` (public) and ``other/priv`` (private),
plus a superuser. Tests that need their own configuration (token lifetime, two
processes on one storage) start their own servers. Real clients (oras-py, containerd's
``ctr``, python-dxf) each pull from one repository and push to another in one session.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import oras.client
import pytest
import requests
from dxf import DXF
from dxf.exceptions import DXFUnauthorizedError

from registry_core.attachments import is_attachment_tag
from tests.helpers import CommandError, Image, RegistryServer, sample_image, sha256_digest
from tests.helpers.containerd import ContainerdDaemon
from tests.helpers.registry_api import MANIFEST_ACCEPT, push_blob, push_image
from tests.helpers.tenants import (
    Credential,
    Seeder,
    auth_server,
    error_codes,
    fetch_token,
    http,
    jwt_claims,
    new_store,
    parse_challenge,
    push_referrer,
    write_config,
)

APP = "acme/prod/app"
TOOL = "acme/prod/tools/cli"
PUBLIC_APP = "acme/pub/app"
OTHER_APP = "other/priv/app"


@dataclass
class World:
    server: RegistryServer
    seed: Seeder
    creds: dict[str, Credential]
    app: Image
    public_app: Image
    referrer: str

    def cred(self, name: str) -> Credential:
        return self.creds[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("auth-tokens")
    seed = new_store(tmp)
    creds = seed.tenant_with_roles("acme/prod")
    seed.registry("acme/pub", public=True)
    seed.registry("other/priv")
    creds["root"] = seed.user("root", superuser=True)
    creds["other"] = seed.user("other-admin")
    seed.member("other", "other-admin", "admin")
    creds["api_key"] = seed.api_key(creds["read"].username)
    config = write_config(tmp / "config.toml")
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        root = http(creds["root"].auth)
        app = sample_image("app")
        push_image(server.url, APP, app, "1", session=root)
        push_image(server.url, TOOL, sample_image("tool"), "1", session=root)
        public_app = sample_image("public")
        push_image(server.url, PUBLIC_APP, public_app, "1", session=root)
        push_image(server.url, OTHER_APP, sample_image("other"), "1", session=root)
        referrer = push_referrer(server.url, APP, app, root)
        yield World(server, seed, creds, app, public_app, referrer)


@pytest.fixture
def server(world: World) -> RegistryServer:
    return world.server


def challenge_of(resp: requests.Response) -> dict[str, str]:
    scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
    assert scheme == "Bearer", resp.headers.get("WWW-Authenticate")
    return params


def manifest_get(server: RegistryServer, repo: str, ref: str, session: requests.Session):
    return session.get(
        f"{server.url}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
    )


def access_of(token: str) -> dict[str, list[str]]:
    return {claim["name"]: claim["actions"] for claim in jwt_claims(token)["access"]}


# -- the challenge ------------------------------------------------------------------------


def test_base_without_credentials_gets_bearer_challenge_even_with_public_registry(
    server: RegistryServer, world: World
) -> None:
    # A public registry exists (acme/pub), yet /v2/ still challenges: clients read the
    # challenge only from this first request.
    assert manifest_get(server, PUBLIC_APP, "1", http()).status_code == 200

    resp = http().get(f"{server.url}/v2/")

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="{server.url}/v2/token",service="{server.host}"'
    )


@pytest.mark.parametrize("kind", ["read", "api_key", "token"])
def test_base_accepts_right_basic_credentials(
    server: RegistryServer, world: World, kind: str
) -> None:
    resp = http(world.cred(kind).auth).get(f"{server.url}/v2/")

    assert resp.status_code == 200, resp.text
    assert resp.json() == {}


@pytest.mark.parametrize(
    "username,secret",
    [
        ("acme-prod-read", "not-the-password"),
        ("nobody", "whatever"),
        ("acme-prod-read", "chk_0123456789abcdef_notarealkeyatallxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("acme/prod", "cht_0123456789abcdef_notarealtokenxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ],
    ids=["wrong-password", "unknown-user", "wrong-api-key", "wrong-token"],
)
def test_base_refuses_wrong_basic_credentials(
    server: RegistryServer, world: World, username: str, secret: str
) -> None:
    resp = http((username, secret)).get(f"{server.url}/v2/")

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    assert challenge_of(resp)["realm"] == f"{server.url}/v2/token"


@pytest.mark.parametrize(
    "method,path,actions",
    [
        ("GET", "manifests/1", "pull"),
        ("HEAD", "manifests/1", "pull"),
        ("GET", "tags/list", "pull"),
        ("GET", "blobs/{layer}", "pull"),
        ("HEAD", "blobs/{layer}", "pull"),
        ("GET", "referrers/{digest}", "pull"),
        ("POST", "blobs/uploads/", "push"),
        ("PUT", "manifests/2", "push"),
        ("DELETE", "manifests/{digest}", "delete"),
        ("DELETE", "blobs/{layer}", "delete"),
    ],
)
def test_refused_request_challenge_names_scope(
    server: RegistryServer, world: World, method: str, path: str, actions: str
) -> None:
    path = path.format(layer=world.app.layer_digests[0], digest=world.app.digest)

    resp = http().request(method, f"{server.url}/v2/{APP}/{path}")

    assert resp.status_code == 401
    params = challenge_of(resp)
    assert params == {
        "realm": f"{server.url}/v2/token",
        "service": server.host,
        "scope": f"repository:{APP}:{actions}",
    }


# -- the token endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "who,granted",
    [
        ("read", ["pull"]),
        ("write", ["pull", "push"]),
        ("admin", ["delete", "pull", "push"]),
        ("root", ["delete", "pull", "push"]),
        ("other", []),
        ("token", ["pull"]),
    ],
)
def test_token_grants_only_what_the_caller_holds(
    server: RegistryServer, world: World, who: str, granted: list[str]
) -> None:
    token = fetch_token(server.url, f"repository:{APP}:pull,push,delete", auth=world.cred(who).auth)

    assert access_of(token) == {APP: granted}


def test_token_scope_star_means_pull_push_delete(server: RegistryServer, world: World) -> None:
    admin = world.cred("admin").auth
    star = fetch_token(server.url, f"repository:{APP}:*", auth=admin)
    writer_star = fetch_token(server.url, f"repository:{APP}:*", auth=world.cred("write").auth)

    assert access_of(star) == {APP: ["delete", "pull", "push"]}
    assert access_of(writer_star) == {APP: ["pull", "push"]}


def test_token_takes_several_scope_parameters(server: RegistryServer, world: World) -> None:
    token = fetch_token(
        server.url,
        f"repository:{APP}:pull,push",
        f"repository:{OTHER_APP}:pull",
        f"repository:{PUBLIC_APP}:pull,push",
        f"repository:{TOOL}:pull",
        auth=world.cred("write").auth,
    )

    assert access_of(token) == {
        APP: ["pull", "push"],
        OTHER_APP: [],
        PUBLIC_APP: ["pull"],
        TOOL: ["pull"],  # write is held there too, but only pull was asked
    }


def test_token_for_anonymous_grants_pull_on_public_registries_only(
    server: RegistryServer, world: World
) -> None:
    token = fetch_token(
        server.url,
        f"repository:{PUBLIC_APP}:pull,push",
        f"repository:{APP}:pull",
        "repository:ghost/reg/app:pull",
    )

    assert access_of(token) == {PUBLIC_APP: ["pull"], APP: [], "ghost/reg/app": []}
    claims = jwt_claims(token)
    assert claims["kind"] == "anonymous"
    # The anonymous token pulls from the public registry, nothing private.
    assert manifest_get(server, PUBLIC_APP, "1", http(token=token)).status_code == 200
    assert manifest_get(server, APP, "1", http(token=token)).status_code == 401


def test_token_get_refuses_wrong_basic_credentials(server: RegistryServer, world: World) -> None:
    resp = http(("acme-prod-read", "wrong")).get(
        f"{server.url}/v2/token", params={"scope": f"repository:{APP}:pull"}
    )

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    assert "token" not in resp.json()


def test_token_response_fields(server: RegistryServer, world: World) -> None:
    before = int(time.time())
    resp = http(world.cred("read").auth).get(
        f"{server.url}/v2/token",
        params={"scope": f"repository:{APP}:pull", "service": server.host},
    )
    after = int(time.time())

    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    issued = datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before - 1 <= issued.timestamp() <= after + 1
    claims = jwt_claims(body["token"])
    assert claims["sub"] == "acme-prod-read"
    assert claims["aud"] == server.host
    assert claims["exp"] - claims["iat"] == 300
    assert claims["iat"] == int(issued.timestamp())
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header["alg"] == "HS256"
    assert resp.headers.get("Cache-Control") == "no-store"


def test_token_post_oauth2_password_grant_as_containerd_sends_it(
    server: RegistryServer, world: World
) -> None:
    writer = world.cred("write")
    resp = http().post(
        f"{server.url}/v2/token",
        data={
            "grant_type": "password",
            "username": writer.username,
            "password": writer.secret,
            "scope": f"repository:{APP}:pull,push repository:{OTHER_APP}:pull",
            "service": server.host,
            "client_id": "containerd-client",
            "access_type": "online",
        },
    )

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["access_token"] == body["token"]
    assert body["expires_in"] == 300
    assert "issued_at" in body
    assert access_of(body["access_token"]) == {APP: ["pull", "push"], OTHER_APP: []}
    assert manifest_get(server, APP, "1", http(token=body["access_token"])).status_code == 200


def test_token_post_with_wrong_password_is_401(server: RegistryServer, world: World) -> None:
    resp = http().post(
        f"{server.url}/v2/token",
        data={
            "grant_type": "password",
            "username": "acme-prod-write",
            "password": "wrong",
            "scope": f"repository:{APP}:pull",
            "service": server.host,
            "client_id": "containerd-client",
        },
    )

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]


def test_token_post_refresh_grant_is_400_so_containerd_falls_back_to_get(
    server: RegistryServer, world: World
) -> None:
    resp = http().post(
        f"{server.url}/v2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "whatever",
            "service": server.host,
            "client_id": "containerd-client",
        },
    )

    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"


# -- signed, expiring JWTs -----------------------------------------------------------------


def test_bearer_token_allows_what_it_carries(server: RegistryServer, world: World) -> None:
    token = fetch_token(server.url, f"repository:{APP}:pull,push", auth=world.cred("write").auth)
    session = http(token=token)

    assert manifest_get(server, APP, "1", session).content == world.app.manifest
    layer = world.app.layers[0]
    assert session.get(f"{server.url}/v2/{APP}/blobs/{layer.digest}").content == layer.data
    digest = push_blob(server.url, APP, b"pushed with a bearer token", session=session)
    assert digest == sha256_digest(b"pushed with a bearer token")


def _tamper(token: str, **changes: object) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_tampered_token_is_refused(server: RegistryServer, world: World) -> None:
    token = fetch_token(server.url, f"repository:{APP}:pull", auth=world.cred("read").auth)
    assert manifest_get(server, APP, "1", http(token=token)).status_code == 200
    wider = _tamper(
        token, access=[{"type": "repository", "name": APP, "actions": ["pull", "push"]}]
    )
    longer = _tamper(token, exp=int(time.time()) + 86400)
    header, payload, signature = token.split(".")
    bad_signature = f"{header}.{payload}.{signature[:-4]}AAAA"
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    unsigned = f"{unsigned_header.decode()}.{payload}."

    for forged in (wider, longer, bad_signature, unsigned, "not.a.jwt", "garbage"):
        resp = manifest_get(server, APP, "1", http(token=forged))
        assert resp.status_code == 401, forged
        assert error_codes(resp) == ["UNAUTHORIZED"]
        assert challenge_of(resp)["error"] == "invalid_token"
    resp = http(token=wider).post(f"{server.url}/v2/{APP}/blobs/uploads/")
    assert resp.status_code == 401


def test_bearer_token_cannot_be_exchanged_for_a_wider_one(
    server: RegistryServer, world: World
) -> None:
    """A pull-only token handed to someone does not buy the user's other rights."""
    narrow = fetch_token(server.url, f"repository:{APP}:pull", auth=world.cred("write").auth)

    resp = http(token=narrow).get(
        f"{server.url}/v2/token", params={"scope": f"repository:{APP}:pull,push"}
    )

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    assert "token" not in resp.json()


def test_revoked_entitlement_token_cannot_renew_its_bearer_token(
    server: RegistryServer, world: World
) -> None:
    """An issued JWT lives until it expires, but must not outlive its login by renewal."""
    token = world.seed.token("acme/prod")
    bearer = fetch_token(server.url, f"repository:{APP}:pull", auth=token.auth)
    world.seed.revoke_token(token.id)

    resp = http(token=bearer).get(
        f"{server.url}/v2/token", params={"scope": f"repository:{APP}:pull"}
    )

    assert resp.status_code == 401
    assert "token" not in resp.json()


def test_token_for_another_service_is_refused(server: RegistryServer, world: World) -> None:
    # Asked through another host name: the token's audience is that host.
    token = fetch_token(
        server.url,
        f"repository:{APP}:pull",
        auth=world.cred("read").auth,
        headers={"Host": "elsewhere.example"},
    )
    assert jwt_claims(token)["aud"] == "elsewhere.example"

    resp = manifest_get(server, APP, "1", http(token=token))

    assert resp.status_code == 401
    assert challenge_of(resp)["error"] == "invalid_token"


def test_token_expires(registry_factory, tmp_path: Path) -> None:
    seed = new_store(tmp_path)
    seed.registry("acme/prod")
    reader = seed.user("reader")
    seed.member("acme/prod", "reader", "read")
    server = auth_server(registry_factory, tmp_path, seed, auth={"token_ttl": 2})
    push_image(
        server.url, APP, sample_image(), "1", session=http(seed.user("root", superuser=True).auth)
    )
    resp = http(reader.auth).get(
        f"{server.url}/v2/token", params={"scope": f"repository:{APP}:pull"}
    )
    assert resp.json()["expires_in"] == 2
    token = resp.json()["token"]
    assert manifest_get(server, APP, "1", http(token=token)).status_code == 200

    time.sleep(3.2)

    resp = manifest_get(server, APP, "1", http(token=token))
    assert resp.status_code == 401
    assert challenge_of(resp)["error"] == "invalid_token"


def test_signing_key_in_storage_is_shared_by_processes(registry_factory, tmp_path: Path) -> None:
    seed = new_store(tmp_path)
    seed.registry("acme/prod")
    reader = seed.user("reader")
    seed.member("acme/prod", "reader", "read")
    root = seed.user("root", superuser=True)
    # Replicas behind one load balancer share the service name (the token audience).
    sections = {"auth": {"service": "registry.test"}}
    first = auth_server(registry_factory, tmp_path, seed, name="first", **sections)
    second = auth_server(registry_factory, tmp_path, seed, name="second", **sections)
    stranger_seed = new_store(tmp_path, "stranger-store")
    stranger_seed.registry("acme/prod")
    stranger_seed.user("reader", password=reader.secret)
    stranger_seed.member("acme/prod", "reader", "read")
    stranger = auth_server(registry_factory, tmp_path, stranger_seed, name="stranger", **sections)
    push_image(first.url, APP, sample_image(), "1", session=http(root.auth))

    from_first = fetch_token(first.url, f"repository:{APP}:pull", auth=reader.auth)
    from_second = fetch_token(second.url, f"repository:{APP}:pull", auth=reader.auth)
    from_stranger = fetch_token(stranger.url, f"repository:{APP}:pull", auth=reader.auth)

    assert manifest_get(second, APP, "1", http(token=from_first)).status_code == 200
    assert manifest_get(first, APP, "1", http(token=from_second)).status_code == 200
    # Same claims, another storage's key: refused.
    assert jwt_claims(from_stranger)["aud"] == "registry.test"
    assert manifest_get(first, APP, "1", http(token=from_stranger)).status_code == 401


# -- refusals: 401 insufficient_scope versus 403 denied ---------------------------------------------


def test_token_lacking_the_scope_is_401_insufficient_scope(
    server: RegistryServer, world: World
) -> None:
    token = fetch_token(server.url, f"repository:{APP}:pull", auth=world.cred("write").auth)

    resp = http(token=token).post(f"{server.url}/v2/{APP}/blobs/uploads/")

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    params = challenge_of(resp)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == f"repository:{APP}:push"
    assert params["realm"] == f"{server.url}/v2/token"


def test_anonymous_token_lacking_the_scope_is_401_insufficient_scope(
    server: RegistryServer, world: World
) -> None:
    token = fetch_token(server.url, f"repository:{PUBLIC_APP}:pull,push")
    assert access_of(token) == {PUBLIC_APP: ["pull"]}

    resp = http(token=token).post(f"{server.url}/v2/{PUBLIC_APP}/blobs/uploads/")

    assert resp.status_code == 401
    params = challenge_of(resp)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == f"repository:{PUBLIC_APP}:push"


def test_basic_identity_lacking_the_right_is_403_denied_with_challenge(
    server: RegistryServer, world: World
) -> None:
    resp = http(world.cred("read").auth).post(f"{server.url}/v2/{APP}/blobs/uploads/")

    assert resp.status_code == 403
    assert error_codes(resp) == ["DENIED"]
    assert challenge_of(resp) == {
        "realm": f"{server.url}/v2/token",
        "service": server.host,
        "scope": f"repository:{APP}:push",
    }


def test_public_registry_pull_is_anonymous_but_push_needs_write(
    server: RegistryServer, world: World
) -> None:
    anonymous = http()
    layer = world.public_app.layers[0]

    assert manifest_get(server, PUBLIC_APP, "1", anonymous).content == world.public_app.manifest
    assert anonymous.get(f"{server.url}/v2/{PUBLIC_APP}/blobs/{layer.digest}").content == layer.data
    listed = anonymous.get(f"{server.url}/v2/{PUBLIC_APP}/tags/list").json()["tags"]
    assert [t for t in listed if not is_attachment_tag(t)] == ["1"]  # not our own signatures
    assert anonymous.post(f"{server.url}/v2/{PUBLIC_APP}/blobs/uploads/").status_code == 401
    # acme-prod-write holds write on acme/prod, not on acme/pub.
    writer = http(world.cred("write").auth)
    assert writer.post(f"{server.url}/v2/{PUBLIC_APP}/blobs/uploads/").status_code == 403
    assert (
        http(world.cred("root").auth)
        .post(f"{server.url}/v2/{PUBLIC_APP}/blobs/uploads/")
        .status_code
        == 202
    )


# -- entitlement tokens ---------------------------------------------------------------------------


def test_entitlement_token_pulls_everything_in_its_registry(
    server: RegistryServer, world: World
) -> None:
    session = http(world.cred("token").auth)

    assert manifest_get(server, APP, "1", session).content == world.app.manifest
    assert manifest_get(server, TOOL, "1", session).status_code == 200
    assert session.get(f"{server.url}/v2/{APP}/referrers/{world.app.digest}").status_code == 200


def test_entitlement_token_is_read_only(server: RegistryServer, world: World) -> None:
    session = http(world.cred("token").auth)

    upload = session.post(f"{server.url}/v2/{APP}/blobs/uploads/")
    put = session.put(
        f"{server.url}/v2/{APP}/manifests/evil",
        data=world.app.manifest,
        headers={"Content-Type": world.app.media_type},
    )
    delete = session.delete(f"{server.url}/v2/{APP}/manifests/{world.app.digest}")

    for resp in (upload, put, delete):
        assert resp.status_code == 403, resp.request.method
        assert error_codes(resp) == ["DENIED"]
    token = fetch_token(server.url, f"repository:{APP}:*", auth=world.cred("token").auth)
    assert access_of(token) == {APP: ["pull"]}


@pytest.mark.parametrize("repo", [OTHER_APP, "other/priv/ghost", "ghost/reg/app", "acme/pub/app"])
def test_entitlement_token_on_another_registry_is_401(
    server: RegistryServer, world: World, repo: str
) -> None:
    """Even a public registry: the token's credentials are not valid there."""
    resp = manifest_get(server, repo, "1", http(world.cred("token").auth))

    assert resp.status_code == 401
    assert error_codes(resp) == ["UNAUTHORIZED"]
    assert challenge_of(resp)["scope"] == f"repository:{repo}:pull"


def test_entitlement_token_stops_at_max_pulls(server: RegistryServer, world: World) -> None:
    token = world.seed.token("acme/prod", max_pulls=2)
    session = http(token.auth)

    assert manifest_get(server, APP, "1", session).status_code == 200
    # HEAD requests and failed GETs are not pulls.
    assert session.head(f"{server.url}/v2/{APP}/manifests/1").status_code == 200
    assert manifest_get(server, APP, "no-such-tag", session).status_code == 404
    assert session.get(f"{server.url}/v2/{APP}/blobs/{world.app.config_digest}").status_code == 200
    assert manifest_get(server, APP, world.app.digest, session).status_code == 200

    refused = manifest_get(server, APP, "1", session)

    assert refused.status_code == 403
    assert refused.json()["errors"][0] == {"code": "DENIED", "message": "pull limit reached"}
    # A bearer token of the same entitlement token is counted against the same limit.
    bearer = fetch_token(server.url, f"repository:{APP}:pull", auth=token.auth)
    assert manifest_get(server, APP, "1", http(token=bearer)).status_code == 403
    # Other tokens of the registry are not affected.
    assert manifest_get(server, APP, "1", http(world.cred("token").auth)).status_code == 200


def test_entitlement_token_pulls_through_bearer_tokens_count(
    server: RegistryServer, world: World
) -> None:
    token = world.seed.token("acme/prod", max_pulls=1)
    bearer = fetch_token(server.url, f"repository:{APP}:pull", auth=token.auth)
    assert jwt_claims(bearer)["tid"] == token.id

    assert manifest_get(server, APP, "1", http(token=bearer)).status_code == 200
    refused = manifest_get(server, APP, "1", http(token=bearer))

    assert refused.status_code == 403
    assert refused.json()["errors"][0]["message"] == "pull limit reached"
    assert manifest_get(server, APP, "1", http(token.auth)).status_code == 403


@pytest.mark.parametrize(
    "pattern,allowed,refused",
    [
        ("app", [APP], [TOOL, "acme/prod/app2", "acme/prod/app/sub"]),
        ("tools/*", [TOOL], [APP]),
    ],
)
def test_entitlement_token_limited_to_image_pattern(
    server: RegistryServer, world: World, pattern: str, allowed: list[str], refused: list[str]
) -> None:
    token = world.seed.token("acme/prod", images=pattern)
    session = http(token.auth)

    for repo in allowed:
        assert manifest_get(server, repo, "1", session).status_code == 200, repo
    for repo in refused:
        resp = manifest_get(server, repo, "1", session)
        assert resp.status_code in (401, 403), repo
        assert error_codes(resp)[0] in ("UNAUTHORIZED", "DENIED")
    bearer = fetch_token(
        server.url, *(f"repository:{r}:pull" for r in allowed + refused), auth=token.auth
    )
    assert access_of(bearer) == {
        **{r: ["pull"] for r in allowed},
        **{r: [] for r in refused},
    }


# -- real clients, one session pulling from one repository and pushing to another --------------------


@pytest.fixture(scope="module")
def ci(world: World) -> Credential:
    """A user who may read acme/prod and write acme/dev (and nothing of other/priv)."""
    world.seed.registry("acme/dev")
    cred = world.seed.user("ci")
    world.seed.member("acme/prod", "ci", "read")
    world.seed.member("acme/dev", "ci", "write")
    return cred


def _token_requests(server: RegistryServer, method: str) -> int:
    return sum(
        1
        for line in server.log_text().splitlines()
        if f"method={method} path=/v2/token " in line and "status=200" in line
    )


@pytest.mark.clients
def test_oras_pulls_one_repository_and_pushes_another_in_one_session(
    server: RegistryServer, world: World, ci: Credential, tmp_path: Path
) -> None:
    # oras-py's token backend keeps the first token it got and asks again only after
    # a 403, so a push after a pull (or any push, whose HEAD gets a pull-only token)
    # cannot widen it; its basic backend sends the credentials with every request.
    client = oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend="basic")
    client.session.trust_env = False
    client.login(ci.username, ci.secret, hostname=server.host, config_path=str(tmp_path / "c.json"))
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"artifact from acme/prod\n")
    root = oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend="basic")
    root.session.trust_env = False
    root.login(
        "root",
        world.cred("root").secret,
        hostname=server.host,
        config_path=str(tmp_path / "r.json"),
    )
    root.push(
        target=f"{server.host}/acme/prod/artifact:1",
        files=[str(payload)],
        disable_path_validation=True,
    )

    pulled = client.pull(target=f"{server.host}/acme/prod/artifact:1", outdir=str(tmp_path / "out"))
    assert [Path(p).read_bytes() for p in pulled] == [payload.read_bytes()]
    response = client.push(
        target=f"{server.host}/acme/dev/artifact:1",
        files=[str(payload)],
        disable_path_validation=True,
    )

    assert response.status_code == 201
    copied = manifest_get(server, "acme/dev/artifact", "1", http(ci.auth))
    assert copied.status_code == 200
    assert copied.headers["Docker-Content-Digest"] == response.headers["Docker-Content-Digest"]
    # The same session cannot write where ci only reads, nor read another tenant.
    with pytest.raises(ValueError):
        client.push(
            target=f"{server.host}/acme/prod/artifact:2",
            files=[str(payload)],
            disable_path_validation=True,
        )
    with pytest.raises(ValueError):
        client.pull(target=f"{server.host}/{OTHER_APP}:1", outdir=str(tmp_path / "stolen"))
    assert not (tmp_path / "stolen").exists() or not any((tmp_path / "stolen").iterdir())


@pytest.mark.clients
def test_oras_token_backend_pulls_with_a_bearer_token(
    server: RegistryServer, world: World, ci: Credential, tmp_path: Path
) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"pulled through a bearer token\n")
    root = oras.client.OrasClient(hostname=server.host, insecure=True, auth_backend="basic")
    root.session.trust_env = False
    root.login(
        "root",
        world.cred("root").secret,
        hostname=server.host,
        config_path=str(tmp_path / "r.json"),
    )
    root.push(
        target=f"{server.host}/acme/prod/bearer:1",
        files=[str(payload)],
        disable_path_validation=True,
    )
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    client.session.trust_env = False
    client.login(ci.username, ci.secret, hostname=server.host, config_path=str(tmp_path / "c.json"))
    before = _token_requests(server, "GET")

    pulled = client.pull(target=f"{server.host}/acme/prod/bearer:1", outdir=str(tmp_path / "out"))

    assert [Path(p).read_bytes() for p in pulled] == [payload.read_bytes()]
    assert _token_requests(server, "GET") > before
    assert jwt_claims(client.auth.token)["access"] == [
        {"type": "repository", "name": "acme/prod/bearer", "actions": ["pull"]}
    ]


@pytest.mark.clients
def test_ctr_pulls_one_repository_and_pushes_another_in_one_session(
    server: RegistryServer, world: World, ci: Credential, tmp_path: Path
) -> None:
    image = sample_image("ctr")
    push_image(server.url, "acme/prod/ctr", image, "1", session=http(world.cred("root").auth))
    posts_before = _token_requests(server, "POST")
    source = f"{server.host}/acme/prod/ctr:1"
    target = f"{server.host}/acme/dev/ctr:1"

    with ContainerdDaemon(tmp_path / "containerd") as ctd:
        ctd.ctr("images", "pull", "--plain-http", "--user", ci.creds, source)
        ctd.ctr("images", "tag", source, target)
        ctd.ctr("images", "push", "--plain-http", "--user", ci.creds, target)
        # ci only reads acme/prod: containerd's push there is refused.
        ctd.ctr("images", "tag", source, f"{server.host}/acme/prod/ctr:2")
        with pytest.raises(CommandError):
            ctd.ctr(
                "images",
                "push",
                "--plain-http",
                "--user",
                ci.creds,
                f"{server.host}/acme/prod/ctr:2",
            )

    pushed = manifest_get(server, "acme/dev/ctr", "1", http(ci.auth))
    assert pushed.status_code == 200
    assert pushed.content == image.manifest
    for blob in image.blobs():
        got = http(ci.auth).get(f"{server.url}/v2/acme/dev/ctr/blobs/{blob.digest}")
        assert got.content == blob.data
    # containerd asked the token endpoint with the OAuth2 POST form.
    assert _token_requests(server, "POST") > posts_before
    assert manifest_get(server, "acme/prod/ctr", "2", http(ci.auth)).status_code == 404
    assert (
        "method=PUT path=/v2/acme/prod/ctr/manifests/2 route=manifest repository=acme/prod/ctr status=401"
        in server.log_text()
    )


def _dxf_auth(cred: Credential):
    """dxf refuses Basic over plain HTTP: fetch a bearer token from the realm ourselves."""

    def authenticate(client: DXF, response: requests.Response) -> None:
        params = parse_challenge(response.headers["WWW-Authenticate"])[1]
        resp = http(cred.auth).get(
            params["realm"],
            params=[("service", params["service"]), ("scope", params["scope"])],
        )
        resp.raise_for_status()
        client.token = resp.json()["token"]

    return authenticate


@pytest.mark.clients
def test_dxf_pulls_one_repository_and_pushes_another_with_bearer_tokens(
    server: RegistryServer, world: World, ci: Credential, tmp_path: Path
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"dxf payload " * 1000)
    digest = push_blob(
        server.url, "acme/prod/dxf", blob.read_bytes(), session=http(world.cred("root").auth)
    )
    auth = _dxf_auth(ci)
    source = DXF(server.host, "acme/prod/dxf", auth=auth, insecure=True)
    target = DXF(server.host, "acme/dev/dxf", auth=auth, insecure=True)
    with source, target:
        for client in (source, target):
            client._sessions[0].trust_env = False

        pulled = b"".join(source.pull_blob(digest))
        target.push_blob(str(blob))
        target.set_alias("1", digest)
        # The token dxf fetched for the push (after a 401 insufficient_scope) carries it.
        assert access_of(target.token) == {"acme/dev/dxf": ["push"]}

        assert pulled == blob.read_bytes()
        assert target.get_alias("1") == [digest]
        # ci only reads acme/prod: the token endpoint grants no push, the server refuses.
        with pytest.raises(DXFUnauthorizedError):
            source.push_blob(str(blob), check_exists=False)
        assert access_of(source.token) == {"acme/prod/dxf": []}
