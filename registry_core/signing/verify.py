"""Checking an image's signatures of both kinds against published or given public keys.

The same check ``cargohold verify`` prints: every cosign signature in the
image's attachment and every simple signature served by the extension API is
verified cryptographically, then its claim (type, manifest digest, identity)
is compared with the image. A signature counts for ``NAME:TAG`` when its
identity names that repository and tag under any host (custom domains show a
shorter name, which must be a suffix of the full one). This module never
needs a private key.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..digest import Digest
from ..names import Reference, RepositoryName
from ..registry import Registry
from . import cosign, openpgp, payloads
from .keys import KeyStore, cosign_fingerprint
from .simple import SimpleSignatures


@attrs.frozen
class PublicKey:
    kind: Literal["cosign", "gpg"]
    fingerprint: str
    public: str = attrs.field(repr=False)
    label: str = ""


@attrs.frozen
class Checked:
    """One signature found on the image and what came of checking it."""

    kind: Literal["cosign", "simple"]
    identity: str | None
    key: str | None
    """The label (key id) or fingerprint of the key that made it; None: no given key did."""
    valid: bool
    reason: str = ""


@attrs.define
class VerifyReport:
    name: str
    reference: str
    digest: Digest
    checked: list[Checked] = attrs.field(factory=list)

    @property
    def valid(self) -> list[Checked]:
        return [c for c in self.checked if c.valid]

    @property
    def ok(self) -> bool:
        return bool(self.valid)


def parse_public_key(text: str, label: str = "") -> PublicKey:
    """A PEM public key (cosign) or an armored OpenPGP public key."""
    if "BEGIN PGP PUBLIC KEY BLOCK" in text:
        return PublicKey("gpg", openpgp.public_fingerprint(text), text, label)
    key = serialization.load_pem_public_key(text.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("a cosign public key must be ECDSA")
    return PublicKey("cosign", cosign_fingerprint(text), text, label)


async def published_keys(keys: KeyStore, name: RepositoryName) -> list[PublicKey]:
    """Every key the registry publishes, retired ones too (they signed older images)."""
    return [PublicKey(r.kind, r.fingerprint, r.public, r.id) for r in await keys.list(name.tenant)]


def _identity_matches(identity: str, name: RepositoryName, tag: str | None) -> bool:
    if tag is None:
        return True
    _, _, path = identity.partition("/")
    wanted = f"{name.value}:{tag}"
    return path == wanted or wanted.endswith("/" + path)


def _check_cosign(
    signature: cosign.CosignSignature, keys: list[PublicKey]
) -> tuple[str | None, str]:
    try:
        raw = base64.b64decode(signature.signature, validate=True)
    except ValueError:
        return None, "signature is not base64"
    for key in keys:
        public = serialization.load_pem_public_key(key.public.encode())
        assert isinstance(public, ec.EllipticCurvePublicKey)
        try:
            public.verify(raw, signature.payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return key.label or key.fingerprint, ""
    return None, "no given key made this signature"


async def verify_image(
    registry: Registry, name: str, reference: str, keys: list[PublicKey]
) -> VerifyReport:
    """Check every signature of ``NAME`` at *reference* (a tag or digest) with *keys*."""
    parsed_name = RepositoryName.parse(name)
    ref = Reference.parse(reference)
    repo = registry.repository(parsed_name)
    digest = await repo.manifests.resolve(reference)
    report = VerifyReport(name, reference, digest)
    cosign_keys = [k for k in keys if k.kind == "cosign"]
    gpg_keys = [k for k in keys if k.kind == "gpg"]
    found_cosign = await cosign.read_attachment(repo, digest)
    # ECDSA checks are CPU work: one trip to a worker thread for all of them, off the loop
    # (the website verifies on a page view).
    cosign_results = (
        await asyncio.to_thread(lambda: [_check_cosign(f, cosign_keys) for f in found_cosign])
        if found_cosign
        else []
    )
    for found, (key, reason) in zip(found_cosign, cosign_results, strict=True):
        claim = payloads.read_claim(found.payload)
        report.checked.append(_judge("cosign", claim, key, reason, digest, parsed_name, ref.tag))
    store = SimpleSignatures(registry.driver, parsed_name)
    by_fingerprint = {k.fingerprint: k.label or k.fingerprint for k in gpg_keys}
    for _, record in await store.records(digest):
        content = base64.b64decode(record.content)
        verified = (
            await asyncio.to_thread(openpgp.verify, content, [k.public for k in gpg_keys])
            if gpg_keys
            else None
        )
        if verified is None:
            report.checked.append(
                Checked("simple", record.identity, None, False, "no given key made this signature")
            )
            continue
        claim = payloads.read_claim(verified.payload)
        key = by_fingerprint.get(verified.fingerprint, verified.fingerprint)
        report.checked.append(_judge("simple", claim, key, "", digest, parsed_name, ref.tag))
    return report


def _judge(
    kind: Literal["cosign", "simple"],
    claim: payloads.Claim | None,
    key: str | None,
    reason: str,
    digest: Digest,
    name: RepositoryName,
    tag: str | None,
) -> Checked:
    identity = claim.reference if claim else None
    if key is None:
        return Checked(kind, identity, None, False, reason)
    expected = payloads.COSIGN_TYPE if kind == "cosign" else payloads.SIMPLE_TYPE
    if claim is None or claim.type != expected:
        return Checked(kind, identity, key, False, "the payload is not a signature claim")
    if claim.digest != str(digest):
        return Checked(kind, identity, key, False, f"signed another manifest ({claim.digest})")
    if not _identity_matches(claim.reference, name, tag):
        return Checked(kind, identity, key, False, "signed for another name or tag")
    return Checked(kind, identity, key, True)
