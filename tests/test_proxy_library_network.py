"""Where upstreams may point: the network policy, and the client that checks it per connection.

Loopback, private, link-local and cloud-metadata addresses are refused unless
``allow_networks`` holds them, after DNS resolution, on every connection; a refused
connection fails at once. Docker Hub's naming conventions map names and hosts.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from registry_core.names import Tenant
from registry_core.proxy import NetworkPolicy, Upstream, UpstreamFailure, UpstreamSpec
from registry_core.proxy.settings import build_upstream
from registry_core.tenancy import InvalidRequest
from registry_server.upstream_client import AiohttpUpstreamClient
from tests.proxy_support import ScriptedUpstream


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "100.100.100.200",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_by_default(address):
    assert not NetworkPolicy().allows(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1"])
def test_public_addresses_are_allowed(address):
    assert NetworkPolicy().allows(address)


def test_allow_networks_opens_exactly_the_networks_named():
    policy = NetworkPolicy(["127.0.0.0/8", "10.0.0.0/24"])

    assert policy.allows("127.0.0.1")
    assert policy.allows("10.0.0.9")
    assert not policy.allows("10.0.1.9")
    assert not policy.allows("169.254.169.254")


def test_a_malformed_network_is_refused_with_its_text():
    with pytest.raises(ValueError, match="not-a-cidr"):
        NetworkPolicy(["not-a-cidr"])


async def test_a_loopback_upstream_without_allow_networks_is_refused_before_connecting():
    async with ScriptedUpstream().running() as upstream:
        client = AiohttpUpstreamClient(NetworkPolicy(), timeout=5)
        try:
            with pytest.raises(UpstreamFailure) as caught:
                await client.request("GET", f"{upstream.url}/v2/", {})
        finally:
            await client.close()

        assert caught.value.kind == "forbidden_network"
        assert sum(upstream.requests.values()) == 0


async def test_a_name_that_resolves_to_loopback_is_refused_after_resolution():
    async with ScriptedUpstream().running() as upstream:
        client = AiohttpUpstreamClient(NetworkPolicy(), timeout=5)
        try:
            with pytest.raises(UpstreamFailure) as caught:
                await client.request(
                    "GET", upstream.url.replace("127.0.0.1", "localhost") + "/v2/", {}
                )
        finally:
            await client.close()

        assert caught.value.kind == "forbidden_network"
        assert sum(upstream.requests.values()) == 0


async def test_a_refused_connection_fails_at_once():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        client = AiohttpUpstreamClient(NetworkPolicy(["127.0.0.0/8"]), timeout=30)
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamFailure) as caught:
                await client.request("GET", f"http://127.0.0.1:{port}/v2/", {})
        finally:
            await client.close()

    assert caught.value.kind == "refused"
    assert time.monotonic() - started < 5


def upstream(url: str, prefix: str | None = None) -> Upstream:
    return build_upstream(
        Tenant("acme", "hub"), UpstreamSpec(name="hub", url=url, prefix=prefix), None
    )


def test_a_one_component_docker_hub_name_means_library():
    assert upstream("https://docker.io").remote_name("nginx") == "library/nginx"
    assert upstream("https://docker.io").remote_name("bitnami/redis") == "bitnami/redis"


def test_docker_hub_aliases_use_its_api_host():
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert upstream(f"https://{host}").api_base == "https://registry-1.docker.io"


def test_containerd_ns_matches_docker_hub_by_any_of_its_names():
    hub = upstream("https://index.docker.io")

    assert hub.matches_namespace("docker.io")
    assert hub.matches_namespace("registry-1.docker.io")
    assert not hub.matches_namespace("ghcr.io")


def test_a_prefix_is_prepended_at_the_upstream():
    assert (
        upstream("https://ghcr.io", prefix="acme").remote_name("tools/build") == "acme/tools/build"
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "https://example.com/v2",
        "https://user:pw@example.com",
        "example.com",
        "https://",
    ],
)
def test_upstream_urls_must_be_scheme_host_and_port_only(url):
    with pytest.raises(InvalidRequest):
        upstream(url)


def self_signed_context(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_an_upstream_whose_certificate_does_not_verify_is_a_tls_failure(tmp_path):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=self_signed_context(tmp_path))
    port = server.sockets[0].getsockname()[1]
    client = AiohttpUpstreamClient(NetworkPolicy(["127.0.0.0/8"]), timeout=5)
    try:
        with pytest.raises(UpstreamFailure) as caught:
            await client.request("GET", f"https://127.0.0.1:{port}/v2/", {})
    finally:
        await client.close()
        server.close()
        await server.wait_closed()

    assert caught.value.kind == "tls"
