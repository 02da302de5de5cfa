"""Cosign signature attachments: the ``sha256-<hex>.sig`` manifest, read, merged and written.

An attachment is an OCI manifest whose layers are simple-signing payloads
(``application/vnd.dev.cosign.simplesigning.v1+json``), each with its
signature in the annotation ``dev.cosignproject.cosign/signature``. Adding
signatures re-reads the current attachment and appends, as cosign does, so
signatures clients pushed themselves stay next to ours. Two writers racing on
one attachment can lose a layer; the signing catch-up pass adds ours back, a
client re-pushes its own. This module never signs (keys do) and never builds
a storage path.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import attrs

from ..digest import Digest
from ..errors import RegistryError
from ..registry import Repository

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
KEY_ANNOTATION = "dev.cargohold.signing/key"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"


def attachment_tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}.sig"


@attrs.frozen
class CosignSignature:
    """One layer of an attachment: the payload bytes, the signature and who added it."""

    payload: bytes = attrs.field(repr=False)
    signature: str
    key_id: str | None
    descriptor: dict[str, Any] = attrs.field(repr=False, eq=False)


async def _blob(repo: Repository, digest: Digest) -> bytes:
    return b"".join([chunk async for chunk in repo.blobs.read(digest)])


async def read_attachment(repo: Repository, subject: Digest) -> list[CosignSignature]:
    """The signatures in *subject*'s attachment (none when it has no attachment)."""
    try:
        stored = await repo.manifests.get(attachment_tag(subject))
        layers = json.loads(stored.body).get("layers") or []
    except (RegistryError, ValueError):
        return []
    found = []
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLESIGNING:
            continue
        annotations = layer.get("annotations") or {}
        try:
            payload = await _blob(repo, Digest.parse(str(layer.get("digest"))))
        except (RegistryError, ValueError):
            continue
        found.append(
            CosignSignature(
                payload=payload,
                signature=str(annotations.get(SIGNATURE_ANNOTATION, "")),
                key_id=annotations.get(KEY_ANNOTATION),
                descriptor=layer,
            )
        )
    return found


async def _put_blob(repo: Repository, data: bytes) -> Digest:
    # A few hundred bytes: stored and linked directly, as manifests are, not through an
    # upload session (which would cost a signature several times the storage requests).
    digest = Digest.of(data)
    await repo.blobs.store.put_small(data, digest)
    await repo.blobs.link(digest)
    return digest


async def add_signatures(
    repo: Repository,
    subject: Digest,
    signed: list[tuple[bytes, str, str]],
    existing: list[CosignSignature] | None = None,
) -> Digest | None:
    """Append ``(payload, signature, key id)`` layers to *subject*'s attachment; returns
    the attachment's new digest (None when nothing was added).

    *existing*: the attachment's signatures as the caller just read them (so they are
    not read twice); None reads them here. The new blobs are stored side by side, then
    the manifest: two steps however many signatures are added.
    """
    if not signed:
        return None
    if existing is None:
        existing = await read_attachment(repo, subject)
    layers = [s.descriptor for s in existing]
    blobs = []
    for payload, signature, key_id in signed:
        blobs.append(payload)
        layers.append(
            {
                "mediaType": SIMPLESIGNING,
                "digest": str(Digest.of(payload)),
                "size": len(payload),
                "annotations": {SIGNATURE_ANNOTATION: signature, KEY_ANNOTATION: key_id},
            }
        )
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        },
        separators=(",", ":"),
    ).encode()
    blobs.append(config)
    await asyncio.gather(*(_put_blob(repo, data) for data in blobs))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": layers,
        },
        separators=(",", ":"),
    ).encode()
    # Every blob it names was written just above (or read back from the attachment).
    stored = await repo.manifests.put(
        manifest, OCI_MANIFEST, tag=attachment_tag(subject), check_references=False
    )
    return stored.digest


async def put_referrer(
    repo: Repository, subject: Digest, subject_media_type: str, subject_size: int, key_id: str
) -> Digest | None:
    """The OCI 1.1 referrers form of *key_id*'s signatures of *subject* (cosign's
    ``--registry-referrers-mode=oci-1-1``): a manifest with a ``subject``, listed by the
    referrers API. Built only from the attachment's layers, so it is the same bytes (and
    digest) until a signature is added."""
    layers = [s.descriptor for s in await read_attachment(repo, subject) if s.key_id == key_id]
    if not layers:
        return None
    empty = await _put_blob(repo, b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE_ARTIFACT,
            "config": {"mediaType": OCI_EMPTY, "digest": str(empty), "size": 2},
            "layers": sorted(layers, key=lambda layer: str(layer.get("digest"))),
            "subject": {
                "mediaType": subject_media_type,
                "digest": str(subject),
                "size": subject_size,
            },
        },
        separators=(",", ":"),
    ).encode()
    return (await repo.manifests.put(manifest, OCI_MANIFEST)).digest
