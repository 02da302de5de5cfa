"""Logins as a hosted registry takes them, with skopeo; throttling; secrets kept out of logs;
the bootstrap admin; ``auth.enabled = false``.

Three kinds of login: ``USER`` + password, ``USER`` + API key and ``OWNER/REGISTRY`` +
entitlement token. The right ones push (user credentials) and pull (all three); a wrong
secret, an expired or revoked key or token, or a token used on another registry is
refused with 401. Revocations are made by another process (the CLI) and must be seen
within ``auth.cache_ttl`` (1 s on this server).
"""

from __future__ import annotations

import base64
import json
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.helpers import (
    Image,
    RegistryServer,
    client_env,
    run,
    sample_image,
    skopeo,
    write_oci_layout,
)
from tests.helpers.registry_api import MANIFEST_ACCEPT, push_image
from tests.helpers.tenants import (
    Credential,
    Seeder,
    cargohold_cli,
    cli_api_key,
    cli_token,
    error_codes,
    http,
    new_store,
    write_config,
)

APP = "acme/prod/app"
CACHE_TTL = 1.0


@dataclass
class World:
    server: RegistryServer
    seed: Seeder
    creds: dict[str, Credential]
    image: Image


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("auth-logins")
    seed = new_store(tmp)
    creds = seed.tenant_with_roles("acme/prod")
    seed.registry("acme/dev")
    creds["dev-token"] = seed.token("acme/dev")
    creds["root"] = seed.user("root", superuser=True)
    creds["api_key"] = seed.api_key(creds["write"].username)
    config = write_config(tmp / "config.toml", auth={"cache_ttl": CACHE_TTL})
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        image = sample_image("logins")
        push_image(server.url, APP, image, "1", session=http(creds["root"].auth))
        push_image(
            server.url, "acme/dev/app", sample_image("dev"), "1", session=http(creds["root"].auth)
        )
        yield World(server, seed, creds, image)


@pytest.fixture
def server(world: World) -> RegistryServer:
    return world.server


def ref(server: RegistryServer, repo: str, tag: str = "1") -> str:
    return f"docker://{server.host}/{repo}:{tag}"


def skopeo_inspect(server: RegistryServer, repo: str, *auth: str, check: bool = True):
    return skopeo("inspect", "--raw", "--tls-verify=false", *auth, ref(server, repo), check=check)


def assert_refused(proc) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "unauthorized" in proc.stderr.lower(), proc.stderr


def layout_of(tmp_path: Path, name: str = "image") -> tuple[Path, Image]:
    image = sample_image(name)
    write_oci_layout(tmp_path / "layout", image, "1")
    return tmp_path / "layout", image


# -- the right credentials ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["write", "api_key"], ids=["password", "api-key"])
def test_skopeo_pushes_with_user_credentials(
    server: RegistryServer, world: World, kind: str, tmp_path: Path
) -> None:
    layout, image = layout_of(tmp_path)
    repo = f"acme/prod/pushed-{kind.replace('_', '-')}"

    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        world.creds[kind].creds,
        f"oci:{layout}:1",
        ref(server, repo),
    )

    got = http(world.creds["root"].auth).get(
        f"{server.url}/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert got.status_code == 200
    assert got.content == image.manifest


@pytest.mark.parametrize("kind", ["read", "api_key", "token"], ids=["password", "api-key", "token"])
def test_skopeo_pulls_with_each_kind_of_login(
    server: RegistryServer, world: World, kind: str, tmp_path: Path
) -> None:
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        world.creds[kind].creds,
        ref(server, APP),
        f"dir:{tmp_path / 'pulled'}",
    )

    assert (tmp_path / "pulled" / "manifest.json").read_bytes() == world.image.manifest
    for blob in world.image.blobs():
        assert (tmp_path / "pulled" / blob.hex).read_bytes() == blob.data


def skopeo_login(server: RegistryServer, cred: Credential, authfile: Path, check: bool = True):
    return run(
        [
            "skopeo",
            "login",
            "--tls-verify=false",
            "--authfile",
            str(authfile),
            "--username",
            cred.username,
            "--password-stdin",
            server.host,
        ],
        input=cred.secret + "\n",
        env=client_env(),
        check=check,
    )


@pytest.mark.parametrize("kind", ["read", "api_key", "token"], ids=["password", "api-key", "token"])
def test_skopeo_login_then_pull(
    server: RegistryServer, world: World, kind: str, tmp_path: Path
) -> None:
    authfile = tmp_path / "auth.json"

    skopeo_login(server, world.creds[kind], authfile)
    raw = skopeo_inspect(server, APP, "--authfile", str(authfile), check=True)

    assert raw.stdout.encode() == world.image.manifest
    assert server.host in json.loads(authfile.read_text())["auths"]


@pytest.mark.parametrize(
    "username,secret",
    [
        ("acme-prod-read", "wrong-password"),
        ("nobody", "wrong-password"),
        ("acme-prod-write", "chk_0123456789abcdef_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("acme/prod", "cht_0123456789abcdef_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ],
    ids=["wrong-password", "unknown-user", "wrong-api-key", "wrong-token"],
)
def test_skopeo_login_with_wrong_credentials_is_refused(
    server: RegistryServer, world: World, username: str, secret: str, tmp_path: Path
) -> None:
    authfile = tmp_path / "auth.json"

    proc = skopeo_login(server, Credential(username, secret), authfile, check=False)

    assert proc.returncode != 0
    assert "invalid username/password" in proc.stderr.lower() or "401" in proc.stderr
    assert not authfile.exists() or server.host not in authfile.read_text()


# -- refused credentials -------------------------------------------------------------------------


def _refused(server: RegistryServer, cred: Credential, repo: str = APP) -> None:
    """skopeo is refused (401 unauthorized), and so is the same login sent as Basic."""
    assert_refused(skopeo_inspect(server, repo, "--creds", cred.creds, check=False))
    resp = http(cred.auth).get(
        f"{server.url}/v2/{repo}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert resp.status_code == 401, resp.text
    assert error_codes(resp) == ["UNAUTHORIZED"]
    token = http(cred.auth).get(
        f"{server.url}/v2/token", params={"scope": f"repository:{repo}:pull"}
    )
    if token.status_code == 200:  # a valid login of another registry: nothing granted here
        assert token.json()["token"]
        assert (
            http(token=token.json()["token"]).get(f"{server.url}/v2/{repo}/manifests/1").status_code
            == 401
        )


@pytest.mark.parametrize(
    "kind,wrong",
    [
        ("read", "not-the-password"),
        ("api_key", "chk_{id}_wrongsecretxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
        ("token", "cht_{id}_wrongsecretxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    ],
    ids=["password", "api-key", "token"],
)
def test_wrong_secret_is_refused(
    server: RegistryServer, world: World, kind: str, wrong: str
) -> None:
    cred = world.creds[kind]

    _refused(server, Credential(cred.username, wrong.format(id=cred.id)))


def test_api_key_of_another_user_is_refused(server: RegistryServer, world: World) -> None:
    key = world.creds["api_key"]  # belongs to acme-prod-write

    _refused(server, Credential("acme-prod-read", key.secret))


def test_expired_api_key_is_refused(server: RegistryServer, world: World) -> None:
    key = world.seed.api_key("acme-prod-read", expires_in=-60)

    _refused(server, key)


def test_expired_entitlement_token_is_refused(server: RegistryServer, world: World) -> None:
    token = cli_token(world.seed.storage, "acme/prod", expires="1s")
    time.sleep(1.5)

    _refused(server, token)


def test_api_key_created_with_expiry_works_until_it_expires(
    server: RegistryServer, world: World
) -> None:
    before = time.monotonic()
    key = cli_api_key(world.seed.storage, "acme-prod-read", expires="6s")
    created = time.monotonic()  # the CLI set the expiry somewhere in between (it is slow)
    assert skopeo_inspect(server, APP, "--creds", key.creds).stdout.encode() == world.image.manifest
    assert time.monotonic() - before < 6, "too slow to use the key before it expired"
    # Past the expiry, and past the cached verification of the last successful login.
    time.sleep(max(0.0, created + 6 + CACHE_TTL + 0.5 - time.monotonic()))

    _refused(server, key)


def test_revoked_api_key_is_refused_by_another_process_within_cache_ttl(
    server: RegistryServer, world: World
) -> None:
    key = world.seed.api_key("acme-prod-read")
    # A successful login: the server process now has it cached.
    assert skopeo_inspect(server, APP, "--creds", key.creds).stdout.encode() == world.image.manifest
    assert http(key.auth).get(f"{server.url}/v2/").status_code == 200

    cargohold_cli("api-keys", "revoke", key.id, storage=world.seed.storage)
    time.sleep(CACHE_TTL + 0.5)

    _refused(server, key)


def test_revoked_entitlement_token_is_refused_by_another_process_within_cache_ttl(
    server: RegistryServer, world: World
) -> None:
    token = cli_token(world.seed.storage, "acme/prod")
    assert (
        skopeo_inspect(server, APP, "--creds", token.creds).stdout.encode() == world.image.manifest
    )
    assert http(token.auth).get(f"{server.url}/v2/").status_code == 200

    cargohold_cli("tokens", "revoke", token.id, storage=world.seed.storage)
    time.sleep(CACHE_TTL + 0.5)

    _refused(server, token)


def test_entitlement_token_used_on_another_registry_is_refused(
    server: RegistryServer, world: World
) -> None:
    dev = world.creds["dev-token"]  # a valid token of acme/dev
    assert skopeo_inspect(server, "acme/dev/app", "--creds", dev.creds).returncode == 0

    _refused(server, dev, APP)


def test_entitlement_token_named_for_another_registry_is_refused(
    server: RegistryServer, world: World
) -> None:
    prod = world.creds["token"]

    _refused(server, Credential("acme/dev", prod.secret), "acme/dev/app")


def test_pushing_with_an_entitlement_token_is_refused(
    server: RegistryServer, world: World, tmp_path: Path
) -> None:
    layout, _ = layout_of(tmp_path)

    proc = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        world.creds["token"].creds,
        f"oci:{layout}:1",
        ref(server, "acme/prod/by-token"),
        check=False,
    )

    assert proc.returncode != 0
    assert "denied" in proc.stderr.lower() or "unauthorized" in proc.stderr.lower()
    root = http(world.creds["root"].auth)
    assert root.get(f"{server.url}/v2/acme/prod/by-token/tags/list").status_code == 404


# -- throttling ---------------------------------------------------------------------------------

MAX_FAILURES = 5
SLOWDOWN_AFTER = 2
WINDOW = 60


class _FromAddress(HTTPAdapter):
    """Connect from a given loopback address (127.0.0.0/8 is all local on Linux)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def from_address(address: str, auth: tuple[str, str] | None = None) -> requests.Session:
    session = http(auth)
    session.mount("http://", _FromAddress(address))
    return session


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, Seeder]]:
    tmp = tmp_path_factory.mktemp("auth-throttle")
    seed = new_store(tmp)
    seed.registry("acme/prod")
    for name in ("victim", "bystander", "slow", "poster"):
        seed.user(name)
        seed.member("acme/prod", name, "read")
    config = write_config(
        tmp / "config.toml",
        auth={
            "max_failures": MAX_FAILURES,
            "slowdown_after": SLOWDOWN_AFTER,
            "failure_window": WINDOW,
        },
    )
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        yield server, seed


def assert_too_many(resp: requests.Response) -> None:
    assert resp.status_code == 429, (resp.status_code, resp.text)
    assert error_codes(resp) == ["TOOMANYREQUESTS"]
    assert 1 <= int(resp.headers["Retry-After"]) <= WINDOW + 1


def test_failed_logins_for_one_username_are_refused_with_429(throttled) -> None:
    server, seed = throttled
    victim = seed.credentials["victim"]
    # One failure from each of several addresses: only the username adds up.
    for i in range(MAX_FAILURES):
        resp = from_address(f"127.0.0.{11 + i}", ("victim", "guess")).get(f"{server.url}/v2/")
        assert resp.status_code == 401

    locked = from_address("127.0.0.20", victim.auth).get(f"{server.url}/v2/")
    token = from_address("127.0.0.20", victim.auth).get(f"{server.url}/v2/token")

    assert_too_many(locked)  # even with the right password
    assert_too_many(token)
    other = from_address("127.0.0.20", seed.credentials["bystander"].auth).get(f"{server.url}/v2/")
    assert other.status_code == 200


def test_failed_logins_from_one_address_are_refused_with_429(throttled) -> None:
    server, seed = throttled
    attacker = "127.0.0.30"
    for i in range(MAX_FAILURES):
        resp = from_address(attacker, (f"sprayed-{i}", "guess")).get(f"{server.url}/v2/")
        assert resp.status_code == 401

    locked = from_address(attacker, seed.credentials["bystander"].auth).get(f"{server.url}/v2/")

    assert_too_many(locked)
    elsewhere = from_address("127.0.0.31", seed.credentials["bystander"].auth)
    assert elsewhere.get(f"{server.url}/v2/").status_code == 200


def test_behind_a_trusted_proxy_failed_logins_count_per_forwarded_client(
    tmp_path: Path,
) -> None:
    seed = new_store(tmp_path)
    seed.registry("acme/prod")
    seed.user("bystander")
    seed.member("acme/prod", "bystander", "read")
    proxy = "127.0.0.60"
    config = write_config(
        tmp_path / "config.toml",
        server={"trusted_proxies": [f"{proxy}/32"]},
        auth={"max_failures": MAX_FAILURES, "slowdown_after": 100, "failure_window": WINDOW},
    )
    with RegistryServer(seed.storage, auth=True, config=config, workdir=tmp_path / "srv") as server:
        # Addresses in the header only: every packet goes to 127.0.0.1 through "the proxy".
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        neighbour = {"X-Forwarded-For": "203.0.113.8"}
        for i in range(MAX_FAILURES):
            resp = from_address(proxy, (f"spray-{i}", "guess")).get(
                f"{server.url}/v2/", headers=attacker
            )
            assert resp.status_code == 401
        good = seed.credentials["bystander"].auth
        locked = from_address(proxy, good).get(f"{server.url}/v2/", headers=attacker)
        assert_too_many(locked)
        other = from_address(proxy, good).get(f"{server.url}/v2/", headers=neighbour)
        assert other.status_code == 200


def test_failed_logins_are_slowed_before_they_are_refused(throttled) -> None:
    server, _ = throttled
    session = from_address("127.0.0.40", ("slow", "guess"))
    durations = []
    for _ in range(MAX_FAILURES):
        started = time.monotonic()
        assert session.get(f"{server.url}/v2/").status_code == 401
        durations.append(time.monotonic() - started)

    # From the third failure on, answers wait 0.1 s, 0.2 s, 0.4 s (doubling); the
    # second is the fastest: a failed login is cached, so no hash is recomputed.
    for i, delay in enumerate([0.0, 0.0, 0.1, 0.2, 0.4]):
        assert durations[i] >= delay * 0.9, durations
    assert_too_many(session.get(f"{server.url}/v2/"))


def test_failed_token_requests_are_throttled_too(throttled) -> None:
    server, seed = throttled
    session = from_address("127.0.0.50")
    form = {"grant_type": "password", "username": "poster", "client_id": "containerd-client"}
    for _ in range(MAX_FAILURES):
        resp = session.post(f"{server.url}/v2/token", data={**form, "password": "guess"})
        assert resp.status_code == 401

    resp = session.post(
        f"{server.url}/v2/token", data={**form, "password": seed.credentials["poster"].secret}
    )

    assert_too_many(resp)


# -- secrets never reach the logs ------------------------------------------------------------------


def fragments(secret: str, size: int = 12) -> list[str]:
    """Every run of *size* characters of *secret* (its random part, for keys and tokens)."""
    if secret.startswith(("chk_", "cht_")):
        secret = secret.split("_", 2)[2]
    if len(secret) <= size:
        return [secret]
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_appears_in_logs(registry_factory, tmp_path: Path, log_format: str) -> None:
    seed = new_store(tmp_path)
    creds = seed.tenant_with_roles("acme/prod")
    key = seed.api_key("acme-prod-write")
    root = seed.user("root", superuser=True)
    config = write_config(tmp_path / "config.toml")
    server = registry_factory(
        storage_url=seed.storage, auth=True, config=config, extra_args=["--log-format", log_format]
    )
    push_image(server.url, APP, sample_image(), "1", session=http(root.auth))
    logins = [creds["read"], creds["write"], creds["token"], key, root]
    wrong = [
        Credential("acme-prod-read", "wrong-password-Zq81x"),
        Credential("acme-prod-write", key.secret[:-6] + "XXXXXX"),
        Credential("acme/prod", creds["token"].secret[:-6] + "YYYYYY"),
        Credential("no-such-user", "another-wrong-password-Pw77"),
    ]
    secrets_seen: list[str] = [c.secret for c in logins + wrong]
    # The Authorization header values too: a logged header would carry them encoded.
    secrets_seen += [
        base64.b64encode(f"{c.username}:{c.secret}".encode()).decode() for c in logins + wrong
    ]
    for cred in logins + wrong:
        http(cred.auth).get(f"{server.url}/v2/")
        http(cred.auth).get(f"{server.url}/v2/{APP}/manifests/1")
        resp = http(cred.auth).get(
            f"{server.url}/v2/token",
            params={"scope": f"repository:{APP}:pull", "service": server.host},
        )
        if resp.status_code == 200:
            jwt = resp.json()["token"]
            secrets_seen.append(jwt.split(".")[2])  # the signature: what makes it a secret
            http(token=jwt).get(f"{server.url}/v2/{APP}/manifests/1")
            http(token=jwt[:-3] + "abc").get(f"{server.url}/v2/{APP}/manifests/1")
        resp = http().post(
            f"{server.url}/v2/token",
            data={
                "grant_type": "password",
                "username": cred.username,
                "password": cred.secret,
                "scope": f"repository:{APP}:pull",
                "service": server.host,
                "client_id": "containerd-client",
            },
        )
        if resp.status_code == 200:
            secrets_seen.append(resp.json()["access_token"].split(".")[2])
    # A malformed header carrying a secret, and a real client's login.
    bare = creds["read"].secret
    http().get(f"{server.url}/v2/", headers={"Authorization": f"Basic {bare}"})
    http().get(f"{server.url}/v2/", headers={"Authorization": f"Token {bare}"})
    skopeo_login(server, creds["read"], tmp_path / "auth.json")
    skopeo_inspect(server, APP, "--creds", creds["token"].creds)
    skopeo_inspect(server, APP, "--creds", wrong[0].creds, check=False)
    time.sleep(0.3)  # let the last access-log lines reach the file

    log = server.log_text()
    # Not even a part of one: any 12 characters in a row of a secret (or all of a shorter one).
    leaked = sorted({f[:4] + "..." for s in secrets_seen for f in fragments(s) if f in log})
    assert not leaked, f"secret material in the log: {leaked}"
    assert "route=token" in log or '"route":"token"' in log
    if log_format == "json":
        access = [line for line in log.splitlines() if line.startswith("{")]
        assert len(access) > 20
        assert all("route" in json.loads(line) for line in access)


# -- the bootstrap admin -----------------------------------------------------------------------------


def _bootstrap_config(tmp_path: Path) -> Path:
    # Replicas share the secrets key, as they must: the bootstrap registry's signing keys
    # are sealed at the first start, so a replica with a key of its own refuses to start.
    return write_config(
        tmp_path / "bootstrap.toml",
        auth={"bootstrap_admin": True},
        secrets={"key": "the replicas' shared secrets key"},
    )


def _empty_store(tmp_path: Path) -> Seeder:
    """An owner and a registry, but no user at all."""
    seed = new_store(tmp_path)
    seed.registry("acme/prod")
    return seed


def _users(seed: Seeder) -> list[str]:
    out = cargohold_cli("users", "list", storage=seed.storage).stdout.splitlines()[1:]
    return [line.split()[0] for line in out if line.strip()]


def test_first_start_creates_superuser_admin_with_password_file(
    registry_factory, tmp_path: Path
) -> None:
    seed = _empty_store(tmp_path)

    server = registry_factory(
        storage_url=seed.storage, auth=True, config=_bootstrap_config(tmp_path)
    )

    password_file = tmp_path / "store-state" / "admin-password"
    assert password_file.is_file()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 16
    log = server.log_text()
    assert str(password_file) in log
    assert password not in log
    assert _users(seed) == ["admin"]
    assert "yes" in cargohold_cli("users", "list", storage=seed.storage).stdout  # superuser
    layout, image = layout_of(tmp_path)
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"admin:{password}",
        f"oci:{layout}:1",
        ref(server, APP),
    )
    got = http(("admin", password)).get(
        f"{server.url}/v2/{APP}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert got.content == image.manifest


def test_first_start_creates_the_registry_admin_default_to_push_into(
    registry_factory, tmp_path: Path
) -> None:
    seed = new_store(tmp_path)  # no owner, no registry, no user: a brand-new server
    server = registry_factory(
        storage_url=seed.storage, auth=True, config=_bootstrap_config(tmp_path)
    )
    password = (tmp_path / "store-state" / "admin-password").read_text().strip()
    layout, image = layout_of(tmp_path)
    target = "admin/default/app"
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"admin:{password}",
        f"oci:{layout}:1",
        f"docker://{server.host}/{target}:1",
    )
    got = http(("admin", password)).get(
        f"{server.url}/v2/{target}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert got.content == image.manifest
    assert "admin/default" in cargohold_cli("registries", "list", storage=seed.storage).stdout


def test_restart_and_second_replica_keep_the_first_admin(registry_factory, tmp_path: Path) -> None:
    seed = _empty_store(tmp_path)
    config = _bootstrap_config(tmp_path)
    first = registry_factory(storage_url=seed.storage, auth=True, config=config)
    password_file = tmp_path / "store-state" / "admin-password"
    written = password_file.read_text()
    mtime = password_file.stat().st_mtime_ns

    first.restart()
    replica_state = tmp_path / "replica-state"
    replica = registry_factory(
        storage_url=seed.storage,
        auth=True,
        config=config,
        extra_args=["--state-dir", str(replica_state)],
    )

    assert password_file.read_text() == written
    assert password_file.stat().st_mtime_ns == mtime
    assert not (replica_state / "admin-password").exists()
    assert first.log_text().count("created the superuser") == 1
    assert "created the superuser" not in replica.log_text()
    assert _users(seed) == ["admin"]
    admin = ("admin", written.strip())
    assert http(admin).get(f"{first.url}/v2/").status_code == 200
    assert http(admin).get(f"{replica.url}/v2/").status_code == 200


def test_two_replicas_starting_at_once_create_one_admin(tmp_path: Path) -> None:
    seed = _empty_store(tmp_path)
    config = _bootstrap_config(tmp_path)
    servers = [
        RegistryServer(
            seed.storage,
            auth=True,
            config=config,
            extra_args=["--state-dir", str(tmp_path / f"state-{i}")],
            workdir=tmp_path / f"server-{i}",
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []

    def start(server: RegistryServer) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors

        files = [tmp_path / f"state-{i}" / "admin-password" for i in range(2)]
        written = [f for f in files if f.exists()]
        assert len(written) == 1, written
        password = written[0].read_text().strip()
        for server in servers:
            assert http(("admin", password)).get(f"{server.url}/v2/").status_code == 200
        assert _users(seed) == ["admin"]
    finally:
        for server in servers:
            server.stop()


def test_state_dir_flag_places_the_password_file(registry_factory, tmp_path: Path) -> None:
    seed = _empty_store(tmp_path)
    state = tmp_path / "elsewhere" / "state"

    server = registry_factory(
        storage_url=seed.storage,
        auth=True,
        config=_bootstrap_config(tmp_path),
        extra_args=["--state-dir", str(state)],
    )

    assert (state / "admin-password").is_file()
    assert not (tmp_path / "store-state").exists()
    assert str(state / "admin-password") in server.log_text()


def test_no_admin_is_created_when_a_user_exists(registry_factory, tmp_path: Path) -> None:
    seed = _empty_store(tmp_path)
    seed.user("someone")

    server = registry_factory(
        storage_url=seed.storage, auth=True, config=_bootstrap_config(tmp_path)
    )

    # The state folder may hold the generated secrets key; never an admin password.
    assert not (tmp_path / "store-state" / "admin-password").exists()
    assert _users(seed) == ["someone"]
    assert "created the superuser" not in server.log_text()


def test_auth_disabled_gives_an_open_registry(registry_factory, tmp_path: Path) -> None:
    seed = _empty_store(tmp_path)  # a private registry, but auth is off
    config = write_config(tmp_path / "open.toml", auth={"enabled": False, "bootstrap_admin": True})

    server = registry_factory(storage_url=seed.storage, auth=True, config=config)

    anonymous = http()
    assert anonymous.get(f"{server.url}/v2/").status_code == 200
    image = sample_image("open")
    push_image(server.url, APP, image, "1", session=anonymous)
    got = anonymous.get(f"{server.url}/v2/{APP}/manifests/1", headers={"Accept": MANIFEST_ACCEPT})
    assert got.content == image.manifest
    assert anonymous.get(f"{server.url}/v2/token").status_code in (404, 405)
    assert "acme/prod/app" in anonymous.get(f"{server.url}/v2/_catalog").json()["repositories"]
    # The state folder may hold the generated secrets key; never an admin password.
    assert not (tmp_path / "store-state" / "admin-password").exists()
    assert _users(seed) == []
