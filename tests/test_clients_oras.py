"""oras-py (``oras.client.OrasClient``) against Cargohold: artifacts and referrers.

oras-py 0.2 pushes a manifest whose ``config.mediaType`` is the artifact's type (it has
no ``artifactType`` argument), and takes an ``oras.oci.Subject`` to make a referrer.
A referrer with an explicit ``artifactType`` is pushed with the client's lower-level
``upload_blob``/``upload_manifest``. Every manifest digest is checked against the bytes
the client sent and the bytes the registry serves.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import oras.client
import oras.oci
import pytest
import requests

from tests.helpers import Image, RegistryServer, sample_image, sha256_digest
from tests.helpers.images import OCI_INDEX, OCI_MANIFEST
from tests.helpers.registry_api import get_manifest, new_session, push_image

pytestmark = pytest.mark.clients

ARTIFACT_TYPE = "application/vnd.cargohold.test.artifact.v1+json"
LAYER_TYPE = "application/vnd.cargohold.test.payload.v1"
SBOM_TYPE = "application/vnd.cargohold.test.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.cargohold.test.signature.v1"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"


@pytest.fixture
def oras_client(shared_server: RegistryServer) -> oras.client.OrasClient:
    client = oras.client.OrasClient(hostname=shared_server.host, insecure=True)
    client.session.trust_env = False  # loopback only: never through an env proxy
    return client


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def pushed_digest(response: requests.Response) -> str:
    """The digest of a manifest PUT: what the registry said, checked against the body."""
    assert response.status_code == 201, (response.status_code, response.text[:500])
    digest = response.headers["Docker-Content-Digest"]
    assert sha256_digest(response.request.body) == digest
    return digest


def fetch_manifest(server: RegistryServer, repo: str, ref: str) -> tuple[bytes, dict[str, Any]]:
    resp = get_manifest(server.url, repo, ref)
    assert resp.status_code == 200, resp.text[:500]
    return resp.content, resp.json()


def referrers(
    server: RegistryServer, repo: str, subject: str, artifact_type: str | None = None
) -> requests.Response:
    params = {"artifactType": artifact_type} if artifact_type else None
    resp = new_session().get(f"{server.url}/v2/{repo}/referrers/{subject}", params=params)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["Content-Type"].startswith(OCI_INDEX)
    body = resp.json()
    assert body["schemaVersion"] == 2
    assert body["mediaType"] == OCI_INDEX
    return resp


def push_subject(server: RegistryServer, repo: str) -> Image:
    image = sample_image("oras-subject")
    assert push_image(server.url, repo, image, "1.0") == image.digest
    return image


def subject_of(image: Image) -> oras.oci.Subject:
    return oras.oci.Subject(mediaType=image.media_type, digest=image.digest, size=image.size)


def push_sbom_referrer(
    client: oras.client.OrasClient,
    server: RegistryServer,
    repo: str,
    subject: Image,
    tmp_path: Path,
) -> str:
    """An artifact typed by its config's media type, referring to ``subject``."""
    sbom = write_file(tmp_path / "sbom" / "sbom.json", b'{"packages": ["cargohold"]}\n')
    config = write_file(tmp_path / "sbom" / "config.json", b'{"kind": "sbom"}')
    response = client.push(
        target=f"{server.host}/{repo}:sbom",
        files=[f"{sbom}:{LAYER_TYPE}"],
        manifest_config=f"{config}:{SBOM_TYPE}",
        manifest_annotations={"org.example.kind": "sbom"},
        subject=subject_of(subject),
        disable_path_validation=True,
        quiet=True,
    )
    digest = pushed_digest(response)
    assert response.headers.get("OCI-Subject") == subject.digest
    return digest


def push_signature_referrer(
    client: oras.client.OrasClient,
    server: RegistryServer,
    repo: str,
    subject: Image,
    tmp_path: Path,
) -> str:
    """An artifact with an explicit ``artifactType`` and the empty config, by digest."""
    container = client.get_container(f"{server.host}/{repo}")
    empty = write_file(tmp_path / "sig" / "empty.json", b"{}")
    signature = write_file(tmp_path / "sig" / "signature.bin", secrets.token_bytes(64))
    config = {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(b"{}"), "size": 2}
    layer = {
        "mediaType": "application/octet-stream",
        "digest": sha256_digest(signature.read_bytes()),
        "size": signature.stat().st_size,
    }
    for path, descriptor in ((empty, config), (signature, layer)):
        resp = client.upload_blob(str(path), container, descriptor)
        assert resp.status_code in (200, 201), resp.text[:500]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": config,
        "layers": [layer],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": {"org.example.kind": "signature"},
    }
    response = client.upload_manifest(manifest, container)
    digest = pushed_digest(response)
    assert response.headers.get("OCI-Subject") == subject.digest
    return digest


def test_oras_push_and_pull_artifact(
    oras_client: oras.client.OrasClient,
    shared_server: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    payload = secrets.token_bytes(4096) + b"\n cargohold artifact \n"
    artifact = write_file(tmp_path / "push" / "payload.bin", payload)
    config = write_file(tmp_path / "push" / "config.json", b'{"name": "payload"}')
    target = f"{shared_server.host}/{unique_repo}:v1"

    response = oras_client.push(
        target=target,
        files=[f"{artifact}:{LAYER_TYPE}"],
        manifest_config=f"{config}:{ARTIFACT_TYPE}",
        disable_path_validation=True,
        quiet=True,
    )

    digest = pushed_digest(response)
    raw, manifest = fetch_manifest(shared_server, unique_repo, "v1")
    assert sha256_digest(raw) == digest
    assert manifest["config"]["mediaType"] == ARTIFACT_TYPE
    assert manifest["config"]["digest"] == sha256_digest(config.read_bytes())
    [layer] = manifest["layers"]
    assert layer["mediaType"] == LAYER_TYPE
    assert layer["digest"] == sha256_digest(payload)
    assert layer["size"] == len(payload)

    pulled = oras_client.pull(target=target, outdir=str(tmp_path / "pull"))

    assert [Path(p).name for p in pulled] == ["payload.bin"]
    data = Path(pulled[0]).read_bytes()
    assert data == payload
    assert sha256_digest(data) == layer["digest"]


def test_oras_chunked_push(
    oras_client: oras.client.OrasClient,
    shared_server: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    payload = secrets.token_bytes(300_000)
    artifact = write_file(tmp_path / "push" / "big.bin", payload)
    target = f"{shared_server.host}/{unique_repo}:chunked"

    # POST, then one PATCH (with Content-Range) per 64 KiB chunk, then PUT ?digest=.
    response = oras_client.push(
        target=target,
        files=[f"{artifact}:{LAYER_TYPE}"],
        do_chunked=True,
        chunk_size=64 * 1024,
        disable_path_validation=True,
        quiet=True,
    )

    digest = pushed_digest(response)
    patches = [
        line
        for line in shared_server.log_text().splitlines()
        if "method=PATCH" in line and f"repository={unique_repo} " in line
    ]
    assert len(patches) == -(-len(payload) // (64 * 1024))
    raw, manifest = fetch_manifest(shared_server, unique_repo, "chunked")
    assert sha256_digest(raw) == digest
    assert manifest["layers"][0]["digest"] == sha256_digest(payload)
    pulled = oras_client.pull(target=target, outdir=str(tmp_path / "pull"))
    assert Path(pulled[0]).read_bytes() == payload


def test_oras_referrer_listed_by_referrers_api(
    oras_client: oras.client.OrasClient,
    shared_server: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    subject = push_subject(shared_server, unique_repo)

    referrer = push_sbom_referrer(oras_client, shared_server, unique_repo, subject, tmp_path)

    raw, manifest = fetch_manifest(shared_server, unique_repo, referrer)
    assert sha256_digest(raw) == referrer
    assert manifest["subject"]["digest"] == subject.digest
    [descriptor] = referrers(shared_server, unique_repo, subject.digest).json()["manifests"]
    assert descriptor["digest"] == referrer
    assert descriptor["size"] == len(raw)
    assert descriptor["mediaType"] == OCI_MANIFEST
    # No artifactType in the manifest: the referrers API reports the config's media type.
    assert descriptor["artifactType"] == SBOM_TYPE
    assert descriptor.get("annotations", {}).get("org.example.kind") == "sbom"
    # The subject itself is unchanged by getting a referrer.
    subject_raw, _ = fetch_manifest(shared_server, unique_repo, "1.0")
    assert sha256_digest(subject_raw) == subject.digest


def test_oras_referrers_filtered_by_artifact_type(
    oras_client: oras.client.OrasClient,
    shared_server: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    subject = push_subject(shared_server, unique_repo)
    sbom = push_sbom_referrer(oras_client, shared_server, unique_repo, subject, tmp_path)
    signature = push_signature_referrer(oras_client, shared_server, unique_repo, subject, tmp_path)
    assert sbom != signature

    everything = referrers(shared_server, unique_repo, subject.digest)
    only_signatures = referrers(shared_server, unique_repo, subject.digest, SIGNATURE_TYPE)
    only_sboms = referrers(shared_server, unique_repo, subject.digest, SBOM_TYPE)
    nothing = referrers(shared_server, unique_repo, subject.digest, "application/x-none")

    listed = {d["digest"]: d["artifactType"] for d in everything.json()["manifests"]}
    assert listed == {sbom: SBOM_TYPE, signature: SIGNATURE_TYPE}
    assert [d["digest"] for d in only_signatures.json()["manifests"]] == [signature]
    assert [d["digest"] for d in only_sboms.json()["manifests"]] == [sbom]
    assert nothing.json()["manifests"] == []
    for resp in (only_signatures, only_sboms, nothing):
        assert resp.headers.get("OCI-Filters-Applied") == "artifactType"
    for digest in (sbom, signature):
        raw, manifest = fetch_manifest(shared_server, unique_repo, digest)
        assert sha256_digest(raw) == digest
        assert manifest["subject"]["digest"] == subject.digest
    _, signature_manifest = fetch_manifest(shared_server, unique_repo, signature)
    assert signature_manifest["artifactType"] == SIGNATURE_TYPE
