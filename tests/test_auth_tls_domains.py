"""HTTPS served by Cargohold itself (and mutual TLS), the start-up warning about clear-text
credentials, forwarded headers from trusted proxies only, and custom domains.

Certificates are made here with the ``cryptography`` package: a CA, a server
certificate for ``IP:127.0.0.1`` and a client certificate. skopeo verifies the server
through ``--cert-dir`` (``ca.crt``; ``client.cert``/``client.key`` for mutual TLS).
Custom domains are exercised with the ``Host`` header over loopback.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry_core.attachments import is_attachment_tag
from tests.helpers import Image, RegistryServer, sample_image, skopeo, write_oci_layout
from tests.helpers.registry_api import MANIFEST_ACCEPT, push_image
from tests.helpers.tenants import (
    Credential,
    Seeder,
    error_codes,
    fetch_token,
    http,
    jwt_claims,
    new_store,
    parse_challenge,
    write_config,
)

APP = "acme/prod/app"

# -- certificates ---------------------------------------------------------------------------------


@dataclass
class Pem:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, name: str, cert: x509.Certificate, key) -> Pem:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pem(cert_path, key_path)


def make_ca(directory: Path, name: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key), cert, key


def make_leaf(
    directory: Path,
    name: str,
    ca: tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
) -> Pem:
    _, ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return _write(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client_ca: Pem
    client: Pem
    other_client: Pem  # signed by a CA the server does not trust

    def cert_dir(self, directory: Path, *, client: Pem | None = None) -> Path:
        """A skopeo/containers ``--cert-dir``: ``ca.crt`` (+ ``client.cert``/``client.key``)."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca.cert.read_bytes())
        if client is not None:
            (directory / "client.cert").write_bytes(client.cert.read_bytes())
            (directory / "client.key").write_bytes(client.key.read_bytes())
        return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = make_ca(tmp, "test-ca")
    client_ca = make_ca(tmp, "client-ca")
    stranger_ca = make_ca(tmp, "stranger-ca")
    return Pki(
        ca=ca[0],
        server=make_leaf(tmp, "server", ca, server=True),
        client_ca=client_ca[0],
        client=make_leaf(tmp, "client", client_ca, server=False),
        other_client=make_leaf(tmp, "other-client", stranger_ca, server=False),
    )


class TlsRegistryServer(RegistryServer):
    """RegistryServer serving HTTPS; readiness probed over TLS with the test CA."""

    def __init__(self, *args, ca: Path, client: Pem | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ca = ca
        self.client = client

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def session(self, auth: tuple[str, str] | None = None) -> requests.Session:
        session = http(auth)
        session.verify = str(self.ca)
        if self.client is not None:
            session.cert = (str(self.client.cert), str(self.client.key))
        return session

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"cargohold exited during start-up\n{self.log_text()}")
            try:
                if self.session().get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cargohold not ready over TLS\n{self.log_text()}")
            time.sleep(0.05)


@dataclass
class TlsWorld:
    server: TlsRegistryServer
    seed: Seeder
    writer: Credential
    reader: Credential


def _tls_world(tmp: Path, pki: Pki, *, mutual: bool) -> TlsWorld:
    seed = new_store(tmp)
    roles = seed.tenant_with_roles("acme/prod")
    tls = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    if mutual:
        tls["client_ca"] = str(pki.client_ca.cert)
    config = write_config(tmp / "config.toml", tls=tls)
    server = TlsRegistryServer(
        seed.storage,
        auth=True,
        config=config,
        workdir=tmp / "server",
        ca=pki.ca.cert,
        client=pki.client if mutual else None,
    )
    return TlsWorld(server, seed, roles["write"], roles["read"])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsWorld]:
    world = _tls_world(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    with world.server:
        yield world


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsWorld]:
    world = _tls_world(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    with world.server:
        yield world


def _layout(tmp_path: Path) -> tuple[Path, Image]:
    image = sample_image("tls")
    write_oci_layout(tmp_path / "layout", image, "1")
    return tmp_path / "layout", image


# -- TLS -----------------------------------------------------------------------------------------


def test_skopeo_pushes_and_pulls_over_verified_tls(tls: TlsWorld, pki: Pki, tmp_path: Path) -> None:
    server = tls.server
    cert_dir = pki.cert_dir(tmp_path / "certs")
    layout, image = _layout(tmp_path)
    ref = f"docker://{server.host}/{APP}:1"

    skopeo(
        "copy",
        "--dest-cert-dir",
        str(cert_dir),
        "--dest-creds",
        tls.writer.creds,
        f"oci:{layout}:1",
        ref,
    )
    raw = skopeo("inspect", "--raw", "--cert-dir", str(cert_dir), "--creds", tls.reader.creds, ref)

    assert raw.stdout.encode() == image.manifest
    got = server.session(tls.reader.auth).get(
        f"{server.url}/v2/{APP}/manifests/1", headers={"Accept": MANIFEST_ACCEPT}
    )
    assert got.content == image.manifest


def test_skopeo_refuses_a_certificate_it_cannot_verify(tls: TlsWorld, tmp_path: Path) -> None:
    empty = tmp_path / "no-ca"
    empty.mkdir()

    proc = skopeo(
        "inspect",
        "--raw",
        "--cert-dir",
        str(empty),
        "--creds",
        tls.reader.creds,
        f"docker://{tls.server.host}/{APP}:1",
        check=False,
    )

    assert proc.returncode != 0
    assert "certificate" in proc.stderr.lower() or "x509" in proc.stderr.lower()


def test_plain_http_against_the_tls_port_fails(tls: TlsWorld) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        http(tls.reader.auth).get(f"http://{tls.server.host}/v2/", timeout=5)


def test_challenge_over_tls_names_an_https_realm(tls: TlsWorld) -> None:
    resp = tls.server.session().get(f"{tls.server.url}/v2/")

    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="https://{tls.server.host}/v2/token",service="{tls.server.host}"'
    )


def test_mutual_tls_refuses_a_client_without_certificate(mtls: TlsWorld) -> None:
    session = http(mtls.reader.auth)
    session.verify = str(mtls.server.ca)

    with pytest.raises(requests.exceptions.RequestException):
        session.get(f"{mtls.server.url}/v2/", timeout=5)


def test_mutual_tls_refuses_a_certificate_of_another_ca(mtls: TlsWorld, pki: Pki) -> None:
    session = http(mtls.reader.auth)
    session.verify = str(mtls.server.ca)
    session.cert = (str(pki.other_client.cert), str(pki.other_client.key))

    with pytest.raises(requests.exceptions.RequestException):
        session.get(f"{mtls.server.url}/v2/", timeout=5)


def test_mutual_tls_accepts_a_client_certificate(mtls: TlsWorld) -> None:
    resp = mtls.server.session(mtls.reader.auth).get(f"{mtls.server.url}/v2/")

    assert resp.status_code == 200


def test_skopeo_with_client_certificate_pushes_and_pulls_over_mutual_tls(
    mtls: TlsWorld, pki: Pki, tmp_path: Path
) -> None:
    with_client = pki.cert_dir(tmp_path / "with-client", client=pki.client)
    without = pki.cert_dir(tmp_path / "without-client")
    layout, image = _layout(tmp_path)
    ref = f"docker://{mtls.server.host}/{APP}:mtls"

    skopeo(
        "copy",
        "--dest-cert-dir",
        str(with_client),
        "--dest-creds",
        mtls.writer.creds,
        f"oci:{layout}:1",
        ref,
    )
    raw = skopeo(
        "inspect", "--raw", "--cert-dir", str(with_client), "--creds", mtls.reader.creds, ref
    )
    refused = skopeo(
        "inspect",
        "--raw",
        "--cert-dir",
        str(without),
        "--creds",
        mtls.reader.creds,
        ref,
        check=False,
    )

    assert raw.stdout.encode() == image.manifest
    assert refused.returncode != 0


# -- the clear-text warning --------------------------------------------------------------------------

WARNING = "without TLS or a trusted TLS-terminating proxy"


def _plain_server(
    registry_factory, tmp_path: Path, *, listen: str | None, **sections
) -> RegistryServer:
    seed = new_store(tmp_path)
    seed.user("someone")
    config = write_config(tmp_path / "config.toml", **sections)
    extra = ["--listen", listen] if listen else []
    return registry_factory(storage_url=seed.storage, auth=True, config=config, extra_args=extra)


def test_warns_when_listening_beyond_loopback_without_tls(registry_factory, tmp_path: Path) -> None:
    from tests.helpers import free_port

    port = free_port()
    server = registry_factory(
        storage_url=new_store(tmp_path).storage,
        auth=True,
        config=write_config(tmp_path / "config.toml"),
        port=port,
        extra_args=["--listen", f"0.0.0.0:{port}"],
    )

    assert WARNING in server.log_text()
    assert "0.0.0.0" in server.log_text()


def test_no_warning_on_loopback(registry_factory, tmp_path: Path) -> None:
    server = _plain_server(registry_factory, tmp_path, listen=None)

    assert WARNING not in server.log_text()


def test_no_warning_beyond_loopback_behind_trusted_proxies(
    registry_factory, tmp_path: Path
) -> None:
    from tests.helpers import free_port

    port = free_port()
    server = registry_factory(
        storage_url=new_store(tmp_path).storage,
        auth=True,
        config=write_config(tmp_path / "config.toml", server={"trusted_proxies": ["127.0.0.1/32"]}),
        port=port,
        extra_args=["--listen", f"0.0.0.0:{port}"],
    )

    assert WARNING not in server.log_text()


def test_no_warning_beyond_loopback_with_tls(tmp_path: Path, pki: Pki) -> None:
    from tests.helpers import free_port

    port = free_port()
    config = write_config(
        tmp_path / "config.toml", tls={"cert": str(pki.server.cert), "key": str(pki.server.key)}
    )
    server = TlsRegistryServer(
        new_store(tmp_path).storage,
        auth=True,
        config=config,
        port=port,
        extra_args=["--listen", f"0.0.0.0:{port}"],
        workdir=tmp_path / "server",
        ca=pki.ca.cert,
    )
    with server:
        assert "https://0.0.0.0" in server.log_text()
        assert WARNING not in server.log_text()


# -- forwarded headers ---------------------------------------------------------------------------

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "reg.example"}


@pytest.mark.parametrize(
    "trusted,expected",
    [
        (["127.0.0.1/32"], ("https://reg.example/v2/token", "reg.example")),
        ([], (None, None)),
        (["10.0.0.0/8"], (None, None)),
    ],
    ids=["trusted", "no-proxies", "other-proxy"],
)
def test_forwarded_headers_only_from_trusted_proxies(
    registry_factory, tmp_path: Path, trusted: list[str], expected: tuple[str | None, str | None]
) -> None:
    server = _plain_server(
        registry_factory, tmp_path, listen=None, server={"trusted_proxies": trusted}
    )
    realm, service = expected
    realm = realm or f"{server.url}/v2/token"
    service = service or server.host

    resp = http().get(f"{server.url}/v2/", headers=FORWARDED)

    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == f'Bearer realm="{realm}",service="{service}"'
    scoped = http().get(f"{server.url}/v2/acme/prod/app/tags/list", headers=FORWARDED)
    assert parse_challenge(scoped.headers["WWW-Authenticate"])[1]["realm"] == realm


def test_token_through_a_trusted_proxy_is_for_the_public_host(
    registry_factory, tmp_path: Path
) -> None:
    seed = new_store(tmp_path)
    seed.registry("acme/prod")
    reader = seed.user("reader")
    seed.member("acme/prod", "reader", "read")
    root = seed.user("root", superuser=True)
    config = write_config(tmp_path / "config.toml", server={"trusted_proxies": ["127.0.0.1/32"]})
    server = registry_factory(storage_url=seed.storage, auth=True, config=config)
    push_image(server.url, APP, sample_image(), "1", session=http(root.auth))

    token = fetch_token(server.url, f"repository:{APP}:pull", auth=reader.auth, headers=FORWARDED)

    assert jwt_claims(token)["aud"] == "reg.example"
    via_proxy = http(token=token).get(f"{server.url}/v2/{APP}/manifests/1", headers=FORWARDED)
    direct = http(token=token).get(f"{server.url}/v2/{APP}/manifests/1")
    assert via_proxy.status_code == 200
    assert direct.status_code == 401  # issued for reg.example, not for 127.0.0.1:PORT


# -- custom domains ----------------------------------------------------------------------------------

ACME = {"Host": "acme.test"}
PROD = {"Host": "prod.acme.test"}


@dataclass
class DomainWorld:
    server: RegistryServer
    seed: Seeder
    dev: Credential  # write on every acme registry
    root: Credential
    images: dict[str, Image]


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DomainWorld]:
    tmp = tmp_path_factory.mktemp("domains")
    seed = new_store(tmp)
    for tenant in ("acme/prod", "acme/dev", "globex/prod"):
        seed.registry(tenant)
    dev = seed.user("dev")
    seed.member("acme", "dev", "write")
    root = seed.user("root", superuser=True)
    config = write_config(
        tmp / "config.toml",
        domains={"acme.test": "acme", "prod.acme.test": "acme/prod"},
        server={"trusted_proxies": ["127.0.0.1/32"]},
    )
    server = RegistryServer(seed.storage, auth=True, config=config, workdir=tmp / "server")
    with server:
        images = {}
        for repo in ("acme/prod/app", "acme/prod/tools/cli", "acme/dev/app", "globex/prod/app"):
            images[repo] = sample_image(repo.replace("/", "-"))
            push_image(server.url, repo, images[repo], "1", session=http(root.auth))
            push_image(server.url, repo, images[repo], "2", session=http(root.auth))
        yield DomainWorld(server, seed, dev, root, images)


def _get(world: DomainWorld, path: str, host: dict[str, str], **kwargs) -> requests.Response:
    auth = kwargs.pop("auth", world.dev.auth)
    session = http(auth) if auth else http()
    headers = {**host, "Accept": MANIFEST_ACCEPT, **kwargs.pop("headers", {})}
    return session.get(f"{world.server.url}{path}", headers=headers, **kwargs)


@pytest.mark.parametrize(
    "host,path",
    [(ACME, "/v2/prod/app/manifests/1"), (PROD, "/v2/app/manifests/1")],
    ids=["owner-domain", "registry-domain"],
)
def test_domain_resolves_short_names(domains: DomainWorld, host, path: str) -> None:
    resp = _get(domains, path, host)

    assert resp.status_code == 200, resp.text
    assert resp.content == domains.images["acme/prod/app"].manifest


def test_domain_cannot_reach_another_owner(domains: DomainWorld) -> None:
    # Under acme.test, "globex/prod/app" is acme/globex/prod/app: not globex's repository.
    resp = _get(domains, "/v2/globex/prod/app/manifests/1", ACME, auth=domains.root.auth)
    full = _get(domains, "/v2/acme/globex/prod/app/manifests/1", {}, auth=domains.root.auth)

    assert resp.status_code == full.status_code
    assert resp.status_code in (403, 404)
    assert domains.images["globex/prod/app"].digest not in resp.text


@pytest.mark.parametrize(
    "host,realm,repo",
    [
        (ACME, "http://acme.test/v2/token", "prod/app"),
        (PROD, "http://prod.acme.test/v2/token", "app"),
    ],
    ids=["owner-domain", "registry-domain"],
)
def test_domain_challenge_uses_client_visible_names(
    domains: DomainWorld, host, realm: str, repo: str
) -> None:
    base = _get(domains, "/v2/", host, auth=None)
    refused = _get(domains, f"/v2/{repo}/manifests/1", host, auth=None)

    assert base.headers["WWW-Authenticate"] == (f'Bearer realm="{realm}",service="{host["Host"]}"')
    assert refused.status_code == 401
    assert parse_challenge(refused.headers["WWW-Authenticate"])[1] == {
        "realm": realm,
        "service": host["Host"],
        "scope": f"repository:{repo}:pull",
    }


@pytest.mark.parametrize(
    "host,repo",
    [(ACME, "prod/app"), (PROD, "app")],
    ids=["owner-domain", "registry-domain"],
)
def test_domain_token_claims_use_client_visible_names(
    domains: DomainWorld, host, repo: str
) -> None:
    token = fetch_token(
        domains.server.url, f"repository:{repo}:pull,push", auth=domains.dev.auth, headers=host
    )

    claims = jwt_claims(token)
    assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
    assert claims["aud"] == host["Host"]
    resp = http(token=token).get(
        f"{domains.server.url}/v2/{repo}/manifests/1", headers={**host, "Accept": MANIFEST_ACCEPT}
    )
    assert resp.content == domains.images["acme/prod/app"].manifest
    # The token is for that host: elsewhere it is refused.
    other = http(token=token).get(f"{domains.server.url}/v2/acme/prod/app/manifests/1")
    assert other.status_code == 401


def test_domain_token_scopes_stay_inside_the_domain(domains: DomainWorld) -> None:
    token = fetch_token(
        domains.server.url,
        "repository:globex/prod/app:pull",
        "repository:app:pull",
        auth=domains.root.auth,
        headers=PROD,
    )

    access = {c["name"]: c["actions"] for c in jwt_claims(token)["access"]}
    # "globex/prod/app" under prod.acme.test is acme/prod/globex/prod/app (nothing there).
    assert access == {"globex/prod/app": ["pull"], "app": ["pull"]}
    resp = http(token=token).get(
        f"{domains.server.url}/v2/globex/prod/app/manifests/1", headers=PROD
    )
    assert resp.status_code == 404
    assert domains.images["globex/prod/app"].digest not in resp.text


@pytest.mark.parametrize(
    "host,prefix",
    [(ACME, "prod/"), (PROD, "")],
    ids=["owner-domain", "registry-domain"],
)
def test_domain_location_headers_use_client_visible_names(
    domains: DomainWorld, host, prefix: str
) -> None:
    session = http(domains.dev.auth)
    session.headers.update(host)
    url = domains.server.url
    repo = f"{prefix}pushed-{len(prefix)}"
    image = sample_image("domain-push")

    started = session.post(f"{url}/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["Location"].startswith(f"/v2/{repo}/blobs/uploads/")
    blob = image.config
    finished = session.put(
        f"{url}{started.headers['Location']}", params={"digest": blob.digest}, data=blob.data
    )
    assert finished.status_code == 201
    assert finished.headers["Location"] == f"/v2/{repo}/blobs/{blob.digest}"
    for layer in image.layers:
        done = session.post(
            f"{url}/v2/{repo}/blobs/uploads/", params={"digest": layer.digest}, data=layer.data
        )
        assert done.headers["Location"] == f"/v2/{repo}/blobs/{layer.digest}"
    put = session.put(
        f"{url}/v2/{repo}/manifests/1",
        data=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert put.status_code == 201, put.text
    assert put.headers["Location"] == f"/v2/{repo}/manifests/{image.digest}"
    # Inside, it is acme/prod/<repo>.
    full = _get(domains, f"/v2/acme/prod/pushed-{len(prefix)}/manifests/1", {})
    assert full.content == image.manifest


@pytest.mark.parametrize(
    "host,repo",
    [(ACME, "prod/app"), (PROD, "app")],
    ids=["owner-domain", "registry-domain"],
)
def test_domain_tag_list_name_and_link(domains: DomainWorld, host, repo: str) -> None:
    resp = _get(domains, f"/v2/{repo}/tags/list?n=1", host)

    assert resp.json() == {"name": repo, "tags": ["1"]}
    assert resp.headers["Link"] == f'</v2/{repo}/tags/list?n=1&last=1>; rel="next"'


def test_domain_mount_uses_client_visible_from(domains: DomainWorld) -> None:
    layer = domains.images["acme/prod/app"].layer_digests[0]
    session = http(domains.dev.auth)
    session.headers.update(ACME)

    resp = session.post(
        f"{domains.server.url}/v2/dev/mounted/blobs/uploads/",
        params={"mount": layer, "from": "prod/app"},
    )

    assert resp.status_code == 201, resp.text
    assert resp.headers["Location"] == f"/v2/dev/mounted/blobs/{layer}"
    assert (
        http(domains.dev.auth)
        .head(f"{domains.server.url}/v2/acme/dev/mounted/blobs/{layer}")
        .status_code
        == 200
    )


def test_domain_catalog_lists_that_domains_repositories_by_short_name(
    domains: DomainWorld,
) -> None:
    owner = _get(domains, "/v2/_catalog", ACME, auth=domains.root.auth).json()["repositories"]
    registry = _get(domains, "/v2/_catalog", PROD, auth=domains.root.auth).json()["repositories"]

    assert {"prod/app", "prod/tools/cli", "dev/app"} <= set(owner)
    assert not any(name.startswith(("acme/", "globex/")) for name in owner), owner
    assert {"app", "tools/cli"} <= set(registry)
    assert not any(name.startswith(("prod/", "dev/", "acme/", "globex/")) for name in registry)
    paged = _get(domains, "/v2/_catalog?n=1", PROD, auth=domains.root.auth)
    first = paged.json()["repositories"][0]
    assert (
        paged.headers["Link"] == f'</v2/_catalog?n=1&last={first.replace("/", "%2F")}>; rel="next"'
    )


def test_domain_through_a_trusted_proxy(domains: DomainWorld) -> None:
    headers = {"X-Forwarded-Host": "prod.acme.test", "X-Forwarded-Proto": "https"}

    tags = _get(domains, "/v2/app/tags/list", {}, headers=headers)
    challenge = _get(domains, "/v2/app/tags/list", {}, headers=headers, auth=None)

    # The registry's own cosign signatures (``sha256-<hex>.sig``) are tags too; not these.
    listed = tags.json()
    listed["tags"] = [t for t in listed["tags"] if not is_attachment_tag(t)]
    assert listed == {"name": "app", "tags": ["1", "2"]}
    assert parse_challenge(challenge.headers["WWW-Authenticate"])[1]["realm"] == (
        "https://prod.acme.test/v2/token"
    )


def test_domain_refusals_do_not_leak_existence(domains: DomainWorld) -> None:
    outsider = domains.seed.user("outsider")
    existing = _get(domains, "/v2/app/manifests/1", PROD, auth=outsider.auth)
    missing = _get(domains, "/v2/ghost/manifests/1", PROD, auth=outsider.auth)

    assert existing.status_code == missing.status_code == 403
    assert error_codes(existing) == error_codes(missing) == ["DENIED"]
    assert existing.headers["WWW-Authenticate"].replace("app", "X") == missing.headers[
        "WWW-Authenticate"
    ].replace("ghost", "X")


def test_a_large_blob_downloads_intact_over_tls(tls: TlsWorld) -> None:
    """Local blobs leave plain connections by sendfile (registry_server/http/sendfile.py);
    over TLS the socket carries ciphertext, so they go aiohttp's streamed way instead."""
    server = tls.server
    data = os.urandom(6 * 1024 * 1024 + 123)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    writer = server.session(tls.writer.auth)
    done = writer.post(
        f"{server.url}/v2/{APP}/blobs/uploads/", params={"digest": digest}, data=data
    )
    assert done.status_code == 201, done.text
    reader = server.session(tls.reader.auth)
    whole = reader.get(f"{server.url}/v2/{APP}/blobs/{digest}")
    assert whole.status_code == 200 and whole.content == data
    part = reader.get(
        f"{server.url}/v2/{APP}/blobs/{digest}", headers={"Range": "bytes=1000-5000000"}
    )
    assert part.status_code == 206 and part.content == data[1000:5000001]
