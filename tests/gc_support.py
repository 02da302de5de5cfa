"""Shared pieces of the GC and scrub tests: pushing images through the library, checking them."""

from __future__ import annotations

import json
from typing import Any

from registry_core import Digest, Registry
from registry_core.errors import BlobUnknown, ManifestUnknown
from tests.helpers.images import Blob, Image, Index, build_image, make_random_layer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def image(seed: str, layers: int = 2, size: int = 2048) -> Image:
    return build_image([make_random_layer(size, seed=f"{seed}-{n}") for n in range(layers)])


async def push_blob(registry: Registry, repo: str, blob: Blob) -> None:
    blobs = registry.repository(repo).blobs
    async with blobs.upload() as upload:
        await upload.write(blob.data)
        await upload.commit(Digest.parse(blob.digest))


async def push_image(registry: Registry, repo: str, img: Image, tag: str | None = None) -> None:
    for blob in img.blobs():
        await push_blob(registry, repo, blob)
    await registry.repository(repo).manifests.put(img.manifest, img.media_type, tag=tag)


async def push_index(registry: Registry, repo: str, index: Index, tag: str | None) -> None:
    for img in index.images:
        await push_image(registry, repo, img)
    await registry.repository(repo).manifests.put(index.manifest, index.media_type, tag=tag)


def attachment_for(subject: Image | Index, seed: str) -> tuple[bytes, list[Blob]]:
    """An OCI artifact manifest whose ``subject`` is *subject* (an SBOM, say), and its blobs."""
    config = Blob("application/vnd.oci.empty.v1+json", b"{}")
    payload = Blob("application/spdx+json", json.dumps({"sbom": seed}).encode())
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": config.descriptor(),
        "layers": [payload.descriptor()],
        "subject": subject.descriptor(),
    }
    return json.dumps(body).encode(), [config, payload]


async def push_attachment(
    registry: Registry, repo: str, subject: Image | Index, seed: str, tag: str | None = None
) -> str:
    body, blobs = attachment_for(subject, seed)
    for blob in blobs:
        await push_blob(registry, repo, blob)
    parsed = await registry.repository(repo).manifests.put(body, OCI_MANIFEST, tag=tag)
    return str(parsed.digest)


async def blob_present(registry: Registry, digest: str) -> bool:
    return await registry.blob_store.exists(Digest.parse(digest))


async def readable_in(registry: Registry, repo: str, digest: str) -> bool:
    """True when *repo* serves the blob (link and data), as a client pulling it would see."""
    try:
        await registry.repository(repo).blobs.stat(Digest.parse(digest))
    except BlobUnknown:
        return False
    return True


async def image_complete(registry: Registry, repo: str, reference: str) -> bool:
    """The tag resolves, and every blob of the manifest (and of an index's children) is
    readable in *repo* with the right digest."""
    from registry_core.lifecycle.marks import manifest_refs

    repository = registry.repository(repo)
    try:
        stored = await repository.manifests.get(reference)
    except ManifestUnknown:
        return False
    if Digest.of(stored.body) != stored.digest:
        return False
    refs = manifest_refs(stored.body)
    for child in refs.children:
        if not await image_complete(registry, repo, str(child)):
            return False
    for blob in refs.blobs:
        if not await readable_in(registry, repo, str(blob)):
            return False
        hashed = await _hash_stream(registry, repo, blob)
        if hashed != blob:
            return False
    return True


async def _hash_stream(registry: Registry, repo: str, digest: Digest) -> Digest:
    from registry_core.digest import Hasher

    hasher = Hasher(digest.algorithm)
    async for chunk in registry.repository(repo).blobs.read(digest):
        hasher.update(chunk)
    return hasher.digest()
