"""Real clients verify Cargohold's signatures: bookworm skopeo/podman (simple signing, GPG)
and trixie's sigstore-capable skopeo (cosign attachments), with the server's published keys.

One server (auth on, so signing is on by default) serves the module; it knows two host
names for itself, ``127.0.0.1:PORT`` and the custom domain ``localhost:PORT`` (mapped to
``acme/prod``). The catch-up pass is kept out of the way (a long interval) so that a
signature a test removes stays removed; the nudge signs every push.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from registry_core.signing import openpgp
from tests.helpers import RegistryServer, client_env, free_port, run, sample_image, write_oci_layout
from tests.helpers.images import OCI_MANIFEST, sha256_digest
from tests.helpers.registry_api import push_blob
from tests.helpers.sigstore import sigstore_skopeo
from tests.helpers.tenants import Seeder, write_config

pytestmark = pytest.mark.clients

TENANT = "acme/prod"


class Signed:
    """The module's server, its writer's credentials and its published keys."""

    def __init__(self, server: RegistryServer, creds: tuple[str, str], root: Path) -> None:
        self.server = server
        self.creds = creds
        self.root = root
        self.session = requests.Session()
        self.session.auth = creds
        keys = self.session.get(f"{server.url}/api/v1/registries/{TENANT}/signing-keys")
        assert keys.status_code == 200, keys.text
        found = {k["kind"]: k["public"] for k in keys.json()["keys"] if k["status"] == "active"}
        self.gpg_key = root / "registry.gpg"
        self.gpg_key.write_text(found["gpg"])
        self.cosign_key = root / "cosign.pub"
        self.cosign_key.write_text(found["cosign"])

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def domain(self) -> str:
        return f"localhost:{self.server.port}"

    @property
    def store(self) -> Path:
        path = self.server.storage_path
        assert path is not None
        return path

    def push(self, image: str, tag: str = "1.0") -> str:
        """Push a fresh image with bookworm skopeo; wait for both signatures; its digest."""
        built = sample_image(image.replace("/", "-"))
        layout = self.root / f"layout-{image.replace('/', '-')}-{tag}"
        write_oci_layout(layout, built, tag=tag)
        run(
            [
                "skopeo",
                "--insecure-policy",
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                ":".join(self.creds),
                f"oci:{layout}:{tag}",
                f"docker://{self.host}/{TENANT}/{image}:{tag}",
            ],
            env=client_env(),
        )
        self.wait_signed(image, built.digest)
        return built.digest

    def signatures(self, image: str, digest: str) -> list[dict[str, Any]]:
        url = f"{self.server.url}/extensions/v2/{TENANT}/{image}/signatures/{digest}"
        resp = self.session.get(url)
        assert resp.status_code == 200, resp.text
        return resp.json()["signatures"]

    def wait_signed(self, image: str, digest: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cosign = self.session.head(
                f"{self.server.url}/v2/{TENANT}/{image}/manifests/sha256-{digest[7:]}.sig"
            )
            if cosign.status_code == 200 and len(self.signatures(image, digest)) >= 2:
                return
            time.sleep(0.1)
        raise AssertionError(f"{image}@{digest} was not signed")

    def signatures_dir(self, image: str, digest: str) -> Path:
        algorithm, hexpart = digest.split(":")
        return (
            self.store
            / "docker/registry/v2/repositories"
            / TENANT
            / image
            / "_signatures"
            / algorithm
            / hexpart
        )


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root = tmp_path_factory.mktemp("signing")
    store = root / "store"
    store.mkdir()
    seed = Seeder(f"file://{store}")
    seed.registry(TENANT)
    writer = seed.user("writer")
    seed.member(TENANT, "writer", "write")
    port = free_port()
    config = write_config(
        root / "server.toml",
        server={"public_hosts": [f"127.0.0.1:{port}", f"localhost:{port}"]},
        signing={"interval": 3600.0},
        domains={"localhost": TENANT},
    )
    server = RegistryServer(
        f"file://{store}", port=port, auth=True, config=config, workdir=root / "work"
    )
    with server:
        yield Signed(server, writer.auth, root)


# -- policies ---------------------------------------------------------------------------------


def gpg_policy(path: Path, scope: str, key: Path) -> Path:
    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {scope: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key)}]}
        },
    }
    path.write_text(json.dumps(policy))
    return path


def sigstore_policy(path: Path, scopes: list[str], key: Path) -> Path:
    requirement = {
        "type": "sigstoreSigned",
        "keyPath": str(key),
        "signedIdentity": {"type": "matchRepoDigestOrExact"},
    }
    policy = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {scope: [requirement] for scope in scopes}},
    }
    path.write_text(json.dumps(policy))
    return path


def sigstore_registries_d(directory: Path, hosts: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["docker:"] + [f"  {h}:\n    use-sigstore-attachments: true" for h in hosts]
    (directory / "cargohold.yaml").write_text("\n".join(lines) + "\n")
    return directory


def bookworm_pull(
    signed: Signed, policy: Path, ref: str, dest: Path
) -> subprocess.CompletedProcess:
    empty = Path(tempfile.mkdtemp(prefix="registries.d-"))
    try:
        return run(
            [
                "skopeo",
                "--policy",
                str(policy),
                "--registries.d",
                str(empty),
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                ":".join(signed.creds),
                f"docker://{ref}",
                f"dir:{dest}",
            ],
            env=client_env(),
            check=False,
        )
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def sigstore_pull(
    signed: Signed, policy: Path, ref: str, dest: Path
) -> subprocess.CompletedProcess:
    registries_d = sigstore_registries_d(
        dest.parent / f"{dest.name}-rd", [signed.host, signed.domain]
    )
    return sigstore_skopeo(
        "--policy",
        str(policy),
        "--registries.d",
        str(registries_d),
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        ":".join(signed.creds),
        f"docker://{ref}",
        f"dir:{dest}",
        check=False,
    )


def _refused(result: subprocess.CompletedProcess) -> bool:
    return result.returncode != 0 and "signature" in (result.stderr + result.stdout).lower()


# -- the extension API ------------------------------------------------------------------------


def test_v2_advertises_signatures_on_its_anonymous_401(signed: Signed) -> None:
    resp = requests.get(f"{signed.server.url}/v2/")
    assert resp.status_code == 401
    assert resp.headers["X-Registry-Supports-Signatures"] == "1"


def test_a_manifest_without_simple_signatures_answers_an_empty_list(signed: Signed) -> None:
    digest = "sha256:" + "0" * 64
    assert signed.signatures("nothing", digest) == []


def test_extension_entries_have_the_shape_containers_image_reads(signed: Signed) -> None:
    digest = signed.push("shape")
    entries = signed.signatures("shape", digest)
    assert len(entries) == 2  # one per host name
    for entry in entries:
        assert entry["schemaVersion"] == 2 and entry["type"] == "atomic"
        assert entry["name"].startswith(f"{digest}@")
        verified = openpgp.verify(base64.b64decode(entry["content"]), [signed.gpg_key.read_text()])
        assert verified is not None
        claim = json.loads(verified.payload)["critical"]
        assert claim["type"] == "atomic container signature"
        assert claim["image"]["docker-manifest-digest"] == digest


def test_signing_keys_need_a_login_on_a_private_registry(signed: Signed) -> None:
    resp = requests.get(f"{signed.server.url}/api/v1/registries/{TENANT}/signing-keys")
    assert resp.status_code == 401


def test_a_client_pushes_its_own_simple_signature(signed: Signed) -> None:
    digest = signed.push("client-signed")
    content = base64.b64encode(b"not really openpgp").decode()
    body = {
        "schemaVersion": 2,
        "name": f"{digest}@{'ab' * 16}",
        "type": "atomic",
        "content": content,
    }
    url = f"{signed.server.url}/extensions/v2/{TENANT}/client-signed/signatures/{digest}"
    resp = signed.session.put(url, json=body)
    assert resp.status_code == 201, resp.text
    assert content in [e["content"] for e in signed.signatures("client-signed", digest)]


def test_a_bad_signature_body_is_a_400(signed: Signed) -> None:
    digest = signed.push("bad-body")
    url = f"{signed.server.url}/extensions/v2/{TENANT}/bad-body/signatures/{digest}"
    resp = signed.session.put(url, data=b"{not json")
    assert resp.status_code == 400
    assert resp.json()["errors"][0]["code"]


# -- bookworm skopeo: simple signing --------------------------------------------------------


def test_bookworm_skopeo_accepts_the_registrys_simple_signature(
    signed: Signed, tmp_path: Path
) -> None:
    signed.push("gpg-ok")
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-ok", signed.gpg_key)
    result = bookworm_pull(signed, policy, f"{signed.host}/{TENANT}/gpg-ok:1.0", tmp_path / "out")
    assert result.returncode == 0, result.stderr


def test_bookworm_skopeo_refuses_another_key(signed: Signed, tmp_path: Path) -> None:
    signed.push("gpg-other")
    other = openpgp.generate("Somebody Else <else@example.invalid>")
    key = tmp_path / "other.gpg"
    key.write_text(other.public)
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-other", key)
    result = bookworm_pull(signed, policy, f"{signed.host}/{TENANT}/gpg-other:1.0", tmp_path / "o")
    assert _refused(result), result.stderr


def test_bookworm_skopeo_refuses_a_tampered_signature(signed: Signed, tmp_path: Path) -> None:
    digest = signed.push("gpg-tampered")
    for record in signed.signatures_dir("gpg-tampered", digest).iterdir():
        stored = json.loads(record.read_text())
        raw = bytearray(base64.b64decode(stored["content"]))
        raw[len(raw) // 2] ^= 0xFF
        stored["content"] = base64.b64encode(bytes(raw)).decode()
        record.write_text(json.dumps(stored))
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-tampered", signed.gpg_key)
    result = bookworm_pull(
        signed, policy, f"{signed.host}/{TENANT}/gpg-tampered:1.0", tmp_path / "o"
    )
    assert result.returncode != 0, result.stderr


def test_bookworm_skopeo_refuses_a_signature_for_another_digest(
    signed: Signed, tmp_path: Path
) -> None:
    first = signed.push("gpg-moved", tag="a")
    second = signed.push("gpg-moved", tag="b")
    target = signed.signatures_dir("gpg-moved", second)
    shutil.rmtree(target)
    shutil.copytree(signed.signatures_dir("gpg-moved", first), target)
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-moved", signed.gpg_key)
    result = bookworm_pull(signed, policy, f"{signed.host}/{TENANT}/gpg-moved:b", tmp_path / "o")
    assert _refused(result), result.stderr


def test_bookworm_skopeo_refuses_an_unsigned_image(signed: Signed, tmp_path: Path) -> None:
    digest = signed.push("gpg-missing")
    shutil.rmtree(signed.signatures_dir("gpg-missing", digest))
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-missing", signed.gpg_key)
    result = bookworm_pull(
        signed, policy, f"{signed.host}/{TENANT}/gpg-missing:1.0", tmp_path / "o"
    )
    assert _refused(result), result.stderr


def test_bookworm_podman_pulls_with_a_signed_by_policy(signed: Signed, tmp_path: Path) -> None:
    signed.push("gpg-podman")
    policy = gpg_policy(tmp_path / "p.json", f"{signed.host}/{TENANT}/gpg-podman", signed.gpg_key)
    runroot = tempfile.mkdtemp(prefix="cargohold-podman-", dir="/tmp")
    try:
        result = run(
            [
                "podman",
                "--root",
                str(tmp_path / "root"),
                "--runroot",
                runroot,
                "--storage-driver",
                "vfs",
                "pull",
                "--signature-policy",
                str(policy),
                "--tls-verify=false",
                "--creds",
                ":".join(signed.creds),
                f"{signed.host}/{TENANT}/gpg-podman:1.0",
            ],
            env=client_env({"CONTAINERS_REGISTRIES_CONF": "/dev/null"}),
            check=False,
            timeout=300,
        )
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
    assert result.returncode == 0, result.stderr


# -- trixie skopeo: cosign signatures ---------------------------------------------------------


def test_sigstore_skopeo_accepts_cosign_signatures_by_tag(signed: Signed, tmp_path: Path) -> None:
    signed.push("cosign-tag")
    scope = f"{signed.host}/{TENANT}/cosign-tag"
    policy = sigstore_policy(tmp_path / "p.json", [scope], signed.cosign_key)
    result = sigstore_pull(signed, policy, f"{scope}:1.0", tmp_path / "out")
    assert result.returncode == 0, result.stderr


def test_sigstore_skopeo_accepts_cosign_signatures_by_digest(
    signed: Signed, tmp_path: Path
) -> None:
    digest = signed.push("cosign-digest")
    scope = f"{signed.host}/{TENANT}/cosign-digest"
    policy = sigstore_policy(tmp_path / "p.json", [scope], signed.cosign_key)
    result = sigstore_pull(signed, policy, f"{scope}@{digest}", tmp_path / "out")
    assert result.returncode == 0, result.stderr


def test_sigstore_skopeo_accepts_a_pull_through_the_custom_domain(
    signed: Signed, tmp_path: Path
) -> None:
    signed.push("cosign-domain")
    scope = f"{signed.domain}/cosign-domain"
    policy = sigstore_policy(tmp_path / "p.json", [scope], signed.cosign_key)
    result = sigstore_pull(signed, policy, f"{scope}:1.0", tmp_path / "out")
    assert result.returncode == 0, result.stderr


def test_sigstore_skopeo_refuses_another_key(signed: Signed, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    signed.push("cosign-other")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    key = tmp_path / "other.pub"
    key.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    scope = f"{signed.host}/{TENANT}/cosign-other"
    policy = sigstore_policy(tmp_path / "p.json", [scope], key)
    result = sigstore_pull(signed, policy, f"{scope}:1.0", tmp_path / "out")
    assert _refused(result), result.stderr


def _replace_attachment(
    signed: Signed, image: str, subject: str, layers: list[tuple[bytes, str]]
) -> None:
    repo = f"{TENANT}/{image}"
    descriptors = []
    for payload, signature in layers:
        digest = push_blob(signed.server.url, repo, payload, session=signed.session)
        descriptors.append(
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": digest,
                "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": signature},
            }
        )
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
        }
    ).encode()
    config_digest = push_blob(signed.server.url, repo, config, session=signed.session)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    resp = signed.session.put(
        f"{signed.server.url}/v2/{repo}/manifests/sha256-{subject[7:]}.sig",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status_code == 201, resp.text


def _attachment_layers(signed: Signed, image: str, subject: str) -> list[tuple[bytes, str]]:
    repo = f"{TENANT}/{image}"
    resp = signed.session.get(
        f"{signed.server.url}/v2/{repo}/manifests/sha256-{subject[7:]}.sig",
        headers={"Accept": OCI_MANIFEST},
    )
    assert resp.status_code == 200
    found = []
    for layer in resp.json()["layers"]:
        blob = signed.session.get(f"{signed.server.url}/v2/{repo}/blobs/{layer['digest']}")
        assert sha256_digest(blob.content) == layer["digest"]
        found.append((blob.content, layer["annotations"]["dev.cosignproject.cosign/signature"]))
    return found


def test_sigstore_skopeo_refuses_a_tampered_payload(signed: Signed, tmp_path: Path) -> None:
    digest = signed.push("cosign-tampered")
    layers = _attachment_layers(signed, "cosign-tampered", digest)
    tampered = [(payload.replace(b"cargohold", b"cargoh0ld"), sig) for payload, sig in layers]
    assert all(a != b for (a, _), (b, _) in zip(layers, tampered, strict=True))
    _replace_attachment(signed, "cosign-tampered", digest, tampered)
    scope = f"{signed.host}/{TENANT}/cosign-tampered"
    policy = sigstore_policy(tmp_path / "p.json", [scope], signed.cosign_key)
    result = sigstore_pull(signed, policy, f"{scope}:1.0", tmp_path / "out")
    assert _refused(result), result.stderr


def test_sigstore_skopeo_refuses_a_signature_copied_onto_another_image(
    signed: Signed, tmp_path: Path
) -> None:
    first = signed.push("cosign-copied", tag="a")
    second = signed.push("cosign-copied", tag="b")
    _replace_attachment(
        signed, "cosign-copied", second, _attachment_layers(signed, "cosign-copied", first)
    )
    scope = f"{signed.host}/{TENANT}/cosign-copied"
    policy = sigstore_policy(tmp_path / "p.json", [scope], signed.cosign_key)
    result = sigstore_pull(signed, policy, f"{scope}:b", tmp_path / "out")
    assert _refused(result), result.stderr
