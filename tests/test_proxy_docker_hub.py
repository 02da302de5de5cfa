"""Docker Hub's conventions through the server, with Docker Hub played on 127.0.0.1.

An upstream configured as ``https://docker.io`` or ``https://index.docker.io`` must talk
to ``registry-1.docker.io``: here that name (port 443) resolves, through the server's
test-only override (``CARGOHOLD_TEST_UPSTREAM_RESOLVE``), to a Distribution 2.8.2 that
serves TLS on 127.0.0.1 with a certificate for ``registry-1.docker.io`` from a test CA
(trusted through ``[upstreams] ca_file``). The network policy still decides: the tests
allow exactly ``127.0.0.1/32``, and one shows the pull refused without it. No traffic
leaves 127.0.0.1: a real Docker Hub name that escaped the override would fail to resolve
or be refused as a non-allowed address.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import sample_image, skopeo
from tests.helpers.containerd import ContainerdDaemon
from tests.helpers.images import Image
from tests.helpers.registry_api import MANIFEST_ACCEPT, new_session, push_image
from tests.helpers.server import DistributionServer
from tests.helpers.upstreams import PullThrough, Upstream, start_pull_through, wait_for_v2

pytestmark = pytest.mark.clients

HUB_API = "registry-1.docker.io"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_test_ca(folder: Path, *names: str) -> tuple[Path, Path, Path]:
    """(CA bundle, leaf certificate, leaf key): a CA and a leaf for ``names`` + 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cargohold test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "hub.pem", folder / "hub-key.pem")
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(leaf))
    paths[2].write_bytes(_key_pem(key))
    return paths


class TlsDistribution(DistributionServer):
    """Distribution 2.8.2 serving HTTPS with the given certificate (no auth)."""

    name = "distribution-tls"

    def __init__(self, storage_dir: Path, *, cert: Path, key: Path, ca: Path, **kw: Any) -> None:
        super().__init__(storage_dir, **kw)
        self.cert, self.key, self.ca = cert, key, ca

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def config_yaml(self) -> str:
        return super().config_yaml() + (
            f'  tls:\n    certificate: "{self.cert}"\n    key: "{self.key}"\n'
        )

    def _wait_ready(self) -> None:
        session = new_session()
        session.verify = str(self.ca)
        wait_for_v2(self, session)


class Hub:
    """The stand-in Docker Hub: its server, CA and the ``library/nginx:latest`` it holds."""

    def __init__(self, server: TlsDistribution, ca: Path, nginx: Image) -> None:
        self.server, self.ca, self.nginx = server, ca, nginx

    @property
    def resolve(self) -> str:
        """The server's ``CARGOHOLD_TEST_UPSTREAM_RESOLVE``: Docker Hub's API host to us."""
        return f"{HUB_API}:443={self.server.host}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    ca, cert, key = make_test_ca(tmp_path / "pki", HUB_API)
    server = TlsDistribution(
        tmp_path / "hub-store", cert=cert, key=key, ca=ca, workdir=tmp_path / "hub"
    )
    with server:
        session = new_session()
        session.verify = str(ca)
        nginx = sample_image("hub-nginx", layers=2)
        push_image(server.url, "library/nginx", nginx, "latest", session=session)
        yield Hub(server, ca, nginx)


def hub_pull_through(
    registry_factory: Any,
    tmp_path: Path,
    hub: Hub,
    *upstreams: Upstream,
    allow: list[str] | None = None,
) -> PullThrough:
    return start_pull_through(
        registry_factory,
        tmp_path,
        *upstreams,
        allow_loopback=False,
        settings={
            "allow_networks": ["127.0.0.1/32"] if allow is None else allow,
            "ca_file": str(hub.ca),
            "timeout": 10.0,
        },
        env={"CARGOHOLD_TEST_UPSTREAM_RESOLVE": hub.resolve},
    )


def manifest(pt: PullThrough, image: str, ref: str, **params: str) -> Any:
    return new_session().get(
        f"{pt.url}/v2/{pt.repo(image)}/manifests/{ref}",
        headers={"Accept": MANIFEST_ACCEPT},
        params=params,
        timeout=30,
    )


@pytest.mark.parametrize("url", ["https://docker.io", "https://index.docker.io"])
def test_a_docker_hub_alias_pulls_one_component_names_from_library_on_its_api_host(
    registry_factory: Any, tmp_path: Path, hub: Hub, url: str
) -> None:
    pt = hub_pull_through(registry_factory, tmp_path, hub, Upstream(name="hub", url=url))

    answer = manifest(pt, "nginx", "latest")

    assert answer.status_code == 200, answer.text
    assert answer.headers["Docker-Content-Digest"] == hub.nginx.digest
    assert answer.content == hub.nginx.manifest


def test_skopeo_pulls_nginx_through_a_docker_io_upstream_with_the_hub_digests(
    registry_factory: Any, tmp_path: Path, hub: Hub
) -> None:
    upstream = Upstream(name="hub", url="https://docker.io")
    pt = hub_pull_through(registry_factory, tmp_path, hub, upstream)
    out = tmp_path / "out"

    skopeo(
        "copy", "--src-tls-verify=false", f"docker://{pt.server.host}/{pt.repo('nginx')}:latest",
        f"oci:{out}:latest",
    )  # fmt: skip

    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == hub.nginx.digest
    stored = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    assert {b.digest.split(":")[1] for b in hub.nginx.blobs()} <= stored


def test_the_network_policy_still_refuses_docker_hub_at_a_loopback_address(
    registry_factory: Any, tmp_path: Path, hub: Hub
) -> None:
    upstream = Upstream(name="hub", url="https://docker.io")
    pt = hub_pull_through(registry_factory, tmp_path, hub, upstream, allow=[])

    answer = manifest(pt, "nginx", "latest")

    assert answer.status_code in (502, 503), answer.text
    error = answer.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "upstream hub" in error["message"]
    assert "allow_networks" in error["message"]


def test_containerd_ns_docker_io_picks_the_docker_hub_upstream_over_a_higher_priority_one(
    registry_factory: Any, tmp_path: Path, hub: Hub
) -> None:
    # Another upstream, first by priority, holds a different library/nginx:latest: only
    # the ns host can make the registry pick Docker Hub.
    other = DistributionServer(tmp_path / "other-store", workdir=tmp_path / "other")
    with other:
        decoy = sample_image("decoy-nginx", layers=1)
        push_image(other.url, "library/nginx", decoy, "latest", session=new_session())
        pt = hub_pull_through(
            registry_factory,
            tmp_path,
            hub,
            Upstream(name="corp", url=other.url, priority=10),
            Upstream(name="hub", url="https://docker.io", priority=50),
        )
        assert manifest(pt, "library/nginx", "latest").content == decoy.manifest  # no ns
        hosts = tmp_path / "hosts.d" / "docker.io"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            f'server = "https://{HUB_API}"\n'
            f'[host."http://{pt.server.host}/v2/{pt.tenant}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            "  override_path = true\n"
        )

        with ContainerdDaemon(tmp_path / "containerd") as ctd:
            ctd.ctr(
                "images", "pull", "--hosts-dir", str(tmp_path / "hosts.d"),
                "--snapshotter", ctd.snapshotter, "docker.io/library/nginx:latest",
            )  # fmt: skip
            rows = ctd.ctr("images", "ls").stdout.splitlines()[1:]

    targets = {row.split()[0]: row.split()[2] for row in rows if row.strip()}
    assert targets == {"docker.io/library/nginx:latest": hub.nginx.digest}
