"""Signing through the library: keys sealed at rest, both formats, identities, repairs, verify."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from drivers.local import LocalDriver
from registry_core import Registry
from registry_core import mediatypes as mt
from registry_core.errors import ManifestUnknown
from registry_core.names import Tenant
from registry_core.secrets import SecretBox
from registry_core.signing import (
    KeyStore,
    Signer,
    SigningDefaults,
    SigningSettings,
    cosign,
    parse_public_key,
    published_keys,
    request_host,
    verify_image,
)
from registry_core.signing.simple import SimpleSignatures

from .test_signing_feed import push_image

REPO = "acme/prod/app"
TENANT = Tenant("acme", "prod")
HOST = "registry.example:5000"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(LocalDriver(str(tmp_path / "store")))


@pytest.fixture
def signer(registry: Registry) -> Signer:
    keys = KeyStore(registry.driver, SecretBox("test secrets key, long enough"))
    return Signer(registry, keys, SigningDefaults(enabled=True, public_hosts=(HOST,)))


async def _keys(signer: Signer) -> list:
    from registry_core.names import RepositoryName

    return await published_keys(signer.keys, RepositoryName.parse(REPO))


async def test_a_pushed_tag_is_signed_in_both_formats_for_every_host(
    registry: Registry, signer: Signer
) -> None:
    digest = await push_image(registry)
    report = await signer.sign_manifest(REPO, digest, ["other.example"])
    assert report.identities == [f"other.example/{REPO}:1.0", f"{HOST}/{REPO}:1.0"]
    assert report.cosign_added == 2 and report.simple_added == 2
    verdict = await verify_image(registry, REPO, "1.0", await _keys(signer))
    kinds = sorted((c.kind, c.identity) for c in verdict.valid)
    assert kinds == sorted(
        (kind, identity) for kind in ("cosign", "simple") for identity in report.identities
    )


async def test_signing_twice_adds_nothing(registry: Registry, signer: Signer) -> None:
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    again = await signer.sign_manifest(REPO, digest)
    assert (again.cosign_added, again.simple_added) == (0, 0)


async def test_a_registry_with_signing_off_is_not_signed(
    registry: Registry, signer: Signer
) -> None:
    await signer.set_settings(TENANT, SigningSettings(enabled=False))
    digest = await push_image(registry)
    report = await signer.sign_manifest(REPO, digest)
    assert report.cosign_added == report.simple_added == 0
    assert await signer.keys.list(TENANT) == []


async def test_only_cosign_when_simple_signing_is_off(registry: Registry, signer: Signer) -> None:
    await signer.set_settings(TENANT, SigningSettings(simple=False))
    digest = await push_image(registry)
    report = await signer.sign_manifest(REPO, digest)
    assert report.cosign_added == 1 and report.simple_added == 0


async def test_signatures_pushed_by_clients_are_kept_when_we_add_ours(
    registry: Registry, signer: Signer
) -> None:
    digest = await push_image(registry)
    repo = registry.repository(REPO)
    await cosign.add_signatures(repo, digest, [(b'{"client": 1}', "c2lnbmF0dXJl", "client")])
    await signer.sign_manifest(REPO, digest)
    found = await cosign.read_attachment(repo, digest)
    assert [s.key_id for s in found] == ["client", "cosign-1"]


async def test_a_moved_tag_gets_a_signature_for_the_new_digest(
    registry: Registry, signer: Signer
) -> None:
    first = await push_image(registry, seed="a")
    await signer.sign_manifest(REPO, first)
    second = await push_image(registry, seed="b")
    await signer.sign_manifest(REPO, second)
    verdict = await verify_image(registry, REPO, "1.0", await _keys(signer))
    assert verdict.digest == second and verdict.ok


async def test_an_index_and_its_platform_manifests_are_signed(
    registry: Registry, signer: Signer
) -> None:
    amd = await push_image(registry, tag=None, seed="amd64")
    arm = await push_image(registry, tag=None, seed="arm64")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": str(d), "size": 1} for d in (amd, arm)
            ],
        }
    ).encode()
    parsed = await registry.repository(REPO).manifests.put(index, mt.OCI_INDEX, tag="multi")
    await signer.sign_manifest(REPO, parsed.digest)
    repo = registry.repository(REPO)
    for digest in (parsed.digest, amd, arm):
        signatures = await cosign.read_attachment(repo, digest)
        assert [json.loads(s.payload)["critical"]["identity"] for s in signatures] == [
            {"docker-reference": f"{HOST}/{REPO}:multi"}
        ]


async def test_an_untagged_manifest_and_attachments_get_no_signature(
    registry: Registry, signer: Signer
) -> None:
    digest = await push_image(registry, tag=None)
    assert (await signer.sign_manifest(REPO, digest)).identities == []


async def test_a_manifest_stored_without_a_nudge_is_signed_by_the_catch_up(
    registry: Registry, signer: Signer
) -> None:
    digest = await push_image(registry)  # as after a crash: nobody listened
    await signer.catch_up()
    verdict = await verify_image(registry, REPO, "1.0", await _keys(signer))
    assert verdict.digest == digest and {c.kind for c in verdict.valid} == {"cosign", "simple"}


async def test_the_nudge_worker_signs_with_the_request_host(
    registry: Registry, signer: Signer
) -> None:
    signer.attach()
    token = request_host.set("push.example")
    try:
        digest = await push_image(registry)
    finally:
        request_host.reset(token)
    await signer.drain()
    signatures = await cosign.read_attachment(registry.repository(REPO), digest)
    identities = {
        json.loads(s.payload)["critical"]["identity"]["docker-reference"] for s in signatures
    }
    assert f"push.example/{REPO}:1.0" in identities


async def test_a_custom_domain_signs_the_short_name(registry: Registry) -> None:
    keys = KeyStore(registry.driver, SecretBox("test secrets key, long enough"))
    defaults = SigningDefaults(
        enabled=True, public_hosts=("127.0.0.1:5000",), domains=(("localhost", "acme/prod"),)
    )
    signer = Signer(registry, keys, defaults)
    digest = await push_image(registry)
    report = await signer.sign_manifest(REPO, digest, ["localhost:5000"])
    assert report.identities == [f"127.0.0.1:5000/{REPO}:1.0", "localhost:5000/app:1.0"]


async def test_rotation_keeps_old_signatures_verifiable(registry: Registry, signer: Signer) -> None:
    old = await push_image(registry, tag="old", seed="old")
    await signer.sign_manifest(REPO, old)
    await signer.keys.rotate(TENANT, "cosign")
    await signer.keys.rotate(TENANT, "gpg")
    new = await push_image(registry, tag="new", seed="new")
    await signer.sign_manifest(REPO, new)
    records = await signer.keys.list(TENANT)
    assert [(r.id, r.status) for r in records] == [
        ("cosign-1", "retired"),
        ("cosign-2", "active"),
        ("gpg-1", "retired"),
        ("gpg-2", "active"),
    ]
    keys = await _keys(signer)
    old_verdict = await verify_image(registry, REPO, "old", keys)
    new_verdict = await verify_image(registry, REPO, "new", keys)
    assert {c.key for c in old_verdict.valid} == {"cosign-1", "gpg-1"}
    assert {c.key for c in new_verdict.valid} == {"cosign-2", "gpg-2"}


async def test_another_key_does_not_verify(registry: Registry, signer: Signer) -> None:
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    other = KeyStore(registry.driver, SecretBox("test secrets key, long enough"))
    elsewhere = Tenant("other", "keys")
    await other.signing_key(elsewhere, "cosign")
    foreign = [parse_public_key(r.public) for r in await other.list(elsewhere)]
    verdict = await verify_image(registry, REPO, "1.0", foreign)
    assert not verdict.ok and verdict.checked


async def test_a_signature_for_another_digest_does_not_verify(
    registry: Registry, signer: Signer
) -> None:
    signed = await push_image(registry, tag="signed", seed="a")
    await signer.sign_manifest(REPO, signed)
    unsigned = await push_image(registry, tag="unsigned", seed="b")
    repo = registry.repository(REPO)
    copied = await cosign.read_attachment(repo, signed)
    await cosign.add_signatures(
        repo, unsigned, [(s.payload, s.signature, "copied") for s in copied]
    )
    verdict = await verify_image(registry, REPO, "unsigned", await _keys(signer))
    assert not verdict.ok
    assert all("another manifest" in c.reason for c in verdict.checked)


async def test_private_keys_are_never_stored_in_clear(
    registry: Registry, signer: Signer, tmp_path: Path
) -> None:
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PRIVATE KEY" not in data, path
            assert b"PGP PRIVATE KEY BLOCK" not in data, path


async def test_a_deleted_manifest_loses_its_signatures(registry: Registry, signer: Signer) -> None:
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    name = registry.repository(REPO).name
    assert await SimpleSignatures(registry.driver, name).records(digest)
    await registry.repository(REPO).manifests.delete(str(digest))
    assert await SimpleSignatures(registry.driver, name).records(digest) == []
    assert f"sha256-{digest.hex}.sig" not in await registry.repository(REPO).manifests.tags()


async def test_a_deleted_manifest_loses_its_attachments_revisions_too(
    registry: Registry, signer: Signer
) -> None:
    await signer.set_settings(TENANT, SigningSettings(referrers=True))
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    manifests = registry.repository(REPO).manifests
    assert len(await manifests.revisions()) == 3  # the image, its .sig, its referrer form
    await manifests.delete(str(digest))
    assert await manifests.revisions() == []
    assert await manifests.referrers(digest) == []


async def test_a_manifest_deleted_while_it_is_signed_keeps_no_signature(
    registry: Registry, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DELETE lands between the signer's look at the manifest and its writes: what the
    signer then attaches goes again, so no orphan keeps the repository listed."""
    await signer.set_settings(TENANT, SigningSettings(referrers=True))
    digest = await push_image(registry)
    manifests = registry.repository(REPO).manifests
    real = cosign.add_signatures

    async def delete_first(*args: object, **kwargs: object) -> object:
        with contextlib.suppress(ManifestUnknown):
            await manifests.delete(str(digest))
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cosign, "add_signatures", delete_first)
    report = await signer.sign_manifest(REPO, digest)
    assert (report.cosign_added, report.simple_added) == (0, 0)
    assert await manifests.revisions() == []
    assert await manifests.tags() == []
    assert await SimpleSignatures(registry.driver, manifests.name).records(digest) == []


async def test_an_imported_cosign_key_signs(registry: Registry, signer: Signer) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    record = await signer.keys.import_key(TENANT, pem)
    assert record.imported and record.kind == "cosign"
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verdict = await verify_image(registry, REPO, "1.0", [parse_public_key(public.decode())])
    assert [c.kind for c in verdict.valid] == ["cosign"]


async def test_the_referrers_form_lists_cosign_signatures_when_asked_for(
    registry: Registry, signer: Signer
) -> None:
    await signer.set_settings(TENANT, SigningSettings(referrers=True, simple=False))
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    [referrer] = await registry.repository(REPO).manifests.referrers(digest)
    assert referrer["artifactType"] == cosign.SIGNATURE_ARTIFACT
    stored = await registry.repository(REPO).manifests.get(referrer["digest"])
    layers = json.loads(stored.body)["layers"]
    assert [layer["annotations"][cosign.KEY_ANNOTATION] for layer in layers] == ["cosign-1"]


async def test_no_referrers_form_by_default(registry: Registry, signer: Signer) -> None:
    digest = await push_image(registry)
    await signer.sign_manifest(REPO, digest)
    assert await registry.repository(REPO).manifests.referrers(digest) == []


async def test_gc_keeps_signatures_of_kept_manifests_and_drops_those_of_collected_ones(
    registry: Registry, signer: Signer
) -> None:
    old = await push_image(registry, seed="old")
    await signer.sign_manifest(REPO, old)
    new = await push_image(registry, seed="new")  # 1.0 moves: the old manifest is untagged
    await signer.sign_manifest(REPO, new)
    await registry.collect_garbage(
        grace=0.0,
        settle=0.0,
        collect_untagged=lambda repo, digest, mtime: True,
    )
    name = registry.repository(REPO).name
    assert await SimpleSignatures(registry.driver, name).records(old) == []
    assert len(await SimpleSignatures(registry.driver, name).records(new)) == 1
    verdict = await verify_image(registry, REPO, "1.0", await _keys(signer))
    assert {c.kind for c in verdict.valid} == {"cosign", "simple"}
