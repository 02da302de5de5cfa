"""Tenant isolation, tested as an attacker would, and permissions on every endpoint.

One server holds two owners x two registries (``acme/prod``, ``acme/dev``,
``globex/prod``, ``globex/dev``, all private) plus a public ``globex/open``. Every
private registry has a reader, a writer, an admin (registry members), an entitlement
token, an image ``app:1`` (a layer of its own and one shared by all tenants), a
referrer and an upload in progress. An owner-level admin of ``acme`` is there too.

Each identity (anonymous, every role of every tenant, the owner admin, the tokens),
with Basic credentials and with a bearer token it fetched for the victim's scopes,
tries every endpoint on every registry it has no right to. Every attempt must be
refused with the same status, error code, body and challenge as for a repository,
a registry or an owner that does not exist (apart from the name), and must leave
the victim untouched. From its own repository it tries the victim's blobs by digest,
the victim's upload sessions by UUID and cross-tenant mounts.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from registry_core.attachments import is_attachment_tag
from tests.helpers import Image, RegistryServer, build_image, make_layer, sample_image
from tests.helpers.registry_api import MANIFEST_ACCEPT, push_blob, push_image
from tests.helpers.tenants import (
    Credential,
    Seeder,
    error_codes,
    fetch_token,
    http,
    jwt_claims,
    new_store,
    parse_challenge,
    push_referrer,
    write_config,
)

SBOM_ARTIFACT_TYPE = "application/vnd.cyclonedx+json"
TENANTS = ("acme/prod", "acme/dev", "globex/prod", "globex/dev")
PUBLIC = "globex/open"
ROLES = ("read", "write", "admin", "token")
UPLOADED = b"0123456789"  # bytes in each victim's unfinished upload
SHARED_LAYER = make_layer({"etc/shared": "in every tenant's image\n"})
SHARED_DIGEST = "sha256:" + hashlib.sha256(SHARED_LAYER[0]).hexdigest()


@dataclass
class Victim:
    tenant: str
    image: Image
    referrer: str
    upload_uuid: str

    @property
    def repo(self) -> str:
        return f"{self.tenant}/app"

    @property
    def own_layer(self) -> str:
        return self.image.layer_digests[1]

    @property
    def shared_layer(self) -> str:
        return self.image.layer_digests[0]


@dataclass
class World:
    server: RegistryServer
    seed: Seeder
    creds: dict[str, Credential] = field(default_factory=dict)
    victims: dict[str, Victim] = field(default_factory=dict)
    public_image: Image | None = None

    def cred(self, tenant: str, role: str) -> Credential:
        return self.creds[f"{tenant}:{role}"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("auth-isolation")
    seed = new_store(tmp)
    creds: dict[str, Credential] = {}
    for tenant in TENANTS:
        for role, cred in seed.tenant_with_roles(tenant).items():
            creds[f"{tenant}:{role}"] = cred
    seed.registry(PUBLIC, public=True)
    creds["root"] = seed.user("root", superuser=True)
    creds["acme-owner"] = seed.user("acme-owner")
    seed.member("acme", "acme-owner", "admin")
    config = write_config(tmp / "config.toml")
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        built = World(server, seed, creds)
        root = http(creds["root"].auth)
        for tenant in TENANTS:
            own = make_layer({"etc/tenant": f"{tenant} only {secrets.token_hex(8)}\n"})
            image = build_image([SHARED_LAYER, own])
            repo = f"{tenant}/app"
            push_image(server.url, repo, image, "1", session=root)
            referrer = push_referrer(server.url, repo, image, root)
            writer = http(creds[f"{tenant}:write"].auth)
            started = writer.post(f"{server.url}/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202
            patched = writer.patch(
                f"{server.url}{started.headers['Location']}",
                data=UPLOADED,
                headers={"Content-Range": f"0-{len(UPLOADED) - 1}"},
            )
            assert patched.status_code == 202, patched.text
            built.victims[tenant] = Victim(
                tenant, image, referrer, started.headers["Docker-Upload-UUID"]
            )
        built.public_image = build_image([SHARED_LAYER, make_layer({"etc/open": "public\n"})])
        push_image(server.url, f"{PUBLIC}/app", built.public_image, "1", session=root)
        yield built


@pytest.fixture
def server(world: World) -> RegistryServer:
    return world.server


# -- identities -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attacker:
    label: str
    home: tuple[str, ...]  # registries it legitimately holds
    kind: str  # anonymous | user | token


def _attackers() -> list[Attacker]:
    found = [Attacker("anonymous", (), "anonymous")]
    for tenant in TENANTS:
        for role in ROLES:
            kind = "token" if role == "token" else "user"
            found.append(Attacker(f"{tenant}:{role}", (tenant,), kind))
    found.append(Attacker("acme-owner", ("acme/prod", "acme/dev"), "user"))
    return found


ATTACKERS = _attackers()


def credential(world: World, attacker: Attacker) -> Credential | None:
    if attacker.kind == "anonymous":
        return None
    return world.creds[attacker.label]


def ghost_names(victim: Victim) -> dict[str, str]:
    """The victim's repository, and names that do not exist, at each level."""
    owner = victim.tenant.split("/")[0]
    return {
        "existing": victim.repo,
        "no-such-repo": f"{victim.tenant}/ghost",
        "no-such-registry": f"{owner}/ghostreg/app",
        "no-such-owner": "ghostowner/reg/app",
    }


def endpoints(victim: Victim) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path below the repository, requests kwargs) for every /v2/ endpoint."""
    payload = b"attacker's bytes"
    payload_digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    manifest = {"data": victim.image.manifest, "headers": {"Content-Type": victim.image.media_type}}
    uuid = victim.upload_uuid
    return [
        ("GET", "manifests/1", {"headers": {"Accept": MANIFEST_ACCEPT}}),
        ("HEAD", "manifests/1", {}),
        ("GET", f"manifests/{victim.image.digest}", {}),
        ("HEAD", f"manifests/{victim.image.digest}", {}),
        ("PUT", "manifests/evil", manifest),
        ("DELETE", f"manifests/{victim.image.digest}", {}),
        ("DELETE", "manifests/1", {}),
        ("GET", f"blobs/{victim.own_layer}", {}),
        ("GET", f"blobs/{victim.shared_layer}", {}),
        ("HEAD", f"blobs/{victim.own_layer}", {}),
        ("GET", f"blobs/{victim.image.config_digest}", {"headers": {"Range": "bytes=0-3"}}),
        ("DELETE", f"blobs/{victim.own_layer}", {}),
        ("GET", "tags/list", {}),
        ("GET", "tags/list?n=1", {}),
        ("GET", f"referrers/{victim.image.digest}", {}),
        ("POST", "blobs/uploads/", {}),
        ("POST", f"blobs/uploads/?digest={payload_digest}", {"data": payload}),
        ("POST", f"blobs/uploads/?mount={victim.own_layer}&from={victim.repo}", {}),
        ("GET", f"blobs/uploads/{uuid}", {}),
        ("PATCH", f"blobs/uploads/{uuid}", {"data": payload}),
        ("PUT", f"blobs/uploads/{uuid}?digest={payload_digest}", {"data": payload}),
        ("DELETE", f"blobs/uploads/{uuid}", {}),
    ]


LEAKY_HEADERS = ("Docker-Content-Digest", "Location", "Range", "Docker-Upload-UUID", "ETag", "Link")


def _normalized(resp: requests.Response, name: str) -> tuple[int, str, str]:
    body = resp.text.replace(name, "<name>")
    challenge = resp.headers.get("WWW-Authenticate", "").replace(name, "<name>")
    return resp.status_code, body, challenge


def expected_refusal(attacker: Attacker, bearer: bool) -> tuple[int, str]:
    if bearer or attacker.kind in ("anonymous", "token"):
        return 401, "UNAUTHORIZED"
    return 403, "DENIED"


def assert_intact(world: World, victim: Victim) -> None:
    """The victim's image, tags, referrer, blobs and unfinished upload are as they were."""
    owner = http(world.creds["root"].auth)
    base = f"{world.server.url}/v2/{victim.repo}"
    got = owner.get(f"{base}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert got.status_code == 200 and got.content == victim.image.manifest
    listed = owner.get(f"{base}/tags/list").json()["tags"]
    assert [t for t in listed if not is_attachment_tag(t)] == ["1"]  # not our own signatures
    referrers = owner.get(f"{base}/referrers/{victim.image.digest}").json()["manifests"]
    # The registry's own attachments (the scanner's SBOM) sit beside the victim's referrer.
    theirs = [d["digest"] for d in referrers if d.get("artifactType") != SBOM_ARTIFACT_TYPE]
    assert theirs == [victim.referrer]
    for digest in victim.image.layer_digests:
        assert owner.head(f"{base}/blobs/{digest}").status_code == 200
    upload = owner.get(f"{base}/blobs/uploads/{victim.upload_uuid}")
    assert upload.status_code == 204
    assert upload.headers["Range"] == f"0-{len(UPLOADED) - 1}"


def bearer_for(world: World, attacker: Attacker, names: list[str]) -> str:
    cred = credential(world, attacker)
    token = fetch_token(
        world.server.url,
        *(f"repository:{name}:*" for name in names),
        auth=cred.auth if cred else None,
    )
    granted = {c["name"]: c["actions"] for c in jwt_claims(token)["access"]}
    assert granted == {name: [] for name in names}, f"{attacker.label} was granted {granted}"
    return token


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
@pytest.mark.parametrize("attacker", ATTACKERS, ids=lambda a: a.label)
def test_cross_tenant_requests_are_refused_without_leaking_existence(
    server: RegistryServer, world: World, attacker: Attacker, bearer: bool
) -> None:
    status, code = expected_refusal(attacker, bearer)
    problems: list[str] = []
    for tenant, victim in world.victims.items():
        if tenant in attacker.home:
            continue
        names = ghost_names(victim)
        cred = credential(world, attacker)
        if bearer:
            session = http(token=bearer_for(world, attacker, list(names.values())))
        else:
            session = http(cred.auth if cred else None)
        for method, path, kwargs in endpoints(victim):
            answers = {}
            for label, name in names.items():
                resp = session.request(method, f"{server.url}/v2/{name}/{path}", **kwargs)
                answers[label] = _normalized(resp, name)
                where = f"{attacker.label} {method} {name}/{path}"
                if resp.status_code != status:
                    problems.append(
                        f"{where}: {resp.status_code} (wanted {status}) {resp.text[:200]}"
                    )
                    continue
                if method != "HEAD" and error_codes(resp) != [code]:
                    problems.append(f"{where}: error codes {error_codes(resp)}")
                leaked = [h for h in LEAKY_HEADERS if h in resp.headers]
                if leaked:
                    problems.append(f"{where}: headers {leaked}")
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                if challenge[0] != "Bearer" or "realm" not in challenge[1]:
                    problems.append(f"{where}: no challenge")
                elif bearer and challenge[1].get("error") != "insufficient_scope":
                    problems.append(f"{where}: challenge without insufficient_scope")
            if len(set(answers.values())) != 1:
                problems.append(f"{attacker.label} {method} {path}: answers differ {answers}")
        assert_intact(world, victim)
    assert not problems, "\n".join(problems)


# -- attacks from the attacker's own repository -------------------------------------------------


def _own_repo(attacker: Attacker) -> str:
    return f"{attacker.home[0]}/app" if attacker.home else f"{PUBLIC}/app"


@pytest.mark.parametrize("attacker", ATTACKERS, ids=lambda a: a.label)
def test_victim_blobs_are_unknown_in_own_repository(
    server: RegistryServer, world: World, attacker: Attacker
) -> None:
    cred = credential(world, attacker)
    session = http(cred.auth if cred else None)
    own = _own_repo(attacker)
    # The shared layer is linked in the attacker's own repository: readable there.
    assert session.head(f"{server.url}/v2/{own}/blobs/{SHARED_DIGEST}").status_code == 200
    for tenant, victim in world.victims.items():
        if tenant in attacker.home:
            continue
        for method in ("GET", "HEAD"):
            resp = session.request(method, f"{server.url}/v2/{own}/blobs/{victim.own_layer}")
            assert resp.status_code == 404, (tenant, method, resp.status_code)
            if method == "GET":
                assert error_codes(resp) == ["BLOB_UNKNOWN"]


PUSHERS = [a for a in ATTACKERS if a.kind == "user" and not a.label.endswith((":read",))]


@pytest.mark.parametrize("attacker", PUSHERS, ids=lambda a: a.label)
def test_cross_tenant_mount_starts_a_plain_upload(
    server: RegistryServer, world: World, attacker: Attacker
) -> None:
    session = http(credential(world, attacker).auth)
    own = _own_repo(attacker)
    for tenant, victim in world.victims.items():
        if tenant in attacker.home:
            continue
        for name in (victim.repo, f"{victim.tenant}/ghost"):
            resp = session.post(
                f"{server.url}/v2/{own}/blobs/uploads/",
                params={"mount": victim.own_layer, "from": name},
            )
            assert resp.status_code == 202, (name, resp.status_code, resp.text)
            assert "Docker-Upload-UUID" in resp.headers
            assert session.delete(f"{server.url}{resp.headers['Location']}").status_code == 204
        assert session.head(f"{server.url}/v2/{own}/blobs/{victim.own_layer}").status_code == 404


@pytest.mark.parametrize("attacker", PUSHERS, ids=lambda a: a.label)
def test_victim_upload_sessions_are_unknown_in_own_repository(
    server: RegistryServer, world: World, attacker: Attacker
) -> None:
    session = http(credential(world, attacker).auth)
    own = _own_repo(attacker)
    for tenant, victim in world.victims.items():
        if tenant in attacker.home:
            continue
        base = f"{server.url}/v2/{own}/blobs/uploads/{victim.upload_uuid}"
        attempts = [
            session.get(base),
            session.patch(base, data=b"more", headers={"Content-Range": "10-13"}),
            session.put(base, params={"digest": SHARED_DIGEST}, data=b""),
            session.delete(base),
        ]
        for resp in attempts:
            assert resp.status_code == 404, (resp.request.method, resp.status_code, resp.text)
            assert error_codes(resp) == ["BLOB_UPLOAD_UNKNOWN"]
            assert "Range" not in resp.headers
        assert_intact(world, victim)


def test_mount_from_a_readable_repository_links_the_blob(
    server: RegistryServer, world: World
) -> None:
    """The control for the cross-tenant mount: within rights, a mount links (201)."""
    session = http(world.creds["acme-owner"].auth)
    victim = world.victims["acme/prod"]
    target = f"acme/dev/mounted-{secrets.token_hex(4)}"

    resp = session.post(
        f"{server.url}/v2/{target}/blobs/uploads/",
        params={"mount": victim.own_layer, "from": victim.repo},
    )

    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"] == f"/v2/{target}/blobs/{victim.own_layer}"
    assert session.head(f"{server.url}/v2/{target}/blobs/{victim.own_layer}").status_code == 200


# -- the catalog --------------------------------------------------------------------------------


@pytest.mark.parametrize("attacker", ATTACKERS, ids=lambda a: a.label)
def test_catalog_lists_only_repositories_the_caller_may_pull(
    server: RegistryServer, world: World, attacker: Attacker
) -> None:
    cred = credential(world, attacker)
    session = http(cred.auth if cred else None)
    # An entitlement token is a login of its own registry only, public ones included.
    public = set() if attacker.kind == "token" else {f"{PUBLIC}/app"}
    readable = public | {f"{tenant}/app" for tenant in attacker.home}

    resp = session.get(f"{server.url}/v2/_catalog")

    assert resp.status_code == 200, resp.text
    listed = set(resp.json()["repositories"])
    # Other tests may add repositories to the caller's own registries, never elsewhere.
    assert readable <= listed
    allowed_prefixes = tuple(f"{name.rsplit('/', 1)[0]}/" for name in readable)
    assert all(name.startswith(allowed_prefixes) for name in listed), listed
    # Paging does not reveal more than the full list.
    paged: list[str] = []
    url = f"{server.url}/v2/_catalog?n=1"
    while url:
        page = session.get(url)
        paged += page.json()["repositories"]
        link = page.headers.get("Link")
        url = f"{server.url}{link.split(';')[0].strip('<>')}" if link else ""
    assert set(paged) == listed


def test_catalog_with_a_catalog_scoped_bearer_token_lists_what_its_holder_may_pull(
    server: RegistryServer, world: World
) -> None:
    reader = world.cred("acme/prod", "read")
    token = fetch_token(server.url, "registry:catalog:*", auth=reader.auth)
    basic = http(reader.auth).get(f"{server.url}/v2/_catalog").json()["repositories"]

    listed = http(token=token).get(f"{server.url}/v2/_catalog").json()["repositories"]

    assert listed == basic
    assert {"acme/prod/app", f"{PUBLIC}/app"} <= set(listed)
    assert all(name.startswith(("acme/prod/", f"{PUBLIC}/")) for name in listed), listed


def test_catalog_with_a_bearer_token_without_the_catalog_scope_lists_only_its_scopes(
    server: RegistryServer, world: World
) -> None:
    reader = world.cred("acme/prod", "read")
    token = fetch_token(server.url, "repository:acme/prod/app:pull", auth=reader.auth)

    listed = http(token=token).get(f"{server.url}/v2/_catalog").json()["repositories"]

    assert listed == ["acme/prod/app"]


# -- permissions by role, on every endpoint ----------------------------------------------------------

SUCCESS = {
    ("GET", "manifest"): 200,
    ("HEAD", "manifest"): 200,
    ("GET", "blob"): 200,
    ("HEAD", "blob"): 200,
    ("GET", "tags"): 200,
    ("GET", "referrers"): 200,
    ("POST", "uploads"): 202,
    ("POST", "monolithic"): 201,
    ("GET", "upload"): 204,
    ("PATCH", "upload"): 202,
    ("PUT", "upload"): 201,
    ("DELETE", "upload"): 204,
    ("PUT", "manifest"): 201,
    ("DELETE", "manifest"): 202,
    ("DELETE", "blob"): 202,
}
NEEDS = {
    ("GET", "manifest"): "pull",
    ("HEAD", "manifest"): "pull",
    ("GET", "blob"): "pull",
    ("HEAD", "blob"): "pull",
    ("GET", "tags"): "pull",
    ("GET", "referrers"): "pull",
    ("POST", "uploads"): "push",
    ("POST", "monolithic"): "push",
    ("GET", "upload"): "push",
    ("PATCH", "upload"): "push",
    ("PUT", "upload"): "push",
    ("DELETE", "upload"): "push",
    ("PUT", "manifest"): "push",
    ("DELETE", "manifest"): "delete",
    ("DELETE", "blob"): "delete",
}
HOLDS = {
    "read": {"pull"},
    "write": {"pull", "push"},
    "admin": {"pull", "push", "delete"},
    "token": {"pull"},
}


@pytest.mark.parametrize("role", ROLES)
def test_role_permissions_on_every_endpoint(
    server: RegistryServer, world: World, role: str
) -> None:
    tenant = "acme/prod"
    repo = f"{tenant}/perm-{role}-{secrets.token_hex(3)}"
    root = http(world.creds["root"].auth)
    image = sample_image("perm")
    push_image(server.url, repo, image, "1", session=root)
    referrer = push_referrer(server.url, repo, image, root)
    session = http(world.cred(tenant, role).auth)
    base = f"{server.url}/v2/{repo}"
    data = b"chunk of " + secrets.token_bytes(8)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def upload_url() -> str:
        """An upload of the role itself if it may push, else one of root's."""
        owner = session if "push" in HOLDS[role] else root
        started = owner.post(f"{base}/blobs/uploads/")
        assert started.status_code == 202
        return f"{server.url}{started.headers['Location']}"

    calls = {
        ("GET", "manifest"): lambda: session.get(f"{base}/manifests/1"),
        ("HEAD", "manifest"): lambda: session.head(f"{base}/manifests/{image.digest}"),
        ("GET", "blob"): lambda: session.get(f"{base}/blobs/{image.layer_digests[0]}"),
        ("HEAD", "blob"): lambda: session.head(f"{base}/blobs/{image.config_digest}"),
        ("GET", "tags"): lambda: session.get(f"{base}/tags/list"),
        ("GET", "referrers"): lambda: session.get(f"{base}/referrers/{image.digest}"),
        ("POST", "uploads"): lambda: session.post(f"{base}/blobs/uploads/"),
        ("POST", "monolithic"): lambda: session.post(
            f"{base}/blobs/uploads/", params={"digest": digest}, data=data
        ),
        ("GET", "upload"): lambda: session.get(upload_url()),
        ("PATCH", "upload"): lambda: session.patch(upload_url(), data=data),
        ("PUT", "upload"): lambda: session.put(upload_url(), params={"digest": digest}, data=data),
        ("DELETE", "upload"): lambda: session.delete(upload_url()),
        ("PUT", "manifest"): lambda: session.put(
            f"{base}/manifests/2", data=image.manifest, headers={"Content-Type": image.media_type}
        ),
        ("DELETE", "manifest"): lambda: session.delete(f"{base}/manifests/{referrer}"),
        ("DELETE", "blob"): lambda: session.delete(f"{base}/blobs/{image.layer_digests[1]}"),
    }
    problems = []
    for key, call in calls.items():
        resp = call()
        if NEEDS[key] in HOLDS[role]:
            if resp.status_code != SUCCESS[key]:
                problems.append(f"{key}: {resp.status_code} {resp.text[:200]}")
        elif resp.status_code != 403 or (key[0] != "HEAD" and error_codes(resp) != ["DENIED"]):
            problems.append(f"{key}: {resp.status_code} (wanted 403 DENIED) {resp.text[:200]}")
        elif parse_challenge(resp.headers.get("WWW-Authenticate", ""))[1].get("scope") != (
            f"repository:{repo}:{NEEDS[key]}"
        ):
            problems.append(f"{key}: challenge {resp.headers.get('WWW-Authenticate')}")
    assert not problems, "\n".join(problems)


def test_owner_level_role_applies_to_every_registry_of_the_owner(
    server: RegistryServer, world: World
) -> None:
    session = http(world.creds["acme-owner"].auth)

    for tenant in ("acme/prod", "acme/dev"):
        repo = f"{tenant}/owner-{secrets.token_hex(3)}"
        digest = push_blob(
            server.url, repo, b"owner admin was here " + secrets.token_bytes(4), session=session
        )
        assert session.delete(f"{server.url}/v2/{repo}/blobs/{digest}").status_code == 202
    assert session.post(f"{server.url}/v2/globex/prod/owner/blobs/uploads/").status_code == 403
